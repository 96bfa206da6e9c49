"""Generate docs/RESULTS.md (and docs/results/*.png) from the study's summary.json files.

    python scripts/results.py                 # the answer and the second edition's section only (scripts/study.py)
    python scripts/results.py --edition 1     # the whole first-edition document (drops hand-written sections)

Every number in RESULTS.md comes from those files; verdicts are computed by the rules
written next to them, not typed by hand.
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

METRICS = ("UA", "RA_I", "RA_C")

OURS = ("Our variants (strengths from the probe-seed sweep): `nearest-projection+l2sp` protects only the 3 retained "
        "concepts nearest the target (plus everything unlearned earlier) with exact update projection, plus L2-SP; "
        "`replay` distils the request's starting model on prompts of every protected concept "
        "(regularizers/replay.py); `replay-holdout` leaves half of the evaluated retained concepts out of replay, to "
        "measure how much protection reaches concepts it never saw; `template-projection` takes the projection's "
        "columns from each concept's state inside the prompt template instead of after the neutral prefix (the "
        "diagnosis section below shows why), alone and with L2-SP.")


def run_files(studies, pattern: str) -> dict[str, Path]:
    """Run name -> its file matching `pattern` (e.g. "styles-s*/summary.json"), over the study
    folders in order: runs/study first, then the summaries committed under docs/results/study
    (scripts/study.py). A finished summary (with wall_seconds) beats an unfinished one; among
    equals the earlier folder wins."""
    found: dict[str, Path] = {}
    for folder in studies:
        for path in sorted(Path(folder).glob(pattern)):
            name = path.parent.name
            if name not in found or (not finished(found[name]) and finished(path)):
                found[name] = path
    return dict(sorted(found.items()))


def finished(path: Path) -> bool:
    try:
        return json.loads(Path(path).read_text()).get("wall_seconds") is not None
    except (OSError, ValueError, AttributeError):
        return False


def load(studies, domain: str) -> dict[int, dict]:
    studies = [studies] if isinstance(studies, (str, Path)) else studies
    out = {}
    for name, path in run_files(studies, f"{domain}-s*/summary.json").items():
        seed = int(name.split("-s")[-1])
        out[seed] = json.loads(path.read_text())
    return out


def value(summary, variant, step, key):
    steps = summary["variants"][variant]["steps"]
    return steps[step][key] if step < len(steps) else None


def stats(runs: dict[int, dict], variant: str, step: int, key: str) -> tuple[float | None, float | None]:
    vals = [value(s, variant, step, key) for s in runs.values() if variant in s["variants"]]
    vals = [v for v in vals if v is not None]
    if not vals:
        return None, None
    return statistics.mean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


def fmt(mean_sd, digits=1):
    m, sd = mean_sd
    if m is None:
        return "–"
    return f"{m:.{digits}f} ± {sd:.{digits}f}"


def table(runs, variants, step) -> list[str]:
    lines = ["| variant | setting | UA | RA-I | RA-C | mean | drift L2 | seeds |", "|---|---|---|---|---|---|---|---|"]
    any_run = next(iter(runs.values()))
    for v in variants:
        setting = any_run["variants"][v]["setting"]
        n = sum(v in r["variants"] for r in runs.values())
        means = [stats(runs, v, step, k)[0] for k in METRICS]
        avg = f"{sum(means) / 3:.1f}" if None not in means else "–"
        cells = [fmt(stats(runs, v, step, k)) for k in METRICS] + [avg, fmt(stats(runs, v, step, "drift_l2"), 3), str(n)]
        lines.append(f"| {v} | {setting} | " + " | ".join(cells) + " |")
    return lines


def curves(runs, variants, domain, out_dir: Path) -> list[str]:
    n_steps = len(next(iter(runs.values()))["variants"][variants[0]]["steps"])
    fig, axes = plt.subplots(1, 4, figsize=(22, 4.5))
    for ax, key in zip(axes, (*METRICS, "drift_l2")):
        for i, v in enumerate(variants):
            ys = [stats(runs, v, t, key)[0] for t in range(n_steps)]
            xs = [t for t, y in zip(range(n_steps), ys) if y is not None]
            ax.plot(xs, [y for y in ys if y is not None], marker="os^Dv"[i % 5], ms=3, label=v, color=plt.cm.tab20(i % 20))
        ax.set_title(f"{domain}: {key.replace('_', '-')}" + (" (cumulative)" if key == "drift_l2" else ""))
        ax.set_xlabel("requests")
        ax.grid(alpha=0.3)
    axes[-1].legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    path = out_dir / f"curves-{domain}.png"
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return [f"![{domain} curves](results/{path.name})"]


def cost_rows(runs, variants) -> list[str]:
    lines = ["| variant | train s / request (mean) | train s: first -> last request | growth (s per extra request, least squares) | eval s / step |",
             "|---|---|---|---|---|"]
    for v in variants:
        trains, evals, first, last, xs = [], [], [], [], []
        for s in runs.values():
            if v not in s["variants"]:
                continue
            steps = s["variants"][v]["steps"][1:]
            xs += [x["step"] for x in steps]
            trains += [x["train_seconds"] for x in steps]
            evals += [x["eval_seconds"] for x in s["variants"][v]["steps"]]
            first.append(steps[0]["train_seconds"])
            last.append(steps[-1]["train_seconds"])
        mx, my = statistics.mean(xs), statistics.mean(trains)
        slope = sum((x - mx) * (y - my) for x, y in zip(xs, trains)) / max(1e-9, sum((x - mx) ** 2 for x in xs))
        lines.append(f"| {v} | {my:.1f} | {statistics.mean(first):.1f} -> {statistics.mean(last):.1f} | {slope:+.2f} | "
                     f"{statistics.mean(evals):.1f} |")
    return lines


def verdicts(runs, last, has) -> list[str]:
    """Each published claim, checked by an explicit rule on the last-step means."""
    m = lambda v, k: stats(runs, v, last, k)[0]
    m0 = lambda v, k: stats(runs, v, 0, k)[0]
    out = []
    if has("conabl") and has("simultaneous"):
        drop_seq = m0("conabl", "RA_I") - m("conabl", "RA_I")
        drop_sim = m0("simultaneous", "RA_I") - m("simultaneous", "RA_I")
        ok = drop_seq > 10 and drop_sim < 0.5 * drop_seq
        out.append(f"- **(a) sequential base collapses in retention, simultaneous does not** — rule: sequential RA-I drop > 10 points "
                   f"and simultaneous drop < half of it. Sequential ConAbl RA-I {m0('conabl', 'RA_I'):.1f} -> {m('conabl', 'RA_I'):.1f} "
                   f"(drop {drop_seq:.1f}); simultaneous {m0('simultaneous', 'RA_I'):.1f} -> {m('simultaneous', 'RA_I'):.1f} "
                   f"(drop {drop_sim:.1f}); UA {m('conabl', 'UA'):.1f} vs {m('simultaneous', 'UA'):.1f}. **{'holds' if ok else 'does not hold'}**.")
    singles = [v for v in ("conabl+l1sp", "conabl+l2sp", "conabl+selft", "conabl+projection") if has(v)]
    if has("conabl") and singles:
        parts, all_ok = [], True
        for v in singles:
            less_drift = m(v, "drift_l2") < m("conabl", "drift_l2")
            better = m(v, "RA_I") > m("conabl", "RA_I") and m(v, "RA_C") >= m("conabl", "RA_C") - 1
            all_ok &= less_drift and better
            parts.append(f"{v}: drift {m(v, 'drift_l2'):.3f} vs {m('conabl', 'drift_l2'):.3f}, UA {m(v, 'UA'):.1f} vs {m('conabl', 'UA'):.1f}, RA-I {m(v, 'RA_I'):.1f} vs "
                         f"{m('conabl', 'RA_I'):.1f}, RA-C {m(v, 'RA_C'):.1f} vs {m('conabl', 'RA_C'):.1f} "
                         f"({'yes' if less_drift and better else 'no'})")
        out.append("- **(b) every add-on reduces drift and improves retention over the base** — rule: lower cumulative drift, "
                   "higher RA-I, RA-C not lower by more than 1 point. " + "; ".join(parts) + f". **{'holds' if all_ok else 'does not hold for every add-on'}**.")
    if has("conabl+projection") and len(singles) > 1:
        best = max(singles, key=lambda v: m(v, "RA_I"))
        out.append(f"- **(c) projection gives the best in-domain retention among single regularizers** — RA-I: "
                   + ", ".join(f"{v} {m(v, 'RA_I'):.1f}" for v in singles)
                   + f" (UA: " + ", ".join(f"{m(v, 'UA'):.1f}" for v in singles) + f"). Best: {best}. "
                   f"**{'holds' if best == 'conabl+projection' else 'does not hold'}**.")
    for combo, other in (("conabl+projection+selft", "conabl+selft"), ("conabl+projection+l2sp", "conabl+l2sp")):
        if has(combo) and has(other) and has("conabl+projection"):
            ok = m(combo, "RA_I") > max(m(other, "RA_I"), m("conabl+projection", "RA_I"))
            out.append(f"- **(d) {combo} beats either part alone** (rule: higher RA-I than both) — RA-I {m(combo, 'RA_I'):.1f} vs "
                       f"projection {m('conabl+projection', 'RA_I'):.1f} and {other} {m(other, 'RA_I'):.1f}; UA {m(combo, 'UA'):.1f} vs "
                       f"{m('conabl+projection', 'UA'):.1f} / {m(other, 'UA'):.1f}. **{'holds' if ok else 'does not hold'}**.")
    if has("conabl+projection") and has("conabl+projection-update"):
        g, u = "conabl+projection", "conabl+projection-update"
        out.append(f"- **(e) exact `update` projection vs published `grad` projection** — UA {m(u, 'UA'):.1f} vs {m(g, 'UA'):.1f}, "
                   f"RA-I {m(u, 'RA_I'):.1f} vs {m(g, 'RA_I'):.1f}, RA-C {m(u, 'RA_C'):.1f} vs {m(g, 'RA_C'):.1f}, drift "
                   f"{m(u, 'drift_l2'):.3f} vs {m(g, 'drift_l2'):.3f} (update vs grad).")
    return out


def beyond(runs, last, variants) -> list[str]:
    """Our idea against the best published variant (by the mean of UA, RA-I, RA-C)."""
    m = lambda v, k: stats(runs, v, last, k)[0]
    score = lambda v: sum(m(v, k) for k in METRICS) / 3
    ours = [v for v in variants if v.startswith("ours")]
    published = [v for v in variants if not v.startswith("ours") and all(m(v, k) is not None for k in METRICS)]
    if not ours or not published:
        return []
    best = max(published, key=score)
    # the spread of a mean over seeds: half the seeds' range of the per-seed means, for both rows
    def seed_scores(v):
        return [sum(r["variants"][v]["steps"][last][k] for k in METRICS) / 3 for r in runs.values()
                if v in r["variants"] and len(r["variants"][v]["steps"]) > last]
    lines = [f"After request {last}: best published variant by mean(UA, RA-I, RA-C) is **{best}** ({score(best):.1f}: "
             f"UA {m(best, 'UA'):.1f}, RA-I {m(best, 'RA_I'):.1f}, RA-C {m(best, 'RA_C'):.1f}; per seed "
             f"{', '.join(f'{x:.1f}' for x in seed_scores(best))}).", ""]
    for v in ours:
        if m(v, "UA") is None:
            continue
        a, b = seed_scores(v), seed_scores(best)
        verdict = "better" if score(v) > score(best) else "not better"
        overlap = (min(a) <= max(b)) if verdict == "better" else (max(a) >= min(b))
        note = " (per-seed scores overlap: within the noise)" if overlap else ""
        lines.append(f"- {v}: {score(v):.1f} (UA {m(v, 'UA'):.1f}, RA-I {m(v, 'RA_I'):.1f}, RA-C {m(v, 'RA_C'):.1f}, drift "
                     f"{m(v, 'drift_l2'):.3f}; per seed {', '.join(f'{x:.1f}' for x in a)}): **{verdict}** than {best}{note}.")
    return lines


def holdout(studies, domain: str, runs, variants, last) -> list[str]:
    """Replay protects the catalog, which contains the evaluated retained concepts. A variant
    that excludes some of them from replay shows how much retention carries over to concepts
    it never saw: RA-I over the held-out concepts only, next to the other variants' RA-I on
    the same concepts (per-concept accuracies from the summaries)."""
    files = run_files(studies, f"{domain}-s*/experiment.json")
    if not files:
        return []
    raw = json.loads(next(iter(files.values())).read_text())
    held = {}
    for v in raw["variants"]:
        for r in v.get("regularizers", []):
            if r.get("name") == "replay" and r.get("exclude"):
                held[v["name"]] = r["exclude"].split("+")
    if not held:
        return []
    lines = []
    for name, excluded in held.items():
        if name not in variants:
            continue
        rest = [c for c in next(iter(runs.values()))["retained"] if c not in excluded]

        def acc(v, concepts):
            vals = [statistics.mean(r["variants"][v]["steps"][last]["per_concept_accuracy"][c] for c in concepts)
                    for r in runs.values() if v in r["variants"] and len(r["variants"][v]["steps"]) > last]
            return f"{statistics.mean(vals):.1f}" if vals else "–"

        lines += [f"`{name}` replays every protected concept except {', '.join(excluded)}. RA-I split by "
                  f"concept after the last request (mean over seeds):", "",
                  f"| variant | RA-I on {'+'.join(excluded)} (held out) | RA-I on {'+'.join(rest)} | UA |", "|---|---|---|---|"]
        for v in variants:
            ua = stats(runs, v, last, "UA")[0]
            lines.append(f"| {v} | {acc(v, excluded)} | {acc(v, rest)} | {ua:.1f} |" if ua is not None else f"| {v} | – | – | – |")
        lines.append("")
    return lines


def projection_leak(study: Path) -> list[str]:
    """Why the projection protects little here, measured on the first request's deltas: the
    relative change of the cross-attention keys/values, sqrt(sum ||dW x||^2 / sum ||W x||^2)
    over every k/v tensor, for the text-encoder states x of the *evaluated* retained prompts,
    split by token position. C holds each concept's state after a neutral prefix; in the
    evaluation template the same word has another state (causal encoder) and every other
    position carries the style too."""
    import torch

    from obliviate.delta import load_delta
    from obliviate.minicanvas import bundled_path
    from obliviate.model import concept_token_embedding, encode_prompts, load_pipeline
    from obliviate.protocols import minicanvas_catalog

    run = study / "styles-s0"
    variants = ["conabl", "conabl+projection", "conabl+projection-update"]
    deltas = {v: sorted((run / "variants" / v.replace("+", "-") / "run" / "steps").glob("001-*/delta.safetensors")) for v in variants}
    if not run.exists() or not all(deltas.values()):
        return []
    summary = json.loads((run / "summary.json").read_text())
    pipe, cat = load_pipeline(bundled_path(), device="cpu"), minicanvas_catalog()
    pairs = [(r, p) for r in summary["retained"] for p in summary["partners"]]
    prompts = [cat.prompt(r, p) for r, p in pairs]
    states = encode_prompts(pipe, prompts).detach()
    tok = pipe.tokenizer(prompts, padding="max_length", max_length=pipe.tokenizer.model_max_length, truncation=True)
    groups: dict[str, list[torch.Tensor]] = {}
    cosines = []
    for i, (ids, mask, (r, _)) in enumerate(zip(tok.input_ids, tok.attention_mask, pairs)):
        pos, n = ids.index(pipe.tokenizer.convert_tokens_to_ids(r)), sum(mask)
        for j in range(len(ids)):
            g = "the concept's token" if j == pos else ("tokens before it" if j < pos else ("prompt tokens after it" if j < n else "padding"))
            groups.setdefault(g, []).append(states[i, j])
        neutral = concept_token_embedding(pipe, cat.single(r, "style"), r).detach()
        cosines.append(float(torch.nn.functional.cosine_similarity(neutral, states[i, pos], dim=0)))
    weights = dict(pipe.unet.named_parameters())
    lines = ["### Why the projection protects little on MiniCanvas", "",
             "Relative change of the cross-attention keys and values after the first request (fire, seed 0), "
             "sqrt(sum ||dW x||^2 / sum ||W x||^2) over every k/v tensor, for the text states x of the evaluated retained "
             f"prompts ({len(prompts)} prompts, '{cat.template}'), by token position. The projection makes dW c = 0 for c = a "
             "concept's state after the neutral prefix ('" + cat.style_only + "'); the cosine between that c and the same word's "
             f"state in the evaluation template is {statistics.mean(cosines):.2f} on average (min {min(cosines):.2f}).", "",
             "| variant | " + " | ".join(groups) + " |", "|---|" + "---|" * len(groups)]
    for v in variants:
        delta = load_delta(deltas[v][0])
        cells = []
        for xs in groups.values():
            X = torch.stack(xs)
            num = sum(float((X @ d.T).pow(2).sum()) for n, d in delta.items() if d.dim() == 2 and d.shape[1] == X.shape[1])
            den = sum(float((X @ weights[n].detach().T).pow(2).sum()) for n, d in delta.items() if d.dim() == 2 and d.shape[1] == X.shape[1])
            cells.append(f"{(num / den) ** 0.5:.3f}")
        lines.append(f"| {v} | " + " | ".join(cells) + " |")
    return lines + [""]


def bench_section(path: Path) -> list[str]:
    """Per-request wall seconds from scripts/bench_requests.py: every variant in one process,
    under the same load, setup included (anchor/replay images, scoring, subspaces)."""
    if not path.exists():
        return []
    b = json.loads(path.read_text())
    lines = ["## Cost per request under equal load (benchmark)", "",
             f"`python scripts/bench_requests.py {b['config']} --requests {len(b['requests'])} --out {path.as_posix()}`: "
             f"requests {', '.join(b['requests'])}, every variant in one process ({b['torch_threads']} torch threads, "
             "nothing else running), fresh caches per variant, so the first request includes generating the anchor "
             "(and replay) images with the base model. Training only, no evaluation; simultaneous without its probe "
             "evaluations.", "",
             "| variant | setting | " + " | ".join(f"request {i + 1} (s)" for i in range(len(b['requests']))) + " | mean s | x base |",
             "|---|---|" + "---|" * (len(b["requests"]) + 2)]
    for name, r in b["variants"].items():
        mean = sum(r["wall_seconds"]) / len(r["wall_seconds"])
        lines.append(f"| {name} | {r['setting']} | " + " | ".join(f"{x:.1f}" for x in r["wall_seconds"])
                     + f" | {mean:.1f} | {r['ratio_to_base']:.2f} |")
    return lines + [""]


def bench_eval_section(path: Path) -> list[str]:
    """Cheaper evaluation samplers against the 20-step reference (scripts/bench_eval.py)."""
    if not path.exists():
        return []
    b = json.loads(path.read_text())
    ref = b["reference"]
    cands = b["candidates"]
    fmt = lambda x: "–" if x is None else f"{x:+.1f}"
    models = ", ".join(f"{m} ({' -> '.join(e['requests']) or 'no request'})" for m, e in b["models"].items())
    lines = ["## Faster evaluation (benchmark)", "",
             f"`python scripts/bench_eval.py` (figures: [{path.as_posix().split('docs/')[-1]}]({path.as_posix().split('docs/')[-1]})): "
             f"the same models ({models}), the same grid (every style x every object x seeds {b['seeds']}) and the same "
             f"judge for every sampler. Bar: >= {b['bar']['unet_ratio_min']:g}x fewer UNet evaluations per "
             f"scored image than `{ref}` with every metric (UA, RA-I, RA-I over all not-unlearned concepts, RA-I over "
             f"designed neighbours, RA-C) of every (model, domain) within {b['bar']['max_abs_difference']:g} points of it. "
             "UNet evaluations are counted with a hook on the UNet (CFG runs the conditional and unconditional halves: "
             "two per step).", "",
             "| sampler | settings | UNet evaluations / image | fewer than reference | largest difference (points) | verdict |",
             "|---|---|---|---|---|---|"]
    for name, c in cands.items():
        settings = f"{c['scheduler']} {c['steps']} steps, guidance {c['guidance']:g}" + (f", x0 after step {c['x0_at']}" if c.get("x0_at") else "")
        missing = f" (not run on {', '.join(c['not_evaluated_on'])})" if c.get("not_evaluated_on") else ""
        lines.append(f"| {name} | {settings} | {c['unet_evaluations_per_image']:g} | {c['ratio_to_reference']:.1f}x | "
                     f"{c['max_abs_difference']:.1f}{missing} | {'**meets**' if c['meets_bar'] else 'misses'} |")
    lines += ["", "Difference from the reference per metric (candidate - reference, points; in brackets the 95% paired "
              "bootstrap interval of the difference on the same images):", "",
              "| model | domain | sampler | UA | RA-I | RA-I all | RA-I neighbours | RA-C |", "|---|---|---|---|---|---|---|---|"]
    for mname, e in b["models"].items():
        for dom, d in e["domains"].items():
            r = d["candidates"][ref]["metrics"]
            lines.append(f"| {mname} | {dom} | {ref} (value) | " + " | ".join("–" if r[k] is None else f"{r[k]:.1f}" for k in
                         ("UA", "RA_I", "RA_I_all", "RA_I_neighbours", "RA_C")) + " |")
            for cand, c in d["candidates"].items():
                if cand == ref:
                    continue
                cells = []
                for k in ("UA", "RA_I", "RA_I_all", "RA_I_neighbours", "RA_C"):
                    p = (c.get("paired_vs_reference") or {}).get(k)
                    cells.append(fmt(c["difference"][k]) + (f" [{p['lo']:+.1f}, {p['hi']:+.1f}]" if p else ""))
                lines.append(f"| {mname} | {dom} | {cand} | " + " | ".join(cells) + " |")
    met = [n for n, c in cands.items() if c["meets_bar"]]
    cheap = {n: c for n, c in cands.items() if n != ref and (c["ratio_to_reference"] or 0) >= b["bar"]["unet_ratio_min"]}
    closest = min(cheap, key=lambda n: cheap[n]["max_abs_difference"]) if cheap else None
    near = min((n for n in cands if n != ref), key=lambda n: cands[n]["max_abs_difference"], default=None)
    notes = []
    if closest:
        notes.append(f"Closest at >= {b['bar']['unet_ratio_min']:g}x: `{closest}`, {cheap[closest]['max_abs_difference']:.1f} "
                     "points off at worst.")
    if near and near != closest:
        notes.append(f"Closest of all: `{near}` ({cands[near]['ratio_to_reference']:.1f}x fewer, "
                     f"{cands[near]['max_abs_difference']:.1f} points at worst"
                     + (f"; not run on {', '.join(cands[near]['not_evaluated_on'])}" if cands[near].get("not_evaluated_on") else "")
                     + ").")
    skipped = [n for n, c in cands.items() if c.get("not_evaluated_on")]
    if skipped:
        notes.append(f"Left out of some models to save time: {', '.join(f'`{n}`' for n in skipped)}; each had already "
                     "missed the bar (on the ratio or the differences) where it ran, and a miss anywhere is a miss.")
    lines += ["", "**Verdict:** " + (f"{', '.join(met)} meet{'s' if len(met) == 1 else ''} the bar." if met else
              f"no candidate meets the bar; the study keeps `{ref}` (the default, `eval.sampler` unset). Every candidate "
              "is still selectable by name (`eval: {sampler: NAME}`) for quick looks.") + " " + " ".join(notes), ""]
    return lines


def sweep_section(studies) -> list[str]:
    lines = []
    for path in run_files(studies, "sweep-*/summary.json").values():
        s = json.loads(path.read_text())
        lines += [f"### {path.parent.name} (probe seeds {s['seeds']}, {len(s['sequence'])} requests)", "",
                  "| variant | UA | RA-I | RA-C | mean |", "|---|---|---|---|---|"]
        for v, d in s["variants"].items():
            last = d["steps"][-1]
            mean = sum(last[k] for k in METRICS) / 3
            lines.append(f"| {v} | {last['UA']:.1f} | {last['RA_I']:.1f} | {last['RA_C']:.1f} | {mean:.1f} |")
        lines.append("")
        strength = lambda v: float(v.split("-", 1)[1])  # variant names are <regularizer>-<strength>
        for family in ("l1sp", "l2sp", "selft", "replay"):
            names = sorted((v for v in s["variants"] if v.startswith(family + "-")), key=strength)
            if names:
                score = lambda v: sum(s["variants"][v]["steps"][-1][k] for k in METRICS) / 3
                best = max(names, key=score)
                edge = ""
                if len(names) > 1 and best in (names[0], names[-1]):
                    edge = f" (the {'largest' if best == names[-1] else 'smallest'} value swept: one beyond it might do better)"
                lines.append(f"- {family}: best {best} by mean{edge}.")
        lines.append("")
    return lines


def compute_minutes(summary: dict) -> float:
    """Measured train + evaluation seconds over every step of every variant (survives resumes)."""
    total = sum(x["train_seconds"] + x["eval_seconds"] for v in summary["variants"].values() for x in v["steps"][1:])
    return total / 60


# ---------------------------------------------------------------- second edition
# The study at equal forgetting (scripts/study.py): one summary per unit, DOMAIN-rN-VARIANT-sSEED.
# Every number below is read from those summaries; a unit not run yet is said to be so.
import re  # noqa: E402

import numpy as np  # noqa: E402
import yaml  # noqa: E402

from obliviate.evaluate import power  # noqa: E402
from obliviate.experiment.strength import kept_then_fell  # noqa: E402

BEGIN = "<!-- study, second edition: generated by scripts/results.py from docs/results/study/; edits inside are overwritten -->"
END = "<!-- end of the study, second edition -->"
HORIZONS = {"objects": (8,), "styles": (8, 12)}
UNIT = re.compile(r"^(styles|objects)-r(\d+)-(.+)-s(\d+)$")
METRICS2 = ("UA", "RA_I", "RA_I_all", "RA_I_neighbours", "RA_C")
UA_MIN = 90.0
TRAINING_SEEDS = (0, 1)  # the study's (scripts/study.py): an answer lacking one is provisional
NOT_RUN = "not yet run"


def study_variants(config_dir: Path, domains=HORIZONS) -> dict[str, list[str]]:
    """Domain -> the study file's variant names, in order (what the report expects)."""
    out = {}
    for domain in domains:
        path = Path(config_dir) / f"{domain}.yaml"
        if path.exists():
            out[domain] = [v["name"] for v in yaml.safe_load(path.read_text())["variants"]]
    return out


