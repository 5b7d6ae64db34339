"""A simulated GNSS receiver (Quectel L76K class): NMEA 0183 at 1 Hz from a scripted track, or
the replay of a real capture, on a virtual clock; deterministic for a seed.

    sim = GnssSim(Track([TrackPoint(0, 24.9, 118.6, "indoor"), ...]), seed=7)
    sim.set_power(True, now_ms); sim.set_backup(True, now_ms)
    sim.advance(now_ms) -> bytes    # the sentences of every epoch up to now_ms

Behaviour (every figure a named parameter; the receiver's own from hardware/gnss_*.json):
- start kinds: hot when the backup supply stayed on since the last fix and that fix is younger
  than `hot_max_age_s` (the firmware's gnss.HOT_START_MAX_AGE_MS, 2 h), warm when the backup
  stayed on but the ephemeris is older, cold otherwise; TTFF hot/cold from the receiver's
  hardware data (L76K: 5.5 s / 30 s, Seeed wiki), warm = cold / 2 (no figure published for the
  L76K: an assumption, said here), each drawn with +-20 % jitter;
- environments along the track: "outdoor" (HDOP 0.8-1.4, 10-16 satellites, error a random
  walk of a few metres), "indoor" (TTFF x3, HDOP 1.8-4.5, 4-8 satellites, an error of tens of
  metres that wanders: a first-order Gauss-Markov process, sigma `indoor_sigma_m`, correlation
  time `indoor_tau_s`; a fix is lost now and then), "deep_indoor" (no fix at all: satellites in
  view at low signal, RMC status V and GGA quality 0: a failed fix);
- outliers: with probability `outlier_rate` per epoch (indoors; a tenth of it outdoors) the
  position jumps `outlier_m` metres for one epoch while HDOP stays plausible, as multipath does;
- before the first fix, sentences without a position (RMC V with the time once the receiver
  has it, GGA quality 0), as real receivers send them (shared/data/nmea no-fix captures).

Sentences per epoch, as the L76K sends them (shared/data/nmea/quectel-l76k-nmea.log): GNRMC,
GNGGA, GNGSA (one per constellation), GPGSV and BDGSV. Energy states through
`on_power(state, now_ms)`: "off", "backup", "acquiring", "tracking".
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import time as _time

from carecard.tools.cardimage import HARDWARE_DIR

ENVIRONMENTS = ("outdoor", "indoor", "deep_indoor")
_M_PER_DEG = 111_320.0


class GnssSimError(ValueError):
    """A track or a capture that cannot be simulated (what, where and the fix in the message)."""


@dataclass(frozen=True)
class TrackPoint:
    t_s: float          # seconds since the simulation's start
    lat: float
    lon: float
    env: str = "outdoor"

    def __post_init__(self) -> None:
        if self.env not in ENVIRONMENTS:
            raise GnssSimError(f"track point at {self.t_s} s: environment {self.env!r} is not one "
                               f"of {', '.join(ENVIRONMENTS)}")
        if not (-90 <= self.lat <= 90 and -180 <= self.lon <= 180):
            raise GnssSimError(f"track point at {self.t_s} s: {self.lat}, {self.lon} is not a "
                               "latitude/longitude in degrees")


class Track:
    """Where the person (and the card) is: points in time order, linear between them; the
    environment is the one of the last point passed."""

    def __init__(self, points: list[TrackPoint]) -> None:
        if not points:
            raise GnssSimError("a track needs at least one point")
        for a, b in zip(points, points[1:]):
            if b.t_s < a.t_s:
                raise GnssSimError(f"track points out of time order at {b.t_s} s (after {a.t_s} s)")
        self.points = points

    def at(self, t_s: float) -> tuple[float, float, str]:
        pts = self.points
        if t_s <= pts[0].t_s:
            return pts[0].lat, pts[0].lon, pts[0].env
        for a, b in zip(pts, pts[1:]):
            if t_s < b.t_s:
                f = (t_s - a.t_s) / (b.t_s - a.t_s) if b.t_s > a.t_s else 1.0
                return a.lat + (b.lat - a.lat) * f, a.lon + (b.lon - a.lon) * f, a.env
        last = pts[-1]
        return last.lat, last.lon, last.env


@dataclass
class GnssModel:
    ttff_cold_s: float = 30.0
    ttff_hot_s: float = 5.5
    ttff_warm_s: float | None = None     # None: cold / 2 (assumption, module comment)
    hot_max_age_s: float = 7200.0
    ttff_jitter: float = 0.2
    indoor_ttff_factor: float = 3.0
    outdoor_sigma_m: float = 3.0
    indoor_sigma_m: float = 30.0
    indoor_tau_s: float = 90.0
    indoor_dropout_rate: float = 0.03    # per epoch, once fixed
    outlier_rate: float = 0.01           # per epoch indoors (a tenth of it outdoors)
    outlier_m: float = 400.0

    @classmethod
    def for_receiver(cls, name: str = "gnss_l76k") -> "GnssModel":
        """TTFFs from hardware/<name>.json."""
        import json

        path = HARDWARE_DIR / f"{name}.json"
        data = json.loads(path.read_text(encoding="utf-8"))
        timing = data["timing"]
        return cls(ttff_cold_s=timing["ttff_cold_ms"]["value"] / 1000,
                   ttff_hot_s=timing["ttff_hot_ms"]["value"] / 1000)


def _checksum(body: str) -> str:
    c = 0
    for ch in body.encode("ascii"):
        c ^= ch
    return f"{c:02X}"


def sentence(body: str) -> bytes:
    """'GNRMC,...' -> b'$GNRMC,...*hh\\r\\n'."""
    return f"${body}*{_checksum(body)}\r\n".encode("ascii")


def _lat(lat: float) -> tuple[str, str]:
    a = abs(lat)
    d = int(a)
    return f"{d:02d}{(a - d) * 60:08.5f}", "N" if lat >= 0 else "S"


def _lon(lon: float) -> tuple[str, str]:
    a = abs(lon)
    d = int(a)
    return f"{d:03d}{(a - d) * 60:08.5f}", "E" if lon >= 0 else "W"


class GnssSim:
    """See the module comment."""

    def __init__(self, track: Track, *, seed: int = 0, start_unix: float = 1_780_000_000,
                 model: GnssModel | None = None,
                 on_power: Callable[[str, int], None] | None = None) -> None:
        self.track = track
        self.seed = seed
        self.start_unix = start_unix
        self.m = model or GnssModel.for_receiver()
        self.on_power = on_power
        self.powered = False
        self.backup = False
        self.now = 0
        self._next_epoch_ms = 0
        self._on_ms = 0
        self._ttff_ms = 0.0
        self._fixed = False
        self._last_fix_ms: int | None = None    # when the receiver last had a fix
        self._backup_since_fix = False          # backup supply stayed on since that fix
        self._err_n = 0.0
        self._err_e = 0.0
        self._starts = 0
        self._state = ""
        self.start_kind = ""
        self.epochs = 0
        self.fixes: list[tuple[int, float, float, float, float]] = []   # (ms, lat, lon, true lat, true lon)
        self._report()

    # ---- controls ----------------------------------------------------------------------------
    def set_backup(self, on: bool, now_ms: int) -> bytes:
        out = self.advance(now_ms)
        self.backup = on
        if not on:
            self._backup_since_fix = False
        self._report()
        return out

    def set_power(self, on: bool, now_ms: int) -> bytes:
        out = self.advance(now_ms)
        if on and not self.powered:
            self.powered = True
            self._on_ms = now_ms
            self._fixed = False
            self._starts += 1
            self._ttff_ms = self._draw_ttff(now_ms)
            self._next_epoch_ms = now_ms + 1000
        elif not on and self.powered:
            self.powered = False
            self._backup_since_fix = self.backup and self._last_fix_ms is not None
        self._report()
        return out

    def _draw_ttff(self, now_ms: int) -> float:
        m = self.m
        age_ok = (self._last_fix_ms is not None
                  and (now_ms - self._last_fix_ms) / 1000 <= m.hot_max_age_s)
        if self.backup and self._backup_since_fix and age_ok:
            self.start_kind, base = "hot", m.ttff_hot_s
        elif self.backup and self._backup_since_fix:
            self.start_kind, base = "warm", (m.ttff_warm_s if m.ttff_warm_s is not None else m.ttff_cold_s / 2)
        else:
            self.start_kind, base = "cold", m.ttff_cold_s
        rng = random.Random(self.seed * 7919 + self._starts)
        return base * 1000 * (1 + rng.uniform(-m.ttff_jitter, m.ttff_jitter))

    def _report(self) -> None:
        if self.powered:
            state = "tracking" if self._fixed else "acquiring"
        elif self.backup:
            state = "backup"
        else:
            state = "off"
        if state != self._state:
            self._state = state
            if self.on_power is not None:
                self.on_power(state, self.now)

    @property
    def power_state(self) -> str:
        return self._state

    def next_deadline(self) -> int | None:
        return self._next_epoch_ms if self.powered else None

    # ---- epochs ------------------------------------------------------------------------------
    def advance(self, now_ms: int) -> bytes:
        out = bytearray()
        while self.powered and self._next_epoch_ms <= now_ms:
            self.now = self._next_epoch_ms
            out += self._epoch(self._next_epoch_ms)
            self._next_epoch_ms += 1000
        self.now = max(self.now, now_ms)
        return bytes(out)

    def _epoch(self, t_ms: int) -> bytes:
        m = self.m
        self.epochs += 1
        t_s = t_ms / 1000
        lat, lon, env = self.track.at(t_s)
        rng = random.Random((self.seed << 32) ^ (t_ms // 1000))
        since_on = t_ms - self._on_ms
        ttff = self._ttff_ms * (m.indoor_ttff_factor if env == "indoor" else 1)
        has_time = since_on >= min(self._ttff_ms, 3000) or self.start_kind == "hot"
        fixed = env != "deep_indoor" and since_on >= ttff
        if fixed and self._fixed and env == "indoor" and rng.random() < m.indoor_dropout_rate:
            fixed = False
        if fixed != self._fixed:
            self._fixed = fixed
            self._report()
        unix = self.start_unix + t_s
        if not fixed:
            in_view = {"outdoor": 12, "indoor": 6, "deep_indoor": 3}[env]
            return self._sentences(unix if has_time else None, None, rng, in_view, 0, 99.9, env)
        # the error: a Gauss-Markov wander (indoor) or a small random walk (outdoor)
        sigma = m.indoor_sigma_m if env == "indoor" else m.outdoor_sigma_m
        tau = m.indoor_tau_s if env == "indoor" else 30.0
        a = math.exp(-1.0 / tau)
        noise = sigma * math.sqrt(1 - a * a)
        self._err_n = a * self._err_n + noise * rng.gauss(0, 1)
        self._err_e = a * self._err_e + noise * rng.gauss(0, 1)
        dn, de = self._err_n, self._err_e
        rate = m.outlier_rate if env == "indoor" else m.outlier_rate / 10
        if rng.random() < rate:
            bearing = rng.uniform(0, 2 * math.pi)
            dn += m.outlier_m * math.cos(bearing)
            de += m.outlier_m * math.sin(bearing)
        flat = lat + dn / _M_PER_DEG
        flon = lon + de / (_M_PER_DEG * max(0.01, math.cos(math.radians(lat))))
        if env == "indoor":
            sats, hdop = rng.randint(4, 8), round(rng.uniform(1.8, 4.5), 1)
        else:
            sats, hdop = rng.randint(10, 16), round(rng.uniform(0.8, 1.4), 1)
        self._last_fix_ms = t_ms
        self._backup_since_fix = self.backup
        self.fixes.append((t_ms, flat, flon, lat, lon))
        return self._sentences(unix, (flat, flon), rng, sats + rng.randint(0, 4), sats, hdop, env)

    def _sentences(self, unix: float | None, pos: tuple[float, float] | None, rng: random.Random,
                   in_view: int, used: int, hdop: float, env: str) -> bytes:
        if unix is not None:
            tm = _time.gmtime(int(unix))
            hms = f"{tm.tm_hour:02d}{tm.tm_min:02d}{tm.tm_sec:02d}.000"
            dmy = f"{tm.tm_mday:02d}{tm.tm_mon:02d}{tm.tm_year % 100:02d}"
        else:
            hms = dmy = ""
        out = bytearray()
        if pos is not None:
            la, ns = _lat(pos[0])
            lo, ew = _lon(pos[1])
            speed = f"{rng.uniform(0, 0.3):.2f}"
            out += sentence(f"GNRMC,{hms},A,{la},{ns},{lo},{ew},{speed},,{dmy},,,A,V")
            alt = 30.0 + rng.uniform(-3, 3)
            out += sentence(f"GNGGA,{hms},{la},{ns},{lo},{ew},1,{used:02d},{hdop:.1f},{alt:.1f},M,11.2,M,,")
            gps = list(range(1, 33, 3))[:max(1, used * 2 // 3)]
            bds = list(range(6, 40, 4))[:max(0, used - len(gps))]
            pdop, vdop = hdop * 1.6, hdop * 1.3
            out += sentence("GNGSA,A,3," + ",".join(f"{p:02d}" for p in gps) + "," * (12 - len(gps))
                            + f",{pdop:.1f},{hdop:.1f},{vdop:.1f},1")
            out += sentence("GNGSA,A,3," + ",".join(f"{p:02d}" for p in bds) + "," * (12 - len(bds))
                            + f",{pdop:.1f},{hdop:.1f},{vdop:.1f},4")
        else:
            out += sentence(f"GNRMC,{hms},V,,,,,,,{dmy},,,N,V")
            out += sentence(f"GNGGA,{hms},,,,,0,00,99.9,,,,,,")
            out += sentence("GNGSA,A,1,,,,,,,,,,,,,99.9,99.9,99.9,1")
        # satellites in view, signal by environment
        snr_lo, snr_hi = {"outdoor": (25, 45), "indoor": (12, 28), "deep_indoor": (5, 15)}[env]
        sats = [(prn, rng.randint(5, 85), rng.randint(0, 359), rng.randint(snr_lo, snr_hi))
                for prn in range(2, 2 + 2 * in_view, 2)]
        groups = [sats[i:i + 4] for i in range(0, len(sats), 4)] or [[]]
        for i, group in enumerate(groups):
            body = f"GPGSV,{len(groups)},{i + 1},{in_view:02d}"
            for prn, el, az, snr in group:
                body += f",{prn:02d},{el:02d},{az:03d},{snr:02d}"
            out += sentence(body + ",0")
        return bytes(out)


class NmeaReplay:
    """A real capture replayed: its epochs one per second while powered (comment lines and
    blank lines dropped; an epoch starts at each RMC or GGA with a new time field)."""

    def __init__(self, path: Path, on_power: Callable[[str, int], None] | None = None) -> None:
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise GnssSimError(f"cannot read NMEA capture {path}: {exc.strerror}") from None
        epochs: list[bytes] = []
        current = bytearray()
        last_time: bytes | None = None
        for line in raw.splitlines(keepends=True):
            if line.startswith(b"#") or not line.strip():
                continue
            body = line.lstrip(b"$")
            if body[2:5] in (b"RMC", b"GGA"):
                when = body.split(b",")[1] if b"," in body else b""
                if last_time is not None and when != last_time and current:
                    epochs.append(bytes(current))
                    current = bytearray()
                last_time = when
            current += line if line.endswith(b"\n") else line + b"\r\n"
        if current:
            epochs.append(bytes(current))
        if not epochs:
            raise GnssSimError(f"NMEA capture {path} has no sentences")
        self.epochs = epochs
        self.on_power = on_power
        self.powered = False
        self.backup = False
        self._i = 0
        self._next_ms = 0
        self.now = 0
        self._state = ""
        self._report()

    def _report(self) -> None:
        state = "tracking" if self.powered else ("backup" if self.backup else "off")
        if state != self._state:
            self._state = state
            if self.on_power is not None:
                self.on_power(state, self.now)

    @property
    def power_state(self) -> str:
        return self._state

    def set_backup(self, on: bool, now_ms: int) -> bytes:
        out = self.advance(now_ms)
        self.backup = on
        self._report()
        return out

    def set_power(self, on: bool, now_ms: int) -> bytes:
        out = self.advance(now_ms)
        if on and not self.powered:
            self._next_ms = now_ms + 1000
        self.powered = on
        self._report()
        return out

    def next_deadline(self) -> int | None:
        return self._next_ms if self.powered else None

    def advance(self, now_ms: int) -> bytes:
        out = bytearray()
        while self.powered and self._next_ms <= now_ms:
            self.now = self._next_ms
            out += self.epochs[self._i % len(self.epochs)]
            self._i += 1
            self._next_ms += 1000
        self.now = max(self.now, now_ms)
        return bytes(out)
