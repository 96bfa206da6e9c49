"""Load a diffusers pipeline directory (SD 1.x, 2.x, SDXL with a UNet; SD3 and FLUX with a
flow-matching transformer); encode prompts into the denoiser's conditioning; call the denoiser;
pick trainable tensors."""
from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from .delta import layer_group  # noqa: F401  (drift groups; lives below, in delta)

PARAM_GROUPS = ("kv-xattn", "xattn", "context", "full")
# What each group matches in a flow-matching transformer (SD3, FLUX): text tokens meet image
# tokens in joint attention, whose context branch has its own projections (add_q/k/v_proj,
# to_add_out) in FLUX's double-stream blocks and SD3's joint blocks ("transformer_blocks").
# FLUX's single-stream blocks project text and image tokens with the same to_q/k/v, so no
# group but `full` trains them: an edit there changes how every image token is read too.
# SD3.5's `attn2` is image self-attention, not cross-attention.
TRANSFORMER_GROUPS = {
    "kv-xattn": r"transformer_blocks\.\d+\.attn\.add_[kv]_proj\.weight",  # context-side keys and values
    "xattn": r"transformer_blocks\.\d+\.attn\.(add_[qkv]_proj|to_add_out)\.(weight|bias)",  # the context branch
    "context": r"context_embedder\.weight",  # the one linear map from the text encoders' states into the transformer
}
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
FLUX_COMPONENTS = ("transformer", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "scheduler")
SD3_COMPONENTS = FLUX_COMPONENTS + ("text_encoder_3", "tokenizer_3")
PIPELINE_CLASSES = {"StableDiffusionPipeline": REQUIRED_COMPONENTS, "StableDiffusionXLPipeline": SDXL_COMPONENTS,
                    "StableDiffusion3Pipeline": SD3_COMPONENTS, "FluxPipeline": FLUX_COMPONENTS}
FLOW_PIPELINES = ("StableDiffusion3Pipeline", "FluxPipeline")
# FLUX.1-dev is guidance-distilled: the guidance scale is an input of the transformer (its
# guidance embedding), not a second prediction. Training calls it at the value FluxPipeline
# generates with by default (3.5), as diffusers' train_dreambooth_flux.py does.
FLUX_GUIDANCE = 3.5
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
            f"{str(path)!r} holds a {kind}; obliviate supports text-to-image {', '.join(PIPELINE_CLASSES)} directories"
            + (" (an SDXL refiner or img2img pipeline cannot be used as the base model)" if "XL" in kind else "")
            + (" (FLUX Fill, Redux, Kontext, img2img, inpainting and ControlNet pipelines take images as input; "
               "erase in the text-to-image FluxPipeline of the same model)" if "Flux" in kind and kind != "FluxPipeline" else "")
            + (" (SD3 img2img, inpainting and ControlNet pipelines take images as input; erase in the text-to-image "
               "StableDiffusion3Pipeline of the same model)" if kind.startswith("StableDiffusion3") else "")
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


def pipeline_class(path_or_pipe) -> str:
    """The pipeline's class name: model_index.json's `_class_name` for a directory."""
    if isinstance(path_or_pipe, (str, os.PathLike)):
        index = json.loads((Path(path_or_pipe) / "model_index.json").read_text())
        return str(index.get("_class_name", "StableDiffusionPipeline"))
    return type(path_or_pipe).__name__


def is_sdxl(path_or_pipe) -> bool:
    return pipeline_class(path_or_pipe) == "StableDiffusionXLPipeline"


def is_flow(path_or_pipe) -> bool:
    """A flow-matching transformer pipeline (SD3, FLUX): velocity prediction, diffusion.py's flow forms."""
    return pipeline_class(path_or_pipe) in FLOW_PIPELINES


def is_flux(path_or_pipe) -> bool:
    return pipeline_class(path_or_pipe) == "FluxPipeline"


def family_name(path_or_pipe) -> str:
    """A name for messages: SD, SDXL, SD3, FLUX."""
    return {"StableDiffusionXLPipeline": "SDXL", "StableDiffusion3Pipeline": "SD3",
            "FluxPipeline": "FLUX"}.get(pipeline_class(path_or_pipe), "SD")


def denoiser(pipe) -> torch.nn.Module:
    """The network every method trains: the UNet (SD, SDXL) or the transformer (SD3, FLUX)."""
    return pipe.transformer if getattr(pipe, "transformer", None) is not None else pipe.unet


