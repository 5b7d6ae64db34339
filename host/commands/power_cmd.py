"""`carecard power SCENARIO [--json]`: the card's energy over a scenario, component by component.

The scenario is played in virtual time by the duty model (carecard.tools.vcard.energy): when the
card's parts are on at the scenario's settings, each state timed and charged at its current from
hardware/power.json. Prints mAh per day per component and state, the average current, days per
charge of the reference battery (hardware/battery_lipo.json capacity_mah) with a bar picture, and
what each alternative setting buys.
"""

from __future__ import annotations

import argparse
import json

from carecard.host.commands.errors import CommandFailed


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "power",
        help="energy per day and days per charge of the card over a scenario",
        description="Play a scenario (a .toml file or a shipped name such as normal-day) in "
                    "virtual time and print the card's energy: mAh per day per component and "
                    "state, average current, days per charge of the reference battery, and what "
                    "each alternative setting buys.",
    )
    p.add_argument("scenario", help="a scenario .toml file or the name of a shipped one")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object (days_per_charge, mah_per_day, average_ma, "
                        "breakdown, settings)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from carecard.hardware.power import PowerDataError
    from carecard.tools.vcard import energy, scenario

    try:
        sc = scenario.load(scenario.find(args.scenario))
        duty = energy.DutyModel().with_settings(sc.settings)
        ledger, end = energy.play_duty(sc, duty)
        report = energy.energy_report(ledger, end)
        effects = energy.setting_effects(sc, duty)
    except (scenario.ScenarioError, energy.EnergyError, PowerDataError) as exc:
        raise CommandFailed(str(exc)) from None
    report["scenario"] = sc.name
    report["model"] = "duty model (carecard.tools.vcard.energy.DutyModel) at the scenario's settings"
    report["settings"] = effects
    if args.json:
        print(json.dumps(report, indent=2, ensure_ascii=False))
        return 0
    print(energy.format_report(report, sc.name))
    print()
    print("  what each setting buys (days per charge, mAh/day):")
    for row in effects:
        print(f"    {row['days_per_charge']:5.1f} d  {row['mah_per_day']:6.1f}  {row['setting']}")
    return 0
