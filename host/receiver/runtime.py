"""Interpreter settings for the receiver's processes (the ingest and the sink process).

Both allocate several container objects per frame (the message, its rows, its log entry) and keep
thousands alive for a while (a commit's batch, a sink's queue). With the collector's default
gen-0 threshold (700) a collection runs every few frames and keeps re-scanning those live
objects: about 6% of the sink process's CPU under load (measured with callgrind). Nearly all of it
is freed by reference counting anyway; the rarer collections still catch cycles.

Process-wide settings, so they are made by the processes' entry points (`carecard receive`, the
sink process, `carecard bench receive` for its baseline and receiver alike), never by a library
object that may share its process with other work (tests, embedding code).
"""

from __future__ import annotations

import gc

GC_THRESHOLDS = (10_000, 50, 50)


def tune_gc(*, freeze: bool = False) -> None:
    """Collect less often (GC_THRESHOLDS). `freeze`: also move everything alive now (modules,
    configuration, connections) out of the collector's sight; only for a process that does
    nothing but this job (the sink process), since frozen objects are never collected."""
    if freeze:
        gc.collect()
        gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
