"""The backfill's progress line: listed / enqueued / skipped / paused, rate, and an ETA when the total is known."""

from __future__ import annotations


class Progress:
    """A tqdm bar counting listed keys (``total``: from S3 Inventory or ``--count-first``; None: no ETA).

    Callers hold the stats lock, so updates from parallel shards do not interleave.
    """

    def __init__(self, total: int | None, *, enabled: bool = True) -> None:
        self.bar = None
        if enabled:
            from tqdm import tqdm

            # disable=None: drawn on a terminal only (logs and pipes get the summary lines instead)
            self.bar = tqdm(total=total, unit="key", desc="backfill", smoothing=0.1, mininterval=0.5, disable=None)

    def update(self, stats, listed: int) -> None:
        if self.bar is None:
            return
        self.bar.set_postfix_str(f"enqueued {stats.enqueued}, skipped {stats.skipped}, paused {stats.pauses}",
                                 refresh=False)
        self.bar.update(listed)

    def paused(self, stats, depth: int, limit: int) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(f"enqueued {stats.enqueued}, skipped {stats.skipped}, paused {stats.pauses}"
                                     f" (detect queue {depth} > {limit})")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
