"""Random-weight Stable Diffusion pipelines in the real architectures, built offline.

For tests and benchmarks: the real code path (CLIP BPE tokenizer, 77-token prompts, f=8 VAE,
the UNet block layout of each family) without downloading weights. `size="full"` gives the
published shapes of SD 1.5 and SD 2.1 (SDXL is offered scaled down only: at full size it is
2.6B parameters, 10 GB in float32); `size="tiny"` keeps every architectural feature of the
family (block types, linear projections, v-prediction, SDXL's two encoders and text-time
embedding) at widths that run in seconds.

The tokenizer is a genuine `transformers.CLIPTokenizer` built from the BPE merges that the
`open-clip-torch` wheel ships (`open_clip/bpe_simple_vocab_16e6.txt.gz`, the same file
OpenAI's CLIP uses). The wheel is only read, never imported (importing it needs torchvision),
so it installs with `pip install --no-deps open-clip-torch`.
"""
from __future__ import annotations

import gzip
import importlib.util
import json
import tempfile
from pathlib import Path

import torch

FAMILIES = ("sd15", "sd21", "sdxl")
SIZES = ("tiny", "full")
CLIP_VOCAB_SIZE = 49408
BOS, EOS = 49406, 49407


def clip_bpe_path() -> Path | None:
    """The CLIP BPE merges file inside the installed open-clip-torch wheel, or None."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "bpe_simple_vocab_16e6.txt.gz"
    return path if path.exists() else None


def _bytes_to_unicode() -> dict[int, str]:
    # CLIP's (and GPT-2's) reversible byte -> printable character table
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def clip_vocab_and_merges(bpe_path: Path) -> tuple[dict[str, int], list[str]]:
    """vocab.json / merges.txt contents of CLIP's tokenizer, derived from the BPE merges file
    exactly as OpenAI's simple_tokenizer does: 256 byte characters, their '</w>' forms, one
    token per merge (48894 merges), then the two special tokens: 49408 entries."""
    lines = gzip.open(bpe_path).read().decode("utf-8").split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]  # as in OpenAI's simple_tokenizer
    chars = list(_bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars] + ["".join(m.split()) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}, merges


def clip_tokenizer(pad_token: str = "<|endoftext|>"):
    """CLIP's tokenizer (77 tokens); SD 2.x and SDXL's second tokenizer pad with "!"."""
    from transformers import CLIPTokenizer

    path = clip_bpe_path()
    if path is None:
        raise FileNotFoundError("CLIP's BPE file is not installed: pip install --no-deps open-clip-torch")
    vocab, merges = clip_vocab_and_merges(path)
    # written as vocab.json / merges.txt: the one form every transformers version's CLIPTokenizer reads
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "vocab.json").write_text(json.dumps(vocab))
        (Path(tmp) / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
        return CLIPTokenizer(str(Path(tmp) / "vocab.json"), str(Path(tmp) / "merges.txt"), pad_token=pad_token,
                             model_max_length=77)


def _text_config(hidden: int, layers: int, heads: int, act: str, projection: int, intermediate: int | None = None):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=CLIP_VOCAB_SIZE, hidden_size=hidden, intermediate_size=intermediate or 4 * hidden,
        num_hidden_layers=layers, num_attention_heads=heads, max_position_embeddings=77, hidden_act=act,
        projection_dim=projection, bos_token_id=BOS, eos_token_id=EOS, pad_token_id=1,
    )


def text_configs(family: str, size: str) -> list:
    """CLIP text encoder configs: one for SD 1.x/2.x, two for SDXL (the second with projection)."""
    tiny = size == "tiny"
    clip_l = _text_config(32, 2, 4, "quick_gelu", 32) if tiny else _text_config(768, 12, 12, "quick_gelu", 768)
    if family == "sd15":
        return [clip_l]
    if family == "sd21":  # OpenCLIP ViT-H/14, penultimate layer kept: 23 layers
        return [_text_config(48, 2, 4, "gelu", 32) if tiny else _text_config(1024, 23, 16, "gelu", 512)]
    # SDXL: CLIP ViT-L and OpenCLIP ViT-bigG, both read at their penultimate layer
    return [clip_l, _text_config(32, 2, 4, "gelu", 32) if tiny else _text_config(1280, 32, 20, "gelu", 1280, 5120)]


def unet_config(family: str, size: str, latent_size: int | None = None) -> dict:
    """`latent_size` replaces the family's default latent resolution (config `sample_size`, the
    pipeline's default image size / 8); no weight's shape depends on it."""
    tiny = size == "tiny"
    cross = sum(c.hidden_size for c in text_configs(family, size))
    if family in ("sd15", "sd21"):
        cfg = dict(
            sample_size=8 if tiny else (64 if family == "sd15" else 96), in_channels=4, out_channels=4,
            layers_per_block=1 if tiny else 2, cross_attention_dim=cross,
            block_out_channels=(32, 64) if tiny else (320, 640, 1280, 1280),
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D") if tiny else ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D") if tiny else ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        )
        if family == "sd15":
            cfg["attention_head_dim"] = 2 if tiny else 8
        else:
            cfg.update(attention_head_dim=(2, 4) if tiny else (5, 10, 20, 20), use_linear_projection=True, upcast_attention=True)
        if latent_size is not None:
            cfg["sample_size"] = latent_size
        return cfg
    pooled = text_configs(family, size)[1].projection_dim
    time_dim = 8 if tiny else 256
    return dict(
        sample_size=latent_size or (8 if tiny else 128), in_channels=4, out_channels=4, layers_per_block=1 if tiny else 2,
        block_out_channels=(32, 64) if tiny else (320, 640, 1280),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D") if tiny else ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D") if tiny else ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2) if tiny else (1, 2, 10), attention_head_dim=(2, 4) if tiny else (5, 10, 20),
        use_linear_projection=True, cross_attention_dim=cross, addition_embed_type="text_time",
        addition_time_embed_dim=time_dim, projection_class_embeddings_input_dim=6 * time_dim + pooled,
    )


def vae_config(family: str, size: str, latent_size: int | None = None) -> dict:
    tiny = size == "tiny"
    pixels = unet_config(family, size, latent_size)["sample_size"] * 8  # f=8: four blocks, three downsamplings
    return dict(
        in_channels=3, out_channels=3, latent_channels=4, sample_size=pixels,
        block_out_channels=(8, 16, 16, 16) if tiny else (128, 256, 512, 512),
        norm_num_groups=8 if tiny else 32, layers_per_block=1 if tiny else 2,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        scaling_factor=0.13025 if family == "sdxl" else 0.18215, **({"force_upcast": True} if family == "sdxl" else {}),
    )


def scheduler(family: str):
    from diffusers import DDIMScheduler, EulerDiscreteScheduler, PNDMScheduler

    betas = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000, steps_offset=1)
    if family == "sd15":
        return PNDMScheduler(skip_prk_steps=True, set_alpha_to_one=False, **betas)
    if family == "sd21":  # SD 2.1 (768) predicts v
        return DDIMScheduler(prediction_type="v_prediction", clip_sample=False, set_alpha_to_one=False, **betas)
    return EulerDiscreteScheduler(timestep_spacing="leading", prediction_type="epsilon", **betas)


def random_pipeline(family: str, size: str = "tiny", *, seed: int = 0, latent_size: int | None = None):
    """A StableDiffusion(XL)Pipeline with random weights in `family`'s architecture.

    `latent_size` (>= 8, a multiple of 8) lowers the default sample resolution: the full-size
    tests keep every weight at its published shape but sample and train at 64x64 pixels
    (8x8 latents): a ConAbl step at SD 2.1 size took 4.7 CPU-seconds there against 139 at its
    own 768 px (docs/results/bench-realsize*.json)."""
    from diffusers import AutoencoderKL, StableDiffusionPipeline, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    if family not in FAMILIES or size not in SIZES:
        raise ValueError(f"family {family!r} / size {size!r}; valid: {FAMILIES} x {SIZES}")
    if family == "sdxl" and size == "full":
        raise ValueError("full-size SDXL is not offered (2.6B parameters); use size='tiny'")
    if latent_size is not None and (latent_size < 8 or latent_size % 8):
        raise ValueError(f"latent_size {latent_size!r} is not valid; valid: a multiple of 8, >= 8 (the UNet halves it three times)")
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**unet_config(family, size, latent_size))
    vae = AutoencoderKL(**vae_config(family, size, latent_size))
    configs = text_configs(family, size)
    sched = scheduler(family)
    if family != "sdxl":
        tokenizer = clip_tokenizer("<|endoftext|>" if family == "sd15" else "!")
        return StableDiffusionPipeline(vae=vae, text_encoder=CLIPTextModel(configs[0]).eval(), tokenizer=tokenizer, unet=unet,
                                       scheduler=sched, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)
    return StableDiffusionXLPipeline(
        vae=vae, text_encoder=CLIPTextModel(configs[0]).eval(), text_encoder_2=CLIPTextModelWithProjection(configs[1]).eval(),
        tokenizer=clip_tokenizer(), tokenizer_2=clip_tokenizer("!"), unet=unet, scheduler=sched, add_watermarker=False,
    )


def save_random_pipeline(out: str | Path, family: str, size: str = "tiny", *, seed: int = 0,
                         latent_size: int | None = None) -> Path:
    """Write a random pipeline directory (safetensors) that load_pipeline and plain diffusers read."""
    out = Path(out)
    pipe = random_pipeline(family, size, seed=seed, latent_size=latent_size)
    pipe.save_pretrained(out, safe_serialization=True)
    return out


# ---------------------------------------------------------------- flow-matching transformers (SD3, FLUX)
FLOW_FAMILIES = ("sd3", "flux")


def t5_tokenizer(max_words: int = 4000):
    """A genuine `transformers.T5Tokenizer` (SentencePiece-style Unigram model, `▁` word
    boundaries, `</s>` appended, <pad>=0 </s>=1 <unk>=2, 100 sentinel ids) with a small
    vocabulary built here: T5's own spiece.model is a download. The pieces are the first
    `max_words` whole words of CLIP's BPE vocabulary as `▁word` (and `▁Word`: T5 is cased),
    plus every printable ASCII character alone and after `▁`, so that any ASCII prompt is
    tokenized (an unseen word splits into characters, as SentencePiece splits rare words)."""
    from transformers import T5Tokenizer

    path = clip_bpe_path()
    if path is None:
        raise FileNotFoundError("CLIP's BPE file is not installed: pip install --no-deps open-clip-torch")
    vocab, _ = clip_vocab_and_merges(path)
    words = [t[:-4] for t in vocab if t.endswith("</w>") and t[:-4].isalpha() and len(t) > 5][:max_words]
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    seen = {p for p, _ in pieces}
    for rank, w in enumerate(words):  # earlier = more frequent in CLIP's merges = likelier piece
        for piece in ("▁" + w, "▁" + w.capitalize()):
            if piece not in seen:
                seen.add(piece)
                pieces.append((piece, -5.0 - rank * 1e-3))
    for c in map(chr, range(33, 127)):
        for piece in (c, "▁" + c):
            if piece not in seen:
                seen.add(piece)
                pieces.append((piece, -12.0))
    pieces += [(f"<extra_id_{i}>", 0.0) for i in range(99, -1, -1)]
    return T5Tokenizer(vocab=pieces, extra_ids=100, model_max_length=512)


def t5_config(size: str, vocab_size: int):
    """T5 v1.1 encoder (gated GELU), as FLUX and SD3 use (T5-XXL at full size)."""
    from transformers import T5Config

    if size == "tiny":
        return T5Config(vocab_size=vocab_size, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                        relative_attention_num_buckets=8, feed_forward_proj="gated-gelu", is_encoder_decoder=False)
    return T5Config(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                    feed_forward_proj="gated-gelu", is_encoder_decoder=False)


def transformer_config(family: str, size: str, latent_size: int | None = None) -> dict:
    """The denoiser's config. `full`: the published FLUX.1-dev and SD3-medium transformers."""
    tiny = size == "tiny"
    if family == "flux":
        if tiny:  # rope axes must add up to the head width
            return dict(patch_size=1, in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=16,
                        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=True,
                        axes_dims_rope=(4, 6, 6))
        return dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
                    num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
                    axes_dims_rope=(16, 56, 56))
    if tiny:  # the last block reads the context without updating it (context_pre_only), as in SD3
        cfg = dict(sample_size=8, patch_size=2, in_channels=16, num_layers=2, attention_head_dim=8, num_attention_heads=4,
                   joint_attention_dim=32, caption_projection_dim=32, pooled_projection_dim=64, out_channels=16,
                   pos_embed_max_size=16)
    else:
        cfg = dict(sample_size=128, patch_size=2, in_channels=16, num_layers=24, attention_head_dim=64, num_attention_heads=24,
                   joint_attention_dim=4096, caption_projection_dim=1536, pooled_projection_dim=2048, out_channels=16,
                   pos_embed_max_size=192)
    if latent_size is not None:
        cfg["sample_size"] = latent_size
    return cfg


