"""A small TCP proxy for fault tests: forwards 127.0.0.1:<port> to a target and can fail on cue.

Once ``trip_after`` bytes have gone from clients to the target, it calls ``on_trip`` (e.g. SIGKILL the S3 server)
and then, if ``cut`` is set, closes every connection and refuses new ones: the network is gone mid-transfer.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable


class TcpProxy:
    def __init__(
        self,
        target_port: int,
        trip_after: int | None = None,
        on_trip: Callable[[], None] | None = None,
        cut: bool = False,
    ):
        self.target_port = target_port
        self.trip_after = trip_after
        self.on_trip = on_trip
        self.cut = cut
        self.forwarded = 0
        self.tripped = threading.Event()
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self.tripped.is_set() and self.cut:
                client.close()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, outbound: bool) -> None:
        try:
            while data := source.recv(65536):
                if outbound and self.trip_after is not None and not self.tripped.is_set():
                    with self._lock:
                        self.forwarded += len(data)
                        trip = self.forwarded >= self.trip_after and not self.tripped.is_set()
                        if trip:
                            self.tripped.set()
                    if trip:
                        if self.on_trip:
                            self.on_trip()
                        if self.cut:
                            self.close_connections()
                        return
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close_connections(self) -> None:
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for s in sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
                s.close()
            except OSError:
                pass

    def close(self) -> None:
        self._listener.close()
        self.close_connections()
