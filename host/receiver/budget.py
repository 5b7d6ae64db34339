"""Per-source reject budgets: a token bucket per source address, charged for rejected frames.

A source (an IP address for UDP and TCP, the port for serial) may send `burst` bad frames at once
and `rate` per second after that. Over budget, its frames are no longer fully decoded and logged:
the ingest only checks cheaply whether the frame authenticates (so a genuine card behind the same
carrier-grade NAT address is never cut off) and otherwise drops it as `over_budget`. Sources that
behave are never affected. The table is bounded (`max_sources`): when full, the source with the
fullest bucket (the least suspicious) is forgotten first.
"""

from __future__ import annotations

import itertools
import time
from typing import Callable, Hashable


class RejectBudget:
    __slots__ = ("rate", "burst", "max_sources", "_clock", "_buckets", "over", "_events")

    def __init__(self, rate: float, burst: float, max_sources: int = 65536,
                 clock: Callable[[], float] = time.monotonic):
        if rate <= 0 or burst < 1 or max_sources < 1:
            raise ValueError("reject budget: rate > 0, burst >= 1 and max_sources >= 1 required")
        self.rate = rate
        self.burst = burst
        self.max_sources = max_sources
        self._clock = clock
        self._buckets: dict[Hashable, list[float]] = {}  # source -> [tokens, stamp]
        self.over: set[Hashable] = set()  # sources currently over budget (checked per frame)
        self._events: list[tuple[str, Hashable]] = []  # ("over" | "recovered", source) to log

    def charge(self, source: Hashable) -> bool:
        """Charge one rejected frame; True while the source is within its budget."""
        now = self._clock()
        bucket = self._buckets.get(source)
        if bucket is None:
            if len(self._buckets) >= self.max_sources:
                self._evict()
            bucket = self._buckets[source] = [self.burst, now]
        tokens = min(self.burst, bucket[0] + (now - bucket[1]) * self.rate)
        bucket[1] = now
        if tokens >= 1.0:
            bucket[0] = tokens - 1.0
            return True
        bucket[0] = tokens
        if source not in self.over:
            self.over.add(source)
            self._events.append(("over", source))
        return False

    def refresh(self) -> None:
        """Let sources whose bucket refilled back in (call every second or so)."""
        if not self.over:
            return
        now = self._clock()
        for source in list(self.over):
            bucket = self._buckets.get(source)
            if bucket is None or bucket[0] + (now - bucket[1]) * self.rate >= min(self.burst, 1.0 + self.rate):
                self.over.discard(source)
                self._events.append(("recovered", source))

    def drain_events(self) -> list[tuple[str, Hashable]]:
        events, self._events = self._events, []
        return events

    def _evict(self) -> None:
        """Amortised O(1): forget every refilled bucket at once; if the table is still nearly
        full (a spoofed-address flood), forget the oldest quarter too."""
        now = self._clock()
        rate, burst = self.rate, self.burst
        for source in [s for s, (tokens, stamp) in self._buckets.items()
                       if tokens + (now - stamp) * rate >= burst]:
            del self._buckets[source]
            self.over.discard(source)
        if len(self._buckets) >= self.max_sources * 0.9:
            for source in list(itertools.islice(self._buckets, max(1, self.max_sources // 4))):
                del self._buckets[source]
                self.over.discard(source)

    def __len__(self) -> int:
        return len(self._buckets)
