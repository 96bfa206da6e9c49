"""Human-readable report (Markdown + self-contained HTML + PNG plots) of an experiment's summary.json."""
from __future__ import annotations

import base64
import html
from pathlib import Path

from ..delta import atomic_write_bytes

from . import plots

DASH = "\u2013"  # rendered for missing (null) values
COLUMNS = ("step", "concept", "UA", "RA-I", "RA-C", "drift_l2", "train_seconds", "eval_seconds")
_KEYS = ("step", "concept", "UA", "RA_I", "RA_C", "drift_l2", "train_seconds", "eval_seconds")


def _fmt(key: str, value) -> str:
    if value is None:
        return DASH
    if key == "drift_l2":
        return f"{float(value):#.3g}"  # "#" keeps trailing zeros: 0.100, not 0.1
    if key in ("UA", "RA_I", "RA_C", "train_seconds", "eval_seconds"):
        return f"{float(value):.1f}"
    return str(value)


def _step_rows(steps: list[dict]) -> list[list[str]]:
    return [[_fmt(k, s.get(k)) for k in _KEYS] for s in steps]


def _last_rows(variants: dict[str, dict]) -> list[list[str]]:
    rows = []
    for name, v in variants.items():
        steps = v.get("steps") or [{}]
        rows.append([name] + [_fmt(k, steps[-1].get(k)) for k in _KEYS[:6]])
    return rows


# What the three numbers mean, stated in every report.
DEFINITIONS = (
    ("UA", "unlearning accuracy: 100 minus the judge's accuracy on every concept unlearned so far "
           "(cumulative); high = the removed concepts stay removed."),
    ("RA-I", "in-domain retained accuracy: the judge's accuracy on the retained concepts of the "
             "unlearned domain (e.g. other styles); high = neighbours are kept."),
    ("RA-C", "cross-domain retained accuracy: the judge's accuracy on the other domain (e.g. the "
             "objects drawn in every style of the grid); high = the rest of the model is kept."),
    ("drift_l2", "L2 norm of the total change of the trained tensors from the pretrained model."),
)


def shown_path(path) -> str:
    """A model's path as a report shows it: never an absolute path of this machine (reports are
    shared). The bundled MiniCanvas model by name, a path under the working directory relative
    to it, anything else by its directory name (the hash beside it identifies the model)."""
    if path is None:
        return DASH
    p = Path(str(path))
    if not p.is_absolute():
        return str(p)
    from ..minicanvas import bundled_path

    try:
        if p.resolve() == Path(bundled_path()).resolve():
            return "minicanvas (bundled)"
        return str(p.resolve().relative_to(Path.cwd().resolve()))
    except (ValueError, OSError):
        return p.name


def _meta(summary: dict) -> list[tuple[str, str]]:
    out = [(k, str(summary[k])) for k in ("protocol", "domain") if summary.get(k) is not None]
    if summary.get("base_model"):
        base = summary["base_model"]
        out.append(("base model", f"{shown_path(base.get('path'))} (sha256 {str(base.get('hash', ''))[:12]})"
                    if isinstance(base, dict) else shown_path(base)))
    for key, label in (("sequence", "unlearned in order"), ("retained", "retained (RA-I)"), ("partners", "partners (RA-C)"),
                       ("seeds", "evaluation seeds"), ("probe_seeds", "probe seeds (model selection only)")):
        if summary.get(key):
            out.append((label, ", ".join(map(str, summary[key]))))
    if summary.get("images_per_evaluation"):
        probe = summary.get("images_per_probe")
        out.append(("images", f"{summary['images_per_evaluation']} per evaluation"
                              + (f", {probe} per probe evaluation" if probe else "")))
    if summary.get("sampler"):
        out.append(("sampler", ", ".join(f"{k} {v}" for k, v in summary["sampler"].items())))
    return out


