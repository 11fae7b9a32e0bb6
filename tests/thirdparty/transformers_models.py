"""Models of the `transformers` library, each built from a small config with random weights
(nothing downloaded): ``MODELS[name]()`` returns ``(model, inputs)``. Run through the chain of
``chain.py`` by ``tests/thirdparty/test_thirdparty_transformers.py`` and ``survey.py --sets transformers``.
"""
from __future__ import annotations

import torch

SEQ = 8
VOCAB = 100


def _tokens(batch=2, seq=SEQ):
    return (torch.randint(0, VOCAB, (batch, seq), generator=torch.Generator().manual_seed(0)),)


def _image(size=32, channels=3):
    return (torch.randn(2, channels, size, size, generator=torch.Generator().manual_seed(0)),)


def _decoder(config_cls, model_cls, **kw):
    def build():
        import transformers

        cfg = getattr(transformers, config_cls)(**kw)
        return getattr(transformers, model_cls)(cfg), _tokens()
    return build


def _hf(config_cls, model_cls, inputs, **kw):
    def build():
        import transformers

        cfg = getattr(transformers, config_cls)(**kw)
        return getattr(transformers, model_cls)(cfg), inputs()
    return build


_LLAMA = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=64)
_BERT = dict(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
             max_position_embeddings=64)
_VIT = dict(image_size=32, patch_size=8, num_channels=3, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=128, num_labels=10)

MODELS = {
    "gpt2": _decoder("GPT2Config", "GPT2LMHeadModel", n_layer=2, n_embd=64, n_head=4, vocab_size=VOCAB, n_positions=64),
    "llama_gqa": _decoder("LlamaConfig", "LlamaForCausalLM", **_LLAMA),
    "mistral": _decoder("MistralConfig", "MistralForCausalLM", **_LLAMA),
    "qwen2": _decoder("Qwen2Config", "Qwen2ForCausalLM", **_LLAMA),
    "gemma": _decoder("GemmaConfig", "GemmaForCausalLM", head_dim=16, **_LLAMA),
    "phi3": _decoder("Phi3Config", "Phi3ForCausalLM", pad_token_id=0, **_LLAMA),
    "opt": _decoder("OPTConfig", "OPTForCausalLM", vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2,
                    num_attention_heads=4, ffn_dim=128, max_position_embeddings=64, word_embed_proj_dim=64),
    "gpt_neox": _decoder("GPTNeoXConfig", "GPTNeoXForCausalLM", vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2,
                         num_attention_heads=4, intermediate_size=128, max_position_embeddings=64),
    "distilbert": _hf("DistilBertConfig", "DistilBertForSequenceClassification", _tokens, vocab_size=VOCAB, dim=64,
                      n_layers=2, n_heads=4, hidden_dim=128, max_position_embeddings=64),
    "bert": _hf("BertConfig", "BertForSequenceClassification", _tokens, **_BERT),
    "roberta": _hf("RobertaConfig", "RobertaForSequenceClassification", _tokens, pad_token_id=1, **_BERT),
    "vit": _hf("ViTConfig", "ViTForImageClassification", _image, **_VIT),
    "deit": _hf("DeiTConfig", "DeiTForImageClassification", _image, **_VIT),
    "swin": _hf("SwinConfig", "SwinForImageClassification", _image, image_size=32, patch_size=4, embed_dim=32,
                depths=[1, 1], num_heads=[2, 4], window_size=4, num_labels=10),
    "mobilevit": _hf("MobileViTConfig", "MobileViTForImageClassification", lambda: _image(64), image_size=64,
                     hidden_sizes=[32, 48, 64], neck_hidden_sizes=[8, 8, 16, 16, 24, 32, 64], num_labels=10),
    "convnext": _hf("ConvNextConfig", "ConvNextForImageClassification", _image, hidden_sizes=[16, 32],
                    depths=[1, 1], num_stages=2, num_labels=10),
    # mixture-of-experts, Falcon's parallel decoder and a state-space model (issue #31)
    "mixtral": _decoder("MixtralConfig", "MixtralForCausalLM", num_local_experts=4, num_experts_per_tok=2, **_LLAMA),
    "qwen2_moe": _decoder("Qwen2MoeConfig", "Qwen2MoeForCausalLM", moe_intermediate_size=48,
                          shared_expert_intermediate_size=96, num_experts=4, num_experts_per_tok=2,
                          decoder_sparse_step=1, **_LLAMA),
    "falcon": _decoder("FalconConfig", "FalconForCausalLM", vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2,
                       num_attention_heads=4, num_kv_heads=2, new_decoder_architecture=True, parallel_attn=True,
                       bias=True, max_position_embeddings=64),
    "mamba": _decoder("MambaConfig", "MambaForCausalLM", vocab_size=VOCAB, hidden_size=32, state_size=8,
                      num_hidden_layers=2, expand=2, conv_kernel=4, time_step_rank=4),
}
