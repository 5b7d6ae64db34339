"""A supervised child process of the receiver that speaks one line per message over its stdin
and stdout: the sinks' process (sinkproc) and the alert engine's (carecard.host.engine.process)
are both run this way.

Both sides, whatever the child does:

    parent -> child   CONFIG_JSON      the first line: the child's configuration
                      ...              the child's own messages
                      stop SECONDS     finish (within SECONDS where that applies), exit 0
    child -> parent   ready PAYLOAD | error MESSAGE     the answer to the first line
                      ...              the child's own messages
                      stopped          the last line before a clean exit

The parent (`ChildProcess`) starts `python -m MODULE`, waits for `ready` (an `error` line or an
exit is a ChildProcessError with the child's one-line reason), hands every other line to
`on_line`, and when the child dies, logs it and starts another one after RESTART_DELAY_S: the
children keep their progress in the store (cursors, checkpoints), so a new one resumes where the
last one stopped.

The child (`child_main`) ignores SIGINT (a Ctrl-C in the terminal reaches the whole process
group; the parent decides), reads its configuration, sets up logging as the receiver's, and runs.
When its stdin closes (the parent died) `parent_lines` ends: the child stops by itself; its
writes to the dead parent's pipe are dropped (`ParentPipe`), never a traceback.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import threading
from typing import Any, Awaitable, Callable

log = logging.getLogger("carecard.receiver")

RESTART_DELAY_S = 1.0
START_TIMEOUT_S = 60.0


class ChildProcessError(RuntimeError):
    """A child process could not start (bad configuration, ...); one line."""


class ChildProcess:
    """The parent's handle on one supervised child process. Subclasses set `what` (for the log)
    and `module`, and handle the child's lines in `on_line`; `_on_ready` gets the ready payload."""

    what = "child process"
    module = ""

    def __init__(self, config: dict[str, Any]):
        self.config = config
        self._proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._stopping = False
        self.stopped = asyncio.Event()  # the child said `stopped`
        self.restarts = 0

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def up(self) -> bool:
        """The child is running (started and not exited)."""
        return self._proc is not None and self._proc.returncode is None

    async def start(self) -> None:
        await self._spawn()
        self._supervisor = asyncio.create_task(self._supervise(), name=f"{self.module}-supervisor")

    async def _spawn(self) -> None:
        self.stopped.clear()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", self.module,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, limit=1 << 20)
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write((json.dumps(self.config) + "\n").encode())
        try:
            line = (await asyncio.wait_for(proc.stdout.readline(), START_TIMEOUT_S)).decode().rstrip("\n")
        except asyncio.TimeoutError:
            line = f"error the {self.what} did not start within {START_TIMEOUT_S:g} s"
        if not line.startswith("ready "):
            if proc.returncode is None:
                proc.kill()
            await proc.wait()
            message = line[6:] if line.startswith("error ") else f"the {self.what} exited ({line or 'no output'})"
            raise ChildProcessError(message)
        self._on_ready(line[6:])
        self._proc = proc
        self._reader = asyncio.create_task(self._read(proc), name=f"{self.module}-reader")
        self._on_spawned()

    def _on_ready(self, payload: str) -> None:
        """The `ready` line's payload (after "ready ")."""

    def _on_spawned(self) -> None:
        """A child is up (the first one or a restarted one)."""

    def on_line(self, line: bytes) -> None:
        """One line from the child (with its newline), on the event loop."""

    async def _read(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        while True:
            line = await proc.stdout.readline()
            if not line:
                break
            if line.startswith(b"stopped"):
                self.stopped.set()
            else:
                self.on_line(line)

    async def _supervise(self) -> None:
        while True:
            proc = self._proc
            assert proc is not None
            code = await proc.wait()
            if self._reader is not None:
                await asyncio.gather(self._reader, return_exceptions=True)
            if self._stopping:
                return
            log.error("%s exited with status %s: starting another in %g s (it resumes from what it "
                      "saved, nothing is lost)", self.what, code, RESTART_DELAY_S)
            await asyncio.sleep(RESTART_DELAY_S)
            if self._stopping:
                return
            try:
                await self._spawn()
                self.restarts += 1
            except (ChildProcessError, OSError) as exc:
                log.error("%s did not restart: %s", self.what, exc)

    def send(self, text: str) -> bool:
        """Write a line to the child; never blocks. False when no child is up to take it."""
        proc = self._proc
        if proc is None or proc.stdin is None or proc.returncode is not None:
            return False
        try:
            proc.stdin.write(text.encode())
        except (ConnectionError, RuntimeError):
            return False
        return True

    async def stop(self, drain_timeout: float = 5.0) -> None:
        """Ask the child to stop (`stop SECONDS`), wait for it (killed if it takes more than
        `drain_timeout` + 10 s) and end the supervision."""
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
                log.error("%s did not stop in time: killed", self.what)
                proc.kill()
                await proc.wait()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)
        if self._supervisor is not None:
            await asyncio.gather(self._supervisor, return_exceptions=True)


# --- the child's side ----------------------------------------------------------------------------

class ParentPipe:
    """The child's stdout to the parent; safe to use from several threads. Once the parent is gone
    (killed: the pipe is broken) writes are dropped, and stdout points at /dev/null so that the
    interpreter's last flush at exit does not raise either."""

    def __init__(self, stream: Any):
        self.stream = stream
        self.gone = False
        self._lock = threading.Lock()

    def send(self, text: str) -> None:
        with self._lock:
            if self.gone:
                return
            try:
                self.stream.write(text)
                self.stream.flush()
            except (OSError, ValueError):  # BrokenPipeError: the parent died
                self.gone = True
                try:
                    devnull = os.open(os.devnull, os.O_WRONLY)
                    os.dup2(devnull, self.stream.fileno())
                    os.close(devnull)
                except (OSError, ValueError):
                    pass


def _first_line() -> bytes:
    """The start-up line, read from fd 0 without buffering (the rest of stdin is read by the
    event loop)."""
    data = bytearray()
    while not data.endswith(b"\n"):
        chunk = os.read(0, 1)
        if not chunk:
            break
        data += chunk
    return bytes(data)


async def parent_lines() -> asyncio.StreamReader:
    """The parent's lines after the first (stdin, read by the running event loop); at EOF the
    parent is gone."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 16)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


def child_main(run: Callable[[dict[str, Any]], Awaitable[int]]) -> int:
    """The child's entry point: the configuration line, logging as the parent's, then `run`."""
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
    return asyncio.run(run(config))