# A step's delta names the denoiser's tensors by their own names and, where a text-side
# defence trained it, the text encoder's with this prefix (no denoiser tensor's name starts so).
TEXT_ENCODER_PREFIX = "text_encoder."


class Edited:
    """The tensors of a pipeline a ledger's delta may change, as `apply_delta` and `with_delta`
    read them (`named_parameters`): the denoiser's, then the text encoder's, prefixed."""

    def __init__(self, pipe):
        self.pipe = pipe

    def named_parameters(self):
        yield from denoiser(self.pipe).named_parameters()
        for name, param in self.pipe.text_encoder.named_parameters():
            yield TEXT_ENCODER_PREFIX + name, param


def edited(pipe) -> Edited:
    return Edited(pipe)


def default_resolution(pipe) -> int:
    """The pixel size the pipeline generates at when no height is given. SD/SDXL/SD3 read it
    from the denoiser's sample_size; FluxPipeline has a fixed 1024 (default_sample_size 128),
    so for FLUX it is the VAE's sample_size (1024 in FLUX.1's VAE config, the tiny test
    models' own size otherwise)."""
    if is_flux(pipe):
        return int(pipe.vae.config.sample_size)
    return int(denoiser(pipe).config.sample_size) * pipe.vae_scale_factor


def latent_shape(pipe, batch: int, resolution: int | None = None) -> tuple[int, int, int, int]:
    """(batch, channels, h, w) of the latents the denoiser works on, unpacked (FLUX packs
    them into 2x2 patches inside `predict` only)."""
    side = (resolution or default_resolution(pipe)) // pipe.vae_scale_factor
    channels = pipe.vae.config.latent_channels if is_flow(pipe) else denoiser(pipe).config.in_channels
    return batch, channels, side, side


def pipeline_call_kwargs(pipe) -> dict:
    """What every `pipe(...)` call of obliviate adds: FLUX's size (see default_resolution)."""
    if is_flux(pipe):
        size = default_resolution(pipe)
        return {"height": size, "width": size}
    return {}


def max_sequence_length(pipe) -> int:
    """T5 tokens per prompt, the pipeline's own default (FLUX 512, SD3 256)."""
    import inspect

    return int(inspect.signature(type(pipe).__call__).parameters["max_sequence_length"].default)


def model_family(path_or_pipe) -> str:
    """"sd" (Stable Diffusion 1.x/2.x, MiniCanvas), "sdxl", "sd3" or "flux": what a component's
    `families` capability names."""
    return family_name(path_or_pipe).lower()


def weight_variant(path: Path, sub: str = "unet") -> str | None:
    """"fp16" when the UNet ships only fp16 variant files (diffusion_pytorch_model.fp16.safetensors):
    diffusers loads those only when asked for the variant; they are upcast to float32 on load."""
    names = [p.name for p in (path / sub).iterdir() if p.suffix in (".safetensors", ".bin")]
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
    """Load a StableDiffusion(XL)Pipeline, StableDiffusion3Pipeline or FluxPipeline offline,
    float32 weights, every part frozen."""
    from diffusers import FluxPipeline, StableDiffusion3Pipeline, StableDiffusionPipeline, StableDiffusionXLPipeline
    from diffusers.utils import logging as dlogging

    from transformers.utils import logging as tlogging

    path = check_pipeline_dir(path)
    dlogging.disable_progress_bar()
    tlogging.disable_progress_bar()  # "Loading weights" bars on every load
    sub = "transformer" if is_flow(path) else "unet"
    options = {_dtype_keyword(): torch.float32, "local_files_only": True, "variant": weight_variant(path, sub)}
    kind = pipeline_class(path)
    if kind in FLOW_PIPELINES:
        cls = FluxPipeline if kind == "FluxPipeline" else StableDiffusion3Pipeline
        pipe = cls.from_pretrained(path, **options)
    elif kind == "StableDiffusionXLPipeline":
        # no watermark: it changes pixels the evaluation classifies, and needs an extra package
        pipe = StableDiffusionXLPipeline.from_pretrained(path, add_watermarker=False, **options)
    else:
        pipe = StableDiffusionPipeline.from_pretrained(path, safety_checker=None, requires_safety_checker=False, **options)
    pipe.set_progress_bar_config(disable=True)
    pipe.to(pick_device(device) if not isinstance(device, torch.device) else device)
    for module in (denoiser(pipe), pipe.vae, pipe.text_encoder, getattr(pipe, "text_encoder_2", None),
                   getattr(pipe, "text_encoder_3", None)):
        if module is not None:
            module.requires_grad_(False).eval()
    return pipe


