"""uce-null: UCE with the erased concepts' own directions removed from the edit's range.
dims=0 is uce bit for bit; no input reaches the removed directions; kept states barely move;
the closed-form adversary ends farther from the concept than on plain uce; bad settings refused."""
import pytest
import torch

from obliviate.continual import Run
from obliviate.methods.rece import adversarial_embeddings, adversary_gap, gram
from obliviate.methods.uce import solve_edit
from obliviate.methods.uce_null import UCENullSettings, concept_directions
from obliviate.request import Request


def test_dims_zero_is_uce_bit_for_bit(bundled_model, tmp_path):
    deltas = {}
    for method, settings in (("uce", {}), ("uce-null", {"dims": 0})):
        run = Run.open_or_create(tmp_path / method, bundled_model)
        for c in ("fire", "ice"):
            run.unlearn(Request(c, "style", method, settings), quiet=True)
        deltas[method] = run.cumulative_delta()
    assert all(torch.equal(deltas["uce"][n], deltas["uce-null"][n]) for n in deltas["uce"])


def test_directions_are_the_concepts_own_and_become_unreachable():
    gen = torch.Generator().manual_seed(0)
    d = 10
    weights = {f"w{i}": torch.randn(16, d, generator=gen, dtype=torch.float64) for i in range(3)}
    k = gram(weights)
    lower = torch.linalg.cholesky(k)
    # kept states live in the first 7 coordinates; the concept shares them and adds coordinate 8
    kept = torch.zeros(40, d, dtype=torch.float64)
    kept[:, :7] = torch.randn(40, 7, generator=gen, dtype=torch.float64)
    concept = torch.zeros(3, d, dtype=torch.float64)
    concept[:, :7] = torch.randn(3, 7, generator=gen, dtype=torch.float64)
    concept[:, 8] = 2.0
    guide = kept[:3].clone()
    m = solve_edit(concept, guide, kept)
    q = torch.linalg.qr(concept_directions(concept @ lower, torch.ones(3), kept @ lower, 1, 1e-2))[0]
    m_null = torch.linalg.solve(lower.T, (torch.eye(d, dtype=torch.float64) - q @ q.T) @ lower.T @ m)
    # no input at all has keys/values (in K's metric) along the removed direction
    probe = torch.randn(50, d, generator=gen, dtype=torch.float64)
    assert (probe @ m_null.T @ lower @ q).abs().max() < 1e-9
    # the kept states keep what uce gave them (their energy along the direction is tiny)
    assert (kept @ m_null.T - kept @ m.T).norm() / (kept @ m.T).norm() < 0.02
    # an unbounded adversary regenerates the concept exactly on plain uce (M is invertible),
    # and cannot on uce-null: the concept's coordinate 8 is out of reach
    before = adversary_gap(m, k, adversarial_embeddings(m, k, concept, norm=0), concept, guide)
    after = adversary_gap(m_null, k, adversarial_embeddings(m_null, k, concept, norm=0), concept, guide)
    assert before < 1e-6
    assert after > 0.05


def test_uce_null_reports_a_larger_adversary_gap_on_minicanvas(bundled_model, tmp_path):
    run = Run.open_or_create(tmp_path / "run", bundled_model)
    meta = run.unlearn(Request("fire", "style", "uce-null", {}), quiet=True)
    null = meta["closed_form"]["null"]
    assert null["directions"] == 2
    assert null["adversary_gap"] > 3 * null["adversary_gap_uce"]
    assert null["kept_energy_removed"] < 0.05 < null["erased_energy_removed"]


@pytest.mark.parametrize("settings, message", [({"dims": -1}, "dims"), ({"ridge": 0.0}, "ridge"),
                                                ({"positions": "all"}, "positions")])
def test_bad_settings_are_refused(settings, message):
    with pytest.raises(ValueError, match=message):
        UCENullSettings(**settings)


def test_too_many_directions_are_refused_before_the_edit(bundled_model, tmp_path):
    run = Run.open_or_create(tmp_path / "run", bundled_model)
    with pytest.raises(ValueError, match="every one of the text space"):
        run.unlearn(Request("fire", "style", "uce-null", {"dims": 64}), quiet=True)
