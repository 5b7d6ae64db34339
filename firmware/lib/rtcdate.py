# Unix seconds <-> the RTC's date-time tuple (machine.RTC().datetime() order: year, month, day,
# weekday 0 = Monday, hours, minutes, seconds, subseconds), in integers: MicroPython's epoch
# differs per port (civil.py), the card reports Unix time. Used by the board layer's RTC.
from civil import days_from_civil, valid_date


def unix_from_rtc(dt):
    """Unix seconds of an RTC tuple, or None when the RTC holds no valid date (never set: the
    ESP32 RTC starts at 2000-01-01 after power-on, which the caller tells apart by its own flag)."""
    y, mo, d = dt[0], dt[1], dt[2]
    if not valid_date(y, mo, d):
        return None
    h, mi, s = dt[4], dt[5], dt[6]
    if not (0 <= h < 24 and 0 <= mi < 60 and 0 <= s < 60):
        return None
    return days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + s


def rtc_from_unix(unix_s):
    """The RTC tuple of Unix seconds (UTC), subseconds 0."""
    days, rem = divmod(unix_s, 86400)
    # inverse of days_from_civil (H. Hinnant's civil_from_days)
    z = days + 719468
    era = z // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = mp + 3 if mp < 10 else mp - 9
    y = yoe + era * 400 + (1 if m <= 2 else 0)
    weekday = (days + 3) % 7  # 1970-01-01 was a Thursday (3 with Monday = 0)
    return (y, m, d, weekday, rem // 3600, rem % 3600 // 60, rem % 60, 0)
