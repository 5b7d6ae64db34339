"""Firmware modules (firmware/lib) that run on CPython too, loaded for the host side.

The simulators use the card's own formats (an SMS-DELIVER the simulated network hands the modem
is made by firmware/lib/smspdu.py) and the factory checks a sheet with the card's own config
rules (firmware/lib/config.py), so the host never holds a second copy of them. The modules are
loaded under private names: firmware/lib is never put on sys.path (its module names, such as
`config` or `at`, would shadow others). `ccspec`, on the card protocol/spec.py copied by the card
image, is carecard.protocol.spec here.
"""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType

from carecard.tools.cardimage import FIRMWARE_DIR

_LIB = FIRMWARE_DIR / "lib"
_loaded: dict[str, ModuleType] = {}


def load(name: str, deps: tuple[str, ...] = ()) -> ModuleType:
    """firmware/lib/<name>.py as a CPython module; `deps` are the firmware modules it imports by
    their plain names (loaded first and visible under those names only while it executes)."""
    if name in _loaded:
        return _loaded[name]
    saved = {dep: sys.modules.get(dep) for dep in deps}
    try:
        for dep in deps:
            sys.modules[dep] = _spec() if dep == "ccspec" else load(dep)
        spec = importlib.util.spec_from_file_location(f"carecard_firmware_{name}", _LIB / f"{name}.py")
        if spec is None or spec.loader is None:
            raise ImportError(f"firmware module {name} not found in {_LIB}")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        for dep, previous in saved.items():
            if previous is None:
                sys.modules.pop(dep, None)
            else:
                sys.modules[dep] = previous
    _loaded[name] = module
    return module


def _spec() -> ModuleType:
    from carecard.protocol import spec

    return spec


def smspdu() -> ModuleType:
    return load("smspdu", deps=("civil",))


def config() -> ModuleType:
    """The card's config module: its field rules (`validate`) and defaults."""
    return load("config", deps=("ccspec", "cardfs"))
