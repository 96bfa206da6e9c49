"""speed-rece: rounds=0 is speed bit for bit; hardening keeps speed's protected inputs fixed and
leaves the adversary farther from the erased concept; bad settings refused."""
import pytest
import torch

from obliviate.continual import Run, build_hooks
from obliviate.delta import load_delta
from obliviate.request import Request


def _write(tmp_path, lines):
    path = tmp_path / "keep.txt"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_zero_rounds_is_speed_bit_for_bit(bundled_model, tmp_path):
    deltas = {}
    for method, settings in (("speed", {}), ("speed-rece", {"rounds": "0"})):
        run = Run.open_or_create(tmp_path / method, bundled_model)
        meta = run.unlearn(Request("fire", "style", method, settings), quiet=True)
        deltas[method] = load_delta(f"{meta['dir']}/delta.safetensors")
    a, b = deltas.values()
    assert a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)


def test_hardening_moves_no_protected_input_and_pushes_the_adversary_away(bundled_model, tmp_path):
    """Three rounds of adversaries: the kept prompts' keys and values stay where they were (to 1e-6
    relative, as in plain speed), and the best bounded adversary against the final model is
    farther from the concept's original keys and values than the one against plain speed."""
    kept = ["A circle image in autumn style", "A star image in sky style"]
    settings = {"preserve": "file", "preserve_prompts": _write(tmp_path, kept), "threshold": "0",
                "prior_filter": "false", "rounds": "3"}
    run = Run.open_or_create(tmp_path / "run", bundled_model)
    info = run.unlearn(Request("fire", "style", "speed-rece", settings), quiet=True)["closed_form"]
    assert info["kept_motion_max"] < 1e-6
    gaps = [r["gap"] for r in info["adversary"]]
    assert len(gaps) == 4 and gaps[-1] > 2 * gaps[0], gaps  # gaps[0]: the adversary against plain speed


@pytest.mark.parametrize("settings, message", [
    ({"rounds": "-1"}, "rounds"),
    ({"norm": "-1"}, "norm"),
    ({"adv_positions": "everywhere"}, "adv_positions"),
    ({"threshold": "2"}, "threshold"),
])
def test_bad_settings_are_refused_before_any_work(settings, message):
    with pytest.raises(ValueError, match=message):
        build_hooks(Request("fire", "style", "speed-rece", settings))
