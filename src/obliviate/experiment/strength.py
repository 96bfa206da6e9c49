"""Strength selection on the probe seeds, as named policies: compare variants at equal forgetting.

A variant with a `sweep:` (`key`: `regularizers.NAME.SETTING` or `method_settings.SETTING`,
`values`: the strengths to try) runs once per value under its setting with the *probe* plan
(the probe seeds, disjoint from the reported ones), and the experiment's strength policy picks
one value from that table; the variant is then run at that value with the reported seeds
(its trained steps are the sweep's, reused, not retrained). The table is kept: in
`variants/NAME/strength.json` and in summary.json under the variant's `strength`.

Policies, registered by name (`strength: {policy: NAME, ...}` at the top of an experiment file):

- `equal-forgetting` (default; options `ua_min`, 90, and `early_stop`, 1): among the values
  whose UA is >= ua_min after *every* request, the one with the best retention (mean of RA-I
  and RA-C) after the last request; ties go to the earlier value in the sweep. When no value
  keeps UA >= ua_min throughout, the variant is reported as not reaching it (`meets_ua: false`)
  and runs at the value that kept UA >= ua_min through the most requests (`kept_requests`),
  ties going to the higher UA at the request where it fell (`best_UA`; unlike the smallest UA
  over requests, it does not change when the chosen value's sequence is finished afterwards).
  Why not the highest smallest UA: under early_stop a value that fails at request 1 with UA 83
  would beat one that held the bar for 3 requests and fell to 81 at the 4th, and run through
  all 8 requests the first can end far lower (ties-merge on styles: 31.9).
  With `early_stop` (1; 0 turns it off) a value's sequence stops after the first
  request whose probe UA is under ua_min, since it can no longer be chosen: its row then holds
  the requests up to that one (`stopped_after` in the record), its smallest UA is the smallest
  seen before the stop, and when no value reaches the bar the chosen value's sequence is
  finished afterwards (resumed: its finished requests and evaluations are reused).
- `probe-score`: the earlier rule, the best mean of UA, RA-I and RA-C after the last request
  (it rewards variants that forget less; kept for comparison with the first study).
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Callable

from ..continual import slug
from ..delta import atomic_write_json
from .settings import SETTINGS, probe_score

STRENGTH_POLICIES: dict[str, Callable] = {}
POLICY_OPTIONS = {"equal-forgetting": {"ua_min": 90.0, "early_stop": 1.0}, "probe-score": {}}


def strength_policy(name: str):
    def register(fn):
        STRENGTH_POLICIES[name] = fn
        return fn
    return register


def retention(res: dict) -> float:
    """What equal forgetting maximises: the mean of RA-I and RA-C."""
    return (res["RA_I"] + res["RA_C"]) / 2


def kept_then_fell(ua_per_request: list[float], ua_min: float) -> tuple[int, float | None]:
    """How many requests UA stayed >= ua_min, and the UA at the request where it fell (None if it
    never fell): the same whether or not the sequence ran on after the fall (stable on resume)."""
    kept = next((i for i, ua in enumerate(ua_per_request) if ua < ua_min), len(ua_per_request))
    return kept, (ua_per_request[kept] if kept < len(ua_per_request) else None)


def sweep_table(table: dict) -> list[dict]:
    """One row per value: UA after each request, its minimum, and the last request's figures."""
    rows = []
    for value, steps in table.items():
        last = steps[-1]
        rows.append({"value": value, "UA_per_request": [s["UA"] for s in steps], "min_UA": min(s["UA"] for s in steps),
                     "RA_I_per_request": [s["RA_I"] for s in steps], "RA_C_per_request": [s["RA_C"] for s in steps],
                     "UA": last["UA"], "RA_I": last["RA_I"], "RA_C": last["RA_C"], "retention": retention(last),
                     "probe_score": probe_score(last)})
    return rows


@strength_policy("equal-forgetting")
def equal_forgetting(table: dict, ua_min: float = 90.0) -> dict:
    """`table`: value -> the probe metrics after request 1..n (each with UA, RA_I, RA_C)."""
    rows = sweep_table(table)
    for r in rows:
        r["keeps_ua"] = r["min_UA"] >= ua_min
        r["kept_requests"], r["fell_to_UA"] = kept_then_fell(r["UA_per_request"], ua_min)
    eligible = [r for r in rows if r["keeps_ua"]]
    if eligible:
        chosen = max(eligible, key=lambda r: r["retention"])
        return {"chosen": chosen["value"], "meets_ua": True, "ua_min": ua_min, "best_UA": max(r["min_UA"] for r in rows),
                "reason": f"best retention {chosen['retention']:.1f} among {len(eligible)} of {len(rows)} values "
                          f"keeping UA >= {ua_min:g} after every request", "table": rows}
    # first of equals: max keeps the earliest value in the sweep
    closest = max(rows, key=lambda r: (r["kept_requests"], r["fell_to_UA"]))
    return {"chosen": closest["value"], "meets_ua": False, "ua_min": ua_min, "best_UA": closest["fell_to_UA"],
            "kept_requests": closest["kept_requests"],
            "reason": f"no value keeps UA >= {ua_min:g} after every request; {closest['value']!r} keeps it longest "
                      f"({closest['kept_requests']} requests, then UA {closest['fell_to_UA']:.1f}), run at that value",
            "table": rows}