def load_units(studies) -> dict:
    """{(domain, requests): {seed: {variant: summary}}} from the finished unit summaries (the
    first folder wins, as in `run_files`). Each summary holds one variant."""
    out: dict = {}
    for name, path in run_files(studies, "*-r*-s*/summary.json").items():
        m = UNIT.match(name)
        if not m or not finished(path):
            continue
        s = json.loads(path.read_text())
        domain, requests, seed = m.group(1), int(m.group(2)), int(m.group(4))
        for variant in s.get("variants", {}):
            out.setdefault((domain, requests), {}).setdefault(seed, {})[variant] = s
    return out


def grid_of(s: dict) -> tuple:
    return (s["domain"], tuple(s["sequence"]), tuple(s["retained"]), tuple(s["partners"]), tuple(s["seeds"]))


def row_hits(s: dict, variant: str, step: int) -> dict[str, np.ndarray]:
    row = s["variants"][variant]["steps"][step]
    labels = s["labels"]
    cells = power.grid(s["domain"], s["sequence"], s["retained"], s["partners"], s["seeds"])
    return power.hits(cells, power.decode_labels(row["predictions"]["style"], labels["style"]),
                      power.decode_labels(row["predictions"]["object"], labels["object"]), s["domain"])


class Pool:
    """Images of several training seeds pooled: each seed's grid once per seed, hits per row."""

    def __init__(self, by_seed: dict[int, dict], step: int):
        self.by_seed, self.step = by_seed, step

    def rows(self, entries):
        """entries: [(variant, step)]; -> (groups, [hits per entry], seeds used), over the seeds where
        every entry exists (with predictions). A closed-form variant runs for the first training seed
        only (its solve does not depend on the seed): paired with a variant that has another seed, its
        one model stands for that seed too, so the pair uses every seed of the other; alone, its
        images are counted once."""
        seeds, cells, hits = [], [], [[] for _ in entries]
        ref = None
        first = min(self.by_seed, default=None)
        fixed = [v for v, _ in entries if closed_form(self.by_seed, v)]
        for seed, variants in sorted(self.by_seed.items()):
            if any(v in variants and v not in fixed for v, _ in entries):
                variants = {**{v: self.by_seed[first][v] for v in fixed if v in self.by_seed[first]}, **variants}
            ok = all(v in variants and len(variants[v]["variants"][v]["steps"]) > st and
                     "predictions" in variants[v]["variants"][v]["steps"][st] for v, st in entries)
            if not ok:
                continue
            s0 = variants[entries[0][0]]
            if ref is None:
                ref = s0
            if any(grid_of(variants[v]) != grid_of(ref) for v, _ in entries):
                continue  # a different grid cannot be paired
            seeds.append(seed)
            cells += power.grid(s0["domain"], s0["sequence"], s0["retained"], s0["partners"], s0["seeds"])
            for i, (v, st) in enumerate(entries):
                hits[i].append(row_hits(variants[v], v, st))
        if not seeds:
            return None, None, []
        groups = power.metric_groups(cells, ref["domain"], ref["sequence"][: self.step], ref["retained"], ref["partners"],
                                     ref.get("neighbours"))
        joined = [{side: np.concatenate([h[side] for h in hs]) for side in ("own", "other")} for hs in hits]
        return groups, joined, seeds


