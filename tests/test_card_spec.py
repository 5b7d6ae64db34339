"""The card's copy of the protocol definition (lib/ccspec in the card image, made by
carecard.tools.cardimage.card_spec_source from protocol/spec.py): everything the card reads is
the same as the host's; only field descriptions, host-only rule keys and the docstring are left
out, so the card does not carry them on its heap."""

from __future__ import annotations

from typing import Any

from carecard.protocol import spec
from carecard.tools.cardimage import FIELD_TABLES, HOST_ONLY_RULE_KEYS, PROTOCOL_SPEC, card_spec_source


def card_spec() -> dict[str, Any]:
    namespace: dict[str, Any] = {}
    exec(compile(card_spec_source(), "ccspec.py", "exec"), namespace)
    return namespace


def without_descriptions(value: Any) -> Any:
    if isinstance(value, tuple):
        if len(value) == 3 and all(isinstance(v, str) for v in value):
            return (value[0], value[1], "")
        return tuple(without_descriptions(v) for v in value)
    if isinstance(value, dict):
        return {k: without_descriptions(v) for k, v in value.items()}
    return value


def test_the_cards_spec_has_every_name_and_value_the_host_has_but_the_descriptions() -> None:
    card = card_spec()
    names = [n for n in vars(spec) if n.isupper()]
    assert names and all(n in card for n in names)
    for name in names:
        if name == "FIELDS":
            continue
        host = getattr(spec, name)
        assert card[name] == (without_descriptions(host) if name in FIELD_TABLES else host), name
    # every rule the card checks (ranges, unknown values, text) is there, unchanged
    for field, rule in spec.FIELDS.items():
        kept = {k: v for k, v in rule.items() if k not in HOST_ONLY_RULE_KEYS}
        assert card["FIELDS"].get(field, {}) == kept, field
    # descriptions are gone: the card's copy is a third of the host's
    source = card_spec_source()
    assert "latitude" not in source and "Frame on the wire" not in source
    assert len(source) * 2 < len(PROTOCOL_SPEC.read_text(encoding="utf-8"))


def test_the_hardware_modules_of_the_image_hold_exactly_the_hardware_json(mpy, tmp_path) -> None:
    """hwdata.load(name) on MicroPython, from the image's generated hw_<name> module, returns
    what the JSON file holds; and it is the module that answers, not the JSON."""
    import json

    from carecard.tools.cardimage import HARDWARE_DIR, build_card_image

    image = build_card_image(tmp_path / "image", compiled=True)
    names = sorted(p.stem for p in HARDWARE_DIR.glob("*.json"))
    assert all((image / "lib" / f"hw_{n}.mpy").exists() for n in names)
    out = mpy.run(f"""
import json, sys, hwdata
for name in {names!r}:
    print(json.dumps(hwdata.load(name)), "hw_" + name in sys.modules)
import os
os.rename({str(image / "lib" / "hwjson")!r}, {str(image / "lib" / "hwjson.moved")!r})
print(hwdata.load("modem_a7670")["uart"]["baud"]["value"])
""", image=image)
    lines = out.strip().splitlines()
    for name, line in zip(names, lines):
        text, kept = line.rsplit(" ", 1)
        assert json.loads(text) == json.loads((HARDWARE_DIR / f"{name}.json").read_text(encoding="utf-8")), name
        assert kept == "False"
    assert int(lines[-1]) > 0  # read with the JSON files gone: from the module
