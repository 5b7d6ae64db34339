"""`carecard decode`, `carecard encode`, `carecard protocol-doc`: protocol tools for integrators."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from carecard.host.commands.errors import CommandError, CommandFailed
from carecard.host.files import read_input_file
from carecard.host.keyfile import KeyFileError, load_keys, parse_key_hex
from carecard.protocol import (
    KeyRing,
    ProtocolError,
    StreamDeframer,
    decode_frame,
    encode_frame,
    encode_stream_frame,
)
from carecard.protocol.codec import checked_header
from carecard.protocol.framing import StreamFrame

DOC_PATH = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"
MAX_INPUT = 16 * 1024 * 1024


def register(subparsers: argparse._SubParsersAction) -> None:
    decode = subparsers.add_parser(
        "decode", help="decode a frame (hex argument, binary/hex file, or stdin) to JSON",
        description="Decode, authenticate and print a frame as JSON. Without a key only the clear "
                    "header is shown, after the checks that need no key (size, version, type).")
    _key_options(decode)
    decode.add_argument("frame", nargs="?", metavar="FRAME_HEX", help="the frame in hex")
    decode.add_argument("--file", type=Path, help="read the frame from a file (binary or hex text)")
    decode.add_argument("--stream", action="store_true",
                        help="input is a TCP/serial capture (COBS framing): decode every frame in it; "
                             "exit status 1 when a frame is rejected or none is found")
    decode.set_defaults(func=run_decode)

    encode = subparsers.add_parser(
        "encode", help="encode a JSON message to a frame (hex)",
        description="Encode a message object (as `carecard decode` prints it) to a frame.")
    _key_options(encode)
    encode.add_argument("message", nargs="?", metavar="JSON", help="the message as JSON")
    encode.add_argument("--file", type=Path, help="read the JSON message from a file")
    encode.add_argument("--stream", action="store_true", help="wrap the frame in stream framing")
    encode.add_argument("--output", "-o", type=Path, help="write the binary frame here instead of hex")
    encode.set_defaults(func=run_encode)

    doc = subparsers.add_parser("protocol-doc", help="regenerate docs/protocol.md from the spec")
    doc.add_argument("--check", action="store_true", help="only check that the file is current")
    doc.set_defaults(func=run_doc)


def _key_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--key", metavar="HEX", help="the device key (32 or 64 hex digits)")
    group.add_argument("--keys", metavar="FILE", type=Path, help="a key file (see host/keyfile.py)")


def _keys(args: argparse.Namespace) -> KeyRing | bytes | None:
    try:
        if args.key:
            return parse_key_hex(args.key, "--key")
    except KeyFileError as exc:
        raise CommandError(str(exc)) from None
    try:
        if args.keys:
            return KeyRing(load_keys(args.keys))
    except KeyFileError as exc:
        raise CommandFailed(str(exc)) from None
    return None


def _read_input(positional: str | None, path: Path | None, what: str) -> bytes:
    if positional is not None and path is not None:
        raise CommandError(f"give the {what} either as an argument or with --file, not both")
    if positional is not None:
        data = positional.encode()
    elif path is not None:
        data = read_input_file(path, CommandFailed, where=f"--file {path}", max_bytes=MAX_INPUT)
    else:
        try:
            data = sys.stdin.buffer.read(MAX_INPUT + 1)
        except OSError as exc:
            raise CommandFailed(f"cannot read standard input: {exc.strerror}") from None
        if len(data) > MAX_INPUT:
            raise CommandFailed(f"input larger than {MAX_INPUT} bytes")
    if not data.strip():
        source = f"--file {path}" if path is not None else "the argument" if positional is not None \
            else "standard input"
        raise CommandFailed(f"{source} is empty: give the {what} as an argument, with --file or on "
                            "standard input")
    return data


def _as_frame_bytes(data: bytes) -> bytes:
    """Hex text (whitespace allowed) becomes bytes; anything else is taken as binary."""
    text = b"".join(data.split())
    if text.lower().startswith(b"0x"):
        text = text[2:]
    try:
        return bytes.fromhex(text.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        if data.strip() and all(32 <= b < 127 or b in b"\r\n\t" for b in data):
            raise CommandFailed("input is text but not valid hexadecimal") from None
        return data


def _decode_one(frame: bytes, keys: KeyRing | bytes | None) -> dict[str, Any]:
    if keys is None:
        header = checked_header(frame)
        header["verified"] = False
        header["note"] = "payload is encrypted: give --key or --keys to verify and decode it"
        return header
    return decode_frame(frame, keys)


def run_decode(args: argparse.Namespace) -> int:
    keys = _keys(args)
    data = _read_input(args.frame, args.file, "frame")
    try:
        if not args.stream:
            print(json.dumps(_decode_one(_as_frame_bytes(data), keys), ensure_ascii=False))
            return 0
    except ProtocolError as exc:
        raise CommandFailed(f"frame rejected ({exc.reason}): {exc}") from None
    deframer = StreamDeframer()
    deframer.receive_data(data)
    deframer.receive_data(b"\x00")
    failures = 0
    skipped: dict[str, int] = {}
    while (event := deframer.next_event()) is not None:
        if isinstance(event, StreamFrame):
            try:
                print(json.dumps(_decode_one(event.frame, keys), ensure_ascii=False))
            except ProtocolError as exc:
                failures += 1
                print(f"carecard decode: frame rejected ({exc.reason}): {exc}", file=sys.stderr)
        else:
            skipped[event.reason] = skipped.get(event.reason, 0) + event.size
    garbage = ", ".join(f"{size} bytes {reason}" for reason, size in sorted(skipped.items()))
    if not deframer.frames:
        raise CommandFailed(f"no frame found in {len(data)} bytes of input"
                            + (f" (skipped: {garbage})" if garbage else "")
                            + ": is it a TCP/serial capture with the stream framing?")
    print(f"carecard decode: {deframer.frames} frames, {failures} rejected, "
          f"{deframer.garbage_bytes} garbage bytes" + (f" ({garbage})" if garbage else ""),
          file=sys.stderr)
    return 1 if failures else 0


def run_encode(args: argparse.Namespace) -> int:
    keys = _keys(args)
    if keys is None:
        raise CommandError("a key is needed to encode: --key HEX or --keys FILE")
    raw = _read_input(args.message, args.file, "message")
    try:
        message = json.loads(raw)
    except UnicodeDecodeError:
        raise CommandFailed("message is not valid JSON: not UTF-8 text") from None
    except ValueError as exc:
        raise CommandFailed(f"message is not valid JSON: {exc}") from None
    try:
        frame = encode_frame(message, keys)
    except ProtocolError as exc:
        raise CommandFailed(f"cannot encode ({exc.reason}): {exc}") from None
    if args.stream:
        frame = encode_stream_frame(frame)
    if args.output:
        try:
            args.output.write_bytes(frame)
        except OSError as exc:
            raise CommandFailed(f"cannot write {args.output}: {exc.strerror}") from None
    else:
        print(frame.hex())
    return 0


def run_doc(args: argparse.Namespace) -> int:
    from carecard.protocol.doc import render

    text = render()
    if args.check:
        current = DOC_PATH.read_text(encoding="utf-8") if DOC_PATH.exists() else ""
        if current != text:
            raise CommandError(f"{DOC_PATH} is out of date: run `carecard protocol-doc`", status=1)
        return 0
    try:
        DOC_PATH.parent.mkdir(parents=True, exist_ok=True)
        DOC_PATH.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise CommandFailed(f"cannot write {DOC_PATH}: {exc.strerror}") from None
    print(f"wrote {DOC_PATH}")
    return 0
