"""rece: UCE hardened against closed-form adversarial embeddings. rounds=0 is uce bit for bit;
hardening moves the adversary's values toward the guide; bad settings are refused."""
import pytest
import torch

from obliviate.continual import Run
from obliviate.methods.rece import RECESettings, adversarial_embeddings, adversary_gap, gram
from obliviate.methods.uce import apply_edit, solve_edit
from obliviate.request import Request


def test_rounds_zero_is_uce_bit_for_bit(bundled_model, tmp_path):
    deltas = {}
    for method, settings in (("uce", {}), ("rece", {"rounds": 0})):
        run = Run.open_or_create(tmp_path / method, bundled_model)
        for c in ("fire", "ice"):
            run.unlearn(Request(c, "style", method, settings), quiet=True)
        deltas[method] = run.cumulative_delta()
    assert deltas["uce"].keys() == deltas["rece"].keys()
    assert all(torch.equal(deltas["uce"][n], deltas["rece"][n]) for n in deltas["uce"])


def test_hardening_moves_the_adversarys_values_toward_the_guide():
    gen = torch.Generator().manual_seed(0)
    d, n_layers = 12, 3
    weights = {f"w{i}": torch.randn(8, d, generator=gen, dtype=torch.float64) for i in range(n_layers)}
    erase = torch.randn(4, d, generator=gen, dtype=torch.float64)
    guide = torch.randn(4, d, generator=gen, dtype=torch.float64)
    preserve = torch.randn(6, d, generator=gen, dtype=torch.float64)
    k = gram(weights)
    plain = solve_edit(erase, guide, preserve)
    adv = adversarial_embeddings(plain, k, erase, norm=1.0)
    # the adversary stays within the norm of the states it imitates, and beats the plain erase rows
    assert (adv.norm(dim=1) <= erase.norm(dim=1) * (1 + 1e-6)).all()
    assert adversary_gap(plain, k, adv, erase, guide) < adversary_gap(plain, k, erase, erase, guide)
    # one round of hardening: erase the adversarial rows too, re-solved from the same W0
    hard = solve_edit(torch.cat([erase, adv]), torch.cat([guide, guide]), preserve)
    assert adversary_gap(hard, k, adv, erase, guide) > 2 * adversary_gap(plain, k, adv, erase, guide)
    # and the adversary's keys/values move toward the guide's (the anchor's) in every layer
    for w in weights.values():
        plain_out = apply_edit({"w": w}, plain)["w"] @ adv.T
        hard_out = apply_edit({"w": w}, hard)["w"] @ adv.T
        assert (hard_out - w @ guide.T).norm() < (plain_out - w @ guide.T).norm()


def test_rece_reports_a_growing_adversary_gap(bundled_model, tmp_path):
    run = Run.open_or_create(tmp_path / "run", bundled_model)
    # every erase row hardened: on one concept the default (its own tokens only) barely moves the gap
    meta = run.unlearn(Request("fire", "style", "rece", {"rounds": 2, "adv_positions": "after"}), quiet=True)
    rounds = meta["closed_form"]["adversary"]
    assert len(rounds) == 3  # before each round, and against the final model
    assert rounds[-1]["gap"] > rounds[0]["gap"]
    assert all(r["norm_ratio"] <= 1.0 + 1e-6 for r in rounds)


@pytest.mark.parametrize("settings, message", [({"rounds": -1}, "rounds"), ({"norm": -0.5}, "norm"),
                                                ({"adv_scale": -1.0}, "adv_scale"), ({"adv_positions": "all"}, "adv_positions")])
def test_bad_settings_are_refused(settings, message):
    with pytest.raises(ValueError, match=message):
        RECESettings(**settings)


def test_rece_refuses_a_run_made_by_uce(bundled_model, tmp_path):
    run = Run.open_or_create(tmp_path / "run", bundled_model)
    run.unlearn(Request("fire", "style", "uce", {}), quiet=True)
    with pytest.raises(ValueError, match="rece anchor=base"):
        run.unlearn(Request("ice", "style", "rece", {}), quiet=True)
