"""A loopback TCP proxy for fault tests: pass, delay replies, reset, blackhole.

Threads, one pair of pumps per connection. The mode applies to every chunk as
it flows, so switching it affects open connections too:

- ``pass``: bytes flow both ways;
- ``delay``: replies (server to client) wait ``delay`` seconds;
- ``reset``: the next chunk from the client gets both sockets closed with an
  RST (SO_LINGER 0), as a dropped connection would;
- ``blackhole``: the client's bytes are read and dropped; nothing comes back.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time

PASS, DELAY, RESET, BLACKHOLE = "pass", "delay", "reset", "blackhole"


class TcpProxy:
    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.mode = PASS
        self.delay = 0.0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._closed = False

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> TcpProxy:
        self._spawn(self._accept_loop)
        return self

    def set(self, mode: str, delay: float = 0.0) -> None:
        self.mode, self.delay = mode, delay

    def stop(self) -> None:
        self._closed = True
        _close(self._listener)
        with self._lock:
            for sock in self._sockets:
                _close(sock)
        for thread in self._threads:
            thread.join(timeout=5)

    # -- internals -------------------------------------------------------------

    def _spawn(self, target, *args) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _track(self, sock: socket.socket) -> socket.socket:
        with self._lock:
            self._sockets.append(sock)
        return sock

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self._track(client)
            try:
                server = self._track(socket.create_connection(self.target, 2))
            except OSError:
                _reset(client)
                continue
            self._spawn(self._pump, client, server, True)
            self._spawn(self._pump, server, client, False)

    def _pump(self, source, sink, from_client: bool) -> None:
        while True:
            try:
                data = source.recv(65536)
            except OSError:
                data = b""
            if not data:
                _close(sink)
                return
            if not self._forward(data, source, sink, from_client):
                return

    def _forward(self, data: bytes, source, sink, from_client: bool) -> bool:
        mode = self.mode
        if mode == RESET and from_client:
            _reset(source)
            _reset(sink)
            return False
        if mode == BLACKHOLE:
            return True  # read and dropped
        if mode == DELAY and not from_client:
            time.sleep(self.delay)
        try:
            sink.sendall(data)
        except OSError:
            _close(source)
            return False
        return True


def _reset(sock: socket.socket) -> None:
    """Close with an RST (SO_LINGER 0); SHUT_RD wakes a reader, sends nothing."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.shutdown(socket.SHUT_RD)
    except OSError:
        pass
    with contextlib.suppress(OSError):
        sock.close()


def _close(sock: socket.socket) -> None:
    """Shut down first: that wakes a thread blocked in recv or accept."""
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()
