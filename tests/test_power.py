"""Power (evaluate/power.py): intervals that cover, paired comparisons, RA-I two ways; the
fast-evaluation sampler options (x0_at, presets, UNet counts)."""
import itertools

import numpy as np
import pytest

from obliviate.evaluate.metrics import Record, compute_metrics
from obliviate.evaluate.power import (compare, decode_labels, encode_labels, interval, metric_groups, paired,
                                      power_metrics)
from obliviate.evaluate.sampler import SAMPLER_PRESETS, SamplerConfig, generate

STYLES = ["fire", "lava", "ice", "sky"]
OBJECTS = ["circle", "ring", "square"]
NEIGHBOURS = {"fire": ["lava"], "lava": ["fire"], "ice": ["sky"], "sky": ["ice"]}


def grid(seeds=range(5)):
    return [(s, o, k) for s in STYLES for o in OBJECTS for k in seeds]


def test_interval_of_a_known_distribution_covers_its_mean():
    """Bernoulli(p) hits in 4 concepts: the 95% interval covers 100 p in about 95% of data sets."""
    p, covered, widths = 0.7, 0, []
    groups = [np.arange(i * 60, (i + 1) * 60) for i in range(4)]
    for trial in range(60):
        hit = (np.random.default_rng(trial).random(240) < p).astype(float)
        ci = interval(hit, groups, n_boot=400, seed=trial)
        assert ci["lo"] <= ci["value"] <= ci["hi"]
        covered += ci["lo"] <= 100 * p <= ci["hi"]
        widths.append(ci["hi"] - ci["lo"])
    assert 0.85 <= covered / 60 <= 1.0
    # the half-width is about 1.96 sd of a mean of 240 Bernoulli(0.7) draws = 5.8 points
    assert 4.5 < np.mean(widths) / 2 < 7.0


def test_ua_interval_is_the_flipped_accuracy_interval():
    hit = (np.random.default_rng(0).random(100) < 0.2).astype(float)
    groups = [np.arange(100)]
    acc, ua = interval(hit, groups), interval(hit, groups, flip=True)
    assert ua["value"] == pytest.approx(100 - acc["value"])
    assert ua["lo"] == pytest.approx(100 - acc["hi"]) and ua["hi"] == pytest.approx(100 - acc["lo"])


def test_paired_difference_of_identical_variants_is_zero_and_inconclusive():
    hit = (np.random.default_rng(1).random(120) < 0.5).astype(float)
    res = paired(hit, hit.copy(), [np.arange(60), np.arange(60, 120)])
    assert res["difference"] == 0 and res["lo"] == 0 and res["hi"] == 0
    assert res["verdict"] == "inconclusive"


def test_paired_comparison_finds_a_real_difference_and_its_direction():
    rng = np.random.default_rng(2)
    b = (rng.random(200) < 0.5).astype(float)
    a = np.maximum(b, (rng.random(200) < 0.6).astype(float))  # a is b plus extra hits: clearly higher
    groups = [np.arange(100), np.arange(100, 200)]
    res = paired(a, b, groups, names=("a", "b"))
    assert res["difference"] > 0 and res["lo"] > 0 and res["verdict"] == "a higher"
    assert paired(b, a, groups, names=("b", "a"))["verdict"] == "a higher"
    # UA is 100 minus accuracy: more hits on an erased concept is lower UA
    assert paired(a, b, groups, flip=True, names=("a", "b"))["verdict"] == "b higher"
    with pytest.raises(ValueError, match="same images"):
        paired(a, b[:10], groups)


def test_a_small_difference_on_few_images_is_inconclusive():
    a = np.array([1, 0, 1, 1, 0, 1, 0, 1], dtype=float)
    b = np.array([1, 0, 1, 0, 0, 1, 0, 1], dtype=float)  # one image differs
    assert paired(a, b, [np.arange(8)])["verdict"] == "inconclusive"


def random_predictions(cells, seed):
    rng = np.random.default_rng(seed)
    ps = [c[0] if rng.random() < 0.7 else STYLES[rng.integers(4)] for c in cells]
    po = [c[1] if rng.random() < 0.8 else OBJECTS[rng.integers(3)] for c in cells]
    return ps, po


