"""Strength selection at equal forgetting (experiment/strength.py), with fake evaluators."""
import contextlib
import json
from types import SimpleNamespace

import pytest

from obliviate.experiment import load_experiment
from obliviate.experiment.config import Variant
from obliviate.experiment.settings import SETTINGS
from obliviate.experiment.strength import STRENGTH_POLICIES, choose_strength, equal_forgetting, with_value


def m(ua, ra_i, ra_c):
    return {"UA": ua, "RA_I": ra_i, "RA_C": ra_c}


TABLE = {  # value -> probe metrics after requests 1, 2
    10: [m(95, 60, 70), m(92, 50, 60)],     # keeps UA, retention 55
    100: [m(93, 80, 80), m(91, 70, 74)],    # keeps UA, retention 72: the choice
    1000: [m(99, 90, 90), m(85, 95, 95)],   # best retention, but UA drops below 90 at request 2
}


def test_equal_forgetting_picks_the_best_retention_among_values_keeping_ua():
    out = equal_forgetting(TABLE)
    assert out["chosen"] == 100 and out["meets_ua"] is True
    rows = {r["value"]: r for r in out["table"]}
    assert rows[1000]["keeps_ua"] is False and rows[1000]["min_UA"] == 85  # UA after *every* request counts
    assert rows[100]["retention"] == pytest.approx(72) and rows[100]["UA_per_request"] == [93, 91]
    # the earlier rule, mean(UA, RA-I, RA-C), rewards the value that forgets less
    assert STRENGTH_POLICIES["probe-score"](TABLE)["chosen"] == 1000
    # a stricter bar leaves only value 10 (min UA 92)
    assert equal_forgetting(TABLE, ua_min=92)["chosen"] == 10


def test_a_variant_that_never_reaches_the_bar_is_reported_with_its_best_ua():
    table = {1: [m(80, 90, 90), m(70, 90, 90)], 2: [m(88, 50, 50), m(86, 50, 50)], 3: [m(60, 99, 99), m(95, 99, 99)]}
    out = equal_forgetting(table)  # none keeps the bar for a single request: the highest UA at request 1
    assert out["meets_ua"] is False and out["chosen"] == 2 and out["best_UA"] == 88 and out["kept_requests"] == 0
    assert "no value keeps UA >= 90" in out["reason"]


def test_under_early_stop_the_value_that_keeps_the_bar_longest_is_run_not_an_early_failure():
    # rows cut at their first request under 90 (early_stop), as styles ties-merge swept lam:
    # lam 1 fails at request 1 with 83.3, lam 3 holds for 3 requests and falls to 81.2 at the 4th
    table = {1.0: [m(83.3, 96, 90)], 2.0: [m(100, 60, 64), m(91.7, 65, 49), m(80.6, 48, 54)],
             3.0: [m(100, 50, 51), m(95.8, 54, 31), m(97.2, 31, 30), m(81.2, 33, 27)]}
    out = equal_forgetting(table)
    assert out["meets_ua"] is False and out["chosen"] == 3.0
    assert out["kept_requests"] == 3 and out["best_UA"] == pytest.approx(81.2)
    assert {r["value"]: r["kept_requests"] for r in out["table"]} == {1.0: 0, 2.0: 2, 3.0: 3}
    # finishing the chosen value's sequence afterwards (resume) does not change the choice
    table[3.0] = table[3.0] + [m(40, 20, 20)] * 4
    again = equal_forgetting(table)
    assert again["chosen"] == 3.0 and again["best_UA"] == pytest.approx(81.2)


def test_with_value_sets_a_regularizer_or_method_setting_and_refuses_others():
    v = Variant("x", regularizers=[("projection", {"mode": "grad"}), ("l2sp", {"weight": 1})])
    w = with_value(v, "regularizers.l2sp.weight", 100)
    assert dict(w.regularizers)["l2sp"] == {"weight": 100} and dict(v.regularizers)["l2sp"] == {"weight": 1}
    assert with_value(v, "method_settings.steps", 30).method_settings == {"steps": 30}
    with pytest.raises(ValueError, match="does not use"):
        with_value(v, "regularizers.selft.top_k", 0.1)
    with pytest.raises(ValueError, match="not valid"):
        with_value(v, "steps", 30)


