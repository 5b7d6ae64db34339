"""The inactivity and alert engine (sans-I/O): see core.py; settings.py; vocabulary.py."""

from carecard.host.engine.core import (Action, Engine, EngineError, Notify, SendCheckin, UnknownAlert,
                                       distance_m, fix_radius_m)
from carecard.host.engine.settings import DeviceSettings, Settings, SettingsError
from carecard.host.engine.vocabulary import VOCABULARY_VERSION

__all__ = ["Action", "DeviceSettings", "Engine", "EngineError", "Notify", "SendCheckin", "Settings",
           "SettingsError", "UnknownAlert", "VOCABULARY_VERSION", "distance_m", "fix_radius_m"]
