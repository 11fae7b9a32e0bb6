"""The fast lane (``python -m pytest -q -m "not slow" -n auto``, README "Contributing: the
fast lane"): which parametrisations run there. The full suite (``.ci/run``) runs them all; the
fast lane keeps a representative subset, e.g. one model per family, so that every module is
still exercised in a few minutes."""
from __future__ import annotations

import pytest

# one zoo model per family (fxsparse.zoo.info(name).family), the cheapest of each to check
ZOO_FAST = {"convnext_tiny", "densenet_bc_100", "efficientnet_b0", "googlenet", "lenet5", "mobilenetv2", "resnet20",
            "resnet18", "shufflenetv2", "unet", "vgg11_bn", "vit_small"}


def fast_subset(names, fast) -> list:
    """``names`` as pytest parameters: those in ``fast`` unmarked (the fast lane runs them), the
    others marked ``slow`` (the full suite only). A name of ``fast`` missing from ``names`` is an
    error: a renamed model would otherwise leave the fast lane without anyone noticing."""
    names = list(names)
    missing = set(fast) - set(names)
    if missing:
        raise ValueError(f"fast-lane names not among the parameters: {sorted(missing)}")
    return [n if n in fast else pytest.param(n, marks=pytest.mark.slow) for n in names]


def zoo_fast_subset(names) -> list:
    """``fast_subset`` with one zoo model per family: every family of the zoo keeps a model in the
    fast lane (checked here, so that a new family does not go unnoticed in the slow lane only)."""
    from fxsparse import zoo

    names = list(names)
    families = {zoo.info(n).family for n in names}
    covered = {zoo.info(n).family for n in ZOO_FAST if n in names}
    if families - covered:
        raise ValueError(f"zoo families without a fast-lane model: {sorted(families - covered)}; add one to ZOO_FAST")
    return fast_subset(names, ZOO_FAST & set(names))

# the small transformers models of tests/thirdparty/transformers_models.py in the fast lane: a
# decoder with a fused Conv1D qkv (GPT-2), grouped-query attention + gated MLP (Llama), an encoder
# (BERT), image transformers (ViT, Swin's windows) and a CNN (ConvNeXt); the mixture-of-experts
# and Mamba families have fast tests of their own (test_thirdparty_moe.py, test_thirdparty_ssm_audio.py)
HF_FAST = {"gpt2", "llama_gqa", "bert", "vit", "swin", "convnext"}

# the mirrored models of tests/thirdparty run in the full suite only by the files that run them
# all (test_thirdparty_pruning.py, test_thirdparty_sparse_step.py, test_any_input_size.py): those
# that take 5-25 s over the three files (each but MaxViT has a cheaper model of its family in the
# fast lane: timm_swin, timm_convnext, timm_ghostnet, timm_efficientnet, timm_seresnet), and a
# second model of a family the fast lane has (ResNet: tv_resnet18, tv_resnext; RegNet: timm_regnet;
# inception: tv_googlenet; inverted residuals: tv_mobilenet_v2, timm_efficientnet; ViT: timm_vit_tiny,
# tv_vit_b_16 (captured by torch.export, as timm_vit_dynamic); SE/ECA attention: timm_seresnet)
MIRRORS_SLOW = {"tv_swin_t", "timm_swin_dynamic", "tv_efficientnet_b0", "tv_maxvit_t", "tv_convnext_tiny",
                "timm_ghostnet_ratio3", "timm_cbam_resnet",
                "tv_resnet50", "tv_wide_resnet", "tv_regnet_y", "tv_inception_v3", "tv_mobilenet_v3_small",
                "tv_mnasnet", "timm_vit_dynamic", "timm_ecaresnet"}


def mirror_subset(names) -> list:
    """``fast_subset`` over the mirrored models of tests/thirdparty: all but ``MIRRORS_SLOW``."""
    names = list(names)
    unknown = MIRRORS_SLOW - set(names)
    if unknown:
        raise ValueError(f"MIRRORS_SLOW names no mirrored model: {sorted(unknown)}")
    return fast_subset(names, set(names) - MIRRORS_SLOW)