@dataclass
class Cond:
    """What the denoiser is conditioned on for a batch of prompts.

    `hidden` (batch, tokens, width) is what reads the text: the text encoder's states
    (SD 1.x/2.x), both encoders' penultimate states concatenated (SDXL, width 2048), T5's
    states (FLUX), or CLIP-L + CLIP-G states (padded to T5's width) followed by T5's states
    along the tokens (SD3), as each pipeline's encode_prompt builds them.
    `pooled`: SDXL's second encoder's projected pooled output; FLUX's CLIP-L pooled output;
    SD3's CLIP-L and CLIP-G projected pooled outputs concatenated. None for SD 1.x/2.x.
    `time_ids` (original size, crop, target size): SDXL only."""

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


def _flux_inputs(model, x_t: torch.Tensor, t, cond: Cond, guidance: float | None):
    """FluxPipeline's transformer call for unpacked latents (b, c, h, w): latents packed into
    2x2 patches, image ids of the packed grid, zero text ids, the timestep in [0, 1] (the
    pipeline divides the scheduler's timestep by 1000) and the guidance embedding when the
    model has one (FLUX.1-dev; FLUX.1-schnell has none)."""
    from diffusers import FluxPipeline

    b, c, h, w = x_t.shape
    packed = FluxPipeline._pack_latents(x_t, b, c, h, w)
    img_ids = FluxPipeline._prepare_latent_image_ids(b, h // 2, w // 2, x_t.device, x_t.dtype)
    txt_ids = torch.zeros(cond.hidden.shape[1], 3, device=x_t.device, dtype=x_t.dtype)
    timestep = torch.as_tensor(t, device=x_t.device, dtype=x_t.dtype).expand(b) / 1000
    g = None
    if model.config.guidance_embeds:
        g = torch.full((b,), FLUX_GUIDANCE if guidance is None else float(guidance), device=x_t.device, dtype=x_t.dtype)
    return {"hidden_states": packed, "timestep": timestep, "guidance": g, "pooled_projections": cond.pooled,
            "encoder_hidden_states": cond.hidden, "txt_ids": txt_ids, "img_ids": img_ids}


def predict(unet, x_t: torch.Tensor, t, cond: "Cond | torch.Tensor", params: dict | None = None,
            guidance: float | None = None) -> torch.Tensor:
    """The denoiser's prediction for noisy latents under `cond`, the one place every caller
    goes through: epsilon or v for a UNet, the flow velocity for SD3 and FLUX transformers
    (latents always unpacked, (b, c, h, w); `t` on the scheduler's 0..1000 scale).
    `params` evaluates it with other values of some tensors (a frozen copy without copying,
    via torch.func.functional_call). `guidance`: FLUX's guidance embedding (default FLUX_GUIDANCE)."""
    from torch.func import functional_call

    def call(*args, **kwargs):
        return functional_call(unet, params, args, kwargs) if params is not None else unet(*args, **kwargs)

    kind = type(unet).__name__
    if kind == "FluxTransformer2DModel":
        from diffusers import FluxPipeline

        packed = call(**_flux_inputs(unet, x_t, t, cond, guidance), return_dict=False)[0]
        h, w = x_t.shape[-2:]  # unpacked in latent units (vae_scale_factor 1)
        return FluxPipeline._unpack_latents(packed, h, w, 1)
    if kind == "SD3Transformer2DModel":
        timestep = torch.as_tensor(t, device=x_t.device, dtype=x_t.dtype).expand(x_t.shape[0])
        return call(hidden_states=x_t, timestep=timestep, encoder_hidden_states=cond.hidden,
                    pooled_projections=cond.pooled, return_dict=False)[0]
    kwargs = cond.unet_kwargs() if isinstance(cond, Cond) else {"encoder_hidden_states": cond}
    return call(x_t, t, **kwargs).sample


@torch.no_grad()
def encode(pipe, prompts: list[str]) -> Cond:
    """Conditioning for `prompts`, exactly as the pipeline computes it for generation."""
    if is_flow(pipe):
        device = denoiser(pipe).device
        n = max_sequence_length(pipe)
        if is_flux(pipe):
            hidden, pooled, _ = pipe.encode_prompt(list(prompts), prompt_2=None, device=device, num_images_per_prompt=1,
                                                   max_sequence_length=n)
        else:  # SD3's negative prompt "" is encoded like any prompt (no zeroing)
            hidden, _, pooled, _ = pipe.encode_prompt(list(prompts), prompt_2=None, prompt_3=None, device=device,
                                                      num_images_per_prompt=1, do_classifier_free_guidance=False,
                                                      max_sequence_length=n)
        return Cond(hidden.float(), pooled.float())
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
    """The text states (batch, tokens, width) as the pipeline computes them for generation."""
    if is_sdxl(pipe) or is_flow(pipe):
        return encode(pipe, prompts).hidden
    tok = pipe.tokenizer(
        prompts, padding="max_length", max_length=pipe.tokenizer.model_max_length, truncation=True, return_tensors="pt"
    )
    return pipe.text_encoder(tok.input_ids.to(pipe.text_encoder.device))[0]


def text_segments(pipe) -> list[tuple]:
    """(tokenizer, first position in Cond.hidden, number of positions) for each run of token
    positions of `hidden`: one CLIP run for SD/SDXL (SDXL's two encoders share positions), one
    T5 run for FLUX, a CLIP run (77) then a T5 run for SD3."""
    if not is_flow(pipe):
        return [(pipe.tokenizer, 0, pipe.tokenizer.model_max_length)]
    n = max_sequence_length(pipe)
    if is_flux(pipe):
        return [(pipe.tokenizer_2, 0, n)]
    clip = pipe.tokenizer.model_max_length
    return [(pipe.tokenizer, 0, clip), (pipe.tokenizer_3, clip, n)]


def token_ids(pipe, text: str) -> list[int]:
    """Every token id the text encoders read for `text`, padded as for generation (a cache key)."""
    ids: list[int] = []
    for tok, _, length in text_segments(pipe):
        ids += tok(text, padding="max_length", max_length=length, truncation=True).input_ids
    return ids


def is_cross_attention(name: str) -> bool:
    # diffusers names cross-attention `attn2` in every transformer block; `attn1` is self-attention
    return ".attn2." in name


def check_group_for_model(model_dir, group: str, method) -> None:
    """Refuse, before any work, a parameter group the model's denoiser or the method cannot use."""
    flow = is_flow(model_dir)
    if group == "context" and not flow:
        raise ValueError("parameter group 'context' (the text projection of a flow-matching transformer) needs an SD3 or "
                         "FLUX model; on a UNet use kv-xattn, xattn or full")
    # a closed form, or a method that solves one before it trains (speed-repair: `solves_first`)
    if flow and (getattr(method, "closed_form", False) or getattr(method, "solves_first", False)) and group != "context":
        raise ValueError(
            f"method {method.name!r} on an {family_name(model_dir)} model solves the transformer's text projection "
            f"(context_embedder, parameter group 'context'), the one linear map whose input is the text encoders' states; "
            f"got parameter group {group!r}: use --param-group context (param_group: context in an experiment file)")


def is_transformer(module: torch.nn.Module) -> bool:
    return hasattr(module, "context_embedder")  # SD3Transformer2DModel, FluxTransformer2DModel


def select_parameters(unet: torch.nn.Module, group: str, seed: int = 0) -> dict[str, torch.nn.Parameter]:
    """The tensors a request trains, by parameter group (iterating named_parameters once).

    UNet: `kv-xattn` = to_k/to_v weights of cross-attention (attn2), `xattn` = all of attn2,
    `context` is a transformer group. Transformer (SD3, FLUX): see TRANSFORMER_GROUPS.
    A LoRA group's tensors come from `lora.inject` instead (an adapter added to the denoiser)."""
    if group not in PARAM_GROUPS:
        raise ValueError(f"unknown parameter group {group!r}; valid groups: {', '.join(PARAM_GROUPS)}")
    transformer = is_transformer(unet)
    if group == "context" and not transformer:
        raise ValueError("parameter group 'context' (the text projection of a flow-matching transformer) needs an SD3 or "
                         "FLUX model; on a UNet use kv-xattn, xattn or full")
    chosen = {}
    for name, param in unet.named_parameters():
        if group == "full":
            keep = True
        elif transformer:
            keep = re.fullmatch(TRANSFORMER_GROUPS[group], name) is not None
        elif group == "xattn":
            keep = is_cross_attention(name)
        else:
            keep = is_cross_attention(name) and (name.endswith("to_k.weight") or name.endswith("to_v.weight"))
        if keep:
            chosen[name] = param
    if not chosen:
        raise ValueError(f"parameter group {group!r} matched no tensor of the {type(unet).__name__}; is it text-conditioned?")
    return chosen


def hash_files(paths: list[Path]) -> str:
    from .delta import file_hash  # delta imports this module

    h = hashlib.sha256()
    for p in sorted(paths):
        h.update(p.name.encode())
        file_hash(p, into=h)
    return h.hexdigest()


def model_hash(path: str | os.PathLike) -> str:
    """Identity of a base model: its denoiser's and text encoders' weights and the pipeline index.

    Hashing many GB takes seconds, so the result is memoised per process, keyed by file
    sizes and modification times.
    """
    path = check_pipeline_dir(path)
    files = [path / "model_index.json"]
    for sub in ("unet", "transformer", "text_encoder", "text_encoder_2", "text_encoder_3"):
        if (path / sub).is_dir():
            files += [p for p in (path / sub).iterdir() if p.suffix in (".safetensors", ".bin", ".json")]
    key = tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(files))
    if key not in _HASH_MEMO:
        _HASH_MEMO[key] = hash_files(files)
    return _HASH_MEMO[key]