def flow_vae_config(family: str, size: str, pixels: int) -> dict:
    """16 latent channels, f=8, no quant convs, each family's published scaling and shift."""
    tiny = size == "tiny"
    scaling, shift = (0.3611, 0.1159) if family == "flux" else (1.5305, 0.0609)
    return dict(in_channels=3, out_channels=3, latent_channels=16, sample_size=pixels,
                block_out_channels=(8, 16, 16, 16) if tiny else (128, 256, 512, 512), norm_num_groups=8 if tiny else 32,
                layers_per_block=1 if tiny else 2, down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4, scaling_factor=scaling, shift_factor=shift,
                use_quant_conv=False, use_post_quant_conv=False)


def flow_scheduler(family: str):
    """The pipelines' FlowMatchEulerDiscreteScheduler: SD3 shifts every sigma by 3.0; FLUX
    shifts by the image's token count (`use_dynamic_shifting`, mu from base/max shift)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    if family == "sd3":
        return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
                                           max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096)


def random_flow_pipeline(family: str, size: str = "tiny", *, seed: int = 0, latent_size: int | None = None,
                         guidance_embeds: bool = True):
    """A StableDiffusion3Pipeline or FluxPipeline with random weights in the family's architecture
    (tiny widths; `full` only for SD3's transformer, see bench_realsize_dit.py). FLUX: CLIP-L
    (pooled) + T5; `guidance_embeds=False` gives a timestep-distilled layout like FLUX.1-schnell.
    SD3: CLIP-L + CLIP-G (with projection, pooled together) + T5, joint width = T5's width.
    The default image size is 64 px (8x8 latents): FLUX reads it from the VAE's sample_size."""
    from diffusers import (AutoencoderKL, FluxPipeline, FluxTransformer2DModel, SD3Transformer2DModel,
                           StableDiffusion3Pipeline)
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, T5EncoderModel

    if family not in FLOW_FAMILIES or size != "tiny":
        raise ValueError(f"family {family!r} / size {size!r}; valid: {FLOW_FAMILIES} x ('tiny',)")
    torch.manual_seed(seed)
    t5_tok = t5_tokenizer()
    t5 = T5EncoderModel(t5_config(size, len(t5_tok))).eval()
    latent = latent_size or 8
    vae = AutoencoderKL(**flow_vae_config(family, size, latent * 8))
    if family == "flux":
        cfg = transformer_config("flux", size)
        cfg["guidance_embeds"] = guidance_embeds
        return FluxPipeline(scheduler=flow_scheduler("flux"), vae=vae, text_encoder=CLIPTextModel(_text_config(32, 2, 4, "quick_gelu", 32)).eval(),
                            tokenizer=clip_tokenizer(), text_encoder_2=t5, tokenizer_2=t5_tok,
                            transformer=FluxTransformer2DModel(**cfg))
    return StableDiffusion3Pipeline(
        transformer=SD3Transformer2DModel(**transformer_config("sd3", size, latent)), scheduler=flow_scheduler("sd3"), vae=vae,
        text_encoder=CLIPTextModelWithProjection(_text_config(16, 2, 4, "quick_gelu", 32)).eval(), tokenizer=clip_tokenizer(),
        text_encoder_2=CLIPTextModelWithProjection(_text_config(16, 2, 4, "gelu", 32)).eval(), tokenizer_2=clip_tokenizer("!"),
        text_encoder_3=t5, tokenizer_3=t5_tok,
    )


def save_random_flow_pipeline(out: str | Path, family: str, size: str = "tiny", *, seed: int = 0, **kwargs) -> Path:
    """Write a random SD3 / FLUX pipeline directory that load_pipeline and plain diffusers read."""
    out = Path(out)
    random_flow_pipeline(family, size, seed=seed, **kwargs).save_pretrained(out, safe_serialization=True)
    return out
