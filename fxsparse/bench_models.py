"""What ``fxsparse bench`` times a step of: a model, its example inputs, a target and a loss.

CNNs of the zoo (the default run: 32x32 images, 10 classes, cross-entropy), and small
``transformers`` decoders selectable by name (token ids, the causal-LM loss): a Llama-style
one with grouped-query attention and a Mixtral-style mixture of experts (top-2 routing over
4 experts). Their configs are written here (random init, nothing downloaded); the ``_tiny``
ones are for checking that the path runs, not for timings.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from fxsparse import zoo

# the decoders' configs: (transformers config class, model class, config fields)
_LLAMA = dict(hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=8,
              num_key_value_heads=2, vocab_size=2048)
_MIXTRAL = dict(hidden_size=256, intermediate_size=512, num_hidden_layers=4, num_attention_heads=8,
                num_key_value_heads=2, vocab_size=2048, num_local_experts=4, num_experts_per_tok=2)
_TINY = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=4,
             num_key_value_heads=2, vocab_size=64)
DECODERS = {
    "llama_gqa": ("LlamaConfig", "LlamaForCausalLM", _LLAMA),
    "mixtral_moe": ("MixtralConfig", "MixtralForCausalLM", _MIXTRAL),
    "llama_gqa_tiny": ("LlamaConfig", "LlamaForCausalLM", _TINY),
    "mixtral_moe_tiny": ("MixtralConfig", "MixtralForCausalLM", dict(_TINY, num_local_experts=4, num_experts_per_tok=2)),
}
DEFAULT_BATCH = {"cnn": 64, "decoder": 4}  # a decoder's batch holds batch x seq tokens


@dataclasses.dataclass
class Workload:
    fresh: Callable[[], nn.Module]  # a new model in train mode, the same weights every call
    inputs: tuple  # the model's positional inputs
    target: torch.Tensor
    loss: Callable  # loss(model output, target) -> scalar
    kind: str  # "cnn" or "decoder"


def kind_of(name: str) -> str:
    return "decoder" if name in DECODERS else "cnn"


def logits_of(out) -> torch.Tensor:
    """The logits of a model's output: a tensor, a ``transformers`` output (a dict) or a tuple
    (what a captured graph may return instead)."""
    if isinstance(out, torch.Tensor):
        return out
    return out["logits"] if isinstance(out, dict) else out[0]


def causal_lm_loss(out, ids: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy: the logits at position t predict the token at t + 1."""
    logits = logits_of(out)
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten())


def decoder(name: str) -> nn.Module:
    import transformers

    config_cls, model_cls, fields = DECODERS[name]
    # no KV cache: a training step returns only logits (a cache object is no tensor to trace)
    config = getattr(transformers, config_cls)(max_position_embeddings=4096, use_cache=False,
                                               tie_word_embeddings=False, **fields)
    return getattr(transformers, model_cls)(config)


def workload(name: str, batch: int | None = None, seq: int = 256) -> Workload:
    """The bench's model ``name`` (a zoo CNN or a key of :data:`DECODERS`) with a batch of
    inputs (``batch`` None: :data:`DEFAULT_BATCH` of its kind; ``seq``: decoders' tokens)."""
    kind = kind_of(name)
    batch = batch or DEFAULT_BATCH[kind]

    def fresh():
        torch.manual_seed(0)
        return (decoder(name) if kind == "decoder" else zoo.create(name)).train()

    if kind == "decoder":
        vocab = DECODERS[name][2]["vocab_size"]
        ids = torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(0))
        return Workload(fresh, (ids,), ids, causal_lm_loss, kind)
    torch.manual_seed(0)  # the inputs of every earlier bench run
    x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    return Workload(fresh, (x,), y, lambda out, target: F.cross_entropy(out, target), kind)
