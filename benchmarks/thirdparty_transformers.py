"""Third-party `transformers` models through fxsparse, as a user would run them.

Each model is built from a small config with random weights (nothing downloaded), then:
analyze -> export at keep 0.5 (2 random masks) -> forward/backward of the exported model
-> equality with the masked reference -> one sparse (capacity) forward. Prints a table
with the failure class and the FLOPs of the exported model at keep 0.5 relative to
dense (measured with torch.utils.flop_counter on both models, independently of
fxsparse's own FLOPs model).

    OMP_NUM_THREADS=1 python benchmarks/thirdparty_transformers.py [name ...]
"""
from __future__ import annotations

import sys
import time
import traceback
import warnings

import torch

import fxsparse

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


def _first_tensor(out):
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, dict):
        out = list(out.values())
    for item in out:
        t = _first_tensor(item) if not isinstance(item, torch.Tensor) else item
        if t is not None:
            return t
    return None


def _flops(model, inputs):
    return fxsparse.count_flops(model, inputs)[0]


def run_one(name, keep=0.5, n_masks=2, atol=1e-4, models=None, verbose=False, timings=None):
    """(status, failure class / detail, FLOPs ratio at ``keep`` or None, seconds);
    ``models``: {name: builder} (this file's MODELS by default); ``timings``: a dict that
    receives the seconds of ``fxsparse.analyze`` alone under "analyze"."""
    t0 = time.perf_counter()
    stage = "build"
    flops_ratio = None
    try:
        torch.manual_seed(0)
        model, inputs = (models or MODELS)[name]()
        model.eval()
        stage = "analyze"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t_analyze = time.perf_counter()
            graph = fxsparse.analyze(model, inputs)
            if timings is not None:
                timings["analyze"] = time.perf_counter() - t_analyze
        if not graph.prunable_groups:
            return "fail", "no prunable group", None, time.perf_counter() - t0
        dense_flops = _flops(model, inputs)
        gen = torch.Generator().manual_seed(0)
        for i in range(n_masks):
            keep_i = fxsparse.random_keep(graph, keep, gen)
            stage = "export"
            small = fxsparse.export(model, graph, keep_i)
            small.eval()
            stage = "exported forward and masked reference"
            check = fxsparse.check_against_reference(small, graph, keep_i, inputs, atol=atol)
            if not check.ok:
                return "fail", f"differs: {check.message}", None, time.perf_counter() - t0
            out = check.first_output
            stage = "exported backward"
            out.float().sum().backward()
            if i == 0:
                flops_ratio = _flops(small, inputs) / dense_flops
        stage = "sparse step"
        sparse = fxsparse.compile(model, inputs, keep=keep, compile=False, graph=graph)
        out = _first_tensor(sparse(*inputs))
        out.float().sum().backward()
        return "pass", "", flops_ratio, time.perf_counter() - t0
    except Exception as exc:  # the table names the stage and error class
        if verbose:
            traceback.print_exc()
        msg = str(exc).splitlines()[0][:150] if str(exc) else ""
        return "fail", f"{stage}: {type(exc).__name__}: {msg}", flops_ratio, time.perf_counter() - t0


def report(models, verbose=False):
    """Runs every {name: builder} through :func:`run_one`, one line each, then the count."""
    rows = []
    for name in models:
        status, why, flops, secs = run_one(name, models=models, verbose=verbose)
        rows.append((name, status, "-" if flops is None else f"{flops:.2f}", f"{secs:.1f}", why))
        print(f"{name:12s} {status:5s} flops@0.5={rows[-1][2]:5s} {secs:6.1f}s  {why}", flush=True)
    passed = sum(r[1] == "pass" for r in rows)
    print(f"\n{passed}/{len(rows)} pass")
    return rows


def main(argv):
    names = [a for a in argv if not a.startswith("-")] or list(MODELS)
    report({name: MODELS[name] for name in names}, verbose="-v" in argv)


if __name__ == "__main__":
    main(sys.argv[1:])
