"""Downlink commands and acks.

A command is queued by `carecard send` (`queue_command`), goes out in the ack of the card's next
uplink, and is repeated in every later ack until the card confirms it with a `command_result`
uplink. Its state (docs/receiver.md):

    queued -> sent (attempts n) -> done | rejected | unsupported | bad_value   (the card's answer)
                                -> failed    (max_attempts acks carried it, no answer)
                                -> expired   (older than expire_after_s, no answer)
    queued | sent -> cancelled                (carecard send --cancel SEQ)

Commands are the ones of protocol/spec.py COMMANDS; their fields are checked by the protocol
codec itself (an ack holding the command is encoded at queue time), so a command that would not
encode, or would not fit a frame alone, is refused when it is queued, not when the card calls.
`set_time` carries the time the ack is made, not the time it was queued.
"""

from __future__ import annotations

import json
import struct
import time
from typing import Any, Mapping

from carecard.protocol import FrameKeys, InvalidMessage, KeyRing, encode_frame, spec
from carecard.protocol.codec import HEADER_STRUCT, MESSAGE_TYPES, _STRUCT_CODES
from carecard.host.receiver.store import CommandRecord, SQLiteStore, StoreError

COMMAND_NAMES = tuple(name for _code, name, _fields in spec.COMMANDS)
COMMAND_FIELDS = {name: fields for _code, name, fields in spec.COMMANDS}
# Fields the receiver fills in when it makes the ack, not when the command is queued.
FILLED_AT_SEND = {"set_time": ("unix",)}

_ACK = MESSAGE_TYPES["ack"]
_VALIDATION_KEY = FrameKeys(bytes(16))
_VALIDATION_DEVICE = 1


class CommandError(ValueError):
    """A command cannot be queued (unknown device, bad value, too large); the message says why."""


def _empty_ack_packer() -> struct.Struct | None:
    """The ack payload with no commands as one struct, derived from the spec's ack fields and
    checked against the construct codec (the one definition stays the definition)."""
    codes = []
    for name, kind, _doc in _ACK.fields:
        if kind in _STRUCT_CODES:
            codes.append(_STRUCT_CODES[kind])
        elif kind == "commands":
            codes.append("B")  # the count, 0
        else:
            return None
    packer = struct.Struct(">" + "".join(codes))
    sample = {"acked": 0x01020304, "commands": []}
    if packer.pack(*[sample[name] if kind != "commands" else 0 for name, kind, _d in _ACK.fields]) \
            != _ACK.payload.build(sample):
        return None
    return packer


_EMPTY_ACK = _empty_ack_packer()
# Bytes of an ack without commands: header, acked counter, command count, tag.
EMPTY_ACK_SIZE = spec.MIN_FRAME + len(_ACK.payload.build({"acked": 0, "commands": []}))
_pack_header = HEADER_STRUCT.pack
_ACK_CODE = _ACK.code
_DOWN = spec.DIR_DOWNLINK
_VERSION = spec.VERSION


class AckEncoder:
    """Encodes acks with the receiver's keys. Acks without commands take a fast path (one header
    pack, AES-CTR, HMAC); acks with commands go through the full codec (validated)."""

    def __init__(self, keyring: KeyRing):
        self.keyring = keyring
        self._keys_get = keyring.get

    def encode(self, device: int, counter: int, now: int, acked: int,
               commands: list[dict[str, Any]] | None = None) -> bytes:
        if not commands and _EMPTY_ACK is not None:
            keys = self._keys_get(device)
            if keys is None:
                raise InvalidMessage(f"no key for device {device}")
            body = _pack_header(_VERSION, _ACK_CODE, 0, device, counter, now) + \
                keys.crypt(device, counter, _DOWN, _EMPTY_ACK.pack(acked, 0))
            return body + keys.tag(body)
        return encode_frame({"type": "ack", "device": device, "counter": counter, "time": now,
                             "acked": acked, "commands": commands or []}, self.keyring)


def wire_command(command: CommandRecord, now: int) -> dict[str, Any]:
    """The command as the codec wants it in an ack."""
    wire = {"seq": command.seq, "cmd": command.cmd}
    wire.update(command.args)
    for name in FILLED_AT_SEND.get(command.cmd, ()):
        wire[name] = now
    return wire


