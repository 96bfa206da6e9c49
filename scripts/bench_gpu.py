"""GPU benchmark: one JSON object with what a Stable Diffusion 1.5-size request costs on this device.

    python scripts/bench_gpu.py                 # SD 1.5 size, first CUDA device, < 5 min on one GPU
    python scripts/bench_gpu.py --small         # the same code at a tiny size on CPU (tests run this)

Components are SD 1.5-shaped (UNet 860 M, VAE, CLIP ViT-L/14 text encoder) with random
weights, built from configs: nothing is downloaded. Figures:
- train: one ConAbl-shaped step (a no-grad reference forward, a forward + backward with the
  cross-attention k/v trainable, AdamW) under bf16 autocast with float32 masters; FLOPs counted
  with torch.utils.flop_counter.FlopCounterMode; achieved TFLOP/s and the fraction of the
  device's dense bf16 peak (table below; unknown devices -> null);
- projection_overhead_percent: the same step with every k/v gradient projected (G P, P 768x768);
- closed_form_seconds: erase-and-preserve solve of the UCE shape for 1/10/50 concepts over
  every k/v weight, in float64 (obliviate.methods.uce when importable, else the same-shape
  ridge solve here);
- sampling: images/s at 512 px (DDIM, classifier-free guidance, bf16 autocast);
- peak memory (GPU: torch.cuda.max_memory_allocated; CPU: the process's max RSS).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import resource
import sys
import time

import torch

# Dense (no sparsity) bf16 tensor-core peaks in TFLOP/s, by device-name pattern, most specific first.
PEAK_BF16_TFLOPS = [
    (r"H100.*PCIe", 756.0), (r"H100|H200|GH200", 989.0), (r"B200", 2250.0), (r"A100", 312.0),
    (r"L40S", 362.0), (r"L40\b", 181.0), (r"\bL4\b", 121.0), (r"RTX 4090", 165.0), (r"A10G", 70.0),
    (r"\bA10\b", 125.0), (r"RTX 3090", 71.0),
]


def peak_bf16(name: str | None) -> float | None:
    for pattern, peak in PEAK_BF16_TFLOPS:
        if name and re.search(pattern, name):
            return peak
    return None


def build(small: bool, device: torch.device):
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    if small:
        unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                                    block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
                                    attention_head_dim=4, norm_num_groups=8)
        vae = AutoencoderKL(block_out_channels=(16, 32), down_block_types=("DownEncoderBlock2D",) * 2,
                            up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=8, sample_size=16)
        text = CLIPTextModel(CLIPTextConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                            intermediate_size=64, vocab_size=1000, max_position_embeddings=77,
                                            bos_token_id=0, eos_token_id=2, pad_token_id=1))
    else:  # Stable Diffusion 1.5 shapes
        unet = UNet2DConditionModel(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                                    block_out_channels=(320, 640, 1280, 1280),
                                    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                                    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
                                    cross_attention_dim=768, attention_head_dim=8)
        vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                            up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, layers_per_block=2, sample_size=512)
        text = CLIPTextModel(CLIPTextConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                                            intermediate_size=3072, vocab_size=49408, max_position_embeddings=77))
    sched = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                          set_alpha_to_one=False, steps_offset=1)
    for m in (unet, vae, text):
        m.to(device).requires_grad_(False).eval()
    return unet, vae, text, sched


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def kv_params(unet):
    return {n: p for n, p in unet.named_parameters() if ".attn2." in n and n.endswith(("to_k.weight", "to_v.weight"))}


def train_step_factory(unet, device, batch, dtype, project: torch.Tensor | None):
    params = kv_params(unet)
    for p in params.values():
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params.values(), lr=1e-5)
    size, width = unet.config.sample_size, unet.config.cross_attention_dim
    gen = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(batch, 4, size, size, generator=gen).to(device)
    t = torch.randint(0, 1000, (batch,), generator=gen).to(device)
    anchor, target = (torch.randn(batch, 77, width, generator=gen).to(device) for _ in range(2))
    autocast = (lambda: torch.autocast(device.type, dtype=dtype)) if dtype else (lambda: torch.autocast(device.type, enabled=False))

    def step():
        opt.zero_grad(set_to_none=False)
        with autocast():
            with torch.no_grad():
                ref = unet(x, t, encoder_hidden_states=anchor).sample
            pred = unet(x, t, encoder_hidden_states=target).sample
            loss = torch.nn.functional.mse_loss(pred.float(), ref.float())
        loss.backward()
        if project is not None:
            for p in params.values():
                p.grad.copy_(p.grad @ project)
        torch.nn.utils.clip_grad_norm_(params.values(), 1.0)
        opt.step()

    return step


def time_it(fn, device, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync(device)
    return (time.perf_counter() - t0) / repeats


def bench_train(unet, device, batch, dtype, repeats, peak):
    from torch.utils.flop_counter import FlopCounterMode

    width = unet.config.cross_attention_dim
    step = train_step_factory(unet, device, batch, dtype, None)
    counter = FlopCounterMode(display=False)
    with counter:
        step()
    flops = counter.get_total_flops()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = time_it(step, device, repeats)
    memory = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    C = torch.randn(width, 24, dtype=torch.float64, device=device)
    q, _ = torch.linalg.qr(C)
    P = (torch.eye(width, dtype=torch.float64, device=device) - q @ q.T).float()
    projected = time_it(train_step_factory(unet, device, batch, dtype, P), device, repeats)
    seconds = time_it(step, device, repeats)  # again, after the projected run: same conditions for both
    tflops = flops / seconds / 1e12
    for p in kv_params(unet).values():
        p.requires_grad_(False)
        p.grad = None
    return {"batch": batch, "step_seconds": seconds, "flops_per_step": flops, "achieved_tflops": tflops,
            "fraction_of_bf16_peak": tflops / peak if peak else None, "peak_memory_gib": memory,
            "trained": "attn2 to_k/to_v (kv-xattn)", "precision": str(dtype).replace("torch.", "") if dtype else "float32"}, \
        100.0 * (projected - seconds) / seconds


def bench_closed_form(unet, device, counts):
    """Erase n concepts (guided to another embedding) and preserve n others, every k/v weight, float64."""
    try:  # the project's closed-form method, when it exists
        from obliviate.methods import uce  # noqa: F401

        source = "obliviate.methods.uce present; timed the same-shape float64 solve below"
    except ImportError:
        source = "local float64 ridge solve of the UCE shape (obliviate.methods.uce not importable)"
    weights = [p.detach().double() for p in kv_params(unet).values()]
    width = weights[0].shape[1]
    out = {}
    for n in counts:
        gen = torch.Generator(device="cpu").manual_seed(n)
        erase, guide, keep = (torch.randn(width, n, generator=gen, dtype=torch.float64).to(device) for _ in range(3))

        def solve():
            lam = 0.5
            right = lam * torch.eye(width, dtype=torch.float64, device=device) + erase @ erase.T + keep @ keep.T
            for w in weights:
                left = lam * w + (w @ guide) @ erase.T + (w @ keep) @ keep.T
                torch.linalg.solve(right, left, left=False)

        out[str(n)] = time_it(solve, device, repeats=3, warmup=1)
    return out, source


@torch.no_grad()
def bench_sampling(unet, vae, text, sched, device, dtype, batch, steps, small):
    size = unet.config.sample_size
    ids = torch.randint(0, text.config.vocab_size, (batch, 77), generator=torch.Generator().manual_seed(0)).to(device)
    uncond_ids = torch.zeros_like(ids)

    def sample():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            emb = torch.cat([text(uncond_ids)[0], text(ids)[0]])
            sched.set_timesteps(steps)
            x = torch.randn(batch, 4, size, size, generator=torch.Generator().manual_seed(1)).to(device)
            for t in sched.timesteps:
                e_u, e_c = unet(torch.cat([x, x]), t, encoder_hidden_states=emb).sample.chunk(2)
                x = sched.step(e_u + 9.0 * (e_c - e_u), t, x).prev_sample
            return vae.decode(x / 0.18215).sample

    seconds = time_it(sample, device, repeats=1, warmup=1)
    return {"images_per_second": batch / seconds, "resolution": size * 8, "steps": steps, "batch": batch,
            "guidance": 9.0, "scheduler": "ddim", "precision": str(dtype).replace("torch.", "") if dtype else "float32"}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="tiny components on CPU (checks the script, not the device)")
    parser.add_argument("--device", help="default: cuda if available, else cpu")
    parser.add_argument("--batch", type=int, default=4, help="training batch (ConAbl's SD 1.5 reference: 4)")
    parser.add_argument("--sample-steps", type=int, default=50, help="DDIM steps for the sampling figure")
    args = parser.parse_args(argv)
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() and not args.small else "cpu"))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak = peak_bf16(name) if device.type == "cuda" else None
    dtype = torch.bfloat16 if device.type == "cuda" else None
    t0 = time.time()
    unet, vae, text, sched = build(args.small, device)
    repeats = 2 if args.small else 10
    train, overhead = bench_train(unet, device, args.batch, dtype, repeats, peak)
    closed, source = bench_closed_form(unet, device, (1, 10, 50))
    sampling = bench_sampling(unet, vae, text, sched, device, dtype, 2 if args.small else 8,
                              2 if args.small else args.sample_steps, args.small)
    result = {
        "device": str(device), "device_name": name, "size": "small" if args.small else "sd15",
        "torch": torch.__version__, "unet_parameters": sum(p.numel() for p in unet.parameters()),
        "peak_bf16_tflops": peak, "train": train, "projection_overhead_percent": overhead,
        "closed_form_seconds": closed, "closed_form_source": source, "sampling": sampling,
        "peak_memory_gib": (torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda"
                            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20),
        "wall_seconds": time.time() - t0,
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
