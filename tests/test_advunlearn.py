"""advunlearn: the text-side defence trains the text encoder's layers after any method (closed
forms included), the ledger keeps and replays that change (load, export, attacks), it leaves the
method's denoiser as it was, it is deterministic and resumes, and it is refused where it cannot apply."""
import pytest
import torch
from safetensors.torch import load_file

from obliviate.attacks import build_attack, load_target, run_attack
from obliviate.continual import Run
from obliviate.evaluate.evaluator import load_protocol
from obliviate.evaluate.sampler import SamplerConfig
from obliviate.model import TEXT_ENCODER_PREFIX, edited, encode_prompts, load_pipeline
from obliviate.protocols import minicanvas_catalog
from obliviate.request import Request

QUICK = {"steps": "4", "every": "2", "attack_steps": "1", "images": "2", "batch_size": "2", "tokens": "1",
         "retain_batch": "4"}
TINY_CONABL = {"steps": "4", "anchor_images": "2", "sampler_steps": "2", "batch_size": "2"}


def defended(concept, method="speed", settings=None, defence=None):
    return Request(concept, "style", method, dict(settings or {}), [("advunlearn", {**QUICK, **(defence or {})})])


def edited_params(pipe):
    return dict(edited(pipe).named_parameters())


def delta_of(meta):
    return load_file(f"{meta['dir']}/delta.safetensors")


def test_the_defence_trains_the_encoder_layers_and_the_ledger_replays_them(random_model, tmp_path):
    run = Run.open_or_create(tmp_path / "run", random_model)
    first = run.unlearn(defended("fire"), quiet=True)
    second = run.unlearn(defended("ice"), quiet=True)
    delta = delta_of(second)
    text = {n[len(TEXT_ENCODER_PREFIX):]: v for n, v in delta.items() if n.startswith(TEXT_ENCODER_PREFIX)}
    base = load_pipeline(random_model)
    layers = [n for n, _ in base.text_encoder.named_parameters() if ".embeddings." not in f".{n}"]
    # every layer tensor of the encoder is kept, no embedding row, and they changed
    assert sorted(text) == sorted(layers) and sum(float(v.abs().sum()) for v in text.values()) > 0
    assert second["advunlearn"]["concepts"] == ["fire", "ice"] and second["timings"]["before_method_seconds"] > 0
    assert "text_encoder" in second["drift"]["parent"]["groups"]
    # loading, exporting and attacking read the whole cumulative change, text encoder included
    cumulative = run.cumulative_delta()
    loaded = run.load()
    base_te = dict(base.text_encoder.named_parameters())
    for n, p in loaded.text_encoder.named_parameters():
        expected = base_te[n] + cumulative.get(TEXT_ENCODER_PREFIX + n, torch.zeros_like(p))
        assert torch.equal(p.detach(), expected.detach()), n
    out = run.export(tmp_path / "export")
    exported = load_pipeline(out)
    for (n, p), (_, q) in zip(exported.text_encoder.named_parameters(), loaded.text_encoder.named_parameters()):
        assert torch.equal(p, q), n
    target = load_target(random_model, cumulative, ["fire", "ice"], "style", load_protocol("minicanvas", random_model),
                         ["circle"], [0], SamplerConfig(steps=2), base_hash="t")
    moved = next(n for n in layers if n.endswith("weight"))
    assert torch.equal(dict(target.pipe.text_encoder.named_parameters())[moved], dict(loaded.text_encoder.named_parameters())[moved])
    with target.base():  # the attacks' pretrained model: the base encoder (up to the rounding of subtracting the delta)
        assert torch.allclose(dict(target.pipe.text_encoder.named_parameters())[moved], base_te[moved], atol=1e-6)
    # every attack runs on the defended model and leaves it as it was (relearn fine-tunes the denoiser's tensors)
    before = {n: p.detach().clone() for n, p in edited_params(target.pipe).items()}
    tiny = {"inversion": {"steps": 1, "images": 2, "batch_size": 2}, "prefix": {"steps": 1, "images": 2, "batch_size": 2},
            "paraphrase": {}, "relearn": {"max_steps": 1, "check_every": 1, "images": 2, "batch_size": 2,
                                          "check_partners": 1}}
    for name, settings in tiny.items():
        assert len(run_attack(target, build_attack(name, settings))["concepts"]) == 2, name
    assert all(torch.equal(p, before[n]) for n, p in edited_params(target.pipe).items())


