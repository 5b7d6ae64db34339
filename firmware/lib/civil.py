# Calendar arithmetic for the card: proleptic Gregorian dates <-> days since 1970-01-01 (H.
# Hinnant's algorithms), in integers. Used instead of time.mktime/gmtime because MicroPython's
# epoch differs per port (1970 on unix, 2000 on bare-metal ports) and the card reports Unix time.
# Shared by the NMEA parser, the modem's +CCLK and the SMS time stamps: one definition. Kept to
# what all three need: each function here costs card heap in the NMEA parser's 16 KB budget.

_MONTH_DAYS = b"\x1f\x1c\x1f\x1e\x1f\x1e\x1f\x1f\x1e\x1f\x1e\x1f"


def days_from_civil(y, m, d):
    """Days since 1970-01-01 of year y, month m (1-12), day d (1-31)."""
    if m <= 2:
        y -= 1
        mp = m + 9
    else:
        mp = m - 3
    era = y // 400
    yoe = y - era * 400
    doe = yoe * 365 + yoe // 4 - yoe // 100 + (153 * mp + 2) // 5 + d - 1
    return era * 146097 + doe - 719468


def valid_date(y, m, d):
    """True when (y, m, d) is a real date (leap years included)."""
    if m < 1 or m > 12 or d < 1:
        return False
    if m == 2 and d == 29:
        return y % 4 == 0 and (y % 100 != 0 or y % 400 == 0)
    return d <= _MONTH_DAYS[m - 1]
