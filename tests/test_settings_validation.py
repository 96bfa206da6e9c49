"""Settings are validated one way (parsing.Checked): Literal choices and declared ranges, checked
when an instance is made, whichever way it is made; a class's own `complete()` holds only rules
those cannot say. Checked for every registered method, add-on and attack, and LoRA's settings."""
import dataclasses

import pytest

from obliviate.attacks import ATTACKS
from obliviate.lora import LoraSettings
from obliviate.methods import METHODS
from obliviate.parsing import Checked, _choices, _hints, parse_settings, valid_ranges
from obliviate.regularizers import REGULARIZERS

SETTINGS = sorted({(f"{kind} {name}", cls.Settings) for kind, registry in
                   (("method", METHODS), ("regularizer", REGULARIZERS), ("attack", ATTACKS))
                   for name, cls in registry.items()} | {("lora", LoraSettings)}, key=lambda x: x[0])


@pytest.mark.parametrize("where,cls", SETTINGS, ids=[w for w, _ in SETTINGS])
def test_every_settings_class_validates_through_checked_alone(where, cls):
    assert issubclass(cls, Checked), where
    # no hand-written __post_init__: rules beyond choices and ranges live in complete()
    assert cls.__post_init__ is Checked.__post_init__, where
    cls()  # the defaults are valid


def _outside(bounds):
    low, low_in, high, high_in = bounds
    if low is not None:
        return low - 1 if low_in else low
    return high + 1 if high_in else high


@pytest.mark.parametrize("where,cls", SETTINGS, ids=[w for w, _ in SETTINGS])
def test_every_declared_range_and_choice_is_refused_from_python_and_from_strings(where, cls):
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = _hints(cls)
    checked = 0
    for name, bounds in valid_ranges(cls).items():
        if name not in fields:
            continue
        bad = _outside(bounds)
        if hints[name] is int or "int" in str(hints[name]).split("|")[0]:
            bad = int(bad)
        with pytest.raises(ValueError, match=f"setting {name}=.* is out of range; valid: "):
            cls(**{name: bad})
        with pytest.raises(ValueError, match=f"^{where}: setting {name}=.* is out of range"):
            parse_settings(cls, {name: str(bad)}, where)
        checked += 1
    for name in fields:
        if _choices(hints[name]):
            with pytest.raises(ValueError, match=f"setting {name}='no-such-choice' is not a valid choice; valid: "):
                cls(**{name: "no-such-choice"})
            checked += 1
    assert checked or not fields, f"{where}: nothing declared to check"