def test_the_defence_changes_the_encoder_layers_only_and_the_method_then_reads_them(random_model, tmp_path):
    import contextlib

    from obliviate.model import select_parameters
    from obliviate.parsing import parse_settings
    from obliviate.regularizers.advunlearn import AdvUnlearn, AdvUnlearnSettings
    from obliviate.trainer import Context

    pipe = load_pipeline(random_model)
    request = defended("fire")
    params = select_parameters(pipe.unet, request.param_group)
    start = {n: p.detach().clone() for n, p in params.items()}
    ctx = Context(pipe=pipe, request=request, params=params, pretrained=start, start=start, catalog=minicanvas_catalog(),
                  unlearned_before=[], cache_dir=tmp_path, base_hash="test", restore_base=contextlib.nullcontext, quiet=True)
    unet = {n: p.detach().clone() for n, p in pipe.unet.named_parameters()}
    text = {n: p.detach().clone() for n, p in pipe.text_encoder.named_parameters()}
    prompt = "A circle image in fire style"
    before = ctx.encode([prompt]).hidden
    hook = AdvUnlearn(parse_settings(AdvUnlearnSettings, QUICK, "advunlearn"))
    hook.setup(ctx)
    hook.before_method(ctx)
    # the denoiser is bit-identical; the encoder's layers moved, its embedding tables did not
    assert all(torch.equal(unet[n], p) for n, p in pipe.unet.named_parameters())
    moved = {n for n, p in pipe.text_encoder.named_parameters() if not torch.equal(text[n], p)}
    assert moved and all(".embeddings." not in f".{n}" for n in moved)
    assert all(p.grad is None and not p.requires_grad for p in pipe.text_encoder.parameters())
    # the context's cached text states are dropped, so the method encodes with the new encoder
    ctx.text_encoder_changed()
    assert not torch.equal(ctx.encode([prompt]).hidden, before)


def test_the_retain_term_holds_retained_prompts_where_the_base_encoder_puts_them(random_model, tmp_path):
    cat = minicanvas_catalog()
    base = load_pipeline(random_model)
    erased = [cat.prompt_with("fire", "style", o) for o in cat.objects]
    kept = [cat.prompt_with(s, "style", o) for s in cat.styles if s != "fire" for o in cat.objects[:3]]

    def changes(retain_weight):
        run = Run.open_or_create(tmp_path / f"run{retain_weight}", random_model)
        run.unlearn(defended("fire", defence={"steps": "12", "retain_batch": "32", "retain_weight": retain_weight}),
                    quiet=True)
        after = run.load()
        return [float((encode_prompts(after, p) - encode_prompts(base, p)).norm() / encode_prompts(base, p).norm())
                for p in (erased, kept)]

    (_, kept_free), (_, kept_held) = changes("0"), changes("10")
    assert kept_held < 0.5 * kept_free, (kept_held, kept_free)


def test_deterministic_and_a_killed_request_resumes_to_the_same_bytes(random_model, tmp_path):
    request = defended("fire", "conabl", TINY_CONABL)
    whole = Run.open_or_create(tmp_path / "whole", random_model).unlearn(request, quiet=True)
    killed = Run.open_or_create(tmp_path / "killed", random_model)
    assert killed.unlearn(request, quiet=True, stop_after=2, checkpoint_every=1)["interrupted"]
    resumed = killed.unlearn(request, quiet=True)
    a, b = delta_of(whole), delta_of(resumed)
    assert sorted(a) == sorted(b) and all(torch.equal(a[n], b[n]) for n in a)
    assert any(n.startswith(TEXT_ENCODER_PREFIX) for n in a)


