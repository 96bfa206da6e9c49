"""Stop the gradient through the cross-attention keys and values at token 0.

Every prompt starts with the same start token, and a causal text encoder gives it the same
state in every prompt, so its key and value are read by every retained prompt too. The
reference ConAbl (and SculpMem) code installs an attention processor that detaches the key
and value at position 0, so that position never drives the update. Detaching does not keep
them fixed: the weights still move for the other positions, and k_0 = W_k e_0 moves with
them (projection:protect_start=true, ours, keeps it fixed to first order).

Done here with forward hooks on the `attn2.to_k` / `attn2.to_v` projections rather than an
attention processor, so that whatever processor the model uses (SDPA, xformers, a model's
own) keeps working; the hooks exist only while a training step runs.

Flow-matching transformers: SD3's text sequence starts with CLIP's start token, read by the
context-side key/value projections of joint attention (add_k_proj / add_v_proj), which are
hooked instead. FLUX reads T5's states only: T5 has no start token and is not causal, so
there is nothing to detach and detach_start does nothing there.
"""
from __future__ import annotations

import contextlib

import torch


def _detach_first_position(module, inputs, output):
    # (batch, tokens, features): token 0's rows carry no gradient back to the weight
    return torch.cat([output[:, :1].detach(), output[:, 1:]], dim=1)


def key_value_projections(unet: torch.nn.Module) -> list[torch.nn.Module]:
    """The key/value projections that read text embeddings: cross-attention's (UNet) or the
    context side of SD3's joint attention (none for FLUX, see above)."""
    from .model import is_transformer

    if is_transformer(unet):
        if type(unet).__name__ == "FluxTransformer2DModel":
            return []
        return [m for n, m in unet.named_modules()
                if n.startswith("transformer_blocks.") and n.rsplit(".", 1)[-1] in ("add_k_proj", "add_v_proj")]
    return [m for n, m in unet.named_modules() if ".attn2." in f".{n}" and n.rsplit(".", 1)[-1] in ("to_k", "to_v")]


@contextlib.contextmanager
def start_token_detached(unet: torch.nn.Module, enabled: bool = True):
    """While active, cross-attention keys and values at token 0 carry no gradient."""
    if not enabled:
        yield
        return
    handles = [m.register_forward_hook(_detach_first_position) for m in key_value_projections(unet)]
    if not handles and type(unet).__name__ == "FluxTransformer2DModel":
        yield  # no start token to detach (see above)
        return
    if not handles:
        raise ValueError("detach_start: this UNet has no cross-attention key/value projections (attn2.to_k/to_v)")
    try:
        yield
    finally:
        for h in handles:
            h.remove()
