"""Gradient projection orthogonal to the text-embedding subspace of protected concepts.

C (embedding_dim x m) holds one column per auxiliary concept: the text encoder's output at
the concept's token(s) after a neutral prefix ("an image in the style of X", "an image of a
X"), averaged over the concept's tokens; with `context=template` (ours) the state in the
model's own prompt template instead, averaged over the partner concepts. Columns with cosine > `dedup` to a kept column are
dropped. P projects onto the orthogonal complement of span(C); every key/value weight
gradient G (d_out x d_text) becomes G P, so that dW c = 0 for every protected c to first
order: the keys and values of protected concepts do not change.

Where the columns come from (`source`, deterministic, never from a remote service):

- `anchors` (the reference's recipe for styles, default for style requests): the request's
  own anchor prompts (ConAbl's anchor captions), one column per caption, the state of the
  word(s) after a known prefix ("an image in the style of", "an image of a", "an image of"),
  else of the last word before the end token; duplicates (cosine >= dedup) dropped.
- `catalog` (the reference's recipe for objects, default for object requests): the
  catalog's concepts after the neutral prefix: for objects both domains (other objects and
  the styles, as the reference's dual-domain prompt file holds) plus every concept unlearned
  earlier (so later requests do not bring them back). For style requests `catalog` (other
  styles + unlearned earlier) is ours; obliviate used it as its style default before.
- `prompts` (`prompts=FILE`): the lines of a file, extracted like `anchors` (reference) or,
  with `extract=mean`, averaged over all their tokens (ours, obliviate's old behaviour).
- `protect_start=true` (ours): add the start token's state as one more column, so that the
  keys and values every prompt reads at position 0 stay fixed (compare the methods'
  `detach_start`, the reference's, which only stops that position driving the update).

`solver=svd` (default) builds P = I - U U^T from an orthonormal basis U of span(C)
(singular values below 1e-6 of the largest dropped): an exact, symmetric, idempotent
projector, the eps -> 0 limit of the published formula. `solver=ridge` is the published
P = I - C (C^T C + eps I)^-1 C^T with eps = max(1e-4, 1e-6 trace(C^T C) / m).

SD3 and FLUX: the only weight whose input is the text encoders' states is the transformer's
`context_embedder` (--param-group context); the context-side key/value projections of joint
attention read those states after a timestep-dependent normalisation, where no fixed column
c stays fixed under dW. So on these models the projection acts on context_embedder only and
needs that group; its columns come from the catalog (the concept's state averaged over its
tokens; SD3: one column for its CLIP tokens and one for its T5 tokens, named `X@clip`, `X@t5`); `anchors`, `prompts` and
`protect_start` locate words with CLIP's tokenizer and are refused there.

`mode=grad` projects gradients (published). With AdamW the applied update is not -lr G P
(moment normalisation, weight decay), so invariance is only approximate. `mode=update`
projects the optimizer's actual update, W <- W_old + (W_new - W_old) P, which keeps
dW C = 0 exactly under any optimizer.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

import torch

from ..lora import adapted_modules, parse_group
from ..model import is_flow, is_transformer, text_segments
from ..protocols import family, read_prompt_file
from ..parsing import Checked
from ..trainer import Context, Hook
from .common import concept_domain, concept_embedding, protected_concepts


REFERENCE_PREFIXES = ("an image in the style of", "an image of a", "an image of")


@dataclass
class ProjectionSettings(Checked):
    mode: Literal["grad", "update"] = "grad"
    # auto: `prompts` when a file is given, `catalog` when concepts are named, else the
    # reference's per-domain choice (style: anchors, object: catalog)
    source: Literal["auto", "anchors", "catalog", "prompts"] = "auto"
    concepts: str | None = None  # '+'-separated concept names; default: catalog + unlearned earlier
    prompts: str | None = None  # a file of auxiliary prompts, one per line
    # how a whole prompt becomes a column: "after-prefix" (reference) or "mean" of all tokens (ours)
    extract: Literal["after-prefix", "mean"] = "after-prefix"
    # catalog source: which domains; auto = reference (object requests: both, style requests: own)
    domains: Literal["auto", "own", "both"] = "auto"
    protect_start: bool = False  # ours: the start token's state as one more protected column
    dedup: float = 0.95
    solver: Literal["svd", "ridge"] = "svd"
    include_target: bool = False
    nearest: int = 0  # >0: keep only the retained concepts most similar to the target (+ all unlearned earlier)
    # where a concept's state is taken: "neutral" = after the neutral prefix (published);
    # "template" = in the model's prompt template, averaged over the partner concepts (ours)
    context: Literal["neutral", "template"] = "neutral"


def prompt_embedding(ctx: Context, prompt: str) -> torch.Tensor:
    """Ours (obliviate's old `prompts=FILE`): mean over all of a prompt's tokens (start and end
    tokens excluded)."""
    n = len(ctx.pipe.tokenizer(prompt).input_ids)
    return ctx.encode([prompt]).hidden[0][1 : max(2, n - 1)].mean(0)


def concept_positions(tokenizer, prompt: str) -> list[int]:
    """Token positions the reference takes a prompt's concept from: every token after the first
    known prefix (REFERENCE_PREFIXES, tried in order) up to the end token; when no prefix
    matches, or nothing follows it, the last token before the end token. Position 0 is the
    start token, so positions index the encoder's output directly."""
    ids = tokenizer(prompt, truncation=True, max_length=tokenizer.model_max_length).input_ids
    tokens = [t.lower() for t in tokenizer.convert_ids_to_tokens(ids)]
    # like the reference, only start/end/padding are skipped (an unknown word still counts)
    special = {t.lower() for t in (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) if t}
    end = len(ids) - 1 if ids[-1] == tokenizer.eos_token_id else len(ids)
    for prefix in REFERENCE_PREFIXES:
        pre = [t.lower() for t in tokenizer.tokenize(prefix)]
        at = next((i for i in range(1, end - len(pre) + 1) if tokens[i : i + len(pre)] == pre), None)
        if at is not None:
            span = [j for j in range(at + len(pre), end) if tokens[j] not in special]
            if span:
                return span
            break  # the prefix ends the prompt: the reference falls back to the last word
    return [max(1, end - 1)]


def after_prefix_embedding(ctx: Context, prompt: str) -> tuple[torch.Tensor, str]:
    """The reference's column for a whole prompt (see concept_positions), and the words it
    read, for naming the column."""
    positions = concept_positions(ctx.pipe.tokenizer, prompt)
    ids = ctx.pipe.tokenizer(prompt, truncation=True, max_length=ctx.pipe.tokenizer.model_max_length).input_ids
    word = ctx.pipe.tokenizer.decode([ids[i] for i in positions]).strip()
    return ctx.encode([prompt]).hidden[0][positions].mean(0), word


def start_token_state(ctx: Context) -> torch.Tensor:
    """The text encoder's output at position 0. The encoder is causal, so it is the same for
    every prompt; every cross-attention layer reads its key and value."""
    return ctx.encode([""]).hidden[0][0]


def deduplicate(columns: list[torch.Tensor], threshold: float) -> list[int]:
    """Greedy, in order: keep a column unless its cosine to a kept one reaches `threshold`
    (the reference keeps a column only when every cosine is below it)."""
    kept: list[int] = []
    for i, c in enumerate(columns):
        if all(torch.nn.functional.cosine_similarity(c, columns[j], dim=0) < threshold for j in kept):
            kept.append(i)
    return kept


def projector(C: torch.Tensor, solver: str = "svd") -> torch.Tensor:
    """P (d x d) onto the orthogonal complement of span(C), computed in float64."""
    C = C.double()
    d, m = C.shape
    eye = torch.eye(d, dtype=torch.float64, device=C.device)
    if solver == "ridge":
        gram = C.T @ C
        eps = max(1e-4, 1e-6 * float(torch.trace(gram)) / m)
        a = gram + eps * torch.eye(m, dtype=torch.float64, device=C.device)
        if torch.linalg.cond(a) < 1e12:
            return eye - C @ torch.linalg.solve(a, C.T)
        return eye - C @ torch.linalg.pinv(gram) @ C.T  # ill-conditioned: pseudo-inverse
    u, s, _ = torch.linalg.svd(C, full_matrices=False)
    basis = u[:, s > 1e-6 * s.max()]
    return eye - basis @ basis.T


class Projection(Hook):
    name = "projection"
    order = 10
    Settings = ProjectionSettings

    def __init__(self, settings: ProjectionSettings):
        super().__init__(settings)
        self.needs_update_transform = settings.mode == "update"

    def report(self) -> dict:
        return {"projection_concepts": self.concepts}

    def for_lora(self, group: str) -> Hook:
        if parse_group(group).continual == "keep":
            raise ValueError(f"projection does not work with --param-group {group}: continuing an adapter changes B, "
                             "and B's update multiplies the earlier A, whose rows are not orthogonal to the protected "
                             "concepts; use continual=stack (the default) with projection")
        return ProjectionOnLora(self.settings)

    def resolved_source(self, ctx: Context, method=None) -> str:
        s = self.settings
        if s.source != "auto":
            return s.source
        if s.prompts:
            return "prompts"
        if s.concepts or ctx.request.domain == "object" or s.nearest > 0 or s.context == "template" or is_flow(ctx.pipe):
            return "catalog"  # nearest= and context= are settings of the catalog's columns
        # the reference's style recipe needs the method's anchor prompts (ConAbl, SculpMem)
        return "anchors" if getattr(method, "anchor_prompts", None) else "catalog"

    def prompt_columns(self, ctx: Context, prompts: list[str]) -> tuple[list[str], list[torch.Tensor]]:
        if self.settings.extract == "mean":
            return list(prompts), [prompt_embedding(ctx, p) for p in prompts]
        names, columns = [], []
        for p in prompts:
            column, word = after_prefix_embedding(ctx, p)
            names.append(word)
            columns.append(column)
        return names, columns

    def auxiliary(self, ctx: Context, method=None) -> tuple[list[str], list[torch.Tensor]]:
        s, req = self.settings, ctx.request
        source = self.resolved_source(ctx, method)
        self.source = source
        if source == "prompts":
            if not s.prompts:
                raise ValueError("projection:source=prompts needs projection:prompts=FILE")
            return self.prompt_columns(ctx, read_prompt_file(s.prompts))
        if source == "anchors":
            prompts = getattr(method, "anchor_prompts", None)
            if not prompts:
                raise ValueError(f"projection:source=anchors needs a method with anchor prompts (conabl, sculpmem); "
                                 f"method {req.method!r} has none; valid sources: catalog, prompts")
            return self.prompt_columns(ctx, list(dict.fromkeys(prompts)))
        domain = family(req.domain)
        both = s.domains == "both" or (s.domains == "auto" and domain == "object" and not s.concepts)
        names = protected_concepts(ctx, s.concepts, "projection", both_domains=both)
        if s.include_target:
            names.append(req.concept)
        embeddings = [concept_embedding(ctx, c, concept_domain(ctx, c), s.context) for c in names]
        if s.nearest > 0 and not s.concepts:
            # beyond the paper: protect the retained concepts the target is most likely to drag
            # along (its nearest neighbours in embedding space) and leave the other directions
            # free for unlearning; concepts unlearned earlier are always kept.
            target = concept_embedding(ctx, req.concept, domain, s.context)
            earlier = {c for c, _ in ctx.unlearned_before}
            sims = {c: float(torch.nn.functional.cosine_similarity(e, target, dim=0)) for c, e in zip(names, embeddings)}
            retained = sorted((c for c in names if c not in earlier), key=lambda c: -sims[c])[: s.nearest]
            keep = [i for i, c in enumerate(names) if c in earlier or c in retained]
            names, embeddings = [names[i] for i in keep], [embeddings[i] for i in keep]
        if len(text_segments(ctx.pipe)) > 1:  # SD3: a column for the concept's CLIP positions and one for its T5 positions
            runs = [concept_embedding(ctx, c, concept_domain(ctx, c), s.context, per_run=True) for c in names]
            names = [f"{c}@{kind}" for c in names for kind in ("clip", "t5")]
            embeddings = [row for r in runs for row in r]
        return names, embeddings

    def check_flow(self, ctx: Context, method=None) -> None:
        """SD3 / FLUX: what the projection can keep fixed there (see the module docstring)."""
        if "context_embedder.weight" not in ctx.params:
            raise ValueError("projection on an SD3 or FLUX model keeps dW c = 0 on the transformer's text projection "
                             "(context_embedder) only, the one weight whose input is the text states: use --param-group context")
        if self.resolved_source(ctx, method) != "catalog" or self.settings.protect_start:
            raise ValueError("projection on an SD3 or FLUX model takes its columns from the catalog (source=catalog, "
                             "protect_start=false): anchors, prompts and the start token are located with CLIP's tokenizer")

    def setup(self, ctx: Context, method=None) -> None:
        if is_transformer(ctx.unet):
            self.check_flow(ctx, method)
        names, columns = self.auxiliary(ctx, method)
        if self.settings.protect_start:
            names, columns = [*names, "<start>"], [*columns, start_token_state(ctx)]
        kept = deduplicate(columns, self.settings.dedup)
        self.concepts = [names[i] for i in kept]
        C = torch.stack([columns[i] for i in kept], dim=1).float()
        self.C = C
        P = projector(C, self.settings.solver).float()
        width = C.shape[0]
        # only the key/value weights read text embeddings (input dim = embedding width)
        self.targets = [n for n, p in ctx.params.items()
                        if (n == "context_embedder.weight" if is_transformer(ctx.unet)
                            else ".attn2." in n and (n.endswith("to_k.weight") or n.endswith("to_v.weight"))) and p.shape[1] == width]
        self.P = P.to(ctx.device)
        ctx.log(f"projection ({self.settings.mode}, source {self.source}): {len(self.concepts)} columns, {len(self.targets)} tensors")

    def transform_gradients(self, ctx: Context) -> None:
        if self.settings.mode != "grad":
            return
        for n in self.targets:
            g = ctx.params[n].grad
            g.copy_(g @ self.P)

    def transform_update(self, ctx: Context, before) -> None:
        if self.settings.mode != "update":
            return
        with torch.no_grad():
            for n in self.targets:
                p = ctx.params[n]
                p.copy_(before[n] + (p - before[n]) @ self.P)


class ProjectionOnLora(Projection):
    """Projection on A: A P keeps A c = 0 for every protected c, so dW c = s B A c = 0
    whatever B does (lora.py). A starts projected; B is left free."""

    def setup(self, ctx: Context, method=None) -> None:
        super().setup(ctx, method)
        width = self.C.shape[0]
        self.targets = [a for m, a, _ in adapted_modules(ctx.params)
                        if re.search(r"\.attn2\.to_[kv]$", m) and ctx.params[a].shape[1] == width]
        with torch.no_grad():  # the adapter starts inside the complement
            for n in self.targets:
                ctx.params[n].copy_(ctx.params[n] @ self.P)
                ctx.start[n] = ctx.params[n].detach().clone()
        ctx.log(f"projection on LoRA A: {len(self.targets)} tensors")
