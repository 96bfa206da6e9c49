"""Load a diffusers Stable Diffusion pipeline directory (SD 1.x, 2.x, SDXL); encode prompts into
the UNet's conditioning; pick trainable tensors."""
from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from .delta import layer_group  # noqa: F401  (drift groups; lives below, in delta)

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


SDXL_COMPONENTS = REQUIRED_COMPONENTS + ("text_encoder_2", "tokenizer_2")
PIPELINE_CLASSES = {"StableDiffusionPipeline": REQUIRED_COMPONENTS, "StableDiffusionXLPipeline": SDXL_COMPONENTS}
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


def check_pipeline_dir(path: str | os.PathLike) -> Path:
    """A clear error, before any work, for a directory that is not a usable SD pipeline."""
    path = Path(path)
    if path.is_file() and path.suffix.lower() in SINGLE_FILE_SUFFIXES:
        # diffusers can read single-file checkpoints, but offline only with a local config;
        # converting once makes every later load (and the run's hash) a plain directory
        xl = "XL" if "xl" in path.name.lower() else ""
        raise ValueError(
            f"{str(path)!r} is a single-file checkpoint; obliviate needs a diffusers pipeline directory. "
            f"Convert it once: python -c \"from diffusers import StableDiffusion{xl}Pipeline; "
            f"StableDiffusion{xl}Pipeline.from_single_file('{path}').save_pretrained('DIR')\" "
            "(use StableDiffusionXLPipeline for SDXL checkpoints), then pass DIR"
        )
    if not path.exists() and _HUB_ID.match(str(path)):
        raise FileNotFoundError(
            f"model {str(path)!r} is not a local directory; it looks like a Hugging Face Hub id. obliviate never "
            f"downloads: fetch it first (e.g. `huggingface-cli download {path} --local-dir DIR`) and pass that local directory"
        )
    if path.is_file():
        raise ValueError(f"model {str(path)!r} is a file, not a diffusers pipeline directory "
                         "(a directory with model_index.json, as save_pretrained writes it)")
    if not path.is_dir():
        raise FileNotFoundError(f"model directory {str(path)!r} does not exist")
    index_path = path / "model_index.json"
    if not index_path.exists():
        raise ValueError(
            f"{str(path)!r} is not a diffusers pipeline directory: model_index.json is missing "
            "(expected a directory written by StableDiffusionPipeline.save_pretrained or StableDiffusionXLPipeline.save_pretrained)"
        )
    try:
        index = json.loads(index_path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{index_path} is not valid JSON: {err}") from None
    kind = str(index.get("_class_name", "StableDiffusionPipeline"))
    if kind not in PIPELINE_CLASSES:
        raise ValueError(
            f"{str(path)!r} holds a {kind}; obliviate supports text-to-image {' and '.join(PIPELINE_CLASSES)} directories"
            + (" (an SDXL refiner or img2img pipeline cannot be used as the base model)" if "XL" in kind else "")
        )
    needed = PIPELINE_CLASSES[kind]
    missing = [c for c in needed if not (isinstance(index.get(c), list) and index[c][0] and (path / c).is_dir())]
    if missing:
        raise ValueError(f"{str(path)!r} lacks the pipeline components {missing}; a {kind} needs {list(needed)}")
    for component in needed:  # a damaged config fails here, before a run is created on the model
        for config in sorted((path / component).glob("*.json")):
            try:
                json.loads(config.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                raise ValueError(f"{config} is not valid JSON ({err}); the model directory is damaged") from None
    return path


def is_sdxl(path_or_pipe) -> bool:
    if isinstance(path_or_pipe, (str, os.PathLike)):
        index = json.loads((Path(path_or_pipe) / "model_index.json").read_text())
        return index.get("_class_name") == "StableDiffusionXLPipeline"
    return getattr(path_or_pipe, "text_encoder_2", None) is not None


def model_family(path_or_pipe) -> str:
    """"sdxl" (two text encoders) or "sd" (Stable Diffusion 1.x/2.x, MiniCanvas): what a
    component's `families` capability names."""
    return "sdxl" if is_sdxl(path_or_pipe) else "sd"


def weight_variant(path: Path) -> str | None:
    """"fp16" when the UNet ships only fp16 variant files (diffusion_pytorch_model.fp16.safetensors):
    diffusers loads those only when asked for the variant; they are upcast to float32 on load."""
    names = [p.name for p in (path / "unet").iterdir() if p.suffix in (".safetensors", ".bin")]
    if names and all(".fp16" in n for n in names):  # also sharded: ...model.fp16-00001-of-00002.safetensors
        return "fp16"
    return None


def _dtype_keyword() -> str:
    """from_pretrained's name for the dtype: diffusers 0.40 renamed `torch_dtype` to `dtype`
    (huggingface/diffusers#14205) and warns on the old name, which 1.0 drops; earlier releases
    know only `torch_dtype`. By version, not by a private helper that may go with the old name."""
    import diffusers
    from packaging.version import Version

    return "dtype" if Version(diffusers.__version__).release >= (0, 40) else "torch_dtype"


def load_pipeline(path: str | os.PathLike, device: str | torch.device | None = None):
    """Load a StableDiffusion(XL)Pipeline offline, float32 weights, every part frozen."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
    from diffusers.utils import logging as dlogging

    from transformers.utils import logging as tlogging

    path = check_pipeline_dir(path)
    dlogging.disable_progress_bar()
    tlogging.disable_progress_bar()  # "Loading weights" bars on every load
    options = {_dtype_keyword(): torch.float32, "local_files_only": True, "variant": weight_variant(path)}
    if is_sdxl(path):
        # no watermark: it changes pixels the evaluation classifies, and needs an extra package
        pipe = StableDiffusionXLPipeline.from_pretrained(path, add_watermarker=False, **options)
    else:
        pipe = StableDiffusionPipeline.from_pretrained(path, safety_checker=None, requires_safety_checker=False, **options)
    pipe.set_progress_bar_config(disable=True)
    pipe.to(pick_device(device) if not isinstance(device, torch.device) else device)
    for module in (pipe.unet, pipe.vae, pipe.text_encoder, getattr(pipe, "text_encoder_2", None)):
        if module is not None:
            module.requires_grad_(False).eval()
    return pipe


@dataclass
class Cond:
    """What the UNet is conditioned on for a batch of prompts.

    `hidden` (batch, tokens, width) is what cross-attention reads: the text encoder's states
    (SD 1.x/2.x), or both encoders' penultimate states concatenated (SDXL, width 2048).
    SDXL also needs `pooled` (the second encoder's projected pooled output) and `time_ids`
    (original size, crop, target size); both are None for SD 1.x/2.x."""

    hidden: torch.Tensor
    pooled: torch.Tensor | None = None
    time_ids: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.hidden.shape[0]

    def __getitem__(self, index) -> "Cond":
        if isinstance(index, int):
            index = slice(index, index + 1)
        return Cond(self.hidden[index], *(None if x is None else x[index] for x in (self.pooled, self.time_ids)))

    @staticmethod
    def cat(parts: list["Cond"]) -> "Cond":
        def join(xs):
            return None if xs[0] is None else torch.cat(xs)

        return Cond(join([p.hidden for p in parts]), join([p.pooled for p in parts]), join([p.time_ids for p in parts]))

    def unet_kwargs(self) -> dict:
        kwargs = {"encoder_hidden_states": self.hidden}
        if self.pooled is not None:
            kwargs["added_cond_kwargs"] = {"text_embeds": self.pooled, "time_ids": self.time_ids}
        return kwargs


def predict(unet, x_t: torch.Tensor, t, cond: "Cond | torch.Tensor", params: dict | None = None) -> torch.Tensor:
    """The UNet's prediction for noisy latents under `cond`, the one place every caller goes
    through; `params` evaluates it with other values of some tensors (a frozen copy without
    copying, via torch.func.functional_call)."""
    kwargs = cond.unet_kwargs() if isinstance(cond, Cond) else {"encoder_hidden_states": cond}
    if params is not None:
        from torch.func import functional_call

        return functional_call(unet, params, (x_t, t), kwargs).sample
    return unet(x_t, t, **kwargs).sample


@torch.no_grad()
def encode(pipe, prompts: list[str]) -> Cond:
    """Conditioning for `prompts`, exactly as the pipeline computes it for generation."""
    if not is_sdxl(pipe):
        return Cond(encode_prompts(pipe, prompts))
    device = pipe.unet.device
    hidden, _, pooled, _ = pipe.encode_prompt(list(prompts), device=device, num_images_per_prompt=1,
                                              do_classifier_free_guidance=False)
    if pipe.config.force_zeros_for_empty_prompt:
        # the pipeline's unconditional branch is all zeros for an empty prompt; match it
        empty = torch.tensor([p == "" for p in prompts], device=hidden.device)
        hidden = torch.where(empty[:, None, None], torch.zeros_like(hidden), hidden)
        pooled = torch.where(empty[:, None], torch.zeros_like(pooled), pooled)
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor  # the pipeline's default resolution
    time_ids = torch.tensor([[size, size, 0, 0, size, size]], dtype=hidden.dtype, device=hidden.device)
    return Cond(hidden, pooled, time_ids.repeat(len(prompts), 1))


@torch.no_grad()
def encode_prompts(pipe, prompts: list[str]) -> torch.Tensor:
    """Cross-attention states (batch, tokens, width) as the pipeline computes them for generation."""
    if is_sdxl(pipe):
        return encode(pipe, prompts).hidden
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


def hash_files(paths: list[Path]) -> str:
    from .delta import file_hash  # delta imports this module

    h = hashlib.sha256()
    for p in sorted(paths):
        h.update(p.name.encode())
        file_hash(p, into=h)
    return h.hexdigest()


def model_hash(path: str | os.PathLike) -> str:
    """Identity of a base model: its UNet and text-encoder weights and the pipeline index.

    Hashing many GB takes seconds, so the result is memoised per process, keyed by file
    sizes and modification times.
    """
    path = check_pipeline_dir(path)
    files = [path / "model_index.json"]
    for sub in ("unet", "text_encoder", "text_encoder_2"):
        if (path / sub).is_dir():
            files += [p for p in (path / sub).iterdir() if p.suffix in (".safetensors", ".bin", ".json")]
    key = tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(files))
    if key not in _HASH_MEMO:
        _HASH_MEMO[key] = hash_files(files)
    return _HASH_MEMO[key]


_HASH_MEMO: dict[tuple, str] = {}


def concept_token_span(tokenizer, text: str, concept: str) -> tuple[int, int]:
    """Token positions [start, end) of the last occurrence of `concept` in `text` (a name of
    several BPE tokens, "Van Gogh" -> van</w> gogh</w>, spans several positions). CLIP's
    tokenizer splits at word boundaries, so the tokens of the text before the concept are a
    prefix of the text's tokens. The match ignores case, as CLIP's tokenizer does."""
    if concept.lower() not in text.lower() and concept.replace("_", " ").lower() in text.lower():
        concept = concept.replace("_", " ")  # UnlearnCanvas labels: "Van_Gogh" reads "Van Gogh"
    at = text.lower().rindex(concept.lower())
    prefix_ids = tokenizer(text[:at].rstrip()).input_ids
    upto_ids = tokenizer(text[: at + len(concept)]).input_ids
    start, end = len(prefix_ids) - 1, len(upto_ids) - 1  # drop the end token of each
    if end <= start or end > tokenizer.model_max_length - 1:
        raise ValueError(f"could not locate the tokens of {concept!r} in {text!r} (within {tokenizer.model_max_length} tokens)")
    return start, end


@torch.no_grad()
def concept_token_embedding(pipe, text: str, concept: str) -> torch.Tensor:
    """Mean cross-attention state over the tokens of the last occurrence of `concept` in `text`."""
    start, end = concept_token_span(pipe.tokenizer, text, concept)
    hidden = encode_prompts(pipe, [text])[0]  # the states of the whole text, as generation sees them
    return hidden[start:end].mean(0)
