"""UCE: closed-form erasure in the cross-attention keys and values (Gandikota et al., WACV 2024).

Every key/value weight W (d_out x d_text) gets, in one linear solve,

    W = [lam W0 + s_e sum_E v*_i c_i^T + s_p sum_P (W0 c_j) c_j^T]
        [lam I  + s_e sum_E c_i c_i^T + s_p sum_P c_j c_j^T]^-1,     v*_i = W0 g_i,

the minimiser of lam |W - W0|^2 + s_e sum_E |W c_i - v*_i|^2 + s_p sum_P |W c_j - W0 c_j|^2.
`c` are text-encoder states (rows), `g_i` the guide prompt's state at the position aligned
with c_i. Because every v* is W0 times a text state, the solution is W0 M with one
d_text x d_text matrix M = A B^-1 shared by every layer (A = lam I + s_e G^T E + s_p P^T P,
B = lam I + s_e E^T E + s_p P^T P): the cost is one d_text solve, whatever the UNet size.
Solved in float64.

Rows of one erased concept (settings of its own request):
- prompts (`rows`): `template` = the model's prompt template with every partner concept of
  the other domain; `neutral` = the concept after the catalog's neutral prefix, and alone;
  `file` = the lines of `row_prompts`, each with `{concept}` (or the concept's word).
- positions: `concept` = the concept's own tokens (UCE today); `after` = those tokens and
  every later position, end and padding tokens included (legacy UCE): the text encoder is
  causal, so later positions carry the concept too. `after_weight` scales the later rows.
- guide: the prompt with the concept's word replaced by `guide` (default per domain:
  "art" for styles, "object" for objects, "" otherwise). Alignment, position by position:
  the k-th concept token maps to the guide's k-th token (its last when the guide is shorter;
  for an empty guide, the token before the concept); the j-th position after the concept
  maps to the j-th position after the guide (clipped to the sequence end).

Preservation rows (`preserve`, '+'-separated): `others` = every catalog concept of the
request's domain that is not erased, in the template with every partner, all positions;
`empty` = every position of the empty prompt (classifier-free guidance reads it);
`erased-partners` = the positions *before* the concept in the erased prompts (the partner
concept's own states, so objects survive inside erased styles); `file` = every position of
the lines of `preserve_prompts`.

anchor: `base` (default) re-solves from the base weights W0 with the cumulative erase set of
the run: every earlier request (each with its own guide and rows, read from the run's
step.json files) plus this one, sorted by concept name, so the weights after A, B, C do not
depend on the order of the requests and drift never compounds. Preservation and
lam/scales come from the current request. `previous`: W0 = the weights at the start of the
request (the published repeated application), kept for comparison.

edit: `kv` (default) solves keys and values; `k` or `v` solves only one, the other keeps W0.

SD3 and FLUX (flow-matching transformers; --param-group context): the text states reach image
attention through the context side of joint attention, but not directly: each block's
add_k_proj / add_v_proj (FLUX's double-stream blocks, SD3's joint blocks) reads the text
stream after a layer norm modulated by the timestep and the pooled embedding, and after the
earlier blocks mixed image tokens into it, so no fixed text state c has a fixed key W c there
and the closed form does not apply. FLUX's 38 single-stream blocks send text and image tokens
through one shared to_k / to_v, so editing them would change how every image token is read
too. What is edited instead is the transformer's `context_embedder`, the one linear map whose
input is the text encoders' states (T5's for FLUX; SD3's CLIP-L + CLIP-G + T5 sequence) and
whose output is the text stream every block reads (UCE's own FLUX script edits the same
layer). The rows are those states, exactly as for a UNet's k/v (W_new = W0 M, one solve of
T5's width), so the erased prompt's text tokens carry the guide's states into every block:
its keys and values move in the double-stream blocks and in the text rows of the
single-stream blocks, while image tokens pass through no edited weight
(tests/test_flow_models.py checks both, and that an unrelated preserved prompt's keys stay).
Positions are counted per tokenizer run (model.text_segments): SD3's CLIP run and T5 run each
contribute rows; T5 is not causal, so with positions=after its later positions are rows
because they attend to the concept, not because they follow it. Not edited: the pooled CLIP
embedding (time_text_embed), which FLUX and SD3 also read, as a global modulation.

Defaults (positions=after, guide per domain, lam 0.5, erase/preserve scale 1, preserve
others+empty, edit kv) were chosen on MiniCanvas probe seed 1 (docs/RESULTS.md): they keep
UA and RA-I at the bar; RA-C is what they lose, and most of that loss is the guide itself:
an erased style's images become the guide's images, and the pretrained model draws objects
less recognisably in "art style" (54% object accuracy on seeds 1, 2) than in the real
styles; "picture" draws them better (79%) but is sometimes read as an erased style (UA <
95). Text states are cached (text_states), so a request costs its own prompts' encoding.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from ..delta import load_verified_tensor, save_verified_tensor
from ..locking import filling
from ..model import concept_token_span, encode_prompts, text_segments, token_ids
from ..protocols import family, read_prompt_file
from ..parsing import NON_NEGATIVE, Checked
from ..parsing import parse_settings
from ..trainer import Context, Method
from .common import replace_word

ROW_SOURCES = ("template", "neutral", "file")
PRESERVE_SOURCES = ("others", "empty", "erased-partners", "file")
DEFAULT_GUIDE = {"style": "art", "object": "object", "other": ""}


@dataclass
class UCESettings(Checked):
    positions: Literal["concept", "after"] = "after"
    guide: str | None = None  # None: per-domain default (DEFAULT_GUIDE); "" erases toward the empty prompt's state
    rows: str = "template+neutral"  # '+'-separated subset of ROW_SOURCES
    row_prompts: str | None = None  # file of prompts for rows=...+file
    after_weight: float = 1.0  # weight of the rows after the concept's tokens (positions=after)
    preserve: str = "others+empty"  # '+'-separated subset of PRESERVE_SOURCES, or "none"
    preserve_prompts: str | None = None  # file of prompts for preserve=...+file
    lam: float = 0.5
    erase_scale: float = 1.0
    preserve_scale: float = 1.0
    anchor: Literal["base", "previous"] = "base"
    edit: Literal["kv", "k", "v"] = "kv"  # which weights are solved: keys and values, or only one (the other keeps W0)

    ranges = {"lam": NON_NEGATIVE, "erase_scale": NON_NEGATIVE, "preserve_scale": NON_NEGATIVE,
              "after_weight": NON_NEGATIVE}

    def complete(self):
        rows = self.row_sources()
        bad = [r for r in rows if r not in ROW_SOURCES]
        if bad or not rows:
            raise ValueError(f"rows={self.rows!r} is not valid; a '+'-separated subset of: {', '.join(ROW_SOURCES)}")
        bad = [p for p in self.preserve_sources() if p not in PRESERVE_SOURCES]
        if bad:
            raise ValueError(f"preserve={self.preserve!r} is not valid; 'none' or a '+'-separated subset of: "
                             f"{', '.join(PRESERVE_SOURCES)}")
        if "file" in rows and not self.row_prompts:
            raise ValueError("rows includes 'file' but row_prompts (a prompt file) is not given")
        if "file" in self.preserve_sources() and not self.preserve_prompts:
            raise ValueError("preserve includes 'file' but preserve_prompts (a prompt file) is not given")
        for key in ("row_prompts", "preserve_prompts"):
            path = getattr(self, key)
            if path and not Path(path).exists():
                raise ValueError(f"{key}: prompt file {path} does not exist")

    def row_sources(self) -> list[str]:
        return [r for r in self.rows.split("+") if r]

    def preserve_sources(self) -> list[str]:
        return [] if self.preserve in ("none", "") else [p for p in self.preserve.split("+") if p]


# ---------------------------------------------------------------- the solve (public: RECE-style defences use it)
def solve_edit(erase: torch.Tensor, guide: torch.Tensor, preserve: torch.Tensor | None = None, *, lam: float = 0.5,
               erase_scale: float = 1.0, preserve_scale: float = 1.0, erase_weights: torch.Tensor | None = None,
               preserve_weights: torch.Tensor | None = None) -> torch.Tensor:
    """The d x d matrix M with W_new = W0 M for every key/value weight W0 (float64).

    erase (n x d): text states to erase; guide (n x d): the text states whose values they must
    take (v*_i = W0 guide_i); preserve (m x d): text states whose values must not change.
    Optional per-row weights multiply each row's term.
    """
    erase, guide = erase.double(), guide.double()
    if erase.shape != guide.shape:
        raise ValueError(f"erase rows {tuple(erase.shape)} and guide rows {tuple(guide.shape)} must have the same shape")
    d = erase.shape[1]
    eye = torch.eye(d, dtype=torch.float64, device=erase.device)
    we = erase_scale * (erase_weights.double() if erase_weights is not None else torch.ones(len(erase), dtype=torch.float64))
    a = lam * eye + guide.T @ (we[:, None].to(erase.device) * erase)
    b = lam * eye + erase.T @ (we[:, None].to(erase.device) * erase)
    if preserve is not None and len(preserve):
        preserve = preserve.double().to(erase.device)
        wp = preserve_scale * (preserve_weights.double() if preserve_weights is not None else torch.ones(len(preserve), dtype=torch.float64))
        pp = preserve.T @ (wp[:, None].to(erase.device) * preserve)
        a, b = a + pp, b + pp
    # M = A B^-1 and B is symmetric: M^T = B^-1 A^T
    return torch.linalg.solve(b, a.T).T


def apply_edit(weights: dict[str, torch.Tensor], m: torch.Tensor) -> dict[str, torch.Tensor]:
    """W0 M for every weight, computed in float64 and returned in each weight's dtype."""
    return {n: (w.double() @ m.to(w.device)).to(w.dtype) for n, w in weights.items()}