def images_behind(summary: dict) -> dict | None:
    """How many images each number stands on: every concept of the grid is drawn with every
    partner at every seed (evaluate/power.grid), so UA after t requests is judged on t times
    `per_concept` images, RA-I on the retained concepts' images, RA-C on all of them."""
    if not all(summary.get(k) for k in ("partners", "seeds", "images_per_evaluation")):
        return None
    per_concept = len(summary["partners"]) * len(summary["seeds"])
    return {"per_evaluation": summary["images_per_evaluation"], "per_concept": per_concept,
            "RA_I": per_concept * len(summary.get("retained") or []), "RA_C": summary["images_per_evaluation"]}


def _pct(value) -> str:
    return DASH if value is None else f"{float(value):.1f}"


def answer(summary: dict) -> list[str]:
    """The report's first lines: what each variant forgot and kept after its last request,
    and how many images stand behind each number."""
    lines = []
    variants = {n: v["steps"][-1] for n, v in summary.get("variants", {}).items() if v.get("steps")}
    for name, last in variants.items():
        t = last.get("step", 0)
        lines.append(f"{name}, after {t} request{'s' * (t != 1)}: forgot {_pct(last.get('UA'))}% of the erased "
                     f"concepts' images (UA), kept {_pct(last.get('RA_I'))}% of the retained concepts (RA-I) and "
                     f"{_pct(last.get('RA_C'))}% of the other domain (RA-C).")
    scored = {k: {n: s[k] for n, s in variants.items() if s.get(k) is not None} for k in ("UA", "RA_I", "RA_C")}
    if len(variants) > 1 and all(scored.values()):
        best = {k: max(v, key=v.get) for k, v in scored.items()}
        lines.append(f"Forgot most: {best['UA']}. Kept most of the retained concepts: {best['RA_I']}; "
                     f"of the other domain: {best['RA_C']}.")
    img = images_behind(summary)
    if img:
        t = max((s.get("step", 0) for s in variants.values()), default=0)
        steps = (summary.get("sampler") or {}).get("steps")
        sampled = f", sampled in {steps} steps" if steps else ""
        lines.append(f"Each evaluation judges {img['per_evaluation']} images ({img['per_concept']} per concept{sampled}): "
                     f"UA after {t} requests stands on {img['per_concept'] * t} images, RA-I on {img['RA_I']}, "
                     f"RA-C on {img['RA_C']}.")
    return lines


def _describe(v: dict) -> list[tuple[str, str]]:
    """A variant's setting, method, add-ons and their settings, as run."""
    out = [("setting", str(v.get("setting", DASH)))]
    config = v.get("config") or {}
    method = config.get("method") or {}
    if method or v.get("method"):
        settings = ", ".join(f"{k}={val}" for k, val in method.items() if k != "name")
        out.append(("method", f"{method.get('name', v.get('method'))}" + (f" ({settings})" if settings else "")))
    regs = config.get("regularizers")
    if regs is None:
        regs = [{"name": n} for n in v.get("regularizers", [])]
    out.append(("add-ons", "; ".join(r["name"] + (" (" + ", ".join(f"{k}={val}" for k, val in r.items() if k != "name") + ")"
                                                  if len(r) > 1 else "") for r in regs) or "none"))
    for key in ("merge", "early_stopping", "param_group"):
        if v.get(key) not in (None, {}, False):
            out.append((key.replace("_", " "), str(v[key])))
    return out


