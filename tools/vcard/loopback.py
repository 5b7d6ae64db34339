"""A receiver on 127.0.0.1 for runs of the virtual card that need acks and downlink commands but
not the whole `carecard receive` (the day benchmark, the runtime tests): every datagram is decoded
with the host's codec and acked in its own protocol version from a thread; `commands` queued by
the caller ride on the next ack.

    with LoopbackReceiver(device, key) as receiver:
        ... point the card's config at 127.0.0.1:receiver.port, run it ...
        receiver.frames, receiver.of("sos"), receiver.errors
"""

from __future__ import annotations

import socket
import threading
from typing import Any

from carecard.protocol import decode_frame
from carecard.protocol.ack import AckEncoder
from carecard.protocol.codec import KeyRing, peek_header


class LoopbackReceiver:
    def __init__(self, device: int, key: bytes) -> None:
        self.device = device
        self.key = key
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port: int = self.sock.getsockname()[1]
        self.frames: list[dict[str, Any]] = []
        self.errors: list[str] = []              # frames that did not decode (hostile or wrong key)
        self.commands: list[dict[str, Any]] = []  # for the next ack
        self._ack = AckEncoder(KeyRing({device: key}))
        self._counter = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, addr = self.sock.recvfrom(2048)
            except OSError:
                continue
            try:
                frame = decode_frame(data, self.key)
                self.frames.append(frame)
                commands, self.commands = self.commands, []
                self._counter += 1
                ack = self._ack.encode(self.device, self._counter, frame["time"], frame["counter"],
                                       commands, peek_header(data).version)
            except Exception as exc:  # counted for the caller; the thread keeps serving
                self.errors.append(f"{len(data)} bytes from {addr}: {exc!r}")
                continue
            self.sock.sendto(ack, addr)

    def of(self, mtype: str) -> list[dict[str, Any]]:
        return [f for f in self.frames if f["type"] == mtype]

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()

    def __enter__(self) -> "LoopbackReceiver":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