# ---------------------------------------------------------------- text states, cached
def text_states(ctx: Context, prompts: list[str]) -> torch.Tensor:
    """Text-encoder states of `prompts` (n x length x d), each prompt encoded once per base model.

    anchor=base re-solves with every earlier concept's prompts, so without a cache a request
    re-encodes the whole run (95% of the cost at SD 1.5 size). The encoder is frozen, so a
    prompt's states depend only on its token ids and the base model (and, where a text-side
    defence trained the encoder, on its weights: Context.text_key): they are kept in memory
    for the request and on disk under `cache_dir/uce-text/<base hash>/`, keyed by the token
    ids, each file carrying the checksum of its data (a damaged file is encoded again).
    Each prompt is encoded alone (batch of one): the bytes then do not depend on which other
    prompts happened to be missing, so a rerun after a kill, with a warm or cold cache,
    gives identical weights.
    """
    memo = ctx.__dict__.setdefault("_uce_states", {})
    directory = Path(ctx.cache_dir) / "uce-text" / str(ctx.base_hash)[:16] if ctx.cache_dir else None
    # a text encoder a defence trained (Context.text_key) has states of its own
    identity = [str(ctx.base_hash)] + ([ctx.text_key] if ctx.text_key else [])
    for p in dict.fromkeys(prompts):
        if p in memo:
            continue
        ids = token_ids(ctx.pipe, p)
        key = hashlib.sha256(json.dumps([*identity, list(ids)]).encode()).hexdigest()[:32]
        path = directory / f"{key}.safetensors" if directory else None
        state = load_verified_tensor(path) if path else None
        if state is None or state.shape[0] != len(ids):
            with filling(path) if path else contextlib.nullcontext():  # another worker may be encoding it
                state = load_verified_tensor(path) if path else None
                if state is None or state.shape[0] != len(ids):
                    with torch.no_grad():
                        state = encode_prompts(ctx.pipe, [p])[0].detach().float().cpu().contiguous()
                    if path:
                        save_verified_tensor(path, state)
        memo[p] = state
    return torch.stack([memo[p] for p in prompts])