def test_refused_where_it_cannot_apply(random_model, tmp_path):
    from obliviate.testing import save_random_pipeline

    sdxl = save_random_pipeline(tmp_path / "sdxl", "sdxl", "tiny", seed=1)
    with pytest.raises(ValueError, match="'advunlearn' does not support SDXL pipelines"):
        Run.open_or_create(tmp_path / "run-sdxl", sdxl, write_now=False).unlearn(
            Request("fire", "other", "speed", {}, [("advunlearn", {})]), quiet=True)
    run = Run.open_or_create(tmp_path / "run", random_model, write_now=False)
    with pytest.raises(ValueError, match="'advunlearn' has no LoRA meaning yet"):
        run.unlearn(Request("fire", "style", "conabl", dict(TINY_CONABL), [("advunlearn", {})], param_group="lora"),
                    quiet=True)
    with pytest.raises(ValueError, match="steps"):
        run.unlearn(Request("fire", "style", "speed", {}, [("advunlearn", {"steps": "0"})]), quiet=True)
    # a closed form still refuses add-ons that act on a loss, and names only them
    with pytest.raises(ValueError, match=r"regularizer\(s\) l1sp cannot apply"):
        run.unlearn(Request("fire", "style", "speed", {}, [("l1sp", {}), ("advunlearn", {})]), quiet=True)
    assert not (tmp_path / "run").exists() and not (tmp_path / "run-sdxl").exists()


def test_a_closed_form_solves_on_the_defended_encoder_not_on_cached_base_states(random_model, tmp_path):
    """uce+advunlearn's denoiser change is uce's on a model whose encoder is the defended one
    (up to the rounding of base + delta), although an earlier plain uce request filled the shared
    cache with the base encoder's states."""
    import shutil

    cache = tmp_path / "cache"
    plain = delta_of(Run.open_or_create(tmp_path / "plain", random_model).unlearn(Request("fire", "style", "uce"),
                                                                                  quiet=True, cache_dir=cache))
    meta = Run.open_or_create(tmp_path / "defended", random_model).unlearn(defended("fire", "uce"), quiet=True,
                                                                          cache_dir=cache)
    delta = delta_of(meta)
    # the base model with the defended encoder, as a model directory of its own
    pipe = load_pipeline(random_model)
    with torch.no_grad():
        for n, p in pipe.text_encoder.named_parameters():
            p.add_(delta.get(TEXT_ENCODER_PREFIX + n, torch.zeros_like(p)))
    pipe.save_pretrained(tmp_path / "with-encoder")
    for extra in ("classifiers", "minicanvas.json"):
        src = random_model / extra
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, tmp_path / "with-encoder" / extra)
    solved = delta_of(Run.open_or_create(tmp_path / "again", tmp_path / "with-encoder").unlearn(
        Request("fire", "style", "uce"), quiet=True, cache_dir=cache))
    assert sorted(solved) == sorted(n for n in delta if not n.startswith(TEXT_ENCODER_PREFIX))
    gap = max(float((solved[n] - delta[n]).abs().max()) for n in solved)
    stale = max(float((plain[n] - delta[n]).abs().max()) for n in solved)
    assert gap < 1e-4 * stale, (gap, stale)


def test_from_the_command_line_and_an_experiment_file(random_model, tmp_path, capsys):
    from obliviate.cli import main
    from obliviate.experiment.config import parse_variant

    settings = ",".join(f"{k}={v}" for k, v in QUICK.items())
    base = ["--quiet", "unlearn", "--run", str(tmp_path / "run"), "--model", str(random_model), "--concept", "fire",
            "--domain", "style", "--method", "speed"]
    assert main(base + ["--reg", f"advunlearn:{settings}", "--reg", "l1sp"]) == 2
    assert "regularizer(s) l1sp cannot apply" in capsys.readouterr().err and not (tmp_path / "run").exists()
    assert main(base + ["--reg", f"advunlearn:{settings}"]) == 0
    (step,) = Run.open_or_create(tmp_path / "run").steps()
    assert step["config"]["regularizers"][0]["name"] == "advunlearn"
    variant = parse_variant({"name": "speed+advunlearn", "method": "speed", "regularizers": [{"name": "advunlearn", "steps": 60}]},
                            "style")
    assert variant.method == "speed" and variant.regularizers == [("advunlearn", {"steps": 60})]
    with pytest.raises(ValueError, match="steps"):
        parse_variant({"name": "bad", "method": "speed", "regularizers": [{"name": "advunlearn", "steps": 0}]}, "style")
