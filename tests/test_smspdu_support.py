"""Helpers for the SMS PDU tests (no tests here): the MicroPython side of the batch, vector parsing."""

from __future__ import annotations

import json
import re
from datetime import datetime

# One request per line: a JSON list [op, args...]; one JSON answer per line.
# op "decode": [hex, smsc?] -> {"ok": fields} or {"error": reason}; anything but PduError is
# reported as {"crash": "Type: message"} so a test can fail on it.
# op "submit"/"deliver": keyword arguments -> {"ok": [[tpdu_len, hex], ...]} or {"error": ...}.
BATCH_SCRIPT = r"""
import sys, json
import smspdu

def fields(m):
    return {
        "kind": m.kind, "smsc": m.smsc, "smsc_toa": m.smsc_toa, "number": m.number,
        "number_toa": m.number_toa, "number_type": m.number_type, "mr": m.mr, "pid": m.pid,
        "dcs": m.dcs, "encoding": m.encoding, "msg_class": m.msg_class, "ts": m.ts, "tz": m.tz,
        "validity": m.validity, "validity_ts": m.validity_ts, "validity_tz": m.validity_tz,
        "discharge_ts": m.discharge_ts, "discharge_tz": m.discharge_tz, "status": m.status,
        "status_report": m.status_report, "reject_duplicates": m.reject_duplicates,
        "reply_path": m.reply_path, "more": m.more, "udl": m.udl,
        "udh": [[iei, list(data)] for iei, data in m.udh],
        "concat": list(m.concat) if m.concat else None, "text": m.text,
        "data": None if m.data is None else list(m.data), "truncated": m.truncated,
        "warnings": m.warnings,
    }

def handle(req):
    op = req[0]
    try:
        if op == "decode":
            return {"ok": fields(smspdu.decode(req[1], req[2] if len(req) > 2 else True))}
        if op == "submit":
            kw = req[1]
            if "validity" in kw and isinstance(kw["validity"], list):
                kw["validity"] = tuple(kw["validity"])
            parts = smspdu.encode_submit(**kw)
            return {"ok": [[n, h.decode()] for n, h in parts]}
        if op == "deliver":
            parts = smspdu.encode_deliver(**req[1])
            return {"ok": [[n, h.decode()] for n, h in parts]}
        if op == "codec":
            kind, arg = req[1], req[2]
            if kind == "gsm7_units":
                u = smspdu.gsm7_units(arg)
                return {"ok": None if u is None else bytes(u).hex()}
            if kind == "gsm7_pack":
                u = smspdu.gsm7_units(arg)
                return {"ok": bytes(smspdu.pack_septets(u)).hex()}
            if kind == "gsm7_decode":
                b = bytes.fromhex(arg)
                return {"ok": smspdu.decode_gsm7(b, req[3])}
            if kind == "ucs2_units":
                return {"ok": bytes(smspdu.ucs2_units(arg)).hex()}
            if kind == "ucs2_decode":
                return {"ok": smspdu.decode_ucs2(bytes.fromhex(arg))}
        return {"crash": "bad request"}
    except smspdu.PduError as e:
        return {"error": e.reason, "offset": e.offset, "message": str(e)}
    except Exception as e:
        return {"crash": "%s: %s" % (type(e).__name__, e)}

while True:
    line = sys.stdin.readline()
    if not line:
        break
    try:
        req = json.loads(line)
    except Exception as e:
        print(json.dumps({"crash": "bad json %s" % e}))
        continue
    print(json.dumps(handle(req)))
"""


class Card:
    """CPython handle on the MicroPython batch running smspdu."""

    def __init__(self, batch):
        self.batch = batch

    def many(self, requests: list[list]) -> list[dict]:
        answers = self.batch.call_many([json.dumps(r) for r in requests])
        return [json.loads(a) for a in answers]

    def one(self, request: list) -> dict:
        return self.many([request])[0]


def iso_to_unix_tz(text: str) -> tuple[int, int | None, datetime]:
    """(unix seconds, tz in quarter hours or None when naive, local datetime) of an ISO time
    as the vectors write it (with a parenthetical remark possibly following)."""
    clean = re.split(r"\s*\(", text)[0].strip()
    when = datetime.fromisoformat(clean)
    if when.tzinfo is None:
        return 0, None, when
    offset = when.utcoffset()
    assert offset is not None
    return int(when.timestamp()), int(offset.total_seconds()) // 900, when.replace(tzinfo=None)


def iso_duration_seconds(text: str) -> int:
    """Seconds of 'P3D', 'P52W (...)' style durations used by the vectors."""
    m = re.match(r"P(\d+)([DW])", text)
    assert m, text
    return int(m.group(1)) * (86400 if m.group(2) == "D" else 7 * 86400)
