"""The alert vocabulary (version 1): kinds, escalation steps, states and close reasons.

docs/events.md ("Alert vocabulary") documents the same lists; a test checks they agree.
A new kind, step or reason may be added within a version; removing one or changing what it
means makes a new VOCABULARY_VERSION.
"""

from __future__ import annotations

VOCABULARY_VERSION = 1

# kind -> what raises it
KINDS: dict[str, str] = {
    "sos": "an SOS frame (any trigger) or the answer \"help\" to a check-in: family and grid worker at once",
    "inactivity": "stillness longer than the device's threshold outside sleeping hours",
    "offline": "no frame within offline_factor x report_interval (reason: battery_low or coverage_lost)",
    "low_battery": "battery at or below low_battery_pct while discharging, or a low/critical/shutdown power event",
    "not_charged": "no charging seen for the not_charged duration",
    "card_not_worn": "on the charger long into the day, or no motion counted for not_worn (cards with a motion sensor)",
}

# step -> meaning; every alert event names one
STEPS: dict[str, str] = {
    "checkin": "a check-in prompt goes to the card (inactivity's first step; the card buzzes, any key answers)",
    "family": "the family is alerted (no answer to the check-in)",
    "grid_worker": "the grid worker is alerted (nobody acknowledged within family_window)",
    "raised": "the alert is raised (kinds without a check-in step)",
    "reminder": "a reminder of an alert still true (low_battery)",
    "acknowledged": "someone acknowledged the alert: escalation stops",
    "resolved": "the alert is closed (closed_reason says why)",
}

STATES = ("open", "acknowledged", "resolved")

CLOSE_REASONS: dict[str, str] = {
    "movement": "the card moved or counted motion, or a key was pressed",
    "checkin": "the elder answered the check-in prompt",
    "acknowledgement": "someone acknowledged (alerts with nothing else to wait for: sos)",
    "timeout": "nobody acknowledged within expire_after of the last step",
    "reconnected": "a frame arrived again (offline)",
    "charging": "the card is charging (low_battery, not_charged)",
    "worn": "the card is off the charger or counts motion again (card_not_worn)",
    "resolved_by_hand": "someone resolved it (carecard alerts resolve, or an inbound resolve request)",
    "removed": "the card was taken out of the registry (carecard devices remove): it is not judged until added again",
}

# who each step notifies
NOTIFY: dict[str, tuple[str, ...]] = {
    "checkin": ("card",),
    "family": ("family",),
    "grid_worker": ("grid_worker",),
}
