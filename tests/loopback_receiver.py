"""The loopback receiver (carecard.tools.vcard.loopback) as a fixture for tests that run the
card's firmware on the virtual card (tests/test_card_runtime.py, tests/test_cardloop.py)."""

from __future__ import annotations

import pytest

from carecard.tools.vcard.loopback import LoopbackReceiver

DEVICE = 861234567890123
KEY = bytes(range(16))


@pytest.fixture
def receiver():
    with LoopbackReceiver(DEVICE, KEY) as r:
        yield r