@strength_policy("probe-score")
def best_probe_score(table: dict) -> dict:
    rows = sweep_table(table)
    chosen = max(rows, key=lambda r: r["probe_score"])
    return {"chosen": chosen["value"], "meets_ua": None, "best_UA": max(r["min_UA"] for r in rows),
            "reason": f"best mean(UA, RA-I, RA-C) {chosen['probe_score']:.1f}", "table": rows}


def parse_policy(spec, where: str) -> dict:
    """`strength: {policy: NAME, option: value}` -> {"policy": NAME, **options}, checked."""
    spec = dict(spec or {})
    name = spec.pop("policy", "equal-forgetting")
    if name not in STRENGTH_POLICIES:
        raise ValueError(f"{where}: strength policy {name!r} is not valid; valid: {', '.join(STRENGTH_POLICIES)}")
    unknown = set(spec) - set(POLICY_OPTIONS[name])
    if unknown:
        raise ValueError(f"{where}: strength policy {name} has no options {sorted(unknown)}; valid: "
                         f"{', '.join(POLICY_OPTIONS[name]) or 'none'}")
    for k, v in spec.items():
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            raise ValueError(f"{where}: strength {k} must be a number, got {v!r}")
    return {"policy": name, **POLICY_OPTIONS[name], **{k: float(v) for k, v in spec.items()}}


def with_value(variant, key: str, value):
    """A copy of `variant` with the setting `key` (regularizers.NAME.SETTING,
    method_settings.SETTING, or merge.lam / merge.top_k of an independent+merge variant) set
    to `value`."""
    parts = key.split(".")
    v = copy.deepcopy(variant)
    if len(parts) == 2 and parts[0] == "method_settings":
        v.method_settings[parts[1]] = value
    elif len(parts) == 2 and parts[0] == "merge" and parts[1] in ("lam", "top_k"):
        if variant.setting != "independent+merge":
            raise ValueError(f"variant {variant.name}: sweep key {key!r} needs setting independent+merge, "
                             f"not {variant.setting}")
        v.merge = {**v.merge, parts[1]: value}
    elif len(parts) == 3 and parts[0] == "regularizers":
        names = [n for n, _ in v.regularizers]
        if parts[1] not in names:
            raise ValueError(f"variant {variant.name}: sweep key {key!r} names regularizer {parts[1]!r}, which the "
                             f"variant does not use; its regularizers: {', '.join(names) or 'none'}")
        v.regularizers = [(n, {**s, parts[2]: value} if n == parts[1] else s) for n, s in v.regularizers]
    else:
        raise ValueError(f"variant {variant.name}: sweep key {key!r} is not valid; valid: "
                         "regularizers.NAME.SETTING, method_settings.SETTING, merge.lam or merge.top_k")
    return v


def sweep_value(runner, variant, vdir: Path, value) -> list[dict]:
    """The variant at one swept value, on the probe plan, in `vdir/sweep/VALUE` (its rows; row 0
    is the base model). The values of a sweep are independent of one another: an executor
    (executor.py) runs them at the same time, and `choose_strength` then reads them back."""
    policy = runner.exp.strength
    stop_below = policy["ua_min"] if policy.get("early_stop") else None
    v = with_value(variant, variant.sweep["key"], value)
    with runner.probing(stop_below=stop_below):
        return SETTINGS[v.setting](runner, v, vdir / "sweep" / slug(str(value)))


def choose_strength(runner, variant, vdir: Path) -> tuple[object, Path, dict]:
    """Run the variant at every swept value on the probe plan, pick one with the experiment's
    policy, and return (the variant at that value, its directory, the record of the choice)."""
    key, values = variant.sweep["key"], variant.sweep["values"]
    policy = dict(runner.exp.strength)
    name = policy.pop("policy")
    early_stop = bool(policy.pop("early_stop", 0))
    requests = len(runner.exp.requested)
    table, stopped = {}, {}
    for value in values:
        rows = sweep_value(runner, variant, vdir, value)
        table[value] = rows[1:]  # after requests 1..n (row 0 is the base model)
        if len(rows) - 1 < requests:
            stopped[value] = len(rows) - 1
        runner.log(f"{variant.name} {key}={value}: probe UA {[round(r['UA'], 1) for r in rows[1:]]}, "
                   f"RA-I {rows[-1]['RA_I']:.1f}, RA-C {rows[-1]['RA_C']:.1f}")
    choice = {"policy": name, **policy, "early_stop": early_stop, "key": key, "values": list(values),
              **STRENGTH_POLICIES[name](table, **policy), "probe_seeds": list(runner.probe.seeds),
              "stopped_after": {str(k): n for k, n in stopped.items()}}
    if choice["chosen"] in stopped:  # no value reached the bar: the one run anyway needs its whole sequence
        v = with_value(variant, key, choice["chosen"])
        with runner.probing():
            SETTINGS[v.setting](runner, v, vdir / "sweep" / slug(str(choice["chosen"])))
    atomic_write_json(vdir / "strength.json", choice)
    runner.log(f"{variant.name}: {key}={choice['chosen']} ({choice['reason']})")
    chosen = choice["chosen"]
    return with_value(variant, key, chosen), vdir / "sweep" / slug(str(chosen)), choice
