"""Fixtures of the workers' tests."""

from __future__ import annotations

import socket

import pytest


@pytest.fixture
def writes(monkeypatch) -> list[int]:
    """The size of every ``socket.sendall`` this process makes while the test runs, in order."""
    calls: list[int] = []
    real = socket.socket.sendall

    def counting(self, data, *args):
        calls.append(len(data))
        return real(self, data, *args)

    monkeypatch.setattr(socket.socket, "sendall", counting)
    return calls
