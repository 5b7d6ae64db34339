"""The downlink command queue.

A command is queued by `carecard send` (`queue_command`), goes out in the ack of the card's next
uplink, and is repeated in every later ack until the card confirms it with a `command_result`
uplink. Its states and transitions are downlink_lifecycle's (docs/receiver.md); acks are encoded
by carecard.protocol.ack.

Commands are the ones of protocol/spec.py COMMANDS; their fields are checked by the protocol
codec itself (an ack holding the command is encoded at queue time), so a command that would not
encode, or would not fit a frame alone, is refused when it is queued, not when the card calls.
`set_time` carries the time the ack is made, not the time it was queued.
"""

from __future__ import annotations

import json
import time
from typing import Any, Mapping

from carecard.host import downlink_lifecycle as lifecycle
from carecard.host.downlink_lifecycle import CommandRecord, CommandStateError
from carecard.host.storage import CommandQueue, UnknownDeviceError
from carecard.protocol import FrameKeys, InvalidMessage, encode_frame, spec

COMMAND_NAMES = tuple(name for _code, name, _fields in spec.COMMANDS)
COMMAND_FIELDS = {name: fields for _code, name, fields in spec.COMMANDS}
# Fields the receiver fills in when it makes the ack, not when the command is queued.
FILLED_AT_SEND = {"set_time": ("unix",)}

_VALIDATION_KEY = FrameKeys(bytes(16))
_VALIDATION_DEVICE = 1


class CommandError(ValueError):
    """A command cannot be queued (unknown device, bad value, too large); the message says why."""


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


def queue_command(queue: CommandQueue, device: int, cmd: str, args: Mapping[str, Any],
                  *, now: float | None = None) -> CommandRecord:
    """Queue a command for a registered device (works while a receiver runs: it reloads)."""
    stamp = time.time() if now is None else now
    # checked before taking the write lock; prompt_id defaults to the seq, unknown until then
    check_command(cmd, {"prompt_id": 1, **args} if cmd == "checkin_prompt" else args)

    def make_args(seq: int) -> dict[str, Any]:
        values = dict(args)
        if cmd == "checkin_prompt" and "prompt_id" not in values:
            values["prompt_id"] = seq
        return check_command(cmd, values, seq)

    try:
        return queue.queue_command(device, cmd, make_args, stamp)
    except UnknownDeviceError as exc:
        raise CommandError(str(exc)) from None


def cancel_command(queue: CommandQueue, device: int, seq: int, *, now: float | None = None) -> CommandRecord:
    """Cancel the device's latest command with this seq, if it is still open."""
    try:
        return queue.cancel_command(device, seq, time.time() if now is None else now)
    except (LookupError, CommandStateError) as exc:
        raise CommandError(str(exc).strip("'\"")) from None


def describe(command: CommandRecord) -> str:
    """One line: `seq 3 set_intervals position_s=300 ... sent x2`."""
    args = " ".join(f"{k}={json.dumps(v, ensure_ascii=False) if not isinstance(v, (int, float)) else v}"
                    for k, v in command.args.items())
    state = command.state
    if command.state == lifecycle.SENT:
        state = f"sent x{command.attempts}"
    elif command.result is None and command.detail:
        state = f"{command.state} ({command.detail})"
    return f"#{command.seq} {command.cmd}{' ' + args if args else ''}: {state}"
