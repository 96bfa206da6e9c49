"""Soft tokens (soft_tokens.NewTokens): the one mechanism behind learned tokens, shared by the
attacks and the adversarial add-on. A token whose row is a word's row reads as that word, in
training (encode) and in generation (installed); the model is never changed."""
import torch

from obliviate.evaluate.sampler import SamplerConfig, generate
from obliviate.model import encode_prompts, load_pipeline
from obliviate.protocols import minicanvas_catalog
from obliviate.soft_tokens import NewTokens


def fire_row(pipe):
    table = pipe.text_encoder.get_input_embeddings().weight
    return table[[pipe.tokenizer.convert_tokens_to_ids("fire")]].detach().clone()


def test_a_token_with_a_word_s_row_reads_as_that_word_and_gradients_reach_only_its_row(random_model):
    pipe = load_pipeline(random_model)
    cat = minicanvas_catalog()
    tokens = NewTokens(pipe, ["<w>"], fire_row(pipe))
    plain = encode_prompts(pipe, [cat.prompt_with("fire", "style", "circle")])
    rows = tokens.trainable()
    mine = tokens.encode([cat.prompt_with("<w>", "style", "circle")])
    assert torch.equal(mine, plain)
    mine.square().sum().backward()
    assert rows.grad is not None and rows.grad.abs().sum() > 0
    assert all(p.grad is None for p in pipe.text_encoder.parameters())
    assert "<w>" not in pipe.tokenizer.get_vocab() and "<w>" in tokens.tokenizer.get_vocab()


def test_installed_tokens_reach_generation_and_the_pipeline_gets_its_own_back(random_model):
    pipe = load_pipeline(random_model)
    cat = minicanvas_catalog()
    tok, enc, config = pipe.tokenizer, pipe.text_encoder, dict(pipe.config)
    sampler = SamplerConfig(steps=2, guidance=3.0)
    plain = generate(pipe, [cat.prompt_with("fire", "style", "circle")], [188], sampler)
    tokens = NewTokens(pipe, ["<w>"], fire_row(pipe))
    with tokens.installed(pipe):
        mine = generate(pipe, [cat.prompt_with("<w>", "style", "circle")], [188], sampler)
    assert (mine[0] == plain[0]).all()
    assert pipe.tokenizer is tok and pipe.text_encoder is enc and dict(pipe.config) == config


def test_the_attacks_and_the_adversarial_add_on_use_the_same_soft_tokens():
    import obliviate.attacks.common as attacks
    import obliviate.regularizers.adversarial as adversarial

    assert attacks.NewTokens is NewTokens and adversarial.NewTokens is NewTokens
    assert not hasattr(attacks.Target, "private_text_side")  # nothing to copy: attacks never change the model