def check_command(cmd: str, args: Mapping[str, Any], seq: int = 1) -> dict[str, Any]:
    """Check a command against the spec by encoding an ack that carries only it. Returns the
    stored arguments (without the fields filled at send time)."""
    if cmd not in COMMAND_FIELDS:
        raise CommandError(f"unknown command {cmd!r}: one of {', '.join(COMMAND_NAMES)}")
    fill = FILLED_AT_SEND.get(cmd, ())
    names = {name for name, _kind, _doc in COMMAND_FIELDS[cmd]}
    extra = sorted(set(args) - names)
    if extra:
        raise CommandError(f"{cmd}: unexpected field {extra[0]!r} (fields: {', '.join(sorted(names)) or 'none'})")
    stored = {k: v for k, v in args.items() if k not in fill}
    wire = {"seq": seq, "cmd": cmd, **stored, **{name: int(time.time()) for name in fill}}
    try:
        encode_frame({"type": "ack", "device": _VALIDATION_DEVICE, "counter": 0, "time": 0,
                      "acked": 0, "commands": [wire]}, _VALIDATION_KEY)
    except InvalidMessage as exc:
        text = str(exc)
        if "ack.commands[0]." in text:
            text = text.split("ack.commands[0].", 1)[1]
        elif text.startswith("ack: "):
            text = text[5:]
        raise CommandError(f"{cmd}: {text}") from None
    return stored


def queue_command(store: SQLiteStore, device: int, cmd: str, args: Mapping[str, Any],
                  *, now: float | None = None) -> CommandRecord:
    """Queue a command for a registered device (works while a receiver runs: it reloads)."""
    stamp = time.time() if now is None else now
    # checked before taking the write lock; prompt_id defaults to the seq, unknown until then
    check_command(cmd, {"prompt_id": 1, **args} if cmd == "checkin_prompt" else args)
    with store.transaction() as conn:
        row = conn.execute("SELECT next_command_seq FROM devices WHERE device = ?", (device,)).fetchone()
        if row is None:
            raise CommandError(f"device {device} is not registered: add it with `carecard devices add`")
        counter = row[0]
        seq = (counter - 1) % 0xFFFF + 1  # 1..65535, wrapping
        values = dict(args)
        if cmd == "checkin_prompt" and "prompt_id" not in values:
            values["prompt_id"] = seq
        stored = check_command(cmd, values, seq)
        conn.execute("UPDATE devices SET next_command_seq = ?, updated_at = ? WHERE device = ?",
                     (counter + 1, stamp, device))
        cursor = conn.execute(
            "INSERT INTO commands (device, seq, cmd, args, state, attempts, created_at, updated_at) "
            "VALUES (?, ?, ?, ?, 'queued', 0, ?, ?)",
            (device, seq, cmd, json.dumps(stored, ensure_ascii=False), stamp, stamp))
        command_id = cursor.lastrowid
    return CommandRecord(command_id, device, seq, cmd, stored, "queued", 0, stamp, stamp)


def cancel_command(store: SQLiteStore, device: int, seq: int, *, now: float | None = None) -> CommandRecord:
    stamp = time.time() if now is None else now
    with store.transaction() as conn:
        row = conn.execute(
            "SELECT id, state FROM commands WHERE device = ? AND seq = ? ORDER BY id DESC LIMIT 1",
            (device, seq)).fetchone()
        if row is None:
            raise CommandError(f"device {device} has no command with seq {seq}")
        if row[1] not in ("queued", "sent"):
            raise CommandError(f"command {seq} of device {device} is already {row[1]}")
        conn.execute("UPDATE commands SET state = 'cancelled', updated_at = ?, detail = ? WHERE id = ?",
                     (stamp, "cancelled by the operator", row[0]))
    from carecard.host.receiver.store import list_commands

    for command in list_commands(store.connection, device):
        if command.id == row[0]:
            return command
    raise StoreError(f"command {seq} of device {device} vanished")  # pragma: no cover


def describe(command: CommandRecord) -> str:
    """One line: `seq 3 set_intervals position_s=300 ... sent x2`."""
    args = " ".join(f"{k}={json.dumps(v, ensure_ascii=False) if not isinstance(v, (int, float)) else v}"
                    for k, v in command.args.items())
    state = command.state
    if command.state == "sent":
        state = f"sent x{command.attempts}"
    elif command.result is None and command.detail:
        state = f"{command.state} ({command.detail})"
    return f"#{command.seq} {command.cmd}{' ' + args if args else ''}: {state}"
