"""Code generated at import (events' builders and pickers, the codec's message builders) is
registered with linecache: a traceback through it shows the generated line, as for a file."""

from __future__ import annotations

import traceback
from typing import Any, Callable

from carecard.host import events
from carecard.protocol import MESSAGE_TYPES


def _failing_frame_line(call: Callable[[], Any]) -> str:
    """The source line a traceback shows under the innermost generated frame."""
    try:
        call()
    except Exception:
        lines = traceback.format_exc().splitlines()
    else:
        raise AssertionError("the call did not fail")
    generated = [i for i, line in enumerate(lines) if 'File "<carecard' in line]
    assert generated, "the traceback does not pass through generated code"
    return lines[generated[-1] + 1].strip()


def test_tracebacks_through_generated_event_code_show_its_source() -> None:
    picker = events.data_picker("position", ("lat",))
    for call in (lambda: events.DATA_BUILDERS["position"]({}, True),
                 lambda: events.JSON_BUILDERS["status"]({}, "", True), lambda: picker({})):
        line = _failing_frame_line(call)
        assert " = m[" in line or "m.get(" in line, line


def test_tracebacks_through_generated_codec_code_show_its_source() -> None:
    build = MESSAGE_TYPES["status"].build_message
    assert build is not None
    line = _failing_frame_line(lambda: build(b"", 1, 1, 0, True))
    assert "_unpack(" in line