def value_ci(pool: Pool, variant: str, key: str) -> dict | None:
    groups, hits, _ = pool.rows([(variant, pool.step)])
    if groups is None or not groups[key][2]:
        return None
    side, flip, g = groups[key]
    return power.interval(hits[0][side], g, flip)


def retention_ci(pool: Pool, entries, *, n_boot: int = power.N_BOOT, seed: int = 0) -> dict | None:
    """Retention, the mean of RA-I and RA-C, with its bootstrap interval; for two entries the
    paired difference (first - second). RA-I's and RA-C's images are resampled in their own
    strata (concepts, partners) with the same draws for both entries."""
    groups, hits, _ = pool.rows(entries)
    if groups is None or not groups["RA_I"][2] or not groups["RA_C"][2]:
        return None
    rng = np.random.default_rng(seed)
    own = power._resampled(np.stack([h["own"] for h in hits], 1), groups["RA_I"][2], rng, n_boot)
    other = power._resampled(np.stack([h["other"] for h in hits], 1), groups["RA_C"][2], rng, n_boot)
    point = [(power._value(h["own"], groups["RA_I"][2], False) + power._value(h["other"], groups["RA_C"][2], False)) / 2
             for h in hits]
    boot = (own + other) / 2
    q = (1 - power.LEVEL) / 2
    if len(entries) == 1:
        return {"value": point[0], "lo": float(np.quantile(boot[:, 0], q)), "hi": float(np.quantile(boot[:, 0], 1 - q))}
    diff = boot[:, 0] - boot[:, 1]
    lo, hi = float(np.quantile(diff, q)), float(np.quantile(diff, 1 - q))
    return {"difference": point[0] - point[1], "lo": lo, "hi": hi,
            "verdict": "inconclusive" if lo <= 0 <= hi else ("A higher" if lo > 0 else "B higher")}