_HASH_MEMO: dict[tuple, str] = {}


def concept_token_span(tokenizer, text: str, concept: str, limit: int | None = None) -> tuple[int, int]:
    """Token positions [start, end) of the last occurrence of `concept` in `text` (a name of
    several BPE tokens, "Van Gogh" -> van</w> gogh</w>, spans several positions). CLIP's
    tokenizer splits at word boundaries, so the tokens of the text before the concept are a
    prefix of the text's tokens. The match ignores case, as CLIP's tokenizer does. T5's
    tokenizer (SentencePiece pieces that start at a word, no start token) keeps the same
    property; its positions count from 0, which `len(ids) - 1` (dropping the end token) gives
    for both. `limit`: the positions the encoder reads (default: the tokenizer's model_max_length)."""
    limit = limit or tokenizer.model_max_length
    if concept.lower() not in text.lower() and concept.replace("_", " ").lower() in text.lower():
        concept = concept.replace("_", " ")  # UnlearnCanvas labels: "Van_Gogh" reads "Van Gogh"
    at = text.lower().rindex(concept.lower())
    prefix_ids = tokenizer(text[:at].rstrip()).input_ids
    upto_ids = tokenizer(text[: at + len(concept)]).input_ids
    start, end = len(prefix_ids) - 1, len(upto_ids) - 1  # drop the end token of each
    if end <= start or end > limit - 1:
        raise ValueError(f"could not locate the tokens of {concept!r} in {text!r} (within {limit} tokens)")
    return start, end


