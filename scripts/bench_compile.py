"""torch.compile (inductor, CPU) on ConAbl's training step: compile time and steady-state step
time against eager, interleaved in rounds in one process (issue 10, speed).

The step is a plain ConAbl step (anchor-prompt forward without gradient, target-prompt
forward, MSE backward, AdamW; unlike scripts/bench_conabl.py's loop, no start-token detachment
and no gradient clipping) on the bundled model's k/v cross-attention tensors at batch 8 and one
torch thread. The first compiled step includes compilation; then 3 rounds of 20 eager steps
and 20 compiled steps, median seconds each.

    OMP_NUM_THREADS=1 python scripts/bench_compile.py [default|reduce-overhead|max-autotune]

Result of 2026-11-29 (docs/RESULTS.md, "ConAbl step time"): not worth it on this machine.
"""
import time, sys, statistics, torch, torch.nn.functional as F
torch.set_num_threads(1)  # one thread: the comparison of docs/RESULTS.md
from obliviate.minicanvas import bundled_path
from obliviate.model import encode_prompts, load_pipeline, select_parameters
from diffusers import DDPMScheduler
pipe = load_pipeline(str(bundled_path()), device="cpu")
unet = pipe.unet
params = select_parameters(unet, "kv-xattn")
params = dict(params) if not isinstance(params, dict) else params
for n, p in unet.named_parameters(): p.requires_grad_(n in params)
opt = torch.optim.AdamW(params.values(), lr=5e-4)
sched = DDPMScheduler.from_config(pipe.scheduler.config)
B = 8
anchor = encode_prompts(pipe, ["an image of a circle"]).expand(B, -1, -1).contiguous()
target = encode_prompts(pipe, ["A circle image in fire style"]).expand(B, -1, -1).contiguous()
lat = torch.randn(48, 4, 8, 8, generator=torch.Generator().manual_seed(1))
def step(model, gen):
    idx = torch.randint(0, 48, (B,), generator=gen); x0 = lat[idx]
    noise = torch.randn(x0.shape, generator=gen); t = torch.randint(0, 1000, (B,), generator=gen)
    x_t = sched.add_noise(x0, noise, t)
    with torch.no_grad(): ref = model(x_t, t, encoder_hidden_states=anchor).sample
    pred = model(x_t, t, encoder_hidden_states=target).sample
    F.mse_loss(pred, ref).backward(); opt.step(); opt.zero_grad()
def timeit(model, n=20):
    gen = torch.Generator().manual_seed(0); ts=[]
    for _ in range(n):
        t0=time.perf_counter(); step(model, gen); ts.append(time.perf_counter()-t0)
    return statistics.median(ts)
mode = sys.argv[1] if len(sys.argv) > 1 else "default"
compiled = torch.compile(unet, mode=None if mode=="default" else mode, dynamic=False)
t0 = time.perf_counter(); step(compiled, torch.Generator().manual_seed(0)); first = time.perf_counter()-t0
print("compile+first step", round(first,1), flush=True)
for r in range(3):
    e = timeit(unet); c = timeit(compiled)
    print(f"round {r}: eager {e:.4f} compiled {c:.4f} ratio {c/e:.3f}", flush=True)
