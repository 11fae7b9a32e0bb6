"""Third-party-style model zoo (torchvision / timm coding style) for exercising fxsparse.

``MODELS[name]()`` builds a fresh, deterministically initialised model (``torch.manual_seed`` inside,
norm statistics/affines randomised so eval outputs depend on every channel, see ``_common``) and
returns ``(model, (x,))`` with ``x`` of shape [2, 3, 32, 32]; the model is returned in ``eval()``
mode and produces logits of shape [2, 10].

Each entry's comment names the upstream class it mirrors and the result of
``torch.fx.symbolic_trace(model)`` (default tracer, no leaf/autowrap customisation), checked with
torch 2.13 in eval mode and in train mode ("ok" also means the traced GraphModule reproduces
the eager output in eval mode).
"""
from typing import Callable, Dict, Tuple

import torch
from torch import nn

from . import timm_cnn, timm_transformer, tv_cnn, tv_transformer

BuildFn = Callable[[], Tuple[nn.Module, Tuple[torch.Tensor, ...]]]

MODELS: Dict[str, BuildFn] = {
    # ---- torchvision-style CNNs (tv_cnn.py) ---------------------------------------------------
    # torchvision.models.resnet.ResNet + BasicBlock                       | fx: ok
    "tv_resnet18": tv_cnn.tv_resnet18,
    # torchvision.models.resnet.ResNet + Bottleneck                       | fx: ok
    "tv_resnet50": tv_cnn.tv_resnet50,
    # torchvision.models.resnet.ResNet + Bottleneck(groups=32, 4 per grp) | fx: ok
    "tv_resnext": tv_cnn.tv_resnext,
    # torchvision.models.resnet.ResNet + Bottleneck(width_per_group=128)  | fx: ok
    "tv_wide_resnet": tv_cnn.tv_wide_resnet,
    # torchvision.models.vgg.VGG (make_layers cfg "A", batch_norm)         | fx: ok
    "tv_vgg11_bn": tv_cnn.tv_vgg11_bn,
    # torchvision.models.densenet.DenseNet / _DenseBlock / _DenseLayer    | fx: ok
    "tv_densenet": tv_cnn.tv_densenet,
    # torchvision.models.mobilenetv2.MobileNetV2 / InvertedResidual       | fx: ok
    "tv_mobilenet_v2": tv_cnn.tv_mobilenet_v2,
    # torchvision.models.mobilenetv3.MobileNetV3 / InvertedResidual (SE)  | fx: ok
    "tv_mobilenet_v3_small": tv_cnn.tv_mobilenet_v3_small,
    # torchvision.models.shufflenetv2.ShuffleNetV2 / channel_shuffle      | fx: ok
    "tv_shufflenet_v2": tv_cnn.tv_shufflenet_v2,
    # torchvision.models.squeezenet.SqueezeNet("1_1") / Fire              | fx: ok
    "tv_squeezenet1_1": tv_cnn.tv_squeezenet1_1,
    # torchvision.models.googlenet.GoogLeNet / Inception (no aux)         | fx: ok
    "tv_googlenet": tv_cnn.tv_googlenet,
    # torchvision.models.inception.Inception3 / InceptionA..E (no aux)    | fx: ok
    "tv_inception_v3": tv_cnn.tv_inception_v3,
    # torchvision.models.mnasnet.MNASNet / _InvertedResidual              | fx: ok
    "tv_mnasnet": tv_cnn.tv_mnasnet,
    # torchvision.models.efficientnet.EfficientNet / MBConv               | fx: ok (stochastic_depth is fx.wrap'ed)
    "tv_efficientnet_b0": tv_cnn.tv_efficientnet_b0,
    # torchvision.models.regnet.RegNet / ResBottleneckBlock (SE, groups)  | fx: ok
    "tv_regnet_y": tv_cnn.tv_regnet_y,
    # torchvision.models.convnext.ConvNeXt / CNBlock / LayerNorm2d        | fx: ok
    "tv_convnext_tiny": tv_cnn.tv_convnext_tiny,
    # ---- torchvision-style transformers (tv_transformer.py) ----------------------------------
    # torchvision.models.vision_transformer.VisionTransformer             | fx: ok (MultiheadAttention is a leaf)
    "tv_vit_b_16": tv_transformer.tv_vit_b_16,
    # torchvision.models.swin_transformer.SwinTransformer (v1)            | fx: ok (shifted_window_attention,
    #   _get_relative_position_bias, _patch_merging_pad are opaque fx.wrap'ed call_function nodes)
    "tv_swin_t": tv_transformer.tv_swin_t,
    # torchvision.models.maxvit.MaxVit                                    | fx: ok
    "tv_maxvit_t": tv_transformer.tv_maxvit_t,
    # ---- timm-style CNNs (timm_cnn.py) --------------------------------------------------------
    # timm.models.resnet.ResNet + Bottleneck + SEModule                   | fx: ok
    "timm_seresnet": timm_cnn.timm_seresnet,
    # timm.models.resnet.ResNet (deep stem, avg_down) + EcaModule         | fx: ok
    "timm_ecaresnet": timm_cnn.timm_ecaresnet,
    # timm.models.resnet.ResNet + BasicBlock + CbamModule                 | fx: ok
    "timm_cbam_resnet": timm_cnn.timm_cbam_resnet,
    # timm.models.convnext.ConvNeXt / ConvNeXtBlock (conv_mlp=False)      | fx: ok
    "timm_convnext": timm_cnn.timm_convnext,
    # timm.models.ghostnet.GhostNet / GhostBottleneck / GhostModule       | fx: ok
    "timm_ghostnet": timm_cnn.timm_ghostnet,
    # same, GhostModule(ratio=3): the [:, :out_chs] slice drops channels  | fx: ok
    "timm_ghostnet_ratio3": timm_cnn.timm_ghostnet_ratio3,
    # timm.models.efficientnet.EfficientNet / InvertedResidual / SqueezeExcite / BatchNormAct2d | fx: ok
    "timm_efficientnet": timm_cnn.timm_efficientnet,
    # timm.models.regnet.RegNet / Bottleneck / SEModule / ConvNormAct     | fx: ok
    "timm_regnet": timm_cnn.timm_regnet,
    # ---- timm-style transformers / token mixers (timm_transformer.py) ------------------------
    # timm.models.vision_transformer.VisionTransformer (LayerScale, SDPA) | fx: ok
    "timm_vit_tiny": timm_transformer.timm_vit_tiny,
    # timm VisionTransformer(dynamic_img_size=True)                       | fx: FAILS (see below)
    "timm_vit_dynamic": timm_transformer.timm_vit_dynamic,
    # timm.models.deit.VisionTransformerDistilled                         | fx: ok
    "timm_deit": timm_transformer.timm_deit,
    # timm.models.swin_transformer.SwinTransformer                        | fx: ok
    "timm_swin": timm_transformer.timm_swin,
    # timm SwinTransformer(strict_img_size=False) (dynamic attn mask)      | fx: FAILS (see below)
    "timm_swin_dynamic": timm_transformer.timm_swin_dynamic,
    # timm.models.cait.Cait (TalkingHeadAttn + ClassAttn)                 | fx: ok
    "timm_cait": timm_transformer.timm_cait,
    # timm.models.mlp_mixer.MlpMixer / MixerBlock                         | fx: ok
    "timm_mlp_mixer": timm_transformer.timm_mlp_mixer,
    # timm.models.metaformer.MetaFormer (poolformer_s12 config)           | fx: ok
    "timm_poolformer": timm_transformer.timm_poolformer,
    # timm.models.pvt_v2.PyramidVisionTransformerV2                       | fx: ok
    "timm_pvt_v2": timm_transformer.timm_pvt_v2,
    # timm.models.levit.LevitDistilled (linear mode)                      | fx: ok (see note below)
    "timm_levit": timm_transformer.timm_levit,
}