def paired_metric(pool: Pool, a, b, key: str) -> dict | None:
    """a, b: (variant, step). The paired difference a - b of one metric over pooled seeds, with
    each training seed's own point difference (a verdict needs them to agree in sign)."""
    groups, hits, seeds = pool.rows([a, b])
    if groups is None or not groups[key][2]:
        return None
    side, flip, g = groups[key]
    p = power.paired(hits[0][side], hits[1][side], g, flip, names=("A", "B"))
    per_seed = []
    for seed in seeds:
        sub = Pool({seed: pool.by_seed[seed]}, pool.step)
        gs, hs, _ = sub.rows([a, b])
        s_, f_, g_ = gs[key]
        per_seed.append(power._value(hs[0][s_], g_, f_) - power._value(hs[1][s_], g_, f_))
    p["per_seed"] = per_seed
    p["seeds"] = seeds
    if p["verdict"] != "inconclusive" and any(np.sign(d) != np.sign(p["difference"]) for d in per_seed):
        p["verdict"] = "inconclusive"
        p["note"] = "training seeds disagree"
    return p


def strength_info(by_seed: dict, variant: str) -> dict:
    """Per training seed: the equal-forgetting choice (value, meets UA, best UA)."""
    out = {}
    for seed, variants in sorted(by_seed.items()):
        if variant in variants:
            st = variants[variant]["variants"][variant].get("strength")
            out[seed] = st
    return out


def closed_form(by_seed: dict, variant: str) -> bool:
    """A closed-form variant (uce) does not depend on the training seed: it runs once (scripts/study.py)."""
    from obliviate.methods import METHODS

    method = next((vs[variant]["variants"][variant].get("method") for vs in by_seed.values() if variant in vs), None)
    return method in METHODS and bool(METHODS[method].closed_form)


def predates_image_seeds(by_seed: dict, variant: str, seed: int) -> bool:
    """Whether the variant's unit of training seed `seed` was run before the images a request
    trains on (ConAbl's anchors, replay's images) followed the request's seed: its resolved
    settings lack `image_seed` where today's component has it. Such a seed-1 unit drew seed 0's
    images, so it is not a second anchor set (training seed 0 draws the same images either way)."""
    import dataclasses

    from obliviate.methods import METHODS
    from obliviate.regularizers import REGULARIZERS

    if seed == 0 or variant not in by_seed.get(seed, {}):
        return False
    config = by_seed[seed][variant]["variants"][variant].get("config") or {}
    for part in [config.get("method") or {}, *(config.get("regularizers") or [])]:
        cls = METHODS.get(part.get("name")) or REGULARIZERS.get(part.get("name"))
        if cls is not None and "image_seed" in {f.name for f in dataclasses.fields(cls.Settings)} and "image_seed" not in part:
            return True
    return False


def meets_ua(by_seed: dict, variant: str) -> bool | None:
    """True when every training seed's probe sweep found a value keeping UA >= 90 after every
    request; False when one did not; None for a variant with no sweep or no runs."""
    info = [s for s in strength_info(by_seed, variant).values() if s]
    if not info:
        return None
    return all(s.get("meets_ua") for s in info)