def test_power_metrics_agree_with_compute_metrics_and_report_ra_i_two_ways():
    cells = grid()
    ps, po = random_predictions(cells, 3)
    unlearned, retained = ["fire"], ["sky"]  # ice and lava: later in the sequence, not yet unlearned
    records = [Record(s, o, k, a, b) for (s, o, k), a, b in zip(cells, ps, po)]
    ref = compute_metrics(records, domain="style", unlearned=unlearned, retained=retained, retained_partners=OBJECTS)
    out = power_metrics(cells, ps, po, domain="style", unlearned=unlearned, retained=retained, partners=OBJECTS,
                        neighbours=NEIGHBOURS, styles=STYLES, objects=OBJECTS)
    for m in ("UA", "RA_I", "RA_C"):
        assert out["intervals"][m]["value"] == pytest.approx(ref[m])
    acc = ref["retained_accuracy"] | {c: compute_metrics(records, domain="style", unlearned=[], retained=[c],
                                                         retained_partners=OBJECTS)["RA_I"] for c in ("lava", "ice")}
    assert out["RA_I_all"] == pytest.approx(np.mean([acc["lava"], acc["ice"], acc["sky"]]))  # every style but fire
    assert out["RA_I_neighbours"] == pytest.approx(acc["lava"])  # fire's designed neighbour only
    assert decode_labels(out["predictions"]["style"], STYLES) == ps
    assert decode_labels(out["predictions"]["object"], OBJECTS) == po


def test_object_domain_groups_swap_roles_and_neighbours_are_optional():
    cells = grid(range(2))
    g = metric_groups(cells, "object", ["ring"], ["square"], STYLES)
    side, flip, ua = g["UA"]
    assert side == "own" and flip and all(cells[i][1] == "ring" for i in ua[0])
    assert len(g["RA_C"][2]) == len(STYLES)  # one group per style (the other domain)
    assert g["RA_I_neighbours"][2] == []  # no neighbourhoods given: not reported
    with pytest.raises(ValueError, match="domain"):
        metric_groups(cells, "colour", [], [], [])


def test_compare_reads_predictions_back_and_pairs_on_the_same_images():
    cells = grid()
    kw = dict(domain="style", unlearned=["fire"], retained=["sky"], partners=OBJECTS, neighbours=NEIGHBOURS,
              styles=STYLES, objects=OBJECTS)
    a = power_metrics(cells, *random_predictions(cells, 4), **kw)
    same = compare(a, a, cells, **kw)
    assert all(r["difference"] == 0 and r["verdict"] == "inconclusive" for r in same.values() if r)
    perfect = power_metrics(cells, [c[0] for c in cells], [c[1] for c in cells], **kw)
    res = compare(perfect, a, cells, names=("perfect", "noisy"), **kw)
    assert res["RA_I_all"]["verdict"] == "perfect higher" and res["RA_I_all"]["difference"] > 0
    assert res["RA_C"]["difference"] >= 0
    assert res["UA"]["verdict"] == "noisy higher"  # the perfect model still draws fire


def test_label_encoding_round_trips_and_refuses_too_many_labels():
    vocab = [f"c{i}" for i in range(60)]  # UnlearnCanvas has 60 styles
    labels = [vocab[i % 60] for i in range(500)]
    text = encode_labels(labels, vocab)
    assert len(text) == 500 and decode_labels(text, vocab) == labels
    with pytest.raises(ValueError, match="alphabet"):
        encode_labels(["x"], [f"c{i}" for i in range(200)])


# ------------------------------------------------------------------ sampler options
def test_sampler_presets_and_settings_are_checked():
    assert SamplerConfig().key() == "dpm20-g5"  # the reference's image cache is unchanged
    assert SamplerConfig.named("reference") == SamplerConfig()
    assert SamplerConfig().unet_evaluations() == 40
    assert SamplerConfig.named("dpm10-nocfg").unet_evaluations() == 10
    assert SamplerConfig.named("x0at5of20").unet_evaluations() == 10
    with pytest.raises(ValueError, match="preset 'fastest' is not valid"):
        SamplerConfig.named("fastest")
    with pytest.raises(ValueError, match="x0_at"):
        SamplerConfig(steps=5, x0_at=5)
    with pytest.raises(ValueError, match="x0_at needs a scheduler"):
        SamplerConfig(scheduler="euler", x0_at=2)
    assert set(SAMPLER_PRESETS) >= {"reference", "dpm5", "x0at5of20"}