# ---------------------------------------------------------------- rows from prompts
def _unk_id(tokenizer):
    return getattr(tokenizer, "unk_token_id", None)


def check_words(tokenizer, text: str, what: str) -> None:
    """A word-level tokenizer maps an unknown word to its unknown token: refuse it."""
    unk = _unk_id(tokenizer)
    if not text or unk is None:
        return
    ids = tokenizer(text, add_special_tokens=False).input_ids
    if unk in ids:
        bad = [w for w in text.split() if unk in tokenizer(w, add_special_tokens=False).input_ids]
        raise ValueError(f"{what} {text!r}: the word(s) {bad} are not in the tokenizer's vocabulary "
                         "(the model would read them as an unknown token)")


def erase_prompts(ctx: Context, concept: str, domain: str, s: UCESettings) -> list[str]:
    cat = ctx.catalog
    prompts: list[str] = []
    sources = s.row_sources()
    if "template" in sources:
        dom = family(domain)
        prompts += [cat.prompt_with(concept, dom, p) for p in cat.partners(dom)]
    if "neutral" in sources or not prompts and "file" not in sources:
        prompts += [cat.single(concept, family(domain)), concept]
    if "file" in sources:
        for line in read_prompt_file(s.row_prompts):
            text = line.replace("{concept}", concept)
            if not _has_word(text, concept):
                raise ValueError(f"row_prompts {s.row_prompts}: the line {line!r} has neither {{concept}} nor {concept!r}")
            prompts.append(text)
    return list(dict.fromkeys(prompts))


