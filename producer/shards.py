"""Key-ordered streams of source objects a backfill walks, one thread each: listings of a prefix.

A :class:`ListingShard` lists one prefix in key order and resumes after a key (``StartAfter``).
With ``list_concurrency`` above 1 the prefix is cut one delimiter level down: one shard per
sub-prefix (CommonPrefixes) plus one for the objects directly at the top level, listed in parallel
where one listing stream (about 1,000 keys per round trip) is the bottleneck. Inventory data files
are shards too (:mod:`producer.inventory`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from vehicle_core.results.listing import results_start_after
from vehicle_core.storage import ObjectInfo, ObjectStore


class Shard(Protocol):
    """One key-ordered stream: ``name`` identifies it in a checkpoint."""

    name: str

    def items(self, after: str | None) -> Iterator[tuple[str, ObjectInfo]]:
        """(position, object) pairs from just after ``after`` (a position this shard yielded)."""
        ...

    def results(self, results_bucket: str, results_prefix: str, after: str | None) -> Iterator[ObjectInfo] | None:
        """The results listing that walks in step with :meth:`items`; None when the shard is not key-ordered."""
        ...


@dataclass(frozen=True)
class ListingShard:
    """``s3://bucket/prefix`` listed in key order; ``flat``: only the objects at this level (delimiter)."""

    store: ObjectStore
    bucket: str
    prefix: str
    flat: bool = False
    delimiter: str = "/"
    page_size: int | None = None

    @property
    def name(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" + (f" (top level, {self.delimiter!r})" if self.flat else "")

    def items(self, after: str | None) -> Iterator[tuple[str, ObjectInfo]]:
        for info in self.store.list(f"s3://{self.bucket}/{self.prefix}", start_after=after,
                                    delimiter=self.delimiter if self.flat else None, page_size=self.page_size):
            yield info.key, info

    def results(self, results_bucket: str, results_prefix: str, after: str | None) -> Iterator[ObjectInfo]:
        # Results of a flat shard are the objects at the same level under the results prefix.
        return self.store.list(f"s3://{results_bucket}/{results_prefix}{self.prefix}",
                               start_after=results_start_after(after, results_prefix),
                               delimiter=self.delimiter if self.flat else None, page_size=self.page_size)


def listing_shards(store: ObjectStore, bucket: str, prefix: str, concurrency: int, *,
                   page_size: int | None = None, exclude: str | None = None) -> list[ListingShard]:
    """One shard for the prefix, or (``concurrency`` > 1) one per sub-prefix plus the top level;
    sub-prefixes under ``exclude`` (the results prefix, in the source bucket) are not listed at all."""
    if concurrency <= 1:
        return [ListingShard(store, bucket, prefix, page_size=page_size)]
    subs = [uri[len(f"s3://{bucket}/"):] for uri in store.list_prefixes(f"s3://{bucket}/{prefix}")]
    subs = [sub for sub in subs if not (exclude and sub.startswith(exclude))]
    return [ListingShard(store, bucket, prefix, flat=True, page_size=page_size)] + [
        ListingShard(store, bucket, sub, page_size=page_size) for sub in subs
    ]


def count_keys(shards: list) -> int:
    """Walk every shard once, counting (``--count-first``: the progress bar's total and ETA)."""
    return sum(1 for shard in shards for _ in shard.items(None))
