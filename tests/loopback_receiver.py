"""A UDP receiver on 127.0.0.1 for tests that run the card's firmware on the virtual card
(tests/test_card_runtime.py, tests/test_cardloop.py): every frame is decoded with the host's
codec and acked in its own version; `commands` queued by the test ride on the next ack."""

from __future__ import annotations

import socket
import threading

import pytest

from carecard.protocol import decode_frame
from carecard.protocol.ack import AckEncoder
from carecard.protocol.codec import KeyRing, peek_header

DEVICE = 861234567890123
KEY = bytes(range(16))


class Receiver:
    """A UDP receiver on loopback: decodes and acks every frame; `commands` queued by the test
    ride on the next ack."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.frames: list[dict] = []
        self.errors: list[str] = []
        self.commands: list[dict] = []
        self.ack = AckEncoder(KeyRing({DEVICE: KEY}))
        self._stop = threading.Event()
        self._counter = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, addr = self.sock.recvfrom(2048)
            except OSError:
                continue
            try:
                frame = decode_frame(data, KEY)
                self.frames.append(frame)
                commands, self.commands = self.commands, []
                self._counter += 1
                ack = self.ack.encode(DEVICE, self._counter, frame["time"], frame["counter"],
                                      commands, peek_header(data).version)
            except Exception as exc:  # the test fails on any (receiver.errors)
                self.errors.append(repr(exc))
                continue
            self.sock.sendto(ack, addr)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()

    def of(self, mtype: str) -> list[dict]:
        return [f for f in self.frames if f["type"] == mtype]


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()