def _has_word(text: str, word: str) -> bool:
    return replace_word(text, word, "\0") != text


def erase_rows(ctx: Context, concept: str, domain: str, s: UCESettings):
    """(erase rows, guide rows, weights) of one concept under its own request's settings.

    Positions are counted in each run of tokens of the text states (model.text_segments):
    one CLIP run for SD/SDXL, one T5 run for FLUX, a CLIP run and a T5 run for SD3, each
    with its own tokenizer, concept span and guide alignment."""
    guide_word = DEFAULT_GUIDE[domain] if s.guide is None else s.guide
    prompts = erase_prompts(ctx, concept, domain, s)
    guides = [" ".join(replace_word(p, concept, guide_word).split()) for p in prompts]
    states = text_states(ctx, prompts + guides)
    e_rows, g_rows, weights = [], [], []
    for tok, offset, length in text_segments(ctx.pipe):
        for i, (p, g) in enumerate(zip(prompts, guides)):
            start, end = concept_token_span(tok, p, concept, limit=length)
            if guide_word:
                gs, ge = concept_token_span(tok, g, guide_word, limit=length)
            else:  # the concept's place in the guide prompt: where its prefix ends
                gs = ge = len(tok(p[: p.lower().rindex(concept.lower())].rstrip()).input_ids) - 1
            last = length if s.positions == "after" else end
            for k in range(start, min(last, length)):
                if k < end:
                    gk = gs + min(k - start, ge - gs - 1) if ge > gs else max(gs - 1, 0)
                    w = 1.0
                else:
                    gk = min(ge + (k - end), length - 1)
                    w = s.after_weight
                if w == 0:
                    continue
                e_rows.append(states[i, offset + k])
                g_rows.append(states[len(prompts) + i, offset + gk])
                weights.append(w)
    if not e_rows:
        raise ValueError(f"uce: no rows for {concept!r} (is it truncated away by the tokenizer's token limit?)")
    return torch.stack(e_rows), torch.stack(g_rows), torch.tensor(weights, dtype=torch.float64)


def concept_position_rows(ctx: Context, erased) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """erase_rows of each (concept, domain, settings) in `erased` at the concept's own token
    positions only: what an embedding attack imitates (rece's adversaries, uce-null's directions)."""
    return [erase_rows(ctx, c, d, dataclasses.replace(cs, positions="concept")) for c, d, cs in erased]


def preserve_rows(ctx: Context, erased: list[tuple[str, str]], domain: str, s: UCESettings) -> torch.Tensor | None:
    cat, sources = ctx.catalog, s.preserve_sources()
    erased_names = {c for c, _ in erased}
    whole: list[str] = []  # prompts whose every position is preserved
    rows: list[torch.Tensor] = []
    dom = family(domain)
    if "others" in sources:
        for concept in cat.concepts(dom):
            if concept in erased_names:
                continue
            partners = [p for p in cat.partners(dom) if p not in erased_names] or [None]
            whole += [cat.prompt_with(concept, dom, p) if p else cat.single(concept, dom) for p in partners]
    if "empty" in sources:
        whole.append("")
    if "file" in sources:
        whole += read_prompt_file(s.preserve_prompts)
    if whole:
        rows.append(text_states(ctx, list(dict.fromkeys(whole))).flatten(0, 1))
    if "erased-partners" in sources:
        for concept, cdom in erased:
            for p in erase_prompts(ctx, concept, cdom, s):
                for tok, offset, length in text_segments(ctx.pipe):
                    start, _ = concept_token_span(tok, p, concept, limit=length)
                    if start > 0:
                        rows.append(text_states(ctx, [p])[0, offset : offset + start])
    return torch.cat(rows) if rows else None


