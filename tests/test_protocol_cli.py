"""`carecard decode` / `encode` / `protocol-doc` as an integrator uses them: real processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from carecard.host.cli import main
from carecard.host.keyfile import save_keys
from carecard.protocol import encode_frame, encode_stream_frame
from carecard.protocol.doc import EXAMPLE_KEY, EXAMPLE_POSITION, render

CARECARD = [sys.executable, "-m", "carecard.host.cli"]
KEY_HEX = EXAMPLE_KEY.hex()


def carecard(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess:
    return subprocess.run(CARECARD + list(args), input=stdin, capture_output=True, timeout=60)


def test_decode_hex_argument_prints_the_message():
    frame = encode_frame(EXAMPLE_POSITION, EXAMPLE_KEY)
    result = carecard("decode", "--key", KEY_HEX, frame.hex())
    assert result.returncode == 0, result.stderr
    decoded = json.loads(result.stdout)
    assert decoded["lat_e7"] == EXAMPLE_POSITION["lat_e7"] and decoded["type"] == "position"


def test_decode_binary_file_stdin_and_key_file(tmp_path: Path):
    frame = encode_frame(EXAMPLE_POSITION, EXAMPLE_KEY)
    (tmp_path / "f.bin").write_bytes(frame)
    keys = tmp_path / "keys.json"
    save_keys(keys, {EXAMPLE_POSITION["device"]: EXAMPLE_KEY})
    assert oct(keys.stat().st_mode & 0o777) == "0o600"
    by_file = carecard("decode", "--keys", str(keys), "--file", str(tmp_path / "f.bin"))
    by_stdin = carecard("decode", "--key", KEY_HEX, stdin=frame)
    assert json.loads(by_file.stdout) == json.loads(by_stdin.stdout)


def test_decode_without_key_shows_the_header_only():
    frame = encode_frame(EXAMPLE_POSITION, EXAMPLE_KEY)
    out = json.loads(carecard("decode", frame.hex()).stdout)
    assert out["device"] == EXAMPLE_POSITION["device"] and out["verified"] is False


def test_decode_stream_capture_reports_garbage_and_frames():
    frame = encode_frame(EXAMPLE_POSITION, EXAMPLE_KEY)
    capture = b"junk" + encode_stream_frame(frame) + os.urandom(50).replace(b"\0", b"") + encode_stream_frame(frame)
    result = carecard("decode", "--key", KEY_HEX, "--stream", stdin=capture)
    assert result.returncode == 0
    assert len(result.stdout.splitlines()) == 2
    assert b"2 frames" in result.stderr


def test_encode_then_decode_round_trip():
    message = json.dumps(EXAMPLE_POSITION)
    encoded = carecard("encode", "--key", KEY_HEX, message)
    assert encoded.returncode == 0, encoded.stderr
    assert bytes.fromhex(encoded.stdout.decode().strip()) == encode_frame(EXAMPLE_POSITION, EXAMPLE_KEY)


def test_bad_inputs_give_one_line_and_no_traceback(tmp_path: Path):
    cases = [
        ("decode", "--key", "zz", "00"),
        ("decode", "--key", KEY_HEX, "not hex at all"),
        ("decode", "--key", KEY_HEX, "0102"),
        ("decode", "--keys", str(tmp_path / "missing.json"), "00"),
        ("decode", "--key", KEY_HEX, "--file", str(tmp_path / "missing.bin")),
        ("encode", "--key", KEY_HEX, "{not json"),
        ("encode", "--key", KEY_HEX, '{"type": "position"}'),
        ("encode", "{}"),
    ]
    for args in cases:
        result = carecard(*args)
        assert result.returncode != 0, args
        assert b"Traceback" not in result.stderr, (args, result.stderr)
        assert len(result.stderr.decode().strip().splitlines()) == 1, (args, result.stderr)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=700))
def test_decode_random_bytes_never_shows_a_traceback(data):
    import contextlib
    import io

    stdin, out, err = sys.stdin, io.StringIO(), io.StringIO()
    sys.stdin = io.TextIOWrapper(io.BytesIO(data))
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            status = main(["decode", "--key", KEY_HEX])
    finally:
        sys.stdin = stdin
    assert status in (1, 2)  # random bytes are never a valid frame
    assert "Traceback" not in err.getvalue()
    assert err.getvalue().startswith("carecard decode: ") and err.getvalue().count("\n") == 1


def test_protocol_doc_is_current():
    doc = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"
    assert doc.read_text(encoding="utf-8") == render(), "run `carecard protocol-doc`"
    assert "| 19 | 4 | `lat_e7` | i32 |" in doc.read_text(encoding="utf-8")


def test_unreadable_inputs_are_one_line_that_names_the_file(tmp_path: Path, capsys) -> None:
    """A missing or unreadable --file or key file: exit 1, one line naming it and what to do."""
    bad_keys = tmp_path / "keys.json"
    bad_keys.write_bytes(b"\xff\xfe not json")
    cases = [
        (["decode", "--key", KEY_HEX, "--file", str(tmp_path / "nope.bin")], "--file", "does not exist"),
        (["decode", "--key", KEY_HEX, "--file", str(tmp_path)], "--file", "is a directory"),
        (["decode", "--keys", str(tmp_path / "nope.json"), "00"], "key file", "carecard devices add"),
        (["decode", "--keys", str(bad_keys), "00"], "key file", "binary data, not a key file"),
    ]
    for argv, what, why in cases:
        assert main(argv) == 1, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and what in err and why in err and "Traceback" not in err, err
