"""The `obliviate` command line: one entry point, subcommands."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def _quiet_libraries() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    import warnings

    # Only the known noise of the libraries we drive, by message; anything else (a real
    # deprecation in diffusers, say) still reaches the user.
    for message in (
        r".*`resume_download` is deprecated.*",  # huggingface_hub, triggered inside from_pretrained
        r".*torch\.utils\._pytree\._register_pytree_node is deprecated.*",
        r".*TypedStorage is deprecated.*",
        r".*safety_checker.*",  # MiniCanvas pipelines have no safety checker, on purpose
    ):
        warnings.filterwarnings("ignore", message=message)


def pick_threads() -> int | None:
    """Torch's default of one thread per core collapses when anything else uses the cores:
    on the 2-core machine, with one other busy process, a MiniCanvas ConAbl step took 0.7-5 s
    at 2 threads and 0.2 s at 1 (scripts/bench_conabl.py). Unless the user chose with
    OMP_NUM_THREADS, use half the cores available to this process (1 to 4): the other half
    serves ConAbl's overlapped no-gradient forward (diffusion.reference_and_prediction) or
    whatever else runs."""
    if os.environ.get("OMP_NUM_THREADS"):
        return None
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = max(1, min(cores // 2, 4))
    torch.set_num_threads(threads)
    return threads


def parse_reg(text: str) -> tuple[str, dict[str, str]]:
    """`NAME[:key=value,...]` -> (name, settings)."""
    from .parsing import parse_named

    name, settings = parse_named(text, "--reg")
    if not name:
        raise ValueError(f"--reg {text!r}: missing regularizer name")
    return name, settings


def parse_kv(items: list[str], flag: str) -> dict[str, str]:
    out = {}
    for item in items or []:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise ValueError(f"{flag} {item!r}: expected key=value")
        out[key.strip()] = value.strip()
    return out


# ---------------------------------------------------------------- subcommands
def cmd_minicanvas(args) -> int:
    from . import minicanvas

    if args.action == "path":
        print(minicanvas.bundled_path())
    elif args.action == "concepts":
        print(json.dumps(minicanvas.catalog(), indent=2))
    elif args.action == "build":
        from .minicanvas.build import build

        if not args.out:
            raise ValueError("minicanvas build needs --out DIR")
        build(args.out, quick=args.quick, seed=args.seed, quiet=args.quiet)
    elif args.action == "check":
        from .evaluate.minicanvas_card import check

        if not args.out:
            raise ValueError("minicanvas check needs --out DIR")
        result = check(args.model or minicanvas.bundled_path(), args.out, seeds=args.seeds, quiet=args.quiet)
        print(json.dumps({k: result[k] for k in ("style_accuracy", "object_accuracy", "render_style_accuracy",
                                                  "render_object_accuracy", "neighbour_agreement")}, indent=2))
        print(f"wrote {Path(args.out) / 'check.json'}")
    return 0


def _default_param_group(args) -> str:
    """kv-xattn, except for a closed-form method on an SD3 / FLUX model: `context`, the text
    projection its solve edits (methods/uce.py)."""
    from .methods import get_method
    from .model import is_flow

    run_info = Path(args.run) / "run.json"
    model = json.loads(run_info.read_text())["base_model"] if run_info.is_file() else args.model
    try:
        method = get_method(args.method)
        closed = method.closed_form or getattr(method, "solves_first", False)
    except ValueError:
        return "kv-xattn"  # the unknown method is reported by build_hooks
    if closed and model and (Path(model) / "model_index.json").is_file() and is_flow(model):
        return "context"
    return "kv-xattn"


def shorthand_variant(args) -> dict:
    """The command line's shorthand (--method, --method-setting key=value, --steps, --reg
    NAME:key=value, --param-group) written as an experiment file's variant: `{name, method,
    method_settings, regularizers: [{name: NAME, key: value}], param_group}`. Values stay the
    strings typed (settings are coerced by type when the variant is checked)."""
    method_settings = parse_kv(args.method_setting, "--method-setting")
    if args.steps is not None:
        method_settings["steps"] = str(args.steps)
    regularizers = []
    for text in args.reg or []:
        name, settings = parse_reg(text)
        if "name" in settings:
            raise ValueError(f"--reg {text!r}: 'name' is not a setting (the add-on's name comes before ':')")
        regularizers.append({"name": name, **settings})
    return {"name": "+".join([args.method, *(r["name"] for r in regularizers)]), "method": args.method,
            "method_settings": method_settings, "regularizers": regularizers,
            "param_group": args.param_group or _default_param_group(args)}


def shorthand_request(args):
    """The request of `obliviate unlearn`: its variant checked by the experiment file's parser
    (experiment.config.parse_variant: every name, setting, range and the parameter group)."""
    from .experiment.config import parse_variant
    from .request import Request

    variant = parse_variant(shorthand_variant(args), args.domain, where="command line")
    return Request(concept=args.concept, domain=args.domain, method=variant.method, method_settings=variant.method_settings,
                   regularizers=variant.regularizers, seed=args.seed, param_group=variant.param_group)


def cmd_unlearn(args) -> int:
    from .continual import Run, parse

    # every name, setting, range and the parameter group checked before anything is created
    request = shorthand_request(args)
    parsed = parse(request)
    from .distributed import autocast_dtype, validate_device

    validate_device(args.device)

    autocast_dtype(__import__("torch").device("cpu"), args.precision)
    if Path(args.run).exists() and not Path(args.run).is_dir():
        raise ValueError(f"--run {args.run} is a file, not a run directory")
    if not (Path(args.run) / "run.json").exists():
        from .protocols import catalog_for_model, generic_catalog
        from .minicanvas import bundled_path

        catalog = catalog_for_model(args.model or bundled_path()) or generic_catalog()
        catalog.check_concepts(request.domain, request.targets)
    from .distributed import processes

    procs = processes()
    # several processes: the main one creates the run first (another arriving mid-creation would
    # find a non-empty directory without run.json, fail, and leave the main one at a barrier)
    with procs.main_first():
        # one process: the run is written once the request is valid and the model loads
        run = Run.open_or_create(args.run, args.model, write_now=procs.world > 1)
    meta = run.unlearn(parsed, quiet=args.quiet, device=args.device, precision=args.precision,
                       gradient_checkpointing=args.gradient_checkpointing)
    d = meta["drift"]
    print(f"step {meta['step']}: -{request.concept} ({request.method}) in {meta['timings']['train_seconds']:.1f} s; "
          f"loss {meta['loss_first']:.4f} -> {meta['loss_last']:.4f}; drift L2 {d['parent']['l2']:.4f} "
          f"(cumulative {d['pretrained']['l2']:.4f}) -> {meta['dir']}")
    return 0


def cmd_export(args) -> int:
    from .continual import Run

    from .distributed import validate_device

    validate_device(args.device)
    run = Run(args.run)
    if args.format == "lora":
        from .lora import export_lora

        out = export_lora(run, args.out, step=args.step)
        print(f"wrote LoRA {out} (load with pipe.load_lora_weights)")
        return 0
    out = run.export(args.out, step=args.step, device=args.device)
    print(f"wrote pipeline {out}")
    return 0


def cmd_run(args) -> int:
    from .distributed import validate_device
    from .experiment import Runner, apply_overrides, load_experiment, short_table
    from .experiment.chains import run_on
    from .experiment.executor import ChainsFailed, make_executor

    validate_device(args.device)
    exp = apply_overrides(load_experiment(args.file), args)
    if args.seed is not None:
        exp.seed = args.seed
    executor = make_executor(args.executor, {k: getattr(args, k) for k in EXECUTOR_FLAGS}, exp.raw.get("executor"),
                             folder=args.out)  # an unknown name, a stray option, an unreachable cluster: refused now
    if not executor.in_process and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError(f"--executor {args.executor} starts its own workers; under accelerate launch leave it out "
                         "(each evaluation is then split across the launched processes)")
    try:
        summary = Runner(exp, args.out, quiet=args.quiet, device=args.device, precision=args.precision,
                         gradient_checkpointing=args.gradient_checkpointing).run(None if executor.in_process else run_on(executor))
    except ChainsFailed as err:  # the other chains finished; a rerun resumes the failed ones
        print(f"obliviate: error: {err}", file=sys.stderr)
        return 1
    if int(os.environ.get("RANK", "0")) > 0 and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return 0  # accelerate launch: the main process reports
    print(short_table(summary))
    print(f"report: {Path(args.out) / 'report.html'}")
    return 0


EXECUTOR_FLAGS = ("workers", "cpus", "gpus", "retries", "partition", "time", "mem_gb")


def cmd_eval(args) -> int:
    from .continual import Run
    from .delta import atomic_write_json
    from .distributed import validate_device
    from .evaluate.evaluator import evaluate, load_protocol, make_plan, model_key
    from .model import check_pipeline_dir, load_pipeline, model_hash
    from .parsing import check_output_dir, parse_seeds

    validate_device(args.device)
    check_output_dir(args.out)
    if args.model:  # before the judge looks inside it
        check_pipeline_dir(args.model)
    unlearned = [c for c in (args.unlearned or "").split(",") if c]
    domain = args.domain
    run = Run(args.run) if args.run else None
    if run:  # its model comes from Run.load below, which also checks the base model's hash
        steps = run.verify_chain(args.step)  # a missing step or a damaged delta: refused before any work
        unlearned = [m["request"]["concept"] for m in steps] + [a for m in steps for a in m["request"].get("also", [])]
        domain = domain or (steps[0]["request"]["domain"] if steps else None)
        model_dir = run.base_model
        key = model_key(run.info["base_hash"], *[m["delta_hash"] for m in steps])
    else:
        model_dir, key = args.model, None
    if not model_dir:
        raise ValueError("obliviate eval needs --model DIR or --run RUN")
    from .distributed import current

    dist = current()  # accelerate launch: the images are split across the processes (evaluator.judged)
    if dist is not None and args.device is not None:
        raise ValueError(f"--device {args.device} conflicts with accelerate launch, which gives each process its "
                         "device; leave --device out")
    protocol = load_protocol(args.protocol, model_dir, style_classifier=args.style_classifier,
                             object_classifier=args.object_classifier,
                             device=str(dist.device) if dist is not None else args.device or "cpu")
    domain = domain or "style"
    sequence = list(dict.fromkeys(unlearned)) if args.run or unlearned else None
    seeds = parse_seeds(args.seeds)
    partners = [p.strip() for p in args.partners.split(",") if p.strip()] if args.partners else None
    plan = make_plan(protocol, domain, sequence=sequence, partners=partners, seeds=seeds)
    key = key or model_key(model_hash(model_dir))
    device = dist.device if dist is not None else args.device  # accelerate launch: each process its own
    # a run's model: Run.load (base hash checked, deltas verified and applied), as everywhere else
    pipe = run.load(args.step, device=device) if run else load_pipeline(model_dir, device=device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = evaluate(pipe, protocol, plan, unlearned, key=key, cache_dir=out / "images")
    result.update({"domain": domain, "unlearned": unlearned, "seeds": plan.seeds, "partners": plan.partners})
    if dist is not None and not dist.is_main:  # every process holds the gathered result; the main one writes it
        return 0
    atomic_write_json(out / "metrics.json", result)
    fmt = lambda x: "-" if x is None else f"{x:.1f}"
    print(f"UA {fmt(result['UA'])}  RA-I {fmt(result['RA_I'])}  RA-C {fmt(result['RA_C'])}  -> {out / 'metrics.json'}")
    return 0


def cmd_demo(args) -> int:
    from . import demo
    from .distributed import validate_device

    validate_device(args.device)
    return demo.main(args.out, device=args.device, quiet=args.quiet)


def cmd_list(args) -> int:
    from . import reference

    if args.name is None:
        print(reference.overview_text())
    elif args.name in reference.KINDS:
        print(reference.overview_text((args.name,)))
    else:
        print("\n\n".join(reference.component_text(c) for c in reference.find(args.name)))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .methods import METHODS
    from .regularizers import REGULARIZERS

    from . import __version__

    parser = argparse.ArgumentParser(prog="obliviate", description="Continual concept unlearning for text-to-image diffusion models.")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    parser.add_argument("--version", action="version", version=f"obliviate {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    mc = sub.add_parser("minicanvas", help="the built-in miniature benchmark")
    mc.add_argument("action", choices=["build", "check", "path", "concepts"],
                    help="build a model, check one, print the bundled model's path, or list its concepts")
    mc.add_argument("--out", help="output directory (build, check)")
    mc.add_argument("--quick", action="store_true", help="build: a tiny model in under two minutes (for tests)")
    mc.add_argument("--seed", type=int, default=0, help="build: random seed (default: 0)")
    mc.add_argument("--model", help="check: pipeline directory (default: the bundled one)")
    mc.add_argument("--seeds", type=int, default=3, help="check: generated images per (style, object) pair")
    mc.set_defaults(func=cmd_minicanvas)

    un = sub.add_parser("unlearn", help="apply one removal request to a run (created on first use)")
    un.add_argument("--run", required=True, help="run directory")
    un.add_argument("--concept", required=True, help="the concept to forget, e.g. fire (see `obliviate minicanvas concepts`)")
    un.add_argument("--domain", required=True, choices=["style", "object", "other"],
                    help="the concept's kind; other = a concept outside the model's catalog")
    un.add_argument("--method", default="conabl", help=f"one of: {', '.join(METHODS)}")
    un.add_argument("--reg", action="append", metavar="NAME[:key=value,...]", help=f"regularizer, repeatable; one of: {', '.join(REGULARIZERS)}")
    un.add_argument("--method-setting", action="append", metavar="key=value", help="a base-method setting, repeatable")
    un.add_argument("--model", help="base pipeline directory for a new run (default: bundled MiniCanvas)")
    un.add_argument("--steps", type=int, help="training steps (default: the method's)")
    un.add_argument("--seed", type=int, default=0, help="training seed (default: 0)")
    un.add_argument("--param-group",
                    help="kv-xattn (default; uce/rece/uce-null on SD3 and FLUX: context), xattn, context, full, or a LoRA "
                         "adapter: lora:r=4,alpha=4,targets=kv-xattn|xattn")
    un.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available; under accelerate launch: one GPU per process)")
    un.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                    help="autocast dtype for training; masters stay float32 (auto: bf16 on CUDA, fp32 on CPU)")
    un.add_argument("--gradient-checkpointing", action="store_true", help="recompute UNet activations in backward (less memory)")
    un.set_defaults(func=cmd_unlearn)

    ex = sub.add_parser("export", help="write the model of a run as a full diffusers pipeline directory")
    ex.add_argument("run", help="run directory")
    ex.add_argument("--step", type=int, help="after this many requests (default: all)")
    ex.add_argument("--out", required=True, help="new (or empty) output directory")
    ex.add_argument("--device", help="where the merged model is built (default: cpu)")
    ex.add_argument("--format", choices=["pipeline", "lora"], default="pipeline",
                    help="pipeline: the merged model as a full diffusers pipeline; lora: the run's LoRA adapters "
                         "as one LoRA directory for pipe.load_lora_weights (runs trained with --param-group lora:...)")
    ex.set_defaults(func=cmd_export)

    ev = sub.add_parser("eval", help="evaluate a model (or a run's step) with a protocol")
    ev.add_argument("--model", help="pipeline directory")
    ev.add_argument("--run", help="a run directory: evaluate its model after --step requests")
    ev.add_argument("--step", type=int, help="with --run: after this many requests (default: all)")
    ev.add_argument("--protocol", default="minicanvas", help="minicanvas (default) or unlearncanvas")
    ev.add_argument("--domain", choices=["style", "object"],
                    help="the domain whose concepts are scored (default: the run's, else style)")
    ev.add_argument("--unlearned", help="comma-separated concepts counted in UA (with --model)")
    ev.add_argument("--seeds", help="comma-separated evaluation seeds (default: the protocol's first two: "
                                    "188,288 for both minicanvas and unlearncanvas)")
    ev.add_argument("--partners", help="comma-separated concepts of the other domain each concept is drawn with "
                                       "(default: minicanvas: every concept of the other domain; unlearncanvas: "
                                       "the protocol's retained concepts of the other domain)")
    ev.add_argument("--style-classifier", help="unlearncanvas: style classifier checkpoint")
    ev.add_argument("--object-classifier", help="unlearncanvas: object classifier checkpoint")
    ev.add_argument("--out", required=True, help="output directory: metrics.json and the generated images")
    ev.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    ev.set_defaults(func=cmd_eval)

    rn = sub.add_parser("run", help="run an experiment file (every variant, every step, evaluated, with a report)")
    rn.add_argument("file", help="experiment YAML file (see configs/)")
    rn.add_argument("--out", required=True, help="output directory; rerun the same command to resume")
    rn.add_argument("--seed", type=int, help="training seed (overrides the file's `seed`)")
    rn.add_argument("--model", help="base pipeline directory (overrides the file's `model`)")
    rn.add_argument("--style-classifier", help="unlearncanvas: style classifier checkpoint (overrides the file)")
    rn.add_argument("--object-classifier", help="unlearncanvas: object classifier checkpoint (overrides the file)")
    rn.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    rn.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"], help="training autocast dtype")
    rn.add_argument("--gradient-checkpointing", action="store_true", help="recompute UNet activations in backward")
    rn.add_argument("--executor", metavar="NAME", help="where the variants and swept values run: local (default: this "
                    "process), ray (a Ray on this machine), ray:ADDRESS (a Ray cluster; or set RAY_ADDRESS), slurm "
                    "(SLURM jobs through submitit), slurm:local (the jobs as local processes); see docs/SCALING.md")
    rn.add_argument("--workers", type=int, help="ray without an address, slurm: chains running at once")
    rn.add_argument("--cpus", type=int, help="ray, slurm: CPUs per chain (one torch thread each; default 1)")
    rn.add_argument("--gpus", type=float, help="ray, slurm: GPUs per chain (default 0)")
    rn.add_argument("--retries", type=int, help="ray, slurm: restarts of a chain whose worker died (default 2)")
    rn.add_argument("--partition", help="slurm: the partition to submit to")
    rn.add_argument("--time", type=int, help="slurm: wall-time limit of each job, in minutes")
    rn.add_argument("--mem-gb", type=float, dest="mem_gb", help="slurm: memory per job, in GB")
    rn.set_defaults(func=cmd_run)

    dm = sub.add_parser("demo", help="the main job on MiniCanvas in about three minutes: 6 styles erased "
                                           "with ConAbl, ConAbl + projection and UCE, evaluated after each")
    dm.add_argument("--out", default="runs/demo", help="output directory (default: runs/demo)")
    dm.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    dm.set_defaults(func=cmd_demo)

    ls = sub.add_parser("list", help="methods, add-ons, attacks, protocols and samplers; with NAME, its settings")
    ls.add_argument("name", nargs="?", help="a component, e.g. conabl: its settings, defaults and valid ranges; "
                                            "or a kind: methods, add-ons, attacks, protocols, samplers")
    ls.set_defaults(func=cmd_list)

    from .attacks.runner import add_command as add_attack_command  # attack

    add_attack_command(sub)
    for command in sub.choices.values():  # `obliviate unlearn ... --quiet` works as well as `obliviate --quiet unlearn ...`
        command.add_argument("--quiet", action="store_true", default=argparse.SUPPRESS, help="no progress output")
    return parser


def main(argv: list[str] | None = None) -> int:
    _quiet_libraries()
    from .plugins import load_plugins

    try:  # before the parser: plugins' components appear in --help and are valid names
        load_plugins()
    except (ValueError, FileNotFoundError, ImportError) as err:
        print(f"obliviate: error: {err}", file=sys.stderr)
        return 2
    parser = build_parser()
    args = parser.parse_args(argv)
    from safetensors import SafetensorError

    from .locking import BusyError

    try:
        pick_threads()
        return args.func(args)
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        print(f"obliviate: error: {err}", file=sys.stderr)
        return 2
    except BusyError as err:
        print(f"obliviate: error: {err}", file=sys.stderr)
        return 75  # EX_TEMPFAIL: try again later
    except OSError as err:  # read-only directory, full disk, a file where a directory should be ...
        where = f"{err.filename}: " if err.filename else ""
        print(f"obliviate: error: {where}{err.strerror or err}", file=sys.stderr)
        return 1
    except SafetensorError as err:  # safetensors' own error for a failed write (a full disk, say), not an OSError
        print(f"obliviate: error: writing a safetensors file failed: {err}; nothing was left half-written", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("obliviate: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