def judged(p: dict | None, a: str, b: str, by_seed: dict) -> tuple[str, str]:
    """A paired result -> ("A"|"B"|"inconclusive"|"missing", text). A winner that is not at equal
    forgetting (on some training seed the value run did not keep UA >= 90) makes the verdict
    inconclusive: it may keep more only because it forgets less."""
    if p is None:
        return "missing", NOT_RUN
    text = f"{p['difference']:+.1f} [{p['lo']:+.1f}, {p['hi']:+.1f}]"
    if len(p.get("per_seed", [])) > 1:
        text += " (per seed " + ", ".join(f"{d:+.1f}" for d in p["per_seed"]) + ")"
    if p["verdict"] == "inconclusive":
        return "inconclusive", text + (f" inconclusive ({p['note']})" if p.get("note") else " inconclusive")
    winner, loser = (a, b) if p["verdict"] == "A higher" else (b, a)
    if meets_ua(by_seed, winner) is False:
        return "inconclusive", text + f" inconclusive ({winner} is not at equal forgetting: on some training seed the value run did not keep UA >= {UA_MIN:g})"
    return ("A" if winner == a else "B"), text + f" ({winner} higher)"


def fmt_ci(ci: dict | None) -> str:
    return "–" if ci is None else f"{ci['value']:.1f} [{ci['lo']:.1f}, {ci['hi']:.1f}]"


def claims2(pool: Pool, by_seed: dict, H: int) -> list[str]:
    """Verdicts on the published claims (a)-(e), each from paired intervals on the same images."""
    has = lambda v: any(v in vs for vs in by_seed.values())
    pm = lambda a, b, key="RA_I", sa=H, sb=H: paired_metric(pool, (a, sa), (b, sb), key)
    out = []

    def seeds_note(variants) -> str:
        """A verdict resting on fewer training seeds than the study runs may still change."""
        short = [v for v in variants if has(v) and not closed_form(by_seed, v)
                 and any(v not in by_seed.get(s, {}) for s in TRAINING_SEEDS)]
        return (f" Provisional: training seed {', '.join(map(str, TRAINING_SEEDS[1:]))} not yet run for "
                f"{', '.join(short)}." if short else "")

    def combine(parts):  # parts: list of "yes"/"no"/"inconclusive"/"missing"
        if "no" in parts:  # one clear counter-example decides, whatever is missing
            return "does not hold"
        if "missing" in parts:
            return NOT_RUN + " (a variant it needs is missing)"
        if all(p == "yes" for p in parts):
            return "holds"
        return "inconclusive"

    # (a)
    need = ["conabl", "simultaneous"]
    if all(has(v) for v in need):
        drop = pm("conabl", "conabl", sa=0, sb=H)  # base (step 0) - after H, same images
        v1, t1 = judged(drop, "base", "conabl", by_seed) if drop else ("missing", NOT_RUN)
        collapse = "yes" if v1 == "A" and drop["difference"] > 10 else ("no" if v1 == "B" or (drop and drop["hi"] < 10) else
                                                                          ("inconclusive" if drop else "missing"))
        v2, t2 = judged(pm("simultaneous", "conabl"), "simultaneous", "conabl", by_seed)
        better = {"A": "yes", "B": "no"}.get(v2, v2)
        out.append(f"- **(a) sequential fine-tuning collapses in retention, simultaneous does not** — rule: sequential "
                   f"ConAbl's RA-I drops by more than 10 points from the base model (paired, same images), and "
                   f"simultaneous keeps a higher RA-I than sequential (paired). Drop: {t1}; simultaneous - sequential: {t2}. "
                   f"**{combine([collapse, better])}**." + seeds_note(need))
    else:
        out.append(f"- **(a) sequential collapses, simultaneous does not**: {NOT_RUN} (needs conabl, simultaneous).")
    # (b)
    singles = ["conabl+l1sp", "conabl+l2sp", "conabl+selft", "conabl+projection"]
    if has("conabl") and any(has(v) for v in singles):
        parts, texts = [], []
        for v in singles:
            if not has(v):
                parts.append("missing")
                texts.append(f"{v}: {NOT_RUN}")
                continue
            ri, ti = judged(pm(v, "conabl"), v, "conabl", by_seed)
            rc, tc = judged(pm(v, "conabl", "RA_C"), v, "conabl", by_seed)
            drifts = [(vs[v]["variants"][v]["steps"][H]["drift_l2"], vs["conabl"]["variants"]["conabl"]["steps"][H]["drift_l2"])
                      for vs in by_seed.values() if v in vs and "conabl" in vs
                      and len(vs[v]["variants"][v]["steps"]) > H and len(vs["conabl"]["variants"]["conabl"]["steps"]) > H]
            less = all(a < b for a, b in drifts) if drifts else None
            more = all(a > b for a, b in drifts) if drifts else None
            if ri == "B" or rc == "B" or more:
                verdict = "no"
            elif ri == "A" and less and rc in ("A", "inconclusive"):
                verdict = "yes"
            else:
                verdict = "missing" if "missing" in (ri, rc) else "inconclusive"
            parts.append(verdict)
            texts.append(f"{v}: RA-I {ti}, RA-C {tc}, drift " + ", ".join(f"{a:.3f} vs {b:.3f}" for a, b in drifts)
                         + f"; this add-on: {verdict}")
        out.append("- **(b) every add-on reduces drift and improves retention over the base** — rule per add-on: lower "
                   "cumulative drift in every training seed, RA-I higher (paired interval above 0), RA-C not lower "
                   "(interval not below 0). Differences are add-on - conabl. " + "; ".join(texts) + f". **{combine(parts)}**."
                   + seeds_note(["conabl", *singles]))
    else:
        out.append(f"- **(b) every add-on reduces drift and improves retention**: {NOT_RUN}.")
    # (c)
    others = [v for v in singles if v != "conabl+projection"]
    if has("conabl+projection") and any(has(v) for v in others):
        parts, texts = [], []
        for v in others:
            r, t = judged(pm("conabl+projection", v), "conabl+projection", v, by_seed) if has(v) else ("missing", NOT_RUN)
            parts.append({"A": "yes", "B": "no"}.get(r, r))
            texts.append(f"vs {v}: {t}")
        out.append("- **(c) projection gives the best in-domain retention among single regularizers** — rule: RA-I of "
                   "conabl+projection above every other single add-on's (paired; projection - other). "
                   + "; ".join(texts) + f". **{combine(parts)}**." + seeds_note(singles))
    else:
        out.append(f"- **(c) projection best among single regularizers**: {NOT_RUN}.")
    # (d)
    for combo, other in (("conabl+projection+selft", "conabl+selft"), ("conabl+projection+l2sp", "conabl+l2sp")):
        if has(combo):
            parts, texts = [], []
            for part in ("conabl+projection", other):
                r, t = judged(pm(combo, part), combo, part, by_seed) if has(part) else ("missing", NOT_RUN)
                parts.append({"A": "yes", "B": "no"}.get(r, r))
                texts.append(f"vs {part}: {t}")
            out.append(f"- **(d) {combo} beats either part alone** — rule: RA-I above both parts (paired; combination - part). "
                       + "; ".join(texts) + f". **{combine(parts)}**." + seeds_note([combo, "conabl+projection", other]))
        else:
            out.append(f"- **(d) {combo} beats either part alone**: {NOT_RUN}.")
    # (e)
    u, g = "conabl+projection-update", "conabl+projection"
    if has(u) and has(g):
        r = retention_ci(pool, [(u, H), (g, H)])
        p = None if r is None else {**r, "verdict": r["verdict"]}
        verdict, text = judged(p, u, g, by_seed)
        ri = judged(pm(u, g), u, g, by_seed)[1]
        rc = judged(pm(u, g, "RA_C"), u, g, by_seed)[1]
        out.append(f"- **(e) the exact `update` projection retains more than the published `grad` projection** — rule: "
                   f"retention (mean of RA-I and RA-C) higher, paired (update - grad): {text}; RA-I {ri}; RA-C {rc}. "
                   f"**{ {'A': 'holds', 'B': 'does not hold'}.get(verdict, 'inconclusive' if verdict != 'missing' else NOT_RUN) }**." + seeds_note([u, g]))
    else:
        out.append(f"- **(e) exact `update` vs published `grad` projection**: {NOT_RUN}.")
    return out


def off_before(units: dict, domain: str, H: int) -> dict[str, int]:
    """Variant -> the smaller number of requests after which it was already off equal forgetting
    (no swept value kept UA >= 90 after every request, on some training seed). Equal forgetting
    after H requests needs the bar after each of the first ones too, at the same values, so such a
    variant cannot be at equal forgetting after H, nor change the answer for H."""
    off = {}
    for (d, h), by_seed in sorted(units.items()):
        if d == domain and h < H:
            for v in {v for vs in by_seed.values() for v in vs}:
                if meets_ua(by_seed, v) is False:
                    off.setdefault(v, h)
    return off