# Entries on which plain torch.fx.symbolic_trace raises (upstream code paths that are not fx-traceable).
FX_TRACE_FAILS = frozenset({"timm_vit_dynamic", "timm_swin_dynamic"})

# Notes on torch.fx.symbolic_trace (from an actual run with torch 2.13; eval and train give the same verdict):
#   * timm_vit_dynamic FAILS: TraceError "symbolically traced variables cannot be used as inputs to control
#     flow" -- resample_abs_pos_embed does `if num_new_tokens == num_pos_tokens and new_size[0] == new_size[1]`
#     on sizes taken from x.shape / pos_embed.shape (Proxies) -> bool(Proxy).
#   * timm_swin_dynamic FAILS: TypeError "'Proxy' object does not support item assignment" --
#     SwinTransformerBlock.get_attn_mask(x) builds `img_mask = torch.zeros((1, H, W, 1))` from Proxy sizes and
#     fills it with `img_mask[:, h0:h1, w0:w1, :] = cnt`.
#   * every other entry traces in eval and train mode and the GraphModule matches eager output (eval).
#     In train mode timm's DropPath (drop_path with drop_prob > 0) is traced *inline* (x.new_empty(shape)
#     .bernoulli_() with shape built from x.shape[0] / x.ndim Proxies), timm's BatchNormAct2d traces into
#     F.batch_norm + `num_batches_tracked.add_(1)`; torchvision's stochastic_depth stays one fx.wrap'ed node.
#   * timm_levit traced in eval: get_attention_biases caches `attention_biases[:, idxs]` in a dict keyed by
#     str(x.device); tracing stores an fx Proxy under key 'Proxy(getattr_N)'. Eager use keeps working (key 'cpu'
#     differs), deepcopy works, but torch.save/pickle of the module then fails until the cache is cleared
#     (model.train() clears it).
