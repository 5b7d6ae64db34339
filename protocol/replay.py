"""Duplicate and replay detection for one device's uplink counter (sans-I/O).

The card keeps its frame counter in flash and never reuses one; the outbox retransmits a frame
byte for byte until it is acked. So, for a frame that authenticated:

    counter above everything seen              NEW        store it, ack it
    counter seen, same tag                     DUPLICATE  a retransmission: ack again, store nothing
    counter seen, different tag                REUSED     same counter, other content: only the
                                                          key holder makes that, a card that lost
                                                          its counter; not stored (the receiver
                                                          answers with a `resync`)
    counter within the window, not seen        NEW        reordered by the network: store it
    counter older than the window              TOO_OLD    not known here: the caller asks its store
                                                          (a late retransmission of a stored frame
                                                          is a DUPLICATE), otherwise as REUSED

A replayed copy of a genuine frame is, by construction, indistinguishable from a retransmission
and is harmless: it is acked again and stored once.
"""

from __future__ import annotations

import hmac
from enum import Enum


class Verdict(str, Enum):
    NEW = "new"
    DUPLICATE = "duplicate"
    REUSED = "reused"
    TOO_OLD = "too_old"


class ReplayWindow:
    """Highest counter seen plus the tags of the last `size` counters."""

    DEFAULT_SIZE = 256

    def __init__(self, size: int = DEFAULT_SIZE, highest: int = -1,
                 recent: dict[int, bytes] | None = None):
        if size < 1:
            raise ValueError("replay window size must be at least 1")
        self.size = size
        self.highest = highest
        self._recent: dict[int, bytes] = dict(recent or {})
        self._prune()

    def classify(self, counter: int, tag: bytes) -> Verdict:
        if counter > self.highest:
            return Verdict.NEW
        seen = self._recent.get(counter)
        if seen is not None:
            return Verdict.DUPLICATE if hmac.compare_digest(seen, tag) else Verdict.REUSED
        if counter > self.highest - self.size:
            return Verdict.NEW
        return Verdict.TOO_OLD

    def accept(self, counter: int, tag: bytes) -> None:
        """Record a frame that was stored."""
        self._recent[counter] = tag if type(tag) is bytes else bytes(tag)  # a private copy
        if counter > self.highest:
            self.highest = counter
            if len(self._recent) > 2 * self.size:
                self._prune()

    def _prune(self) -> None:
        floor = self.highest - self.size
        self._recent = {c: t for c, t in self._recent.items() if c > floor}

    def state(self) -> tuple[int, dict[int, bytes]]:
        """(highest, {counter: tag}) to persist; `ReplayWindow(size, *state)` restores it."""
        self._prune()
        return self.highest, dict(self._recent)