# ---------------------------------------------------------------- the method
class UCE(Method):
    """Closed form: no training loop; `solve` returns the new values of the trained tensors."""

    name = "uce"
    Settings = UCESettings
    closed_form = True

    def check(self, tokenizer, earlier_requests: list[dict], targets: list[str] = ()) -> None:
        """Refuse what the model's tokenizer or the run cannot serve, before any work."""
        if self.settings.guide:
            check_words(tokenizer, self.settings.guide, "uce guide")
        for concept in targets:
            check_words(tokenizer, concept, "uce concept")
        self.earlier(earlier_requests)

    def earlier(self, earlier_requests: list[dict]) -> list[tuple[str, str, UCESettings]]:
        """anchor=base: (concept, domain, settings) of every earlier request of the run."""
        if self.settings.anchor != "base":
            return []
        out = []
        for req in earlier_requests:
            settings = dict(req.get("method_settings", {}))
            # the same method only (uce or its hardened variant rece): each re-solves the whole erase set its own way
            if req.get("method") != self.name or str(settings.get("anchor", "base")) != "base":
                used = (f"{self.name} anchor={settings.get('anchor')}" if req.get("method") == self.name
                        else f"method {req.get('method')!r}")
                raise ValueError(
                    f"{self.name} anchor=base re-solves from the base weights with every earlier request of the run, but "
                    f"the earlier request {req['concept']!r} used {used}; use {self.name} anchor=previous in this run, "
                    f"or a new run")
            s = parse_settings(type(self).Settings, settings, f"earlier request {req['concept']!r}")
            out += [(c, req["domain"], s) for c in [req["concept"], *req.get("also", [])]]
        return out

    def erase_set(self, ctx: Context) -> list[tuple[str, str, UCESettings]]:
        """(concept, domain, settings of its request), sorted by concept: order-independent."""
        items = [(c, ctx.request.domain, self.settings) for c in ctx.request.targets] + self.earlier(ctx.earlier_requests)
        seen, out = set(), []
        for c, d, s in sorted(items, key=lambda x: x[0]):
            if c not in seen:
                seen.add(c)
                out.append((c, d, s))
        return out

    def setup(self, ctx: Context, method=None) -> None:
        self.check(ctx.pipe.tokenizer, ctx.earlier_requests, ctx.request.targets)

    def rows(self, ctx: Context):
        """(erase, guide, erase weights, preserve, erased set) of this request's solve."""
        erased = self.erase_set(ctx)
        parts = [erase_rows(ctx, c, d, cs) for c, d, cs in erased]
        e = torch.cat([p[0] for p in parts])
        g = torch.cat([p[1] for p in parts])
        w = torch.cat([p[2] for p in parts])
        p = preserve_rows(ctx, [(c, d) for c, d, _ in erased], ctx.request.domain, self.settings)
        return e, g, w, p, erased

    def edit_of(self, e, g, w, p) -> torch.Tensor:
        s = self.settings
        return solve_edit(e, g, p, lam=s.lam, erase_scale=s.erase_scale, preserve_scale=s.preserve_scale, erase_weights=w)

    def anchor(self, ctx: Context) -> dict[str, torch.Tensor]:
        """W0: the base weights (anchor=base) or the request's starting weights."""
        return ctx.pretrained if self.settings.anchor == "base" else ctx.start

    def edited(self, ctx: Context) -> dict[str, torch.Tensor]:
        """The anchor weights this method solves (all k/v, or only keys or only values)."""
        anchor, edit = self.anchor(ctx), self.settings.edit
        return dict(anchor) if edit == "kv" else {n: w for n, w in anchor.items() if n.endswith(f"to_{edit}.weight")}

    def weights(self, ctx: Context, m: torch.Tensor) -> dict[str, torch.Tensor]:
        anchor = self.anchor(ctx)
        if self.settings.edit == "kv":
            return apply_edit(anchor, m)
        # only keys or only values: the other weights keep the anchor's values (with anchor=base,
        # the base values, so an earlier step's edit of them is undone consistently)
        return {**{n: w.clone() for n, w in anchor.items()}, **apply_edit(self.edited(ctx), m)}

    def solve(self, ctx: Context) -> dict[str, torch.Tensor]:
        t0 = time.time()
        e, g, w, p, erased = self.rows(ctx)
        m = self.edit_of(e, g, w, p)
        self.info = {"erase_rows": len(e), "preserve_rows": 0 if p is None else len(p),
                     "erased": [c for c, _, _ in erased], "rows_seconds": time.time() - t0}
        return self.weights(ctx, m)

