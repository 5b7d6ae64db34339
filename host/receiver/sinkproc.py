"""The sinks in a child process of the receiver (the default; `[receive] sinks = "thread"` keeps
them in the receiver's own process).

Why: the sinks' work per event (reading the log, JSON, their own SQLite or network I/O) is Python
that would otherwise hold the ingest's interpreter lock. In a child process a slow, busy or
crashing sink can never take CPU from ingest, and the two use two cores. Nothing is lost by the
split: the event log in DATA/carecard.sqlite is the hand-over (carecard.host.storage.sqlite), the child
runs carecard.host.sinks.SinkSet unchanged on it, and the sinks' cursors live in that database.

Parent <-> child protocol, one line each way per message (the child's stdin and stdout):

    parent -> child   {"data_dir": ..., "sinks": [...] | null, "log_format": ..., "log_level": ...,
                       "log_file": ... | null, "store": "sqlite" or a PostgreSQL URL}
                      n SEQ            events up to SEQ are committed (SinkSet.notify)
                      i SEQ            the same, and the ingest has nothing more collecting
                                       (SinkSet.notify(idle=True): lingering batches go now)
                      stop SECONDS     drain for at most SECONDS, stop, exit 0
    child -> parent   ready NAMES_JSON | error MESSAGE
                      s STATS_JSON     SinkSet.stats() plus "at" (Unix time) and "prunable"
                                       (SinkSet.prunable_seq()), on every change of a cursor
                                       (checked every few ms) and at least every second
                      stopped

The child ignores SIGINT (a Ctrl-C in the terminal reaches the whole process group; the parent
decides) and stops by itself, draining, when its stdin closes (the parent died): one log line says
so, and its writes to the dead parent's pipe are dropped, never a traceback. If the child dies,
the parent logs it and starts another one after a second: sinks resume from their cursors.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
import time
from pathlib import Path
from typing import Any, Callable

log = logging.getLogger("carecard.receiver.sinks")

STATS_POLL_S = 0.002
STATS_HEARTBEAT_S = 1.0
RESTART_DELAY_S = 1.0


class SinkProcessError(RuntimeError):
    """The sink process could not start (bad sink configuration, ...); one line."""


class SinkProcess:
    """The parent's handle on the sink process; the same surface the receiver uses of SinkSet:
    start(), notify(seq), stop(drain_timeout), stats(), names."""

    def __init__(self, sinks_config: list[dict[str, Any]] | None, data_dir: Path, *,
                 log_format: str = "text", log_level: str = "info", log_file: Path | None = None,
                 store: str = "sqlite"):
        self.config = {"data_dir": str(data_dir), "sinks": sinks_config, "log_format": log_format,
                       "log_level": log_level, "log_file": str(log_file) if log_file else None,
                       "store": store}
        self.names: list[str] = []
        self._proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._stats: dict[str, dict[str, Any]] = {}
        self._prunable = 0
        self._pending: int | None = None
        self._pending_idle = False
        self._flush_scheduled = False
        self._stopping = False
        self._stopped = asyncio.Event()
        self.restarts = 0
        self.on_stats: Callable[[dict[str, dict[str, Any]], float], None] | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    async def start(self) -> None:
        await self._spawn()
        self._supervisor = asyncio.create_task(self._supervise(), name="sink-process-supervisor")

    async def _spawn(self) -> None:
        self._stopped.clear()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "carecard.host.receiver.sinkproc",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, limit=1 << 20)
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write((json.dumps(self.config) + "\n").encode())
        try:
            line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode().rstrip("\n")
        except asyncio.TimeoutError:
            line = "error the sink process did not start within 60 s"
        if not line.startswith("ready "):
            if proc.returncode is None:
                proc.kill()
            await proc.wait()
            message = line[6:] if line.startswith("error ") else f"the sink process exited ({line or 'no output'})"
            raise SinkProcessError(message)
        self.names = json.loads(line[6:])
        self._proc = proc
        self._reader = asyncio.create_task(self._read(proc), name="sink-process-reader")
        if self._pending is not None:
            self._schedule_flush()

    async def _read(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        while True:
            line = await proc.stdout.readline()
            if not line:
                break
            if line.startswith(b"s "):
                try:
                    stats = json.loads(line[2:])
                except ValueError:
                    continue
                at = stats.pop("at", time.time())
                prunable = stats.pop("prunable", 0)
                if isinstance(prunable, int) and prunable > self._prunable:
                    self._prunable = prunable
                self._stats = stats
                if self.on_stats is not None:
                    self.on_stats(stats, at)
            elif line.startswith(b"stopped"):
                self._stopped.set()

    async def _supervise(self) -> None:
        while True:
            proc = self._proc
            assert proc is not None
            code = await proc.wait()
            if self._reader is not None:
                await asyncio.gather(self._reader, return_exceptions=True)
            if self._stopping:
                return
            log.error("sink process exited with status %s: starting another in %g s (sinks resume "
                      "from their cursors, nothing is lost)", code, RESTART_DELAY_S)
            await asyncio.sleep(RESTART_DELAY_S)
            try:
                await self._spawn()
                self.restarts += 1
            except (SinkProcessError, OSError) as exc:
                log.error("sink process did not restart: %s", exc)

    def notify(self, last_seq: int | None = None, *, idle: bool = False) -> None:
        """Events up to `last_seq` are committed (`idle`: and nothing more is collecting). Never
        blocks (a pipe write, coalesced: the last call says whether the ingest is idle)."""
        if last_seq is not None:
            self._pending = max(self._pending or 0, last_seq)
        elif self._pending is None:
            self._pending = 0
        self._pending_idle = idle
        self._schedule_flush()

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush_notify)

    def _flush_notify(self) -> None:
        self._flush_scheduled = False
        proc = self._proc
        if proc is None or proc.stdin is None or proc.returncode is not None or self._pending is None:
            return
        try:
            proc.stdin.write(f"{'i' if self._pending_idle else 'n'} {self._pending}\n".encode())
        except (ConnectionError, RuntimeError):
            pass

    @property
    def up(self) -> bool:
        """The sink process is running (started and not exited)."""
        return self._proc is not None and self._proc.returncode is None

    def prunable_seq(self) -> int:
        """What every sink has delivered and persisted, as the sink process last reported it
        (SinkSet.prunable_seq; 0 before its first report). Persisted cursors never go back, so a
        value reported by an earlier sink process stays safe."""
        return self._prunable

    def stats(self) -> dict[str, dict[str, Any]]:
        if self._proc is None or self._proc.returncode is not None:
            return {name: dict(self._stats.get(name, {}), state="process down") for name in self.names}
        return self._stats

    async def stop(self, drain_timeout: float = 5.0) -> None:
        self._stopping = True
        proc = self._proc
        if proc is not None and proc.returncode is None and proc.stdin is not None:
            try:
                proc.stdin.write(f"stop {drain_timeout}\n".encode())
                await proc.stdin.drain()
                proc.stdin.close()
            except (ConnectionError, RuntimeError):
                pass
            try:
                await asyncio.wait_for(proc.wait(), drain_timeout + 10)
            except asyncio.TimeoutError:
                log.error("sink process did not stop in time: killed")
                proc.kill()
                await proc.wait()
        if self._supervisor is not None:
            await asyncio.gather(self._supervisor, return_exceptions=True)


# --- the child -----------------------------------------------------------------------------------

class _ParentPipe:
    """The child's stdout to the receiver. Once the receiver is gone (killed: the pipe is broken)
    writes are dropped, and stdout points at /dev/null so that the interpreter's last flush at
    exit does not raise either."""

    def __init__(self, stream: Any):
        self.stream = stream
        self.gone = False

    def send(self, text: str) -> None:
        if self.gone:
            return
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):  # BrokenPipeError: the receiver died
            self.gone = True
            import os

            try:
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, self.stream.fileno())
                os.close(devnull)
            except (OSError, ValueError):
                pass


async def _child(config: dict[str, Any]) -> int:
    from carecard.host.storage import event_log_for
    from carecard.host.receiver.runtime import tune_gc
    from carecard.host.sinks import ConfigError, SinkSet

    out = _ParentPipe(sys.stdout)
    data_dir = Path(config["data_dir"])
    try:
        eventlog = event_log_for(config.get("store", "sqlite"), data_dir)
        sinks = SinkSet.from_config(config.get("sinks"), data_dir, eventlog)
    except ConfigError as exc:
        out.send(f"error {exc}\n")
        return 2
    except Exception as exc:
        out.send(f"error sinks: {exc}\n")
        return 2
    await sinks.start()
    tune_gc(freeze=True)
    out.send(f"ready {json.dumps(sinks.names)}\n")

    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 16)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    done = asyncio.Event()
    drain_timeout = 5.0
    orphaned = False

    async def commands() -> None:
        nonlocal drain_timeout, orphaned
        while True:
            line = await reader.readline()
            if not line:  # the parent is gone: drain and stop
                orphaned = True
                break
            if line.startswith((b"n ", b"i ")):
                try:
                    sinks.notify(int(line[2:]), idle=line.startswith(b"i "))
                except ValueError:
                    sinks.notify()
            elif line.startswith(b"stop"):
                try:
                    drain_timeout = float(line.split()[1])
                except (IndexError, ValueError):
                    pass
                break
        done.set()

    async def report() -> None:
        last_cursors: Any = None
        last_sent = 0.0
        while True:
            await asyncio.sleep(STATS_POLL_S)
            stats = sinks.stats()
            prunable = sinks.prunable_seq()
            cursors = ({name: s.get("cursor") for name, s in stats.items()}, prunable)
            now = time.time()
            if cursors != last_cursors or now - last_sent >= STATS_HEARTBEAT_S:
                last_cursors, last_sent = cursors, now
                out.send("s " + json.dumps({**stats, "at": now, "prunable": prunable}, default=str) + "\n")

    tasks = [asyncio.create_task(commands()), asyncio.create_task(report())]
    await done.wait()
    await sinks.stop(drain_timeout=drain_timeout)
    tasks[1].cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    stats = sinks.stats()
    out.send("s " + json.dumps({**stats, "at": time.time(), "prunable": sinks.prunable_seq()},
                               default=str) + "\n" + "stopped\n")
    eventlog.close()
    if orphaned:
        log.warning("the receiver is gone (its pipe closed): sinks drained and stopped, sink process "
                    "exiting; delivered up to %s", {name: s.get("cursor") for name, s in stats.items()})
    return 0


def _first_line() -> bytes:
    """The start-up line, read from fd 0 without buffering (the rest of stdin is read by the
    event loop)."""
    import os

    data = bytearray()
    while not data.endswith(b"\n"):
        chunk = os.read(0, 1)
        if not chunk:
            break
        data += chunk
    return bytes(data)


def main() -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    line = _first_line()
    try:
        config = json.loads(line)
    except ValueError:
        sys.stdout.write("error bad start-up line\n")
        return 2
    from carecard.host.receiver.logs import setup_logging

    setup_logging(config.get("log_format", "text"), config.get("log_level", "info"),
                  path=config.get("log_file"))
    return asyncio.run(_child(config))


if __name__ == "__main__":
    sys.exit(main())