def _md_table(header, rows) -> str:
    esc = lambda s: str(s).replace("|", "\\|")  # noqa: E731 - a pipe would split the cell
    lines = ["| " + " | ".join(map(esc, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(esc, r)) + " |" for r in rows]
    return "\n".join(lines)


def _html_table(header, rows) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def _markdown(title, summary, variants, figures) -> str:
    """First screen: the answer, the last step and the image grid; then the curves, every
    request, what the numbers mean, and the protocol and settings."""
    out = [f"# {title}", ""] + [f"- {line}" for line in answer(summary)] + [""]
    out += ["## Last step", "", _md_table(("variant",) + COLUMNS[:6], _last_rows(variants)), ""]
    first = [name for name in ("grid",) if name in figures]
    out += [f"![{name}](plots/{name}.png)\n" for name in first]
    out += ["## Curves", ""] + [f"![{name}](plots/{name}.png)\n" for name in figures if name not in first]
    for name, v in variants.items():
        out += [f"## {name}", "", _md_table(COLUMNS, _step_rows(v.get("steps", []))), ""]
    out += ["## What the numbers mean", ""] + [f"- **{k}**: {v}" for k, v in DEFINITIONS] + [""]
    out += ["## Protocol and settings", ""] + [f"- **{k}**: {v}" for k, v in _meta(summary)] + [""]
    for name, v in variants.items():
        out += [f"### {name}", ""] + [f"- {k}: {val}" for k, val in _describe(v)] + [""]
    return "\n".join(out)


_CSS = """body{font-family:sans-serif;max-width:1300px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f2f2f2}img{max-width:100%}p.answer{font-size:1.1em;margin:.3em 0}"""


def _html(title, summary, variants, figures) -> str:
    """The same order as the Markdown: the answer and the image grid on the first screen."""
    t = html.escape(title)

    def figure(name: str) -> str:
        # embedded as data URIs so the single HTML file can be mailed or archived on its own
        b64 = base64.b64encode(figures[name]).decode("ascii")
        return f'<figure><img alt="{html.escape(name)}" src="data:image/png;base64,{b64}"></figure>'

    out = [f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>{t}</title><style>{_CSS}</style></head><body>',
           f"<h1>{t}</h1>"]
    out += [f'<p class="answer">{html.escape(line)}</p>' for line in answer(summary)]
    out += ["<h2>Last step</h2>", _html_table(("variant",) + COLUMNS[:6], _last_rows(variants))]
    out += [figure(name) for name in ("grid",) if name in figures]
    out.append("<h2>Curves</h2>")
    out += [figure(name) for name in figures if name != "grid"]
    for name, v in variants.items():
        out += [f"<h2>{html.escape(name)}</h2>", _html_table(COLUMNS, _step_rows(v.get("steps", [])))]
    out.append("<h2>What the numbers mean</h2><dl>" + "".join(
        f"<dt><b>{html.escape(k)}</b></dt><dd>{html.escape(v)}</dd>" for k, v in DEFINITIONS) + "</dl>")
    out.append("<h2>Protocol and settings</h2>")
    if meta := _meta(summary):
        out.append("<ul>" + "".join(f"<li><b>{html.escape(k)}</b>: {html.escape(v)}</li>" for k, v in meta) + "</ul>")
    for name, v in variants.items():
        out.append(f"<h3>{html.escape(name)}</h3><ul>" + "".join(
            f"<li>{html.escape(k)}: {html.escape(val)}</li>" for k, val in _describe(v)) + "</ul>")
    out.append("</body></html>")
    return "\n".join(out)


def write_report(out_dir: str | Path, summary: dict, *, image_grid: dict | None = None,
                 title: str = "obliviate report") -> dict[str, Path]:
    """Write out_dir/report.md, a self-contained out_dir/report.html and PNG plots under out_dir/plots/.

    Returns {"markdown": path, "html": path, "plots": [paths]}.
    """
    out_dir = Path(out_dir)
    (out_dir / "plots").mkdir(parents=True, exist_ok=True)
    variants = summary.get("variants", {})
    figures = {"metrics": plots.metrics_png(variants), "drift": plots.drift_png(variants)}
    if image_grid is not None:
        figures["grid"] = plots.grid_png(image_grid)
    plot_paths = []
    for name, png in figures.items():
        plot_paths.append(out_dir / "plots" / f"{name}.png")
        atomic_write_bytes(plot_paths[-1], png)
    md, page = out_dir / "report.md", out_dir / "report.html"
    atomic_write_bytes(md, _markdown(title, summary, variants, figures).encode("utf-8"))
    atomic_write_bytes(page, _html(title, summary, variants, figures).encode("utf-8"))
    return {"markdown": md, "html": page, "plots": plot_paths}


__all__ = ["answer", "images_behind", "shown_path", "write_report"]
