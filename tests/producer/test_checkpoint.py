"""The checkpoint document: saved every window, atomically, only for the source it was made for."""

from __future__ import annotations

import json

import pytest

from producer.checkpoint import Checkpoint
from vehicle_core.errors import ConfigError
from vehicle_core.storage import ObjectStore


def test_positions_are_saved_once_a_window_is_full_and_read_back(tmp_path):
    path = tmp_path / "c.json"
    first = Checkpoint(str(path), ObjectStore(), source="s3://b/p", every=100)
    first.advance("shard-a", "k/0060.jpg", 60)
    assert not path.exists()  # 60 < 100: not yet
    first.advance("shard-a", "k/0120.jpg", 60)
    assert json.loads(path.read_text())["positions"] == {"shard-a": "k/0120.jpg"}
    first.finish("shard-b")
    again = Checkpoint(str(path), ObjectStore(), source="s3://b/p", every=100)
    assert again.resumed and again.position("shard-a") == "k/0120.jpg" and again.is_done("shard-b")
    assert not list(tmp_path.glob("*.part"))  # written by rename


def test_a_checkpoint_of_another_source_is_refused_and_a_read_only_one_never_written(tmp_path):
    path = tmp_path / "c.json"
    Checkpoint(str(path), ObjectStore(), source="s3://b/p", every=1).advance("s", "x", 1)
    with pytest.raises(ConfigError):
        Checkpoint(str(path), ObjectStore(), source="s3://b/other", every=1)
    before = path.read_text()
    dry = Checkpoint(str(path), ObjectStore(), source="s3://b/p", every=1, read_only=True)
    dry.advance("s", "y", 5)
    dry.finish("s")
    assert path.read_text() == before
