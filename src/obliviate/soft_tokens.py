"""Soft tokens: new words whose embedding rows live outside the model.

The one mechanism behind every learned token (the inversion and prefix attacks, relearn's
never-shown word, the adversarial add-on's adversaries). The new tokens are added to a
*private copy* of the tokenizer; the text encoder is called through
torch.func.functional_call with a longer embedding table (its own rows, untouched, followed
by the new rows), so the model's tokenizer, text encoder and trained tensors are never
modified, and gradients reach the new rows only (the original rows are detached).

    tokens = NewTokens(pipe, ["<inv>"], init_rows)    # or NewTokens(pipe) and .add(...) later
    rows = tokens.trainable()                         # the new rows, a leaf with a gradient
    states = tokens.encode(prompts)                   # text states that read them
    with tokens.installed(pipe):                      # the pipeline reads them too (generation)
        images = pipe(["<inv> style"], ...)

`installed` puts the private tokenizer and a view of the text encoder (the same encoder
module, called with the longer table) on the pipeline for the duration, and the original
objects back afterwards (the pipeline's config, which names its components' classes, is not
touched). The rows are kept in float32 and cast to the table's dtype when read, so learning
them in a half-precision pipeline is still a float32 optimisation.
"""
from __future__ import annotations

import contextlib
import copy

import torch
import torch.nn.functional as F
from torch.func import functional_call


class NewTokens:
    """New tokens on a private tokenizer copy, rows on a longer embedding table passed to the encoder."""

    def __init__(self, pipe, names: list[str] | None = None, init: torch.Tensor | None = None):
        self.encoder = pipe.text_encoder
        self.tokenizer = copy.deepcopy(pipe.tokenizer)
        table = self.encoder.get_input_embeddings().weight
        self.table_name = next(n for n, p in self.encoder.named_parameters() if p is table)
        self.n_orig = table.shape[0]
        self.names: list[str] = []
        self.ids: list[int] = []
        self.rows = torch.zeros(0, table.shape[1], dtype=torch.float32, device=table.device)
        if names:
            if init is None:
                raise ValueError("new tokens need initial rows (init)")
            self.add(names, init)

    # ------------------------------------------------------------ adding tokens
    def add(self, names: list[str], init: torch.Tensor) -> slice:
        """Tokens `names` with rows `init` (one each) after every row so far; returns their slice of `rows`."""
        if len(init) != len(names):
            raise ValueError(f"{len(names)} new tokens need {len(names)} initial rows, got {len(init)}")
        vocab = self.tokenizer.get_vocab()
        clash = [n for n in names if n in vocab]
        if clash:
            raise ValueError(f"tokens {clash} are already in the tokenizer")
        start = self.n_orig + len(self.ids)
        self.tokenizer.add_tokens(list(names))
        ids = self.tokenizer.convert_tokens_to_ids(list(names))
        if ids != list(range(start, start + len(names))):
            raise ValueError(f"the tokenizer gave new tokens ids {ids}, expected rows after the {start} existing ones")
        self.names += list(names)
        self.ids += ids
        first = len(self.rows)
        self.rows = torch.cat([self.rows, init.detach().to(self.rows).clone()], 0)
        return slice(first, first + len(names))

    # ------------------------------------------------------------ reading them
    def table(self, rows: torch.Tensor | None = None, encoder=None) -> torch.Tensor:
        """The longer table: the encoder's own rows (no gradient) followed by `rows` (default: the tokens' rows)."""
        original = (encoder if encoder is not None else self.encoder).get_input_embeddings().weight.detach()
        rows = self.rows if rows is None else rows
        return torch.cat([original, rows.to(original)], 0)

    def ids_of(self, prompts: list[str], device=None) -> torch.Tensor:
        tok = self.tokenizer
        ids = tok(prompts, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt").input_ids
        return ids.to(device if device is not None else self.rows.device)

    def encode(self, prompts: list[str], rows: torch.Tensor | None = None, encoder=None) -> torch.Tensor:
        """Text states of `prompts` (padded to the encoder's length), with a gradient to `rows` if it has one."""
        encoder = encoder if encoder is not None else self.encoder
        table = self.table(rows, encoder)
        return functional_call(encoder, {self.table_name: table}, (self.ids_of(prompts, table.device),))[0]

    def check_fits(self, prompts: list[str]) -> None:
        """A prompt longer than the encoder's context would silently lose its end (the concept)."""
        check_fits(self.tokenizer, prompts)

    @contextlib.contextmanager
    def installed(self, pipe):
        """The pipeline reads the new tokens: the private tokenizer and a view of the text encoder
        (the same module, called with the longer table) in place of its own, restored afterwards."""
        tok, enc = pipe.tokenizer, pipe.text_encoder
        # object.__setattr__: a diffusers pipeline's own __setattr__ would rewrite its config
        object.__setattr__(pipe, "tokenizer", self.tokenizer)
        object.__setattr__(pipe, "text_encoder", _Reading(self, enc))
        try:
            yield pipe
        finally:
            object.__setattr__(pipe, "tokenizer", tok)
            object.__setattr__(pipe, "text_encoder", enc)

    # ------------------------------------------------------------ learning them
    def trainable(self) -> torch.Tensor:
        """The new rows as a leaf that takes a gradient (an optimiser's parameter)."""
        self.rows = self.rows.detach().requires_grad_(True)
        return self.rows

    def frozen(self) -> None:
        self.rows = self.rows.detach()

    @torch.no_grad()
    def project_to_vocab(self) -> list[str]:
        """Replace every new row by its nearest original row (cosine); returns those words."""
        original = self.encoder.get_input_embeddings().weight.detach()
        sim = F.normalize(self.rows.to(original), dim=-1) @ F.normalize(original, dim=-1).T
        nearest = sim.argmax(-1)
        self.rows = original[nearest].to(self.rows).clone()
        return [self.tokenizer.convert_ids_to_tokens(i) for i in nearest.tolist()]


class _Reading(torch.nn.Module):
    """The text encoder as the pipeline sees it while soft tokens are installed: calls go
    to the same module with the longer table; every other attribute (config, dtype, device,
    text_model ...) is the encoder's own."""

    def __init__(self, tokens: NewTokens, encoder):
        super().__init__()
        self.encoder = encoder  # a submodule: .to(), .modules() and device placement see the real one
        self._tokens = tokens

    def forward(self, input_ids, *args, **kwargs):
        table = self._tokens.table(encoder=self.encoder)
        return functional_call(self.encoder, {self._tokens.table_name: table}, (input_ids, *args), kwargs)

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["encoder"], name)


def check_fits(tokenizer, prompts: list[str]) -> None:
    """A prompt longer than the encoder's context would silently lose its end (the concept)."""
    limit = tokenizer.model_max_length
    for p in prompts:
        n = len(tokenizer(p).input_ids)
        if n > limit:
            raise ValueError(f"attack prompt {p!r} has {n} tokens; the text encoder reads {limit}")
