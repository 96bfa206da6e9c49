"""`obliviate list` and docs/METHODS.md: one generator, read from the settings classes and registries."""
from pathlib import Path

import pytest

from obliviate import reference
from obliviate.attacks import ATTACKS
from obliviate.cli import main
from obliviate.evaluate.sampler import SAMPLER_PRESETS
from obliviate.methods import METHODS
from obliviate.parsing import parse_settings
from obliviate.protocols import PROTOCOLS
from obliviate.regularizers import REGULARIZERS

ROOT = Path(__file__).resolve().parents[1]
REGISTRIES = {"methods": METHODS, "add-ons": REGULARIZERS, "attacks": ATTACKS}


def test_committed_methods_md_is_what_the_code_generates():
    committed = (ROOT / "docs" / "METHODS.md").read_text()
    assert committed == reference.markdown(), \
        "docs/METHODS.md is stale: regenerate it with `python -m obliviate.reference --out docs/METHODS.md`"


def test_every_registered_component_is_listed_once_with_a_description(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    expected = [*METHODS, *REGULARIZERS, *ATTACKS, *PROTOCOLS, *SAMPLER_PRESETS]
    for name in expected:
        lines = [ln for ln in out.splitlines() if ln.split()[:1] == [name]]
        assert len(lines) == 1, name
        assert len(lines[0].split()) > 2, f"{name} has no description"
    assert sorted(c.name for c in reference.components()) == sorted(expected)


def test_list_one_component_shows_its_defaults_and_ranges(capsys):
    assert main(["list", "conabl"]) == 0
    out = capsys.readouterr().out
    defaults = METHODS["conabl"].Settings()
    line = next(ln for ln in out.splitlines() if ln.split()[:1] == ["steps"])
    assert f"default {defaults.steps}" in line and "valid: >= 1" in line
    line = next(ln for ln in out.splitlines() if ln.split()[:1] == ["recipe"])
    assert "valid: obliviate, reference" in line


def test_list_unknown_name_is_one_clear_line(capsys):
    assert main(["list", "dropout"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'dropout'" in err and "valid: conabl" in err


def _outside(bounds):
    """A value the stated range excludes (just below its low end, or just above its high end)."""
    low, low_in, high, high_in = bounds
    values = []
    if low is not None:
        values.append(low - 1 if low_in else low)
    if high is not None:
        values.append(high + 1 if high_in else high)
    return values


@pytest.mark.parametrize("kind", sorted(REGISTRIES))
def test_stated_ranges_are_the_ranges_parsing_enforces(kind):
    """The documented ranges are not a second copy: a value outside one is refused by the parser."""
    checked = 0
    for name, cls in REGISTRIES[kind].items():
        for setting, bounds in reference.valid_ranges(cls.Settings).items():
            for value in _outside(bounds):
                with pytest.raises(ValueError, match=setting):
                    parse_settings(cls.Settings, {setting: value}, f"{kind} {name}")
                checked += 1
    assert checked > 0


def test_list_a_kind_shows_only_that_kind(capsys):
    assert main(["list", "attacks"]) == 0
    out = capsys.readouterr().out
    assert all(f"  {name} " in out for name in ATTACKS) and "conabl" not in out