def test_x0_at_stops_early_and_no_cfg_halves_the_unet_rows(random_model):
    from obliviate.model import load_pipeline

    model = random_model
    pipe = load_pipeline(model, device="cpu")
    rows = [0]
    hook = pipe.unet.register_forward_pre_hook(lambda m, a: rows.__setitem__(0, rows[0] + a[0].shape[0]))
    prompts, seeds = ["A star image in fire style", "A ring image in ice style"], [3, 4]
    counts, images = {}, {}
    for name, cfg in {"full": SamplerConfig(steps=6, guidance=3.0), "x0": SamplerConfig(steps=6, guidance=3.0, x0_at=5),
                      "x0early": SamplerConfig(steps=6, guidance=3.0, x0_at=2),
                      "nocfg": SamplerConfig(steps=6, guidance=1.0)}.items():
        rows[0] = 0
        images[name] = np.stack(generate(pipe, prompts, seeds, cfg)).astype(int)
        counts[name] = rows[0] / len(prompts)
        assert counts[name] == cfg.unet_evaluations()
    hook.remove()
    assert counts == {"full": 12, "x0": 10, "x0early": 4, "nocfg": 6}
    assert "step" not in vars(pipe.scheduler)  # the wrapped step is removed again
    # x0 predicted one step before the end is closer to the full trajectory than x0 at step 2
    late, early = (np.abs(images[k] - images["full"]).mean() for k in ("x0", "x0early"))
    assert late < early


def test_compare_variants_pairs_two_rows_of_a_summary():
    from obliviate.evaluate.evaluator import EvalPlan
    from obliviate.evaluate.power import compare_variants

    seq, retained, partners, seeds = ["fire", "ice"], ["lava", "sky"], OBJECTS, [1, 2, 3]
    cells = EvalPlan("style", seq, retained, partners, seeds).grid()
    kw = dict(domain="style", unlearned=["fire"], retained=retained, partners=partners, neighbours=NEIGHBOURS,
              styles=STYLES, objects=OBJECTS)
    noisy = power_metrics(cells, *random_predictions(cells, 5), **kw)
    perfect = power_metrics(cells, [c[0] for c in cells], [c[1] for c in cells], **kw)
    summary = {"domain": "style", "sequence": seq, "retained": retained, "partners": partners, "seeds": seeds,
               "labels": {"style": STYLES, "object": OBJECTS}, "neighbours": NEIGHBOURS,
               "variants": {"a": {"steps": [{}, perfect]}, "b": {"steps": [{}, noisy]}}}
    res = compare_variants(summary, "a", "b", 1)
    assert res["RA_I_all"]["verdict"] == "a higher"
    assert compare_variants(summary, "b", "b", 1)["RA_I"]["verdict"] == "inconclusive"
    with pytest.raises(ValueError, match="no per-image predictions"):
        compare_variants(summary, "a", "b", 0)
    with pytest.raises(ValueError, match="not in the summary"):
        compare_variants(summary, "a", "c", 1)


def test_intervals_are_the_same_in_another_process():
    """Deterministic given the seed: no set-order (hash-seed) dependence across processes."""
    import json
    import subprocess
    import sys

    code = ("import json; from test_power import *; cells = grid(); ps, po = random_predictions(cells, 7); "
            "print(json.dumps(power_metrics(cells, ps, po, domain='style', unlearned=['fire'], retained=['sky'], "
            "partners=OBJECTS, neighbours=NEIGHBOURS, styles=STYLES, objects=OBJECTS)['intervals']))")
    import os
    from pathlib import Path

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    outs = {subprocess.run([sys.executable, "-c", code], env={**env, "PYTHONHASHSEED": str(h)}, capture_output=True,
                           text=True, check=True).stdout for h in (1, 2)}
    assert len(outs) == 1 and json.loads(outs.pop())["RA_C"]["lo"] > 0
