"""The demo's pictures (matplotlib, offline, no map tiles): per card, its track around its home
with the alert times, and a day strip (worn / still / moving / charging / offline, frames and
alerts marked)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")   # files only: no display needed

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib import font_manager  # noqa: E402

from carecard.tools.vcard.demo import DemoCard, alert_ms, local_time  # noqa: E402

STATE_COLOURS = {"worn": "#4caf50", "moving": "#1e88e5", "still": "#ffb300", "asleep": "#9e9e9e",
                 "table": "#8d6e63", "charging": "#8e24aa", "offline": "#e53935"}
ALERT_COLOUR = "#d50000"


def _font() -> str | None:
    """A font with Chinese glyphs when one is installed (the elders' names), else None."""
    for name in ("Noto Sans CJK SC", "Noto Sans CJK JP", "Noto Sans SC", "WenQuanYi Zen Hei",
                 "AR PL UMing CN", "Droid Sans Fallback"):
        try:
            font_manager.findfont(name, fallback_to_default=False)
            return name
        except ValueError:
            continue
    return None


_FONT = _font()
if _FONT:
    plt.rcParams["font.family"] = ["sans-serif"]
    plt.rcParams["font.sans-serif"] = [_FONT, "DejaVu Sans"]


def _title(card: DemoCard) -> str:
    name = card.elder.name if _FONT else f"card {card.device}"
    return f"{name}: {card.day.story}"


def _positions(card: DemoCard) -> list[tuple[float, float, float, str]]:
    """(virtual ms, lat, lon, kind) of every position the receiver stored for the card."""
    out = []
    r = card.result
    assert r is not None
    for e in r.events:
        d = e["data"]
        if e["kind"] in ("position", "sos") and d.get("lat") is not None:
            out.append((e["virtual_ms"], d["lat"], d["lon"], d.get("source") or e["kind"]))
        elif e["kind"] == "track":
            for p in d.get("points", []):
                if p.get("lat") is not None:
                    t = (p["device_time"] - card.scenario.start_unix) * 1000 if p.get("device_time") else e["virtual_ms"]
                    out.append((t, p["lat"], p["lon"], "track"))
    out.sort()
    return out


def track_picture(card: DemoCard, path: Path) -> Path:
    """The card's positions around its home (metres east/north of home), walks joined in time
    order, the home marked, and each alert where the card last was when it was raised."""
    home = card.scenario.places[card.scenario.home]
    pts = _positions(card)
    k = math.pi / 180

    def xy(lat: float, lon: float) -> tuple[float, float]:
        return ((lon - home.lon) * k * math.cos(home.lat * k) * 6_371_000, (lat - home.lat) * k * 6_371_000)

    fig, ax = plt.subplots(figsize=(7, 6), dpi=110)
    if pts:
        xs, ys = zip(*(xy(lat, lon) for _t, lat, lon, _k in pts))
        ax.plot(xs, ys, "-", color="#90a4ae", linewidth=1, zorder=1, label="path (time order)")
        for kind, colour, label in (("fresh", "#1e88e5", "fix"), ("track", "#43a047", "walking"),
                                    ("held", "#ffb300", "held fix (still)"), ("sos", ALERT_COLOUR, "SOS")):
            sel = [xy(lat, lon) for _t, lat, lon, kk in pts if kk == kind]
            if sel:
                ax.scatter(*zip(*sel), s=16 if kind != "sos" else 90, color=colour, label=label,
                           zorder=3, marker="o" if kind != "sos" else "X")
    ax.scatter([0], [0], s=220, marker="^", color="#6d4c41", label="home", zorder=4)
    for name, place in card.scenario.places.items():
        if name != card.scenario.home:
            px, py = xy(place.lat, place.lon)
            ax.annotate(name, (px, py), fontsize=8, color="#546e7a", xytext=(4, 4), textcoords="offset points")
    for alert in card.alerts:
        d = alert["data"]["details"]
        if d.get("step") not in ("raised", "checkin"):
            continue
        t = alert_ms(card, alert)
        before = [p for p in pts if p[0] <= t] or pts
        if d.get("lat") is not None:
            ax_, ay_ = xy(d["lat"], d["lon"])
        elif before:
            ax_, ay_ = xy(before[-1][1], before[-1][2])
        else:
            ax_, ay_ = 0.0, 0.0
        ax.scatter([ax_], [ay_], s=160, facecolors="none", edgecolors=ALERT_COLOUR, linewidths=2, zorder=5)
        ax.annotate(f"{alert['data']['alert']} {local_time(card, t):%H:%M}", (ax_, ay_), fontsize=9,
                    color=ALERT_COLOUR, xytext=(8, -12), textcoords="offset points")
    ax.set_xlabel("metres east of home")
    ax.set_ylabel("metres north of home")
    ax.set_aspect("equal", adjustable="datalim")
    ax.grid(True, color="#eceff1")
    ax.legend(loc="best", fontsize=8)
    ax.set_title(_title(card), fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _states(card: DemoCard) -> list[tuple[float, float, str]]:
    """(start ms, end ms, state) spans of the day from the scenario's steps as the card lived them."""
    r = card.result
    assert r is not None
    end = r.end_ms
    flags = {"carry": "worn", "asleep": False, "fallen": False, "offline": False, "moving": 0}
    changes: list[tuple[float, int, str, dict[str, Any]]] = []
    for i, e in enumerate(r.timeline):
        if e["kind"] == "step":
            changes.append((e["t_ms"], i, e["do"], e))
            if e["do"] == "go":   # the walk ends when she arrives
                changes.append((e["t_ms"] + float(e.get("minutes", 10)) * 60_000, i, "arrive", e))
    changes.sort(key=lambda c: (c[0], c[1]))

    def state() -> str:
        if flags["offline"]:
            return "offline"
        if flags["carry"] == "charger":
            return "charging"
        if flags["carry"] == "table":
            return "table"
        if flags["moving"]:
            return "moving"
        if flags["asleep"]:
            return "asleep"
        return "still" if flags["fallen"] else "worn"

    spans: list[tuple[float, float, str]] = []
    current, start = state(), 0.0
    for t, _i, do, e in changes:
        if t >= end:
            break
        if do == "carry":
            flags["carry"] = e["state"]
        elif do == "sleep":
            flags["asleep"] = True
        elif do == "wake":
            flags["asleep"] = flags["fallen"] = False
        elif do == "fall":
            flags["fallen"] = True
        elif do == "go":
            flags["fallen"] = False
            flags["moving"] += 1
        elif do == "arrive":
            flags["moving"] -= 1
        elif do == "coverage":
            flags["offline"] = not e["up"]
        now = state()
        if now != current:
            if t > start:
                spans.append((start, t, current))
            current, start = now, t
    spans.append((start, end, current))
    return spans


def day_strip(card: DemoCard, path: Path) -> Path:
    """The day as a strip of states, the frames the receiver stored as ticks, alerts as lines."""
    r = card.result
    assert r is not None
    hours = r.end_ms / 3_600_000
    fig, ax = plt.subplots(figsize=(11, 2.6), dpi=110)
    start = local_time(card, 0)
    offset_h = start.hour + start.minute / 60

    def h(ms: float) -> float:
        return offset_h + ms / 3_600_000

    seen = set()
    for a, b, s in _states(card):
        ax.barh(1, h(b) - h(a), left=h(a), height=0.6, color=STATE_COLOURS[s],
                label=s if s not in seen else None)
        seen.add(s)
    frames = [h(e["virtual_ms"]) for e in r.events]
    ax.vlines(frames, 0.1, 0.5, color="#37474f", linewidth=0.6, label="frame stored")
    last_label, level = -1e9, 0
    for alert in card.alerts:
        d = alert["data"]["details"]
        t = h(alert_ms(card, alert))
        ax.axvline(t, color=ALERT_COLOUR, linewidth=1.5, linestyle="-" if d.get("step") in ("raised", "checkin") else ":")
        # steps close together (a check-in and its escalation) stack their labels
        level = (level + 1) % 3 if t - last_label < hours / 12 else 0
        last_label = t
        ax.annotate(f"{alert['data']['alert']} {d.get('step')}", (t, 1.35 + 0.22 * level), rotation=20,
                    fontsize=7, color=ALERT_COLOUR)
    ax.set_xlim(offset_h, offset_h + hours)
    ax.set_ylim(0, 2.1)
    ax.set_yticks([])
    ticks = [x for x in range(math.ceil(offset_h), int(offset_h + hours) + 1)
             if hours <= 30 or x % 6 == 0]
    ax.set_xticks(ticks)
    ax.set_xticklabels([f"{x % 24:02d}:00" + (f"\nday {x // 24 + 1}" if x % 24 == 0 and x else "") for x in ticks],
                       fontsize=7)
    ax.legend(loc="upper left", fontsize=7, ncol=8, bbox_to_anchor=(0, -0.28))
    ax.set_title(_title(card) + f"  ({start:%Y-%m-%d}, local time)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
