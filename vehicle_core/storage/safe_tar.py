"""Extract a model archive safely on every Python the project supports (>= 3.11).

``tarfile``'s ``filter="data"`` (PEP 706) refuses absolute paths, ``..``, links out of the destination
and devices, and drops special mode bits; it came with CPython 3.11.4. Debian bookworm's python3 (3.11.2,
the image's) has neither it nor ``tarfile.FilterError``: there :func:`extract_data` checks the members
itself (regular files and folders inside the destination only; stricter than "data", which also allows
links that stay inside) before extracting. Refusals raise :class:`UnsafeArchiveError`, a
``tarfile.TarError`` as ``tarfile.FilterError`` is, so ``except tarfile.TarError`` catches both.
"""

from __future__ import annotations

import os
import tarfile
from pathlib import Path


class UnsafeArchiveError(tarfile.TarError):
    """A member that would land outside the destination, or is a link, device or FIFO."""


def extract_data(tar: tarfile.TarFile, dest: str | os.PathLike) -> None:
    """``tar.extractall(dest, filter="data")``, or its checked equivalent where Python lacks filters."""
    if hasattr(tarfile, "data_filter"):
        tar.extractall(dest, filter="data")
        return
    root = os.path.realpath(dest)
    members = tar.getmembers()
    for member in members:
        if not (member.isfile() or member.isdir()):
            raise UnsafeArchiveError(f"{member.name!r} is not a regular file or folder")
        target = os.path.realpath(os.path.join(root, member.name))
        if os.path.isabs(member.name) or os.path.commonpath([root, target]) != root:
            raise UnsafeArchiveError(f"{member.name!r} would be extracted outside {Path(dest)}")
        member.mode = 0o755 if member.isdir() else (member.mode & 0o755) | 0o644
    tar.extractall(dest, members=members)  # noqa: S202 - every member checked above