def answer2(pool: Pool, by_seed: dict, H: int, expected: list[str], domain: str,
            off_earlier: dict[str, int] | None = None, brief: list | None = None) -> list[str]:
    """Which variant to run for H requests at UA >= 90: among the variants whose probe sweep kept
    UA >= 90 after every request (every training seed), the best retention after H on the
    reported seeds, paired against every other such variant. `off_earlier` (from `off_before`)
    names variants already off equal forgetting after fewer requests: not yet run, they are no gap.
    `brief`, when given, receives this answer's row of the section's "What to run" table."""
    off_earlier = off_earlier or {}
    present = [v for v in expected if any(v in vs for vs in by_seed.values())]
    cannot = [v for v in expected if v not in present and v in off_earlier]
    missing = [v for v in expected if v not in present and v not in off_earlier]
    brief = [] if brief is None else brief
    if not present:
        brief.append(f"| {domain} | {H} | {NOT_RUN} | | | | |")
        return [f"**Which variant to run for {H} {domain}, at UA >= {UA_MIN:g}:** {NOT_RUN}."]
    eligible = [v for v in present if meets_ua(by_seed, v)]
    ret = {v: retention_ci(pool, [(v, H)]) for v in present}
    eligible = [v for v in eligible if ret[v] is not None]
    lines = []
    gaps = []
    if missing:
        gaps.append(f"{len(present) + len(cannot)} of {len(expected)} variants run"
                    f"{' or already off equal forgetting' if cannot else ''} ({NOT_RUN}: {', '.join(missing)})")
    partial = [v for v in present if not closed_form(by_seed, v) and any(v not in by_seed.get(s, {}) for s in TRAINING_SEEDS)]
    # a variant off equal forgetting on one seed is off for good: its missing seeds cannot change the answer
    open_ = [v for v in partial if meets_ua(by_seed, v) is not False and v not in off_earlier]
    if open_:
        gaps.append(f"{len(present) - len(open_)} of {len(present)} variants run have every training seed they need "
                    f"({', '.join(map(str, TRAINING_SEEDS))}; a closed-form one needs 0 only, one already off equal "
                    f"forgetting no more)" + (f"; not yet: {', '.join(open_)}" if len(open_) <= 4 else ""))
    # a seed-1 unit run before anchors followed the seed drew seed 0's anchor set: it can change
    # the answer unless the variant is already off equal forgetting on seed 0
    stale = [v for v in present if any(predates_image_seeds(by_seed, v, s) for s in TRAINING_SEEDS[1:])
             and (strength_info(by_seed, v).get(0) or {}).get("meets_ua", True) is not False and v not in off_earlier]
    if stale:
        gaps.append(f"training seed {', '.join(map(str, TRAINING_SEEDS[1:]))} of {', '.join(stale)} ran on training seed "
                    "0's anchor images (before the images followed the seed); rerun those units (scripts/study.py --only)")
    caveat = f" Provisional: {'; '.join(gaps)}." if gaps else ""
    if len(partial) > len(open_):
        caveat += (f" Training seed {', '.join(map(str, TRAINING_SEEDS[1:]))} is not yet run for "
                   f"{', '.join(v for v in partial if v not in open_)}, which cannot change this answer (off equal forgetting).")
    if cannot:
        caveat += (f" {NOT_RUN.capitalize()} after {H} requests: {', '.join(f'{v} (off after {off_earlier[v]})' for v in cannot)}"
                   f"; each was already off equal forgetting after fewer requests (no value swept kept UA >= {UA_MIN:g} after "
                   "every request), so none can change this answer.")
    eligible = [v for v in eligible if v not in off_earlier]
    seeds = sorted({s for s, vs in by_seed.items() if any(v in vs for v in present)})
    if not eligible:
        best_ua = {v: max((s or {}).get("best_UA", float("nan")) for s in strength_info(by_seed, v).values() if s)
                   for v in present if strength_info(by_seed, v)}
        closest = max(best_ua, key=best_ua.get) if best_ua else None
        lines.append(f"**Which variant to run for {H} {domain}, at UA >= {UA_MIN:g}:** none of the variants run kept UA >= "
                     f"{UA_MIN:g} after every request on the probe seeds" + (f"; the closest is {closest} (best UA "
                     f"{best_ua[closest]:.1f})" if closest else "") + f". Training seeds {seeds}.{caveat}")
        brief.append(f"| {domain} | {H} | none at UA >= {UA_MIN:g} | | | 0 | {'provisional' if gaps else 'final'} |")
        return lines
    best = max(eligible, key=lambda v: ret[v]["value"])
    seeds = sorted(s for s, vs in by_seed.items() if best in vs)  # the seeds its figures pool
    ua = value_ci(pool, best, "UA")
    lines.append(f"**Which variant to run for {H} {domain}, at UA >= {UA_MIN:g}:** **{best}** — retention (mean of RA-I "
                 f"and RA-C) {fmt_ci(ret[best])}, UA {fmt_ci(ua)} on the reported seeds (training seeds {seeds}), among "
                 f"{len(eligible)} variant{'' if len(eligible) == 1 else 's'} at equal forgetting.{caveat}")
    ties, beaten = {}, {}  # variant -> its paired retention difference, best - it
    for v in eligible:
        if v == best:
            continue
        r = retention_ci(pool, [(best, H), (v, H)])
        if r is None:
            continue
        (ties if r["verdict"] == "inconclusive" else beaten)[v] = f"{r['difference']:+.1f} [{r['lo']:+.1f}, {r['hi']:+.1f}]"
    # the summary row names the ties: the choice among them is the user's
    tie_text = f" (not distinguishable from {', '.join(ties)})" if ties else ""
    brief.append(f"| {domain} | {H} | **{best}**{tie_text} | {fmt_ci(ret[best])} | {fmt_ci(ua)} | {len(eligible)} | "
                 f"{'provisional' if gaps else 'final'} |")
    if ties:
        lines.append(f"Not distinguishable from {best} (paired retention difference {best} - other spans 0: "
                     f"inconclusive): " + "; ".join(f"{v}: {t}" for v, t in ties.items()) + ".")
    if beaten:
        lines.append(f"Retains less than {best} (paired interval above 0): " + "; ".join(f"{v}: {t}" for v, t in beaten.items()) + ".")
    below = [v for v in present if meets_ua(by_seed, v) is False or v in off_earlier]
    if below:
        lines.append("Not at equal forgetting (on some training seed the value run did not keep UA >= 90 after every "
                     "request; per training seed, how many requests it kept UA >= 90, then its UA at the request where "
                     "it fell): " + "; ".join(f"{v} {per_seed_text(by_seed, v)}" for v in below) + ".")
    if ua is not None and ua["lo"] < UA_MIN:
        lines.append(f"Note: on the reported seeds {best}'s UA interval reaches below {UA_MIN:g} ({fmt_ci(ua)}): the probe "
                     "seeds chose its strength, the reported seeds only measure it.")
    return lines


def closest_text(strength: dict | None) -> str:
    """How many requests the value run held UA >= ua_min, then its UA where it fell, or that it
    held throughout (a training seed that kept the bar where another did not); recomputed from
    the sweep table: records before 2026-11-30 lack the fields."""
    if not strength:
        return "–"
    row = next(r for r in strength["table"] if r["value"] == strength["chosen"])
    kept, fell = kept_then_fell(row["UA_per_request"], strength["ua_min"])
    return f"kept all {kept}" if fell is None else f"kept {kept}, then UA {fell:.1f}"


def per_seed_text(by_seed: dict, variant: str) -> str:
    """closest_text for each training seed, labelled by seed when there are several."""
    info = strength_info(by_seed, variant)
    if len(info) == 1:
        return closest_text(next(iter(info.values())))
    return ", ".join(f"seed {seed} {closest_text(s)}" for seed, s in info.items())


