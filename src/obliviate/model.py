"""Load a diffusers Stable Diffusion pipeline directory; encode prompts; pick trainable tensors."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

PARAM_GROUPS = ("kv-xattn", "xattn", "full")
REQUIRED_COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")


def pick_device(device: str | None = None) -> torch.device:
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """Mixed precision only on CUDA: bf16 where supported, else fp16. CPU trains in float32."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def check_pipeline_dir(path: str | os.PathLike) -> Path:
    """A clear error, before any work, for a directory that is not a usable SD pipeline."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"model directory {str(path)!r} does not exist")
    index_path = path / "model_index.json"
    if not index_path.exists():
        raise ValueError(
            f"{str(path)!r} is not a diffusers pipeline directory: model_index.json is missing "
            "(expected a directory written by StableDiffusionPipeline.save_pretrained)"
        )
    try:
        index = json.loads(index_path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{index_path} is not valid JSON: {err}") from None
    missing = [c for c in REQUIRED_COMPONENTS if not (isinstance(index.get(c), list) and index[c][0] and (path / c).is_dir())]
    if missing:
        raise ValueError(
            f"{str(path)!r} lacks the pipeline components {missing}; a Stable Diffusion pipeline needs {list(REQUIRED_COMPONENTS)}"
        )
    if "xl" in str(index.get("_class_name", "")).lower():
        raise ValueError(f"{str(path)!r} is an SDXL pipeline ({index['_class_name']}); SDXL is not supported yet")
    return path


def load_pipeline(path: str | os.PathLike, device: str | torch.device | None = None):
    """Load a StableDiffusionPipeline offline, float32 weights, every part frozen."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import logging as dlogging

    from transformers.utils import logging as tlogging

    path = check_pipeline_dir(path)
    dlogging.disable_progress_bar()
    tlogging.disable_progress_bar()  # "Loading weights" bars on every load
    pipe = StableDiffusionPipeline.from_pretrained(
        path, safety_checker=None, requires_safety_checker=False, torch_dtype=torch.float32, local_files_only=True
    )
    pipe.set_progress_bar_config(disable=True)
    pipe.to(pick_device(device) if not isinstance(device, torch.device) else device)
    for module in (pipe.unet, pipe.vae, pipe.text_encoder):
        module.requires_grad_(False).eval()
    return pipe


@torch.no_grad()
def encode_prompts(pipe, prompts: list[str]) -> torch.Tensor:
    """Text-encoder hidden states, exactly as the pipeline computes them for generation."""
    tok = pipe.tokenizer(
        prompts, padding="max_length", max_length=pipe.tokenizer.model_max_length, truncation=True, return_tensors="pt"
    )
    return pipe.text_encoder(tok.input_ids.to(pipe.text_encoder.device))[0]


def is_cross_attention(name: str) -> bool:
    # diffusers names cross-attention `attn2` in every transformer block; `attn1` is self-attention
    return ".attn2." in name


def check_param_group(group: str) -> str:
    """A clear error, before any work, for an unknown group or bad LoRA settings."""
    from .lora import is_lora, parse_group

    if is_lora(group):
        parse_group(group)
    elif group not in PARAM_GROUPS:
        raise ValueError(f"unknown parameter group {group!r}; valid groups: {', '.join(PARAM_GROUPS)}, "
                         "lora[:r=4,alpha=4,targets=kv-xattn|xattn]")
    return group


def select_parameters(unet: torch.nn.Module, group: str, seed: int = 0) -> dict[str, torch.nn.Parameter]:
    """The tensors a request trains, by parameter group (iterating named_parameters once).

    `lora:...` adds a fresh peft adapter to the UNet (see lora.py) and returns its A/B tensors."""
    from .lora import inject, is_lora

    check_param_group(group)
    if is_lora(group):
        return inject(unet, group, seed)
    chosen = {}
    for name, param in unet.named_parameters():
        if group == "full":
            keep = True
        elif group == "xattn":
            keep = is_cross_attention(name)
        else:
            keep = is_cross_attention(name) and (name.endswith("to_k.weight") or name.endswith("to_v.weight"))
        if keep:
            chosen[name] = param
    if not chosen:
        raise ValueError(f"parameter group {group!r} matched no UNet tensor; is this a text-conditioned UNet?")
    return chosen


def layer_group(name: str) -> str:
    """Coarse location of a tensor for per-group drift: down_blocks.N / mid_block / up_blocks.N / other."""
    parts = name.split(".")
    if parts[0] in ("down_blocks", "up_blocks") and len(parts) > 1:
        return f"{parts[0]}.{parts[1]}"
    return parts[0]


def hash_files(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in sorted(paths):
        h.update(p.name.encode())
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
    return h.hexdigest()


def model_hash(path: str | os.PathLike) -> str:
    """Identity of a base model: its UNet and text-encoder weights and the pipeline index.

    Hashing many GB takes seconds, so the result is memoised per process, keyed by file
    sizes and modification times.
    """
    path = check_pipeline_dir(path)
    files = [path / "model_index.json"]
    for sub in ("unet", "text_encoder"):
        files += [p for p in (path / sub).iterdir() if p.suffix in (".safetensors", ".bin", ".json")]
    key = tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(files))
    if key not in _HASH_MEMO:
        _HASH_MEMO[key] = hash_files(files)
    return _HASH_MEMO[key]


_HASH_MEMO: dict[tuple, str] = {}


def concept_token_span(tokenizer, text: str, concept: str) -> tuple[int, int]:
    """Token positions [start, end) of the last occurrence of `concept` in `text` (multi-token
    names included), as the padded sequence that encode_prompts feeds the text encoder."""
    if concept.lower() not in text.lower() and concept.replace("_", " ").lower() in text.lower():
        concept = concept.replace("_", " ")  # UnlearnCanvas labels: "Van_Gogh" reads "Van Gogh"
    at = text.lower().rindex(concept.lower())
    prefix_ids = tokenizer(text[:at].rstrip()).input_ids
    upto_ids = tokenizer(text[: at + len(concept)]).input_ids
    start, end = len(prefix_ids) - 1, len(upto_ids) - 1  # drop the end token of each
    if end <= start:
        raise ValueError(f"could not locate the tokens of {concept!r} in {text!r}")
    return start, end


@torch.no_grad()
def concept_token_embedding(pipe, text: str, concept: str) -> torch.Tensor:
    """Mean text-encoder output over the tokens of the last occurrence of `concept` in `text`."""
    start, end = concept_token_span(pipe.tokenizer, text, concept)
    hidden = encode_prompts(pipe, [text])[0]  # the states of the whole text, as generation sees them
    return hidden[start:end].mean(0)
