"""Structured logs for the receiver: logfmt (`key=value`) or JSON lines, one record per line.

    time=2025-11-29T08:00:00.123Z level=info logger=carecard.receiver msg="listening on UDP ..."
    {"time": "2025-11-29T08:00:00.123Z", "level": "info", "logger": "carecard.receiver", "msg": "..."}

Extra fields: `log.info("...", extra={"fields": {"device": 8612..., "reason": "bad_tag"}})`.
Nothing logged ever contains key material (keys never reach a log call).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, TextIO


def _timestamp(record: logging.LogRecord) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    out: dict[str, Any] = {"time": _timestamp(record), "level": record.levelname.lower(),
                           "logger": record.name, "msg": record.getMessage()}
    extra = getattr(record, "fields", None)
    if isinstance(extra, dict):
        for key, value in extra.items():
            if key not in out:
                out[key] = value
    if record.exc_info:
        out["exc"] = logging.Formatter().formatException(record.exc_info)
    return out


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(_fields(record), ensure_ascii=False, default=str)


def _logfmt_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    if text and not any(ch in text for ch in ' "=\\\n\t') and text.isprintable():
        return text
    return json.dumps(text, ensure_ascii=False)


class LogfmtFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return " ".join(f"{key}={_logfmt_value(value)}" for key, value in _fields(record).items())


def setup_logging(fmt: str = "text", level: str = "info", stream: TextIO | None = None,
                  path: str | None = None) -> None:
    """Configure the root logger for `carecard receive` (entry points only): to `path` (appended)
    when given, else to `stream` (default stderr)."""
    handler: logging.Handler = (logging.FileHandler(path, encoding="utf-8") if path
                                else logging.StreamHandler(stream or sys.stderr))
    handler.setFormatter(JsonFormatter() if fmt == "json" else LogfmtFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