def table2(pool: Pool, by_seed: dict, H: int, expected: list[str]) -> list[str]:
    lines = [f"| variant | recipe | strength chosen (per training seed) | UA >= {UA_MIN:g} on probe? | UA | RA-I (retained) | "
             "RA-I (all not yet unlearned) | RA-I (designed neighbours) | RA-C | retention | drift L2 | training seeds |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for v in expected:
        runs = {s: vs[v] for s, vs in sorted(by_seed.items()) if v in vs}
        if not runs:
            lines.append(f"| {v} | | {NOT_RUN} | | | | | | | | | |")
            continue
        any_s = next(iter(runs.values()))
        cfg = any_s["variants"][v].get("config", {}).get("method", {})
        recipe = cfg.get("recipe", "–") if isinstance(cfg, dict) else "–"
        info = strength_info(by_seed, v)
        chosen = ", ".join(f"{s['key'].split('.')[-1]}={s['chosen']:g}" if s else "–" for s in info.values())
        m = meets_ua(by_seed, v)
        ok = "–" if m is None else ("yes" if m else f"no ({per_seed_text(by_seed, v)})")
        cells = [fmt_ci(value_ci(pool, v, k)) for k in METRICS2]
        drift = [r["variants"][v]["steps"][H]["drift_l2"] for r in runs.values() if len(r["variants"][v]["steps"]) > H]
        lines.append(f"| {v} | {recipe} | {chosen} | {ok} | " + " | ".join(cells) + f" | {fmt_ci(retention_ci(pool, [(v, H)]))} | "
                     + (f"{statistics.mean(drift):.3f}" if drift else "–") + f" | {len(runs)} |")
    return lines


def sweeps2(by_seed: dict, expected: list[str]) -> list[str]:
    lines = ["| variant | training seed | setting swept | value | min UA over requests | UA | RA-I | RA-C | retention | "
             "keeps UA >= 90 | chosen |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    n = 0
    for v in expected:
        for seed, vs in sorted(by_seed.items()):
            st = vs.get(v, {}).get("variants", {}).get(v, {}).get("strength") if v in vs else None
            if not st:
                continue
            for r in st["table"]:
                n += 1
                keeps = r.get("keeps_ua")
                lines.append(f"| {v} | {seed} | {st['key']} | {r['value']:g} | {r['min_UA']:.1f} | {r['UA']:.1f} | "
                             f"{r['RA_I']:.1f} | {r['RA_C']:.1f} | {r['retention']:.1f} | "
                             f"{'–' if keeps is None else ('yes' if keeps else 'no')} | {'**chosen**' if r['value'] == st['chosen'] else ''} |")
    return lines if n else [f"Sweep tables: {NOT_RUN}."]


def bench_eval_verdict(path: Path) -> list[str]:
    if not path.exists():
        return [f"Faster evaluation (scripts/bench_eval.py): {NOT_RUN}."]
    b = json.loads(path.read_text())
    met = [n for n, c in b["candidates"].items() if c["meets_bar"]]
    ref = b["candidates"][b["reference"]]
    lines = [f"Faster evaluation (the bar: >= {b['bar']['unet_ratio_min']:g}x fewer UNet evaluations per scored image "
             f"than the {ref['steps']}-step reference, every metric within {b['bar']['max_abs_difference']:g} points; "
             "scripts/bench_eval.py, figures in docs/results/bench-eval.json, details in the section *Faster evaluation* "
             "below):", "", "| sampler | UNet evaluations / image | fewer than reference | largest difference (points) | verdict |",
             "|---|---|---|---|---|"]
    for n, c in b["candidates"].items():
        if n == b["reference"]:
            continue
        lines.append(f"| {n} | {c['unet_evaluations_per_image']:g} | {c['ratio_to_reference']:.1f}x | {c['max_abs_difference']:.1f}"
                     + (" (not run on every model)" if c.get("not_evaluated_on") else "")
                     + f" | {'**meets**' if c['meets_bar'] else 'misses'} |")
    lines += ["", "**Verdict:** " + (f"{', '.join(met)} meet{'s' if len(met) == 1 else ''} the bar." if met else
              f"no candidate meets the bar, so the study evaluates with the reference sampler ({ref['scheduler']} "
              f"{ref['steps']} steps, guidance {ref['guidance']:g}; `eval.sampler` unset in configs/study/).")]
    return lines


def cost2(plan_path: Path, units: dict, studies) -> list[str]:
    lines = []
    if plan_path.exists():
        p = json.loads(plan_path.read_text())
        b = p["basis"]
        lines.append(f"Estimated cost (`python scripts/study.py --plan`, from figures measured by `scripts/study.py --measure`: "
                     f"{b['eval_seconds_per_image']:.3f} s per scored image, {b['conabl_reference_step_seconds']:.3f} s per "
                     f"reference-recipe ConAbl step, one thread, load average at measurement "
                     f"{', '.join(f'{x:.1f}' for x in b['measured_load_average'] or [])}): {len(p['units'])} units, "
                     f"**{p['total_seconds'] / 3600:.0f} CPU hours** in all, {p['left_seconds'] / 3600:.0f} of them not yet run, "
                     f"about {p['wall_hours_at_jobs']:.0f} hours of wall time at {p['jobs']} unit(s) at once at the speed measured. "
                     "Caveats: " + "; ".join(p["caveats"]) + ".")
    else:
        lines.append(f"Estimated cost: {NOT_RUN} (`python scripts/study.py --measure`, then `--plan`).")
    done = [(name, path) for name, path in run_files(studies, "*-r*-s*/summary.json").items() if UNIT.match(name) and finished(path)]
    if done:
        total = sum(json.loads(path.read_text())["wall_seconds"] for _, path in done)
        lines.append(f"Measured so far: {len(done)} units finished in {total / 3600:.1f} hours of wall time (each unit's "
                     "own `wall_seconds`, sweep included; a 12-request unit counts only its extension when it grew an "
                     "8-request directory; on whatever load the machine had).")
    return lines


def study2_section(studies, config_dir: Path, results_dir: Path, horizons: dict | None = None) -> list[str]:
    """The second edition's section: per domain and number of requests (`horizons`, default
    objects 8; styles 8 and 12), the answer, the table, the claims and the sweeps."""
    horizons = horizons or HORIZONS
    expected = study_variants(config_dir, horizons)
    units = load_units(studies)
    doc = [BEGIN, "## Study, second edition: equal forgetting, with intervals", "",
           "Generated by `scripts/results.py` from the unit summaries that `scripts/study.py` commits under "
           "docs/results/study/ (configs/study/styles.yaml: 12 of 16 styles; configs/study/objects.yaml: 8 of 12 objects; "
           "every evaluation over every partner concept x seeds 188, 288, 588; training seeds 0 and 1). **Equal "
           "forgetting:** each variant's strength is swept on the probe seed (1: one seed over every partner, 192 images; never a reported seed) and "
           f"chosen as the best retention (mean of RA-I and RA-C) among the values keeping UA >= {UA_MIN:g} after every "
           "request, on training seed 0; training seed 1 runs at the value seed 0 chose (one recipe per variant, replicated; "
           "it is still probed, and \"UA >= 90 on probe?\" says yes only if it held for every seed); a closed-form variant "
           "(uce) runs for seed 0 only, since its solve does not depend on the training seed (a seed-1 run reproduced "
           "seed 0's figures exactly): its own figures count its images once, and paired with a variant run for both "
           "seeds its one model stands for each. A variant with no "
           "such value is reported with its best UA and is not compared as if it forgot as "
           "much. Brackets: 95% bootstrap intervals over images (stratified by concept; training seeds pooled). Every "
           "\"better than\" is a paired comparison on the same images (A - B, interval of the difference); it is "
           "*inconclusive* when that interval spans 0 or the training seeds disagree in sign. RA-I is given two more "
           "ways: over every concept not yet unlearned (UnlearnCanvas's definition) and over the designed neighbours of "
           "the unlearned concepts only. Published variants use ConAbl's reference recipe; `ours:replay` "
           "adds our regularizer to the same recipe; `uce` is closed-form. The first edition (before equal forgetting "
           "and the reference recipe, on MiniCanvas 1.0) is archived in docs/archive/RESULTS-first-edition.md.", ""]
    doc += bench_eval_verdict(results_dir / "bench-eval.json") + [""]
    doc += ["### Cost", "", *cost2(results_dir / "study-plan.json", units, studies), ""]
    brief: list[str] = []
    brief_at = len(doc)
    for domain in horizons:
        names = expected.get(domain, [])
        for H in horizons[domain]:
            by_seed = units.get((domain, H), {})
            # a 12-request unit also answers 8 requests only if its strength was chosen for 8: it was not, so the
            # 8-request answer reads only the 8-request units
            pool = Pool(by_seed, H)
            doc += [f"### {domain.capitalize()}, after {H} requests", ""]
            if not by_seed:
                doc += [f"{NOT_RUN}: no finished {domain} unit with {H} requests yet.", ""]
            doc += answer2(pool, by_seed, H, names, domain, off_before(units, domain, H), brief) + [""]
            doc += table2(pool, by_seed, H, names) + [""]
            doc += [f"Verdicts on the published claims after {H} {domain}:", "", *claims2(pool, by_seed, H), ""]
            doc += [f"<details><summary>Strength sweeps on the probe seeds ({domain}, {H} requests)</summary>", "",
                    *sweeps2(by_seed, names), "", "</details>", ""]
    doc[brief_at:brief_at] = [
        "### What to run", "",
        f"The variant with the best retention (mean of RA-I and RA-C, 95% interval) among those at equal forgetting "
        f"(UA >= {UA_MIN:g} after every request on the probe seed, on every training seed); UA on the reported seeds. "
        "*Final*: no unit still to run could change the choice (the reasons, and the paired comparisons, are in each "
        "domain's section below).", "",
        "| domain | requests | run | retention | UA | variants at equal forgetting | answer |",
        "|---|---|---|---|---|---|---|", *brief, ""]
    return doc + [END]


ANSWER_BEGIN = "<!-- the answer: generated by scripts/results.py from docs/results/study/; edits inside are overwritten -->"
ANSWER_END = "<!-- end of the answer -->"


def split_answer(section: list[str]) -> tuple[list[str], list[str]]:
    """The study section's "What to run" table, lifted out to open RESULTS.md (between its own
    markers), and the section with a pointer to it in its place."""
    start = section.index("### What to run")
    end = next(i for i in range(start + 1, len(section)) if section[i].startswith("### "))
    answer = [ANSWER_BEGIN, "## What to run", *section[start + 1:end], ANSWER_END]
    rest = section[:start] + ["### What to run", "", "The answer opens this page (*What to run*, above).", ""] + section[end:]
    return answer, rest


def write_answer(doc_path: Path, lines: list[str]) -> None:
    """Replace the answer block of RESULTS.md (between its markers), or insert it before the
    study's section; everything else is left as it is."""
    from obliviate.delta import atomic_write_bytes

    text = doc_path.read_text()
    block = "\n".join(lines)
    if ANSWER_BEGIN in text and ANSWER_END in text:
        head, rest = text.split(ANSWER_BEGIN, 1)
        text = head + block + rest.split(ANSWER_END, 1)[1]
    else:
        i = text.find(BEGIN)
        text = (text.rstrip("\n") + "\n\n" + block + "\n") if i < 0 else text[:i] + block + "\n\n" + text[i:]
    atomic_write_bytes(doc_path, text.encode())


def write_section(doc_path: Path, lines: list[str]) -> None:
    """Replace the second edition's section in RESULTS.md (between its markers), or insert it
    before the first section of the document; everything else is left as it is."""
    from obliviate.delta import atomic_write_bytes

    text = doc_path.read_text() if doc_path.exists() else "# Results: continual unlearning on MiniCanvas\n\n"
    block = "\n".join(lines)
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
        text = head + block + tail
    else:
        i = text.find("\n## ")
        text = (text.rstrip("\n") + "\n\n" + block + "\n") if i < 0 else text[: i + 1] + block + "\n\n" + text[i + 1:]
    atomic_write_bytes(doc_path, text.encode())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--study", default="runs/study")
    ap.add_argument("--committed", default="docs/results/study", help="finished summaries kept by scripts/study.py")
    ap.add_argument("--out", default="docs")
    ap.add_argument("--edition", type=int, choices=(1, 2), default=2,
                    help="2 (default): update only the answer and the second edition's section of OUT/RESULTS.md "
                         "(scripts/study.py's units), leaving every other section as it is; 1: regenerate the first "
                         "edition as OUT/archive/RESULTS-first-edition.md (which drops its hand-written sections)")
    ap.add_argument("--configs", default="configs/study", help="the second edition's study files (the variants expected)")
    args = ap.parse_args()
    study, out = Path(args.study), Path(args.out)
    studies = [study, Path(args.committed)]
    (out / "results").mkdir(parents=True, exist_ok=True)
    if args.edition == 2:
        answer, section = split_answer(study2_section(studies, Path(args.configs), out / "results"))
        write_section(out / "RESULTS.md", section)
        write_answer(out / "RESULTS.md", answer)
        print(f"updated the answer and the second edition's section of {out / 'RESULTS.md'}")
        return
    doc = ["# Results: continual unlearning on MiniCanvas", "",
           "Generated by `scripts/results.py` from the `summary.json` files of the runs listed at the end. "
           "Means ± standard deviation over training seeds; evaluation seeds differ from the probe seeds used for "
           "every choice (regularizer strength, merge hyperparameters, early stopping).", "",
           "Scope, reduced to fit one session on 2 CPU cores (configs/styles.yaml, configs/objects.yaml): 8 requests per "
           "domain, 60 training steps per request (method default 100; ESD 40), one evaluation seed (188) over 4 partner "
           "concepts, probe seed 1; strengths from configs/sweep-styles.yaml (probe seeds 1, 2), applied to both domains. "
           "The `seeds` column says how many training seeds a row averages. With 32 (styles) or 16 "
           "(objects) images behind each RA-I, one image moves it by 3 to 6 points: read differences below ~10 "
           "points as noise. UA trades against retention throughout: a variant that keeps more usually forgets less, "
           "so compare the `mean` column too. The study's own seconds (Cost tables) were measured while one to five "
           "processes shared the two cores, so they drift with the load and variants run at different times are "
           "not comparable in absolute terms; the per-variant trend (flat or growing) is what they show. The "
           "benchmark section compares every variant under one load.", "",
           "Recipes. Published variants (every name without `ours:`: conabl and its regularizer variants, sculpmem, simultaneous, ties-merge) use ConAbl's reference recipe (`recipe: reference` in configs/styles.yaml and configs/objects.yaml): masked loss without a one-latent-pixel border, anchors from 100 DPM-Solver steps at guidance 6 stored as images and re-encoded every step with a sampled VAE latent and a random horizontal flip, training prompts \"In X Style, <caption>\" / \"<caption>, in X Style.\", start-token key/value detachment, and the reference's projection columns (styles: the anchor captions; objects: the catalog's objects and styles plus earlier requests). `ours:` variants keep obliviate's own recipe (plain MSE, the catalog sampler's cached latents, no flip, and for styles training on the evaluation template itself, which flatters UA); `esd` has no recipe choice.", ""]
    commands = []
    for domain in ("styles", "objects"):
        runs = load(studies, domain)
        if not runs:
            continue
        first = next(iter(runs.values()))
        variants = list(first["variants"])
        n = len(first["sequence"])
        has = lambda v: v in first["variants"]
        doc += [f"## {domain.capitalize()}", "",
                f"Sequence ({n} requests): {', '.join(first['sequence'])}. Retained: {', '.join(first['retained'])}. "
                f"Partners: {', '.join(first['partners'])}. Seeds: training {sorted(runs)}, evaluation {first['seeds']}, "
                f"probe {first['probe_seeds']}. Sampler: {first['sampler']}.", "",
                f"### After the last request ({n})", "", *table(runs, variants, n), "",
                f"### After the middle request ({n // 2})", "", *table(runs, variants, n // 2), "",
                "### Curves", "", *curves(runs, variants, domain, out / "results"), "",
                "### Verdicts on the published claims", "", *verdicts(runs, n, has), "",
                "### Cost", "", *cost_rows(runs, variants), ""]
        doc += ["### Beyond the paper", "", OURS, "", *beyond(runs, n, variants), "", *beyond(runs, n // 2, variants), "",
                *holdout(studies, domain, runs, variants, n)]
        commands.append((domain, runs))
    doc += bench_section(out / "results" / "bench-requests.json")
    doc += bench_eval_section(out / "results" / "bench-eval.json")
    doc += projection_leak(study)
    sweeps = sweep_section(studies)
    if sweeps:
        doc += ["## Regularizer strength sweeps (probe seeds only)", "", *sweeps]
    doc += ["## Regenerate", "", "The first edition's commands (`make study` now runs the second edition, above). They were: the sweep, then the styles and objects runs of one seed "
            "side by side, one torch thread each, then the benchmark and this script; each command resumes where it "
            "stopped. The minutes are the measured training + evaluation seconds summed over every step of the file "
            "(not model loading); with two runs side by side the wall time is about the sweep plus the longer run of "
            "each seed.", "", "```bash"]
    for path in run_files(studies, "sweep-*/summary.json").values():
        doc.append(f"obliviate run configs/{path.parent.name}.yaml --out {path.parent}   "
                   f"# {compute_minutes(json.loads(path.read_text())):.0f} min of training + evaluation")
    for domain, runs in commands:
        for seed, s_ in sorted(runs.items()):
            done = f"# {compute_minutes(s_):.0f} min of training + evaluation" + ("" if s_.get("wall_seconds") else " (unfinished: some variants missing)")
            doc.append(f"obliviate run configs/{domain}.yaml --out {study}/{domain}-s{seed} --seed {seed}   {done}")
    bench = out / "results" / "bench-requests.json"
    if bench.exists():
        b = json.loads(bench.read_text())
        doc.append(f"python scripts/bench_requests.py {b['config']} --requests {len(b['requests'])} --out {bench.as_posix()}   "
                   f"# {sum(sum(r['wall_seconds']) for r in b['variants'].values()) / 60:.0f} min")
    doc += [f"python scripts/results.py --study {study} --out docs", "```", ""]
    archived = out / "archive" / "RESULTS-first-edition.md"  # the first edition is kept apart, frozen
    archived.parent.mkdir(parents=True, exist_ok=True)
    archived.write_text("\n".join(doc) + "\n")
    print(f"wrote {archived}")


if __name__ == "__main__":
    main()
