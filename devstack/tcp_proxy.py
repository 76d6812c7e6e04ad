"""A TCP proxy on loopback that can cut its connections at a chosen moment: broker faults on demand.

``cut_after_pop()`` arms it: the next Redis ``BRPOP`` or ``BLMPOP`` reply that carries messages is forwarded to
the client, then every connection is closed and new ones are refused (closed at once) until
:meth:`TcpProxy.resume`: the broker vanishing in the instant between taking a message off its
queue and the client recording it. Used by tests/workers/test_broker_window.py.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator


class TcpProxy:
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._conns: list[socket.socket] = []
        self._armed = False
        self._refusing = False
        self.cut = threading.Event()  # set once a cut happened
        self.refused = 0  # connections refused since the last cut
        self._refusal = threading.Condition()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True, name="tcp-proxy-accept").start()

    def cut_after_pop(self) -> None:
        with self._lock:
            self._armed = True
            self.cut.clear()
            self.refused = 0

    def resume(self) -> None:
        with self._lock:
            self._refusing = False

    def wait_refused(self, n: int, timeout: float, give_up=lambda: False) -> bool:
        """Wait until ``n`` connections were refused since the cut (or ``give_up()``); False on timeout."""
        deadline = time.monotonic() + timeout
        with self._refusal:
            while not (self.refused >= n or give_up()):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._refusal.wait(min(0.2, left))  # woken by each refusal; give_up() is re-read too
            return True

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self._listener.close()
        self._cut_all()

    def _cut_all(self, keep: tuple[socket.socket, ...] = ()) -> None:
        with self._lock:
            conns = [c for c in self._conns if c not in keep]
            self._conns = [c for c in self._conns if c in keep]
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                conn.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                refusing = self._refusing
            if refusing:
                client.close()
                with self._refusal:
                    self.refused += 1
                    self._refusal.notify_all()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            state = {"brpop": False}
            threading.Thread(target=self._pump, args=(client, upstream, state, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, state, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, state: dict, from_client: bool) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if from_client and (b"BRPOP" in data.upper() or b"BLMPOP" in data.upper()):
                    state["brpop"] = True
                if not from_client and state["brpop"] and data.startswith(b"*2\r\n"):
                    with self._lock:
                        fire = self._armed
                        if fire:
                            self._armed, self._refusing = False, True
                    if fire:
                        # Every other connection goes first, so the client cannot record the message
                        # on one of them; then the reply, then this connection too.
                        self._cut_all(keep=(src, dst))
                        dst.sendall(data)
                        self._cut_all()
                        self.cut.set()
                        return
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.close()


@contextlib.contextmanager
def tcp_proxy(target_port: int) -> Iterator[TcpProxy]:
    proxy = TcpProxy(target_port)
    try:
        yield proxy
    finally:
        proxy.close()
