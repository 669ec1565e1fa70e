"""A TCP proxy on loopback that misbehaves on purpose: drops a connection after N bytes from the
server, holds back what follows N bytes (a server stalled mid-response), or delays every chunk,
so tests see what a flaky network does to a real IMAP session."""

from __future__ import annotations

import socket
import threading
import time
from contextlib import suppress

from tests.servers.dovecot import free_port


class FaultyProxy:
    """Forwards 127.0.0.1:``port`` to ``target``. ``drop_after`` bytes from the server end the
    connection (once per setting); after ``hold_after`` bytes the server's data stops coming
    (``holding`` is set) until the proxy closes; ``delay`` seconds are added before each server
    chunk."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self.drop_after: int | None = None
        self.hold_after: int | None = None
        self.holding = threading.Event()
        self.delay = 0.0
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._listener.settimeout(0.2)
        self._stop = threading.Event()
        self._open: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def cut(self) -> None:
        """Close every connection open now, as a server restart or a NAT timeout would."""
        for end in self._open:
            with suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)
        self._open.clear()

    def close(self) -> None:
        self.cut()
        self._stop.set()
        self._thread.join(5)
        self._listener.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            server = socket.create_connection(self.target)
            self._open += [client, server]
            threading.Thread(target=self._pipe, args=(client, server, False), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, True), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, from_server: bool) -> None:
        sent = 0
        try:
            while chunk := source.recv(16384):
                if from_server and self.delay:
                    time.sleep(self.delay)
                if (
                    from_server
                    and self.drop_after is not None
                    and sent + len(chunk) > self.drop_after
                ):
                    sink.sendall(chunk[: self.drop_after - sent])
                    self.drop_after = None
                    break
                if (
                    from_server
                    and self.hold_after is not None
                    and sent + len(chunk) > self.hold_after
                ):
                    sink.sendall(chunk[: self.hold_after - sent])
                    self.holding.set()
                    self._stop.wait()  # the rest never comes; the client must give up by itself
                    break
                sink.sendall(chunk)
                sent += len(chunk)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                with suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)
                end.close()
