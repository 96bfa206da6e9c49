"""Experiment files run end to end: a model, a protocol, a concept sequence and variants.

    config.py    the file: Experiment / Variant, `load_experiment` (names, types, ranges, `defaults:`)
    settings.py  sequential / simultaneous / independent+merge: named policies for which model
                 a request starts from, and the probe score they choose by
    runner.py    Runner: models, cached evaluations, table rows, summary, report, image grid
    executor.py  where independent chains run: local, ray, slurm (docs/SCALING.md)
    chains.py    an experiment as chains (variants, swept values) for an executor

The commands `obliviate run / eval / demo` live in cli.py.
"""
from ..delta import tensors_hash
from .config import EXPERIMENT_KEYS, VARIANT_KEYS, Experiment, Variant, apply_overrides, load_experiment, resolve_model, with_defaults
from .runner import Runner, judge_identity, judge_options, short_table
from .settings import SETTINGS, early_stop_chooser, probe_score, setting

__all__ = ["EXPERIMENT_KEYS", "VARIANT_KEYS", "Experiment", "Variant", "apply_overrides", "load_experiment", "resolve_model",
           "with_defaults", "Runner", "judge_identity", "judge_options", "short_table", "SETTINGS", "early_stop_chooser",
           "probe_score", "setting", "tensors_hash"]