class FakeRunner:
    """What choose_strength needs of a Runner: the policy, the probe plan, probing(), log."""

    def __init__(self, policy):
        self.exp = SimpleNamespace(strength={"policy": "equal-forgetting", "ua_min": 90.0, "early_stop": 1.0, **policy},
                                   requested=["fire", "ice"])
        self.probe = SimpleNamespace(seeds=[1, 2])
        self.probing_now, self.stop_below, self.calls = False, None, []

    @contextlib.contextmanager
    def probing(self, stop_below=None):
        self.probing_now, self.stop_below = True, stop_below
        yield
        self.probing_now, self.stop_below = False, None

    def stops_sweep(self, res, variant, request):
        return self.stop_below is not None and res["UA"] < self.stop_below

    def log(self, msg):
        pass


def fake_setting(runner, variant, vdir):
    """A setting whose fake evaluator scores a model by its l2sp weight: stronger keeps more
    but forgets less, UA falling under 90 at weight 1000 on the second request."""
    w = dict(variant.regularizers)["l2sp"]["weight"]
    ua = {10: [96, 94], 100: [95, 91], 1000: [93, 80], 5000: [70, 60]}[w]
    ret = {10: 40, 100: 60, 1000: 90, 5000: 95}[w]
    rows = [m(None, 100, 100)]
    for u in ua:  # what a real setting does: evaluate after each request, stop when the runner says so
        runner.calls.append((w, runner.probing_now, vdir.name))
        rows.append(m(u, ret, ret))
        if runner.stops_sweep(rows[-1], variant.name, len(rows) - 1):
            break
    return rows


def test_choose_strength_sweeps_on_probe_seeds_and_keeps_the_table(tmp_path, monkeypatch):
    monkeypatch.setitem(SETTINGS, "fake", fake_setting)
    runner = FakeRunner({"policy": "equal-forgetting", "ua_min": 90.0})
    variant = Variant("reg", setting="fake", regularizers=[("l2sp", {"weight": 1})],
                      sweep={"key": "regularizers.l2sp.weight", "values": [10, 100, 1000]})
    chosen, vdir, choice = choose_strength(runner, variant, tmp_path / "reg")
    # every value, on the probe plan, one call per request evaluated
    assert [c[:2] for c in runner.calls] == [(10, True)] * 2 + [(100, True)] * 2 + [(1000, True)] * 2
    assert dict(chosen.regularizers)["l2sp"]["weight"] == 100 and vdir == tmp_path / "reg" / "sweep" / "100"
    saved = json.loads((tmp_path / "reg" / "strength.json").read_text())
    assert saved["chosen"] == 100 and saved["probe_seeds"] == [1, 2] and len(saved["table"]) == 3
    assert saved["policy"] == "equal-forgetting" and saved["ua_min"] == 90.0


def test_a_value_under_the_bar_stops_early_and_a_chosen_one_is_finished(tmp_path, monkeypatch):
    monkeypatch.setitem(SETTINGS, "fake", fake_setting)
    # 5000 falls under 90 at request 1: its second request is never run
    runner = FakeRunner({})
    variant = Variant("reg", setting="fake", regularizers=[("l2sp", {"weight": 1})],
                      sweep={"key": "regularizers.l2sp.weight", "values": [100, 5000]})
    _, _, choice = choose_strength(runner, variant, tmp_path / "a")
    assert [c[0] for c in runner.calls] == [100, 100, 5000]
    assert choice["chosen"] == 100 and choice["stopped_after"] == {"5000": 1}
    assert {r["value"]: r["UA_per_request"] for r in choice["table"]}[5000] == [70]
    # early_stop 0: every request of every value
    runner = FakeRunner({"early_stop": 0})
    choose_strength(runner, variant, tmp_path / "b")
    assert [c[0] for c in runner.calls] == [100, 100, 5000, 5000]
    # no value reaches the bar: the one chosen (best UA) is run to the end, without the stop
    runner = FakeRunner({"ua_min": 99.0})
    variant.sweep["values"] = [1000, 5000]
    _, _, choice = choose_strength(runner, variant, tmp_path / "c")
    assert choice["meets_ua"] is False and choice["chosen"] == 1000 and choice["stopped_after"] == {"1000": 1, "5000": 1}
    assert [c[0] for c in runner.calls] == [1000, 5000, 1000, 1000]


