"""The card's calendar arithmetic, on MicroPython, against CPython's datetime."""

from __future__ import annotations

import datetime
import json


def test_days_and_valid_dates_match_datetime(mpy):
    cases = [(y, m, d) for y in (1899, 1900, 1970, 1999, 2000, 2024, 2038, 2100, 2400)
             for m in range(1, 13) for d in (1, 28, 29, 30, 31)]
    code = ("import civil, json\ncases = json.loads(%r)\n"
            "print(json.dumps([[civil.valid_date(*c), civil.days_from_civil(*c)] for c in cases]))"
            % json.dumps(cases))
    answers = json.loads(mpy.run(code))
    epoch = datetime.date(1970, 1, 1)
    for (y, m, d), (valid, days) in zip(cases, answers):
        try:
            real = datetime.date(y, m, d)
        except ValueError:
            assert valid is False, (y, m, d)
            continue
        assert valid is True, (y, m, d)
        assert days == (real - epoch).days, (y, m, d)
    assert sum(1 for v, _ in answers if not v) > 0


def test_modem_rejects_a_date_that_does_not_exist(mpy):
    out = mpy.run("import modem\ntry:\n    modem.parse_cclk('\"25/02/30,10:00:00+32\"')\n"
                  "except ValueError as e:\n    print('rejected', e)\n")
    assert out.startswith("rejected") and "does not exist" in out