def concept_spans(pipe, text: str, concept: str) -> list[tuple[int, int]]:
    """[start, end) of the last occurrence of `concept` in `text`, in the positions of
    Cond.hidden: one span per text_segments run (SD3: its CLIP tokens and its T5 tokens)."""
    spans = []
    for tok, offset, length in text_segments(pipe):
        start, end = concept_token_span(tok, text, concept, limit=length)
        spans.append((offset + start, offset + end))
    return spans


@torch.no_grad()
def concept_token_embedding(pipe, text: str, concept: str) -> torch.Tensor:
    """Mean text state over the tokens of the last occurrence of `concept` in `text` (SD3:
    over its CLIP and its T5 tokens together; concept_token_embeddings keeps them apart)."""
    hidden = encode_prompts(pipe, [text])[0]  # the states of the whole text, as generation sees them
    return torch.cat([hidden[a:b] for a, b in concept_spans(pipe, text, concept)]).mean(0)


@torch.no_grad()
def concept_token_embeddings(pipe, text: str, concept: str) -> torch.Tensor:
    """(runs, width): the mean state over the concept's tokens in each run of text_segments
    (one row, equal to concept_token_embedding, except for SD3: its CLIP row and its T5 row)."""
    hidden = encode_prompts(pipe, [text])[0]
    return torch.stack([hidden[a:b].mean(0) for a, b in concept_spans(pipe, text, concept)])