def test_experiment_files_check_sweeps_and_policies(tmp_path):
    base = {"domain": "style", "sequence": ["fire"], "eval": {"seeds": [188], "probe_seeds": [1]},
            "variants": [{"name": "a", "regularizers": [{"name": "l2sp", "weight": 1}],
                          "sweep": {"key": "regularizers.l2sp.weight", "values": [1, 10]}}]}
    exp = load_experiment(base)
    assert exp.strength == {"policy": "equal-forgetting", "ua_min": 90.0, "early_stop": 1.0}
    assert exp.variants[0].sweep["values"] == [1, 10]
    assert load_experiment({**base, "strength": {"policy": "probe-score"}}).strength == {"policy": "probe-score"}
    bad = [
        ({"strength": {"policy": "best"}}, "strength policy 'best' is not valid"),
        ({"strength": {"ua_min": "high"}}, "ua_min must be a number"),
        ({"variants": [{"name": "a", "sweep": {"key": "regularizers.l2sp.weight", "values": [1]}}]}, "does not use"),
        ({"variants": [{"name": "a", "sweep": {"key": "method_settings.steps", "values": []}}]}, "sweep is"),
        ({"variants": [{"name": "a", "sweep": {"key": "method_settings.steps", "values": [0]}}]}, "steps"),
    ]
    for patch, message in bad:
        with pytest.raises(ValueError, match=message):
            load_experiment({**base, **patch})


def test_power_settings_in_experiment_files():
    base = {"domain": "style", "sequence": ["fire"], "eval": {"seeds": [188, 288, 588], "probe_seeds": [1]},
            "variants": [{"name": "a"}]}
    from obliviate.evaluate.evaluator import load_protocol
    from obliviate.experiment.runner import resolve_partners
    from obliviate.minicanvas import bundled_path

    exp = load_experiment({**base, "partners": "all", "eval": {**base["eval"], "sampler": "dpm5"}})
    protocol = load_protocol("minicanvas", bundled_path())
    assert resolve_partners(protocol, "style", exp.partners) == protocol.objects  # every concept of the other domain
    assert resolve_partners(protocol, "object", exp.partners) == protocol.styles
    assert resolve_partners(protocol, "style", ["ring"]) == ["ring"]
    assert (exp.sampler.steps, exp.sampler.guidance, exp.sampler.scheduler) == (5, 5.0, "dpm")
    exp = load_experiment({**base, "eval": {**base["eval"], "sampler": {"preset": "x0at5of20", "guidance": 3.0}}})
    assert (exp.sampler.x0_at, exp.sampler.guidance) == (5, 3.0)
    with pytest.raises(ValueError, match="preset 'quick' is not valid"):
        load_experiment({**base, "eval": {**base["eval"], "sampler": "quick"}})
    with pytest.raises(ValueError, match="partners must be a list of names or all"):
        load_experiment({**base, "partners": "every"})


def test_runner_sweeps_then_reports_the_chosen_value_without_retraining(quick_model, tmp_path):
    from obliviate.experiment import Runner

    model, _ = quick_model
    exp = load_experiment({
        "name": "sweep", "model": str(model), "domain": "style", "sequence": ["fire", "ice"], "retained": ["lava"],
        "partners": ["circle", "star"], "eval": {"seeds": [188], "probe_seeds": [5], "sampler": {"steps": 2, "guidance": 3.0}},
        "strength": {"ua_min": 0},  # every value qualifies: the best retention wins
        "variants": [{"name": "uce", "method": "uce", "sweep": {"key": "method_settings.erase_scale", "values": [0.5, 1.0]}}],
    })
    summary = Runner(exp, tmp_path / "out", quiet=True).run()
    vdir = tmp_path / "out" / "variants" / "uce"
    choice = json.loads((vdir / "strength.json").read_text())
    assert summary["variants"]["uce"]["strength"]["chosen"] == choice["chosen"] in (0.5, 1.0)
    best = max(choice["table"], key=lambda r: r["retention"])
    assert choice["chosen"] == best["value"]
    assert summary["variants"]["uce"]["config"]["method"]["erase_scale"] == choice["chosen"]
    for value in ("0-5", "1-0"):  # each value evaluated on the probe seed, in probe-eval/
        probe = json.loads((vdir / "sweep" / value / "probe-eval" / "step002.json").read_text())
        assert probe["seeds"] == [5]
    chosen_dir = vdir / "sweep" / ("0-5" if choice["chosen"] == 0.5 else "1-0")
    reported = json.loads((chosen_dir / "eval" / "step002.json").read_text())
    assert reported["seeds"] == [188] and len(list((chosen_dir / "run" / "steps").iterdir())) == 2  # training reused
    step = summary["variants"]["uce"]["steps"][2]
    assert {"RA_I_all", "RA_I_neighbours", "intervals", "predictions"} <= set(step)
    assert step["intervals"]["UA"]["lo"] <= step["UA"] <= step["intervals"]["UA"]["hi"]
