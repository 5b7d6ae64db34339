"""Every `carecard` subcommand against missing, unreadable, read-only and wrong-type paths and
garbage files: one line on stderr naming the problem, the documented exit status, never a
traceback. Reads on a read-only data folder work.

The commands run as real subprocesses. As root, permission bits do not stop reads or writes, so
the cases about permissions run as the unprivileged user `nobody` (setpriv);
`test_the_sandbox_really_refuses` proves that the unreadable and read-only cases are real for
that user.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

from carecard.host.receiver.registry import make_imei
from carecard.protocol.doc import EXAMPLE_POSITION

from cli_helpers import DEVICE, NAME, fill_data_folder

NOBODY = 65534


def unprivileged(argv: list[str]) -> list[str]:
    """`argv` run as a user that file permissions apply to."""
    if os.geteuid() != 0:
        return argv
    setpriv = shutil.which("setpriv")
    assert setpriv, "running as root needs setpriv (util-linux) to drop to nobody"
    return [setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--", *argv]


# Paths whose cases are about permissions: those commands run unprivileged. The others run as the
# suite does (the venv's `micropython` script cannot be run by `nobody` when the venv's Python
# lives under root's home).
PROTECTED = ("secret.bin", "locked", "ro")
READ_ONLY_FILES: list[str] = []  # what ro/ holds when it is made read-only


def run(sandbox: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if k != "CARECARD_DATA"}
    environment.update(HOME=str(sandbox), **(env or {}))
    argv = [sys.executable, "-m", "carecard.host.cli", *args]
    if any(arg.split("/")[0] in PROTECTED for arg in args):
        argv = unprivileged(argv)
    return subprocess.run(argv, capture_output=True, text=True, cwd=sandbox, env=environment, timeout=60)


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Path]:
    """A folder the unprivileged user can enter, holding every kind of bad path:
    missing; afile (a regular file, garbage); adir (an empty folder); garbage.bin; empty;
    secret.bin and locked/ (unreadable); ro/ (a filled data folder, read-only); records.jsonl."""
    root = Path(tempfile.mkdtemp(prefix="carecard-paths-"))
    try:
        root.chmod(0o755)
        (root / "afile").write_bytes(os.urandom(300))
        (root / "adir").mkdir()
        (root / "garbage.bin").write_bytes(bytes(range(256)) * 3)
        (root / "empty").write_bytes(b"")
        (root / "secret.bin").write_text("$GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W*6A\r\n")
        (root / "secret.bin").chmod(0o000)
        locked = root / "locked"
        fill_data_folder(locked)
        locked.chmod(0o000)
        ro = root / "ro"
        fill_data_folder(ro)
        for path in ro.iterdir():
            path.chmod(0o444)
        ro.chmod(0o555)
        READ_ONLY_FILES[:] = sorted(path.name for path in ro.iterdir())
        (root / "one.nmea").write_text(
            "$GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W*6A\r\n")
        (root / "records.jsonl").write_text(
            '{"imei": "%d", "name": "Li", "key": "%s"}\n' % (make_imei(86123456000009), "00" * 16))
        (root / "message.json").write_text(json.dumps(EXAMPLE_POSITION))
        for path in root.iterdir():
            if path.name not in ("secret.bin", "locked", "ro"):
                path.chmod(0o755 if path.is_dir() else 0o644)
        yield root
    finally:
        for path in (root / "locked", root / "ro"):
            path.chmod(0o755)
        shutil.rmtree(root)


def test_the_sandbox_really_refuses(sandbox: Path) -> None:
    """The user the commands run as cannot read secret.bin or locked/, nor write in ro/."""
    probe = ("import sys, pathlib\n"
             "for attempt in (lambda: open('secret.bin').read(), lambda: list(pathlib.Path('locked').iterdir()),\n"
             "                lambda: open('ro/new', 'w'), lambda: open('ro/keys.json', 'a')):\n"
             "    try:\n"
             "        attempt()\n"
             "        sys.exit('allowed')\n"
             "    except PermissionError:\n"
             "        pass\n")
    result = subprocess.run(unprivileged([sys.executable, "-c", probe]), cwd=sandbox,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


IMEI = str(DEVICE)
# (arguments, exit status, text the one line must hold). Paths are relative to the sandbox.
CASES = [
    # data folders: missing, a file, unreadable; reads of a read-only folder work
    (["devices", "--data", "missing"], 1, "does not exist"),
    (["devices", "--data", "afile"], 1, "is not a folder"),
    (["devices", "--data", "locked"], 1, "cannot be read: permission denied"),
    (["devices", "--data", "adir"], 1, "no database in adir"),
    (["devices", "--config", "garbage.bin"], 1, "config file garbage.bin"),
    (["devices", "--config", "missing"], 1, "config file missing does not exist"),
    (["devices", "--config", "secret.bin"], 1, "config file secret.bin cannot be read"),
    (["devices", "--config", "adir"], 1, "config file adir is a directory"),
    (["devices", "add", IMEI, "--name", "x", "--generate-key", "--no-check-digit", "--data", "ro"], 1,
     "is read-only"),
    (["devices", "add", IMEI, "--name", "x", "--generate-key", "--no-check-digit", "--data", "ro/new"], 1,
     "cannot be created"),
    (["devices", "add", IMEI, "--name", "x", "--generate-key", "--no-check-digit", "--data", "afile"], 1,
     "is not a folder"),
    (["devices", "add", IMEI, "--name", "x", "--generate-key", "--no-check-digit", "--data", "locked"], 1,
     "permission denied"),
    (["devices", "import", "records.jsonl", "--data", "ro"], 1, "is read-only"),
    (["devices", "import", "missing", "--data", "adir"], 1, "does not exist"),
    (["devices", "import", "adir", "--data", "adir"], 1, "is a directory"),
    (["devices", "import", "secret.bin", "--data", "adir"], 1, "cannot be read"),
    (["devices", "import", "garbage.bin", "--data", "adir"], 1, "garbage.bin"),
    (["send", IMEI, "locate", "--data", "ro"], 1, "is read-only"),
    (["send", NAME, "locate", "--data", "locked"], 1, "permission denied"),
    (["send", IMEI, "locate", "--data", "missing"], 1, "does not exist"),
    (["send", IMEI, "locate", "--data", "afile"], 1, "is not a folder"),
    (["send", IMEI, "intervals", "--position", "0", "--status", "0", "--data", "ro"], 2, "out of range"),
    (["send", IMEI, "checkin", "--timeout", "0", "--data", "ro"], 2, "out of range"),
    (["track", IMEI, "--data", "missing"], 1, "does not exist"),
    (["track", IMEI, "--data", "afile"], 1, "is not a folder"),
    (["track", NAME, "--data", "locked"], 1, "permission denied"),
    (["track", IMEI, "--data", "adir"], 1, "events.sqlite does not exist"),
    (["track", IMEI, "--data", "ro", "-o", "adir"], 1, "cannot write adir"),
    (["track", IMEI, "--data", "ro", "-o", "ro/track.gpx"], 1, "cannot write ro/track.gpx"),
    (["events", "--data", "locked"], 1, "permission denied"),
    (["events", "--data", "afile"], 1, "is not a folder"),
    (["events", "--data", "missing"], 1, "does not exist"),
    (["check", "--data", "afile"], 1, "is not a folder"),
    (["check", "--data", "missing"], 1, "does not exist"),
    (["check", "--data", "locked"], 1, "permission denied"),
    (["check", "--data", "adir"], 1, "no database in adir"),
    (["receive", "--data", "afile"], 1, "is not a folder"),
    (["receive", "--data", "ro"], 1, "is read-only"),
    (["receive", "--data", "ro/new"], 1, "cannot be created"),
    (["receive", "--data", "locked"], 1, "permission denied"),
    (["receive", "--config", "garbage.bin"], 1, "config file garbage.bin"),
    (["receive", "--config", "secret.bin"], 1, "cannot be read"),
    (["receive", "--config", "missing"], 1, "does not exist"),
    (["receive", "--config", "adir"], 1, "is a directory"),
    (["receive", "--serial", "/dev/x:fast", "--data", "adir"], 2, "baud rate 'fast' is not a number"),
    (["demo", "--data", "afile"], 1, "is not a folder"),
    (["demo", "--data", "ro/new"], 1, "cannot be created"),
    (["demo", "--data", "locked/new"], 1, "cannot be reached: Permission denied"),
    (["demo", "--data", "ro"], 1, "not a demo folder"),
    (["decode", "--file", "missing"], 1, "does not exist"),
    (["decode", "--file", "adir"], 1, "is a directory"),
    (["decode", "--file", "secret.bin"], 1, "cannot be read"),
    (["decode", "--file", "garbage.bin"], 1, "frame rejected"),
    (["decode", "--file", "empty"], 1, "empty"),
    (["decode", "--stream", "--file", "garbage.bin"], 1, "no frame found"),
    (["decode", "--keys", "garbage.bin", "00"], 1, "key file garbage.bin: binary data, not a key file"),
    (["decode", "--keys", "adir", "00"], 1, "is a directory"),
    (["decode", "--keys", "secret.bin", "00"], 1, "cannot be read"),
    (["decode", "--keys", "missing", "00"], 1, "does not exist"),
    (["encode", "--key", "00" * 16, "--file", "garbage.bin"], 1, "not valid JSON"),
    (["encode", "--key", "00" * 16, "--file", "secret.bin"], 1, "cannot be read"),
    (["encode", "--key", "00" * 16, "--file", "adir"], 1, "is a directory"),
    (["encode", "--key", "00" * 16, "--file", "message.json", "-o", "ro/frame.bin"], 1,
     "cannot write ro/frame.bin"),
    (["nmea", "missing"], 1, "no such file"),
    (["nmea", "adir"], 1, "is a directory"),
    (["nmea", "secret.bin"], 1, "cannot be read"),
    (["nmea", "--chunk", "100000000", "one.nmea"], 2, "--chunk"),
    (["bench"], 2, "at, day, engine, nmea, protocol, receive"),
    (["bench", "nope"], 2, "at, day, engine, nmea, protocol, receive"),
    (["bench", "nmea", "--capture", "adir"], 1, "adir"),
    (["replay", "missing"], 1, "cannot read the event log"),
    (["replay", "adir"], 1, "Is a directory"),
    (["replay", "secret.bin"], 1, "cannot read the event log"),
    (["replay", "garbage.bin"], 1, "no event found in garbage.bin"),
    (["replay", "empty"], 1, "no event found in empty"),
    (["replay", "empty", "--settings", "garbage.bin"], 1, "not valid TOML"),
    (["replay", "empty", "--settings", "missing"], 1, "cannot read the settings file"),
    (["replay", "--evaluate", "afile"], 1, "not a folder"),
    (["replay", "--evaluate", "adir"], 1, "python tests/engine_corpus.py adir"),
    (["replay", "empty", "--until", "soon"], 2, "not an ISO 8601 time"),
    (["nosuchcommand"], 2, "invalid choice"),
]


@pytest.mark.parametrize("args, status, needle", CASES, ids=[" ".join(c[0]) for c in CASES])
def test_bad_paths_and_files_give_one_line(sandbox: Path, args: list[str], status: int, needle: str) -> None:
    result = run(sandbox, *args)
    lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.stderr, result.stderr
    assert len(lines) == 1 and lines[0].startswith("carecard"), result.stderr
    assert needle in lines[0], lines[0]
    assert result.returncode == status, (result.returncode, result.stderr)


@pytest.mark.parametrize("args, shows", [
    (["devices", "--data", "ro"], NAME),
    (["devices", "--data", "ro", "--json"], IMEI),
    (["events", "--data", "ro"], IMEI),
    (["events", NAME, "--data", "ro"], IMEI),
    (["track", NAME, "--data", "ro", "--format", "csv"], IMEI),
    (["check", "--data", "ro"], "carecard.sqlite: ok\nevents.sqlite: ok"),
])
def test_reads_work_on_a_read_only_data_folder(sandbox: Path, args: list[str], shows: str) -> None:
    result = run(sandbox, *args)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert shows in result.stdout
    assert sorted(p.name for p in (sandbox / "ro").iterdir()) == READ_ONLY_FILES  # nothing new
