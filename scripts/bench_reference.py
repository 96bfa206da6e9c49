"""ConAbl step time, measured side by side: the reference implementation's own training loop
(CUIG's `UnlearningMethods/ConAbl/train_conabl.py`) against obliviate's ConAbl (recipe
reference), on the bundled MiniCanvas model, on CPU, at the same torch thread count.

    python scripts/bench_reference.py --cuig PATH/TO/CUIG [--steps 10] [--rounds 5] [--threads 1]

`--cuig` is a checkout of https://github.com/justinhylee135/CUIG that you provide; nothing of it
is copied into obliviate and nothing is downloaded. Optional, run by hand (no test needs it).

What runs of the reference. Its training entry point, `train_conabl.main(args)`, runs as is,
with `args` from its own `src.args.parse_args`: setup (accelerate's Accelerator on CPU, its model
loading, its `create_custom_unet` with the k/v cross-attention parameter group and its
`CustomDiffusionAttnProcessor` on every attention layer, its AdamW and constant LR schedule,
its `AnchorDataset` and DataLoader), its anchor-image generation (`generate_anchor_images_if_needed`:
DPM-Solver, 100 steps, guidance 6, images written as JPEG files, first round only) and its
whole training loop: per step, the DataLoader reads, flips and tokenizes a batch of anchor
images and prompts, the VAE encodes the images (a sampled latent), the text encoder encodes the
target and the anchor prompts, the UNet runs the target prompt with gradient and the anchor
prompt without, the masked loss, `accelerator.backward`, gradient clipping, `optimizer.step`,
`lr_scheduler.step`, `zero_grad`, its progress bar and logs; then its final `delta.bin` export.

What the adapter (this file) replaces or adds, and why:
- `AnchorDataset.preprocess`'s loss mask: the reference computes it at 1/8 of the image size
  (SD's VAE); MiniCanvas's VAE downsamples by 4, so the mask would not match the latent. The
  adapter calls the reference's `preprocess` and recomputes its mask with the same formula at
  the model's own factor (one latent pixel of border, as in the reference at 512 px).
- Modules the reference imports but never calls with these settings, when missing here:
  `openai` (LLM prompt generation), `Regularizers.Simultaneous.simultaneous` (early-stopping
  evaluation; it needs pytorch_lightning and the evaluation classifiers) become stubs that raise
  if called; `transformers.CLIPFeatureExtractor` (a type annotation, removed in transformers 5)
  is aliased to `CLIPImageProcessor`; `torchvision.transforms` (torchvision is not installed
  here) becomes a shim whose `RandomHorizontalFlip` does what torchvision's does on a PIL image
  (one `torch.rand`, `Image.transpose`) and whose other transforms (used only with anchor
  preservation, off here) raise if called. The JSON lists the stubs that were installed.
- Timing: wrappers around two of its functions mark time, `print_training_settings_summary`
  (called just before the loop: the loop's start) and `update_progress_and_checkpoint` (called
  once after every optimizer step); `generate_anchor_images_if_needed` is timed as anchor
  generation. Its stdout and stderr go to a log file in the work directory.
- `--dataloader_num_workers 0` (its default is 2): with workers, image loading would run in
  other processes, outside the thread count both sides are held to; here it is part of the step.

Settings, both sides: style "fire", its anchor captions (the 48 MiniCanvas object captions
obliviate's ConAbl builds, written to the reference's anchor prompt file), batch 8, lr 5e-4
(no `--scale_lr`), AdamW weight decay 1e-2, clipping 1.0, k/v cross-attention weights, horizontal
flip, no augmentation, the masked loss, the target phrasings "In fire Style, <caption>" /
"<caption>, in fire Style.", start token detached, fp32.

Work per step that differs (the point of the comparison, not a flaw of it): the reference
decodes JPEGs and tokenizes 16 prompts, runs the VAE encoder and two text-encoder forwards at
every step, and its attention processor computes attention with explicit matmuls; obliviate
encodes each anchor image (and its mirror) once per request and samples the stored posterior,
encodes each prompt once, and uses diffusers' default attention. obliviate's default also runs
the no-gradient forward on a second thread (`OBLIVIATE_OVERLAP`), so at one torch thread it uses
up to two cores; `obliviate-sequential` (OBLIVIATE_OVERLAP=0) is measured beside it, and CPU
seconds per step (all threads of the process) are reported with the wall seconds.

Configurations (reference, obliviate, obliviate-sequential) x thread counts are interleaved in
rounds, after one untimed warm-up round (2 steps each; it also generates both sides' anchors),
so that load changes hit every configuration alike. One-time setup (model loading, anchor
generation, obliviate's `method.setup`) is timed apart from the steps. Prints JSON: median
seconds per step of each configuration, the ratios obliviate / reference, thread counts, load
average, the CUIG checkout's commit.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import torch

STYLE = "fire"
LR = 5e-4


# ---------------------------------------------------------------- the reference, driven
def _stub(name: str, attrs: dict | None = None) -> types.ModuleType:
    mod = types.ModuleType(name)
    mod.__dict__.update(attrs or {})
    sys.modules[name] = mod
    return mod


def _never_called(what: str):
    def fail(*_args, **_kwargs):
        raise RuntimeError(f"bench_reference stub: {what} is not available here and should not be called")
    return fail


def _torchvision_shim():
    """`torchvision.transforms` as the reference's data.py uses it. Only RandomHorizontalFlip is
    called at these settings (AnchorDataset.__getitem__); it does what torchvision's does on a
    PIL image. The others are built in AnchorDataset.__init__ and called only with anchor
    preservation (off here)."""
    from PIL import Image

    class RandomHorizontalFlip:
        def __init__(self, p=0.5):
            self.p = p

        def __call__(self, img):
            if torch.rand(1) < self.p:
                return img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            return img

    class _Unused:
        def __init__(self, *args, **kwargs):
            pass

        __call__ = _never_called("torchvision transforms other than RandomHorizontalFlip")

    transforms = types.SimpleNamespace(
        RandomHorizontalFlip=RandomHorizontalFlip, Compose=_Unused, Resize=_Unused, CenterCrop=_Unused,
        RandomCrop=_Unused, ToTensor=_Unused, Normalize=_Unused,
        InterpolationMode=types.SimpleNamespace(LANCZOS="lanczos", BILINEAR="bilinear", BICUBIC="bicubic"))
    tv = _stub("torchvision", {"transforms": transforms})
    sys.modules["torchvision.transforms"] = transforms  # type: ignore[assignment]
    return tv


class Reference:
    """CUIG's ConAbl training script, imported from `cuig` and driven through `main(args)`."""

    def __init__(self, cuig: Path, model: Path, work: Path, anchor_prompts: list[str], batch: int, resolution: int,
                 vae_factor: int, workers: int):
        self.cuig, self.model, self.work = cuig, model, work
        self.batch, self.resolution, self.workers = batch, resolution, workers
        self.n_anchors = len(anchor_prompts)
        self.prompt_file = work / "reference-anchor-prompts.txt"
        self.prompt_file.write_text("\n".join(anchor_prompts) + "\n")
        self.anchor_dir = work / "reference-anchors"
        self.log = work / "reference.log"
        self.stubs: list[str] = []
        self.rounds = 0
        conabl_dir = cuig / "UnlearningMethods" / "ConAbl"
        if not (conabl_dir / "train_conabl.py").is_file():
            raise SystemExit(f"--cuig {cuig}: no UnlearningMethods/ConAbl/train_conabl.py there; "
                             "pass a checkout of https://github.com/justinhylee135/CUIG")
        self._install_stubs()
        sys.path.insert(0, str(conabl_dir))  # its `src` package
        sys.path.insert(1, str(cuig))  # its `Regularizers` package (train_conabl also appends it)
        with self._quiet():
            spec = importlib.util.spec_from_file_location("train_conabl", conabl_dir / "train_conabl.py")
            self.train = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(self.train)
        self.args_mod = importlib.import_module("src.args")
        data = importlib.import_module("src.data")
        self._patch_mask(data.AnchorDataset, vae_factor)
        self._patch_clocks()

    def _install_stubs(self):
        try:
            import openai  # noqa: F401
        except ImportError:
            _stub("openai", {"ChatCompletion": types.SimpleNamespace(create=_never_called("openai"))})
            self.stubs.append("openai")
        import transformers

        if not hasattr(transformers, "CLIPFeatureExtractor"):
            transformers.CLIPFeatureExtractor = transformers.CLIPImageProcessor
            self.stubs.append("transformers.CLIPFeatureExtractor = CLIPImageProcessor")
        try:
            import torchvision  # noqa: F401
        except ImportError:
            _torchvision_shim()
            self.stubs.append("torchvision.transforms (RandomHorizontalFlip shim)")
        sys.path.insert(0, str(self.cuig))
        try:
            with self._quiet():
                importlib.import_module("Regularizers.Simultaneous.simultaneous")
        except Exception as err:  # needs pytorch_lightning and the evaluation classifiers
            _stub("Regularizers.Simultaneous.simultaneous", {
                "sample_and_evaluate_ua": _never_called("early-stopping evaluation"),
                "check_early_stopping": _never_called("early-stopping evaluation")})
            self.stubs.append(f"Regularizers.Simultaneous.simultaneous ({type(err).__name__}: {err})")
        finally:
            sys.path.remove(str(self.cuig))

    @contextlib.contextmanager
    def _quiet(self):
        """Everything the reference writes (prints, progress bars, library logs) goes to the
        log file: file descriptors 1 and 2 point there while it runs."""
        sys.stdout.flush()
        sys.stderr.flush()
        saved = os.dup(1), os.dup(2)
        with open(self.log, "a") as log:
            os.dup2(log.fileno(), 1)
            os.dup2(log.fileno(), 2)
            try:
                yield
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os.dup2(saved[0], 1)
                os.dup2(saved[1], 2)
                os.close(saved[0])
                os.close(saved[1])

    @staticmethod
    def _patch_mask(AnchorDataset, factor: int):
        original = AnchorDataset.preprocess

        def preprocess(self, image, scale, resample):
            # the reference's own preprocessing; its mask assumes SD's factor 8
            instance_image, _ = original(self, image, scale, resample)
            # ... recomputed with its formula at this VAE's factor (the crop offsets it drew
            # are not returned; with --noaug the image fills the frame, offsets 0)
            import numpy as np

            n = self.resolution // factor
            if scale > self.resolution:
                mask = np.ones((n, n))
            else:
                mask = np.zeros((n, n))
                mask[1 : scale // factor - 1, 1 : scale // factor - 1] = 1.0
            return instance_image, mask

        AnchorDataset.preprocess = preprocess

    def _patch_clocks(self):
        t = self.train
        summary, progress, anchors = (t.print_training_settings_summary, t.update_progress_and_checkpoint,
                                      t.generate_anchor_images_if_needed)

        def print_training_settings_summary(*a, **k):
            out = summary(*a, **k)
            self.marks.append((time.perf_counter(), time.process_time(), torch.get_num_threads()))
            return out

        def update_progress_and_checkpoint(*a, **k):
            out = progress(*a, **k)
            self.marks.append((time.perf_counter(), time.process_time(), torch.get_num_threads()))
            return out

        def generate_anchor_images_if_needed(*a, **k):
            t0 = time.perf_counter()
            out = anchors(*a, **k)
            self.anchor_seconds = time.perf_counter() - t0
            return out

        t.print_training_settings_summary = print_training_settings_summary
        t.update_progress_and_checkpoint = update_progress_and_checkpoint
        t.generate_anchor_images_if_needed = generate_anchor_images_if_needed

    def run(self, steps: int) -> dict:
        self.rounds += 1
        out_dir = self.work / f"reference-out-{self.rounds}"
        argv = [
            "--base_model_dir", str(self.model), "--concept_type", "style", "--anchor_target_concepts", STYLE,
            "--output_dir", str(out_dir), "--overwrite_existing_ckpt",
            "--anchor_dataset_dirs", str(self.anchor_dir), "--anchor_prompt_paths", str(self.prompt_file),
            "--num_anchor_images", str(self.n_anchors), "--num_anchor_prompts", str(self.n_anchors),
            "--iterations", str(steps), "--anchor_batch_size", str(self.batch), "--learning_rate", str(LR),
            "--parameter_group", "kv-xattn", "--hflip", "--noaug", "--resolution", str(self.resolution),
            "--dataloader_num_workers", str(self.workers), "--mixed_precision", "no",
            "--prior_generation_precision", "fp32", "--seed", "42",
        ]
        args = self.args_mod.parse_args(argv)
        self.marks, self.anchor_seconds = [], 0.0
        images = self.anchor_dir / "images"
        existing = len(list(images.iterdir())) if images.is_dir() else 0
        t0 = time.perf_counter()
        with self._quiet():
            self.train.main(args)
        end = time.perf_counter()
        if len(self.marks) != steps + 1:
            raise RuntimeError(f"reference ran {len(self.marks) - 1} steps, expected {steps}; see {self.log}")
        wall = [b[0] - a[0] for a, b in zip(self.marks, self.marks[1:])]
        cpu = [b[1] - a[1] for a, b in zip(self.marks, self.marks[1:])]
        return {"step_seconds": wall, "cpu_seconds": cpu, "threads_seen": sorted({m[2] for m in self.marks}),
                "setup_seconds": self.marks[0][0] - t0 - self.anchor_seconds, "anchor_seconds": self.anchor_seconds,
                "anchors_generated": max(0, self.n_anchors - existing),
                "teardown_seconds": end - self.marks[-1][0]}


# ---------------------------------------------------------------- obliviate
class Obliviate:
    def __init__(self, model: Path, work: Path, batch: int, anchor_images: int):
        from obliviate.model import load_pipeline, select_parameters
        from obliviate.protocols import minicanvas_catalog
        from obliviate.request import Request

        t0 = time.perf_counter()
        self.pipe = load_pipeline(str(model), device="cpu")
        self.pipe.set_progress_bar_config(disable=True)
        self.load_seconds = time.perf_counter() - t0
        self.request = Request(STYLE, "style", "conabl", seed=0)
        self.params = select_parameters(self.pipe.unet, self.request.param_group)
        for p in self.params.values():
            p.requires_grad_(True)
        self.start = {n: p.detach().clone() for n, p in self.params.items()}
        self.catalog = minicanvas_catalog()
        self.cache = work / "obliviate-cache"
        self.batch, self.anchor_images = batch, anchor_images

    def method(self, steps: int):
        from obliviate.methods.conabl import ConAbl, ConAblSettings

        return ConAbl(ConAblSettings(recipe="reference", steps=steps, lr=LR, batch_size=self.batch,
                                     anchor_images=self.anchor_images))

    def context(self):
        from obliviate.trainer import Context

        return Context(pipe=self.pipe, request=self.request, params=self.params, pretrained=self.start,
                       start=self.start, catalog=self.catalog, unlearned_before=[], cache_dir=self.cache,
                       base_hash="bench-reference", restore_base=contextlib.nullcontext, quiet=True)

    def anchor_prompts(self) -> list[str]:
        anchors, _ = self.method(1).build_prompts(self.context(), STYLE, "style", self.anchor_images)
        return anchors

    def run(self, steps: int, overlap: bool) -> dict:
        from obliviate.trainer import Hook, train

        marks = []

        class Clock(Hook):
            name, order = "clock", 100

            def after_step(self, ctx, step, total_steps):
                marks.append((time.perf_counter(), time.process_time(), torch.get_num_threads()))

        os.environ["OBLIVIATE_OVERLAP"] = "1" if overlap else "0"
        ctx, method = self.context(), self.method(steps)
        t0 = time.perf_counter()
        method.setup(ctx)  # anchors generated (first round) or read from the cache, posteriors, prompts
        setup = time.perf_counter() - t0
        marks.append((time.perf_counter(), time.process_time(), torch.get_num_threads()))
        train(ctx, method, [Clock()])
        with torch.no_grad():  # every round starts from the base model, as the reference's does
            for n, p in self.params.items():
                p.copy_(self.start[n])
        wall = [b[0] - a[0] for a, b in zip(marks, marks[1:])]
        cpu = [b[1] - a[1] for a, b in zip(marks, marks[1:])]
        return {"step_seconds": wall, "cpu_seconds": cpu, "threads_seen": sorted({m[2] for m in marks}),
                "setup_seconds": setup}


# ---------------------------------------------------------------- main
def _commit(cuig: Path) -> str | None:
    try:
        return subprocess.run(["git", "-C", str(cuig), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cuig", type=Path, required=True, help="a checkout of CUIG (github.com/justinhylee135/CUIG)")
    ap.add_argument("--cuig-commit", default=None, help="its commit, when DIR is an export without .git")
    ap.add_argument("--steps", type=int, default=10, help="timed steps per configuration per round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, nargs="+", default=[1], help="torch thread counts (interleaved)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--anchor-images", type=int, default=48)
    ap.add_argument("--reference-workers", type=int, default=0,
                    help="the reference's DataLoader workers (its default is 2; 0 keeps loading inside the step)")
    ap.add_argument("--model", type=Path, default=None, help="a MiniCanvas-like pipeline directory (default: bundled)")
    ap.add_argument("--work", type=Path, default=None, help="scratch directory (default: a temporary one)")
    ap.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = ap.parse_args()
    if args.steps < 2 or args.rounds < 1 or args.batch < 1 or min(args.threads) < 1:
        ap.error("--steps must be >= 2, --rounds, --batch and --threads >= 1")
    if not (args.cuig / "UnlearningMethods" / "ConAbl" / "train_conabl.py").is_file():
        ap.error(f"--cuig {args.cuig}: no UnlearningMethods/ConAbl/train_conabl.py there; "
                 "pass a checkout of https://github.com/justinhylee135/CUIG")
    from obliviate.minicanvas import bundled_path

    model = args.model or Path(bundled_path())
    with contextlib.ExitStack() as stack:
        work = args.work or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-reference-")))
        work.mkdir(parents=True, exist_ok=True)
        torch.set_num_threads(args.threads[0])
        ours = Obliviate(model, work, args.batch, args.anchor_images)
        vae = ours.pipe.vae.config
        ref = Reference(args.cuig.resolve(), model, work, ours.anchor_prompts(), args.batch,
                        resolution=vae.sample_size, vae_factor=2 ** (len(vae.block_out_channels) - 1),
                        workers=args.reference_workers)
        runners = {"reference": lambda n: ref.run(n), "obliviate": lambda n: ours.run(n, overlap=True),
                   "obliviate-sequential": lambda n: ours.run(n, overlap=False)}
        configs = [(name, th) for th in args.threads for name in runners]
        warmup = {}
        for name, th in configs:  # untimed; generates both sides' anchors
            torch.set_num_threads(th)
            warmup[f"{name}-threads{th}"] = runners[name](2)
        results = {c: [] for c in configs}
        for _ in range(args.rounds):
            for name, th in configs:
                torch.set_num_threads(th)
                results[(name, th)].append(runners[name](args.steps))
        load = os.getloadavg()

    def summary(rounds):
        steps = [s for r in rounds for s in r["step_seconds"]]
        cpu = [s for r in rounds for s in r["cpu_seconds"]]
        return {
            "median_seconds_per_step": statistics.median(steps),
            "median_cpu_seconds_per_step": statistics.median(cpu),
            "round_mean_seconds_per_step": [round(sum(r["step_seconds"]) / len(r["step_seconds"]), 4) for r in rounds],
            "setup_seconds_per_round": [round(r["setup_seconds"], 3) for r in rounds],
            "threads_seen": sorted({t for r in rounds for t in r["threads_seen"]}),
            **({"teardown_seconds_per_round": [round(r["teardown_seconds"], 3) for r in rounds]}
               if "teardown_seconds" in rounds[0] else {}),
        }

    figures = {}
    for th in args.threads:
        per = {name: summary(results[(name, th)]) for name in runners}
        r = per["reference"]
        figures[f"threads{th}"] = {
            **per,
            "ratio_obliviate_over_reference": per["obliviate"]["median_seconds_per_step"] / r["median_seconds_per_step"],
            "ratio_obliviate_sequential_over_reference":
                per["obliviate-sequential"]["median_seconds_per_step"] / r["median_seconds_per_step"],
            "cpu_ratio_obliviate_over_reference":
                per["obliviate"]["median_cpu_seconds_per_step"] / r["median_cpu_seconds_per_step"],
            "cpu_ratio_obliviate_sequential_over_reference":
                per["obliviate-sequential"]["median_cpu_seconds_per_step"] / r["median_cpu_seconds_per_step"],
        }
    first = warmup[f"reference-threads{args.threads[0]}"], warmup[f"obliviate-threads{args.threads[0]}"]
    out = {
        "steps": args.steps, "rounds": args.rounds, "batch": args.batch, "anchor_images": args.anchor_images,
        "style": STYLE, "lr": LR, "threads": args.threads, "cores": os.cpu_count(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "load_average_at_end": load,
        "torch": torch.__version__, "cuig_commit": args.cuig_commit or _commit(args.cuig),
        "reference_dataloader_workers": args.reference_workers, "reference_stubs": ref.stubs,
        "figures": figures,
        "one_time_setup_seconds": {
            "reference_anchor_generation": round(first[0]["anchor_seconds"], 2),
            "reference_anchors_generated": first[0]["anchors_generated"],
            "reference_model_setup_first_round": round(first[0]["setup_seconds"], 2),
            "obliviate_model_load": round(ours.load_seconds, 2),
            "obliviate_method_setup_first_round": round(first[1]["setup_seconds"], 2),
            "note": "first (warm-up) round: both sides generate their anchors there unless --work holds them from an "
                    "earlier run (reference: DPM-Solver 100 steps, guidance 6, batch 4, JPEG files; obliviate: the "
                    "same sampler at batch 32, cached tensors); model loading is repeated every round by the "
                    "reference (setup_seconds_per_round), once by this script for obliviate",
        },
    }
    text = json.dumps(out, indent=2)
    print(text)
    if args.out:
        from obliviate.delta import atomic_write_json

        args.out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(args.out, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
