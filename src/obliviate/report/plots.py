"""PNG figures for the report, rendered to bytes so the caller can both save and embed them."""
from __future__ import annotations

import io
import textwrap

import matplotlib

matplotlib.use("Agg")  # headless: reports are written on servers without a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from PIL import Image  # noqa: E402

METRICS = (("UA", "UA (%)"), ("RA_I", "RA-I (%)"), ("RA_C", "RA-C (%)"))
CELL_PX = 80  # grid cells are upscaled to about this size, tiny 32x32 samples are unreadable otherwise
DPI = 100


def _series(steps: list[dict], key: str) -> tuple[list, np.ndarray]:
    # None becomes NaN so matplotlib leaves a gap instead of failing or drawing a fake zero
    xs = [s.get("step", i) for i, s in enumerate(steps)]
    ys = np.array([np.nan if s.get(key) is None else float(s[key]) for s in steps], dtype=float)
    return xs, ys


def _to_png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)  # figures are kept alive by pyplot otherwise
    return buf.getvalue()


MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h", "p", "d", "H", "8")
LINESTYLES = ("-", "--", "-.", ":")


def variant_styles(names: list[str]) -> dict[str, dict]:
    """A distinct (colour, marker) per variant, readable with many variants (17 in the
    study): 20 colours of tab20 ordered dark-then-light, markers and dash patterns cycling
    at other periods, so no two variants share all three. Each variant is also shifted a
    little along x, so identical curves stay visible side by side instead of hiding one
    another."""
    cmap = plt.get_cmap("tab20")
    colours = [cmap(i) for i in list(range(0, 20, 2)) + list(range(1, 20, 2))]
    n = max(1, len(names))
    width = min(0.3, 0.04 * (n - 1))
    return {name: {"color": colours[i % len(colours)], "marker": MARKERS[i % len(MARKERS)],
                   "linestyle": LINESTYLES[(i // len(colours)) % len(LINESTYLES)],
                   "offset": (i / (n - 1) - 0.5) * width if n > 1 else 0.0}
            for i, name in enumerate(names)}


def _plot(ax, variants, key, styles) -> None:
    for name, v in variants.items():
        st = styles[name]
        xs, ys = _series(v.get("steps", []), key)
        ax.plot([x + st["offset"] for x in xs], ys, marker=st["marker"], color=st["color"], linestyle=st["linestyle"],
                markersize=5, linewidth=1.3, alpha=0.9, label=name)


def _legend_outside(fig, axes, n: int) -> None:
    """One legend for all panels, to the right of them, never over the curves."""
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.0, 0.95), fontsize="small", frameon=False,
               ncol=1 if n <= 20 else 2)


def metrics_png(variants: dict[str, dict]) -> bytes:
    """UA, RA-I and RA-C vs step, one line per variant."""
    styles = variant_styles(list(variants))
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, (key, label) in zip(axes, METRICS):
        _plot(ax, variants, key, styles)
        ax.set(title=label, xlabel="step", ylim=(-2, 102))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are discrete
        ax.grid(alpha=0.3)
    fig.tight_layout()
    _legend_outside(fig, axes, len(variants))
    return _to_png(fig)


def drift_png(variants: dict[str, dict]) -> bytes:
    """Cumulative L2 drift from the pretrained model vs step."""
    styles = variant_styles(list(variants))
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    _plot(ax, variants, "drift_l2", styles)
    ax.set(title="cumulative drift from pretrained (L2)", xlabel="step", ylabel="drift_l2")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    fig.tight_layout()
    _legend_outside(fig, [ax], len(variants))
    return _to_png(fig)


def _cell(img) -> np.ndarray:
    im = img if isinstance(img, Image.Image) else Image.fromarray(np.asarray(img, dtype=np.uint8))
    im = im.convert("RGB")
    scale = max(1, round(CELL_PX / max(im.size)))
    # nearest keeps the pixels of tiny samples crisp instead of blurring them
    return np.asarray(im.resize((im.width * scale, im.height * scale), Image.NEAREST))


def grid_png(grid: dict) -> bytes:
    """Rows = fixed prompts, columns = steps; cells whose concept is already unlearned get a red border."""
    rows, cols, images = grid["rows"], grid["columns"], grid["images"]
    marked = grid.get("marked") or [[False] * len(cols) for _ in rows]
    cell_in, label_in = CELL_PX / DPI * 1.15, 2.6
    fig, axes = plt.subplots(
        len(rows), len(cols), squeeze=False,
        figsize=(label_in + cell_in * len(cols), 0.5 + cell_in * len(rows)),
    )
    for r, row_label in enumerate(rows):
        for c in range(len(cols)):
            ax = axes[r][c]
            ax.imshow(_cell(images[r][c]), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            red = bool(marked[r][c])
            for spine in ax.spines.values():
                spine.set_color("red" if red else "0.8")
                spine.set_linewidth(4 if red else 0.5)
            if r == 0:
                ax.set_title(cols[c], fontsize=8)
        axes[r][0].set_ylabel(textwrap.fill(row_label, 28), rotation=0, ha="right", va="center", fontsize=8)
    if grid.get("variant"):
        fig.suptitle(f"samples: {grid['variant']} (red = concept already unlearned)", fontsize=9)
    fig.tight_layout()
    return _to_png(fig)
