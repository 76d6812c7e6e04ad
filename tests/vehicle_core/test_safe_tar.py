"""Model archives extract safely with and without tarfile's filters (Debian bookworm's Python 3.11.2 has none)."""

from __future__ import annotations

import io
import tarfile

import pytest

from vehicle_core.storage.safe_tar import UnsafeArchiveError, extract_data


def _archive(path, members: dict[str, bytes], *, link: str | None = None) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o4755  # a setuid bit the extraction must drop
            tar.addfile(info, io.BytesIO(data))
        if link:
            info = tarfile.TarInfo("link")
            info.type, info.linkname = tarfile.SYMTYPE, link
            tar.addfile(info)


@pytest.fixture(params=["with filters", "without filters"])
def python(request, monkeypatch):
    if request.param == "without filters":  # as on CPython < 3.11.4
        monkeypatch.delattr(tarfile, "data_filter", raising=False)
        monkeypatch.delattr(tarfile, "FilterError", raising=False)
    return request.param


def test_a_plain_archive_extracts_without_special_bits(python, tmp_path):
    _archive(tmp_path / "a.tar.gz", {"model/manifest.json": b"{}", "model/model.keras": b"k"})
    with tarfile.open(tmp_path / "a.tar.gz") as tar:
        extract_data(tar, tmp_path / "out")
    assert (tmp_path / "out/model/manifest.json").read_bytes() == b"{}"
    assert not (tmp_path / "out/model/model.keras").stat().st_mode & 0o4000


@pytest.mark.parametrize("name", ["../escape.txt", "model/../../escape.txt"])
def test_members_outside_the_destination_are_refused_as_a_tar_error(python, tmp_path, name):
    _archive(tmp_path / "bad.tar.gz", {name: b"x"})
    with tarfile.open(tmp_path / "bad.tar.gz") as tar, pytest.raises(tarfile.TarError):
        extract_data(tar, tmp_path / "out")
    assert not (tmp_path / "escape.txt").exists()


def test_an_absolute_member_never_lands_outside_the_destination(python, tmp_path):
    target = tmp_path / "abs-target" / "escape.txt"
    _archive(tmp_path / "abs.tar.gz", {str(target): b"x"})
    with tarfile.open(tmp_path / "abs.tar.gz") as tar:
        try:  # the "data" filter strips the leading slash, the fallback refuses it: either is safe
            extract_data(tar, tmp_path / "out")
        except tarfile.TarError:
            pass
    assert not target.exists()


def test_a_link_out_of_the_destination_is_refused(python, tmp_path):
    _archive(tmp_path / "link.tar.gz", {"model/manifest.json": b"{}"}, link="/etc/passwd")
    with tarfile.open(tmp_path / "link.tar.gz") as tar, pytest.raises(tarfile.TarError):
        extract_data(tar, tmp_path / "out")


def test_the_fallback_error_is_a_tar_error():
    assert issubclass(UnsafeArchiveError, tarfile.TarError)
