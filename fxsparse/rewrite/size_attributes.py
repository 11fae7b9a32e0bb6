"""The size attributes a module stores beside its parameters, recomputed after its
parameters were sliced (``fxsparse.prune``): ``in_channels``/``out_channels``/``groups`` of
convolutions, ``in_features``/``out_features``, ``num_features``, ``normalized_shape``,
``embedding_dim``, and the head counts and widths of attention and MLP blocks that keep
them as plain ints (``num_heads``, ``split_size``, ``intermediate_size``, ``embed_dim``...),
plus the fields of a ``transformers`` config where every layer has the same new size.

Nothing is changed here: each function returns the changes as ``(object, attribute, new
value)`` so that the caller can apply them and undo them if the pruned model fails its check.

Block attributes (heads, widths) are matched to the channel groups that run through the
block: an attribute whose old value equals the old size of a sliced dim (for a head count:
times ``head_dim``, or where the block stores none, times the width one channel of the
heads' group holds) takes that dim's new size, by majority where several dims answer. Head counts and inner widths read only dims
whose group stays inside the block's parent (one layer); residual widths (``hidden_size``,
``embed_dim``) only dims whose group leaves it (the residual stream).
"""
from __future__ import annotations

import dataclasses
from collections import Counter

import torch.nn as nn

# int attributes of blocks, by what they count
HEAD_COUNTS = ("num_heads", "num_attention_heads", "n_head", "n_heads", "num_key_value_heads", "num_kv_heads")
HEAD_DIMS = ("head_dim", "attention_head_size", "head_size")
INNER_WIDTHS = ("all_head_size", "inner_dim", "intermediate_size", "ffn_dim", "hidden_features", "attn_dim", "val_attn_dim")
RESIDUAL_WIDTHS = ("hidden_size", "embed_dim", "d_model", "n_embd")
SPLIT_WIDTHS = ("split_size",)  # one of several equal parts of a packed projection (GPT-2's q|k|v)

# config fields kept in step with the model when every layer has the same new value
CONFIG_HEADS = ("num_attention_heads", "num_key_value_heads")
CONFIG_INNER = ("intermediate_size", "n_inner", "ffn_dim", "d_ff")


@dataclasses.dataclass(frozen=True)
class SlicedDim:
    """One dim of a member parameter: its module path, old and new size, the module paths of
    every member of its channel group, and how many indices of the dim one channel of the
    group holds (a head's width for a group of heads; 0 when channels differ)."""
    layer: str
    old: int
    new: int
    group_layers: frozenset
    block: int = 1


def _inside(path: str, scope: str) -> bool:
    return scope == "" or path == scope or path.startswith(scope + ".")


def layer_changes(module: nn.Module, old: dict) -> list[tuple]:
    """(module, attribute, new value) for a standard layer whose parameters were sliced;
    ``old``: {parameter name: old shape} of this module's own parameters and buffers."""
    changes = []

    def put(attr, value):
        if getattr(module, attr, None) != value:
            changes.append((module, attr, value))

    w = getattr(module, "weight", None)
    if isinstance(module, nn.modules.conv._ConvNd):
        g = module.groups
        if isinstance(module, nn.modules.conv._ConvTransposeNd):  # weight [in, out/groups, ...]
            put("in_channels", w.shape[0])
            put("out_channels", w.shape[1] * g)
        else:  # weight [out, in/groups, ...]
            if g > 1 and g == module.in_channels:  # depthwise: one group per kept channel
                g = w.shape[0] // (module.out_channels // module.groups)
                put("groups", g)
            put("out_channels", w.shape[0])
            put("in_channels", w.shape[1] * g)
    elif isinstance(module, nn.Linear):
        put("out_features", w.shape[0])
        put("in_features", w.shape[1])
    elif isinstance(module, (nn.modules.batchnorm._NormBase,)):
        stats = w if w is not None else getattr(module, "running_mean", None)
        if stats is not None:
            put("num_features", stats.shape[0])
    elif isinstance(module, nn.GroupNorm) and w is not None:
        per_group = module.num_channels // module.num_groups
        put("num_channels", w.shape[0])
        put("num_groups", 1 if module.num_groups == 1 else w.shape[0] // per_group)
    elif isinstance(module, (nn.LayerNorm, getattr(nn, "RMSNorm", nn.LayerNorm))) and w is not None:
        put("normalized_shape", tuple(w.shape))
    elif isinstance(module, (nn.Embedding, nn.EmbeddingBag)):
        put("num_embeddings", w.shape[0])
        put("embedding_dim", w.shape[1])
    elif isinstance(module, nn.PReLU):
        put("num_parameters", w.numel())
    elif type(module).__name__ == "Conv1D" and hasattr(module, "nf"):  # transformers' GPT-2 linear, weight [in, out]
        put("nx", w.shape[0])
        put("nf", w.shape[1])
    else:
        changes += _view_shapes(module, old)
    return changes


def _view_shapes(module: nn.Module, old: dict) -> list[tuple]:
    """A tuple attribute that is the shape a 1-d parameter of the module is viewed to (timm's
    ``Scale``: ``self.scale.view(self.shape)``, shape ``(dim, 1, 1)``): its one non-1 entry
    follows the parameter's new size."""
    changes = []
    sizes = {}
    for name, t in list(module._parameters.items()) + list(module._buffers.items()):
        shape = old.get(name)
        if t is not None and shape is not None and len(shape) == 1 and t.dim() == 1 and shape[0] != t.shape[0]:
            sizes.setdefault(shape[0], set()).add(t.shape[0])
    for attr, value in vars(module).items():
        if not isinstance(value, tuple) or not value or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            continue
        big = [i for i, v in enumerate(value) if v != 1]
        if len(big) == 1 and len(sizes.get(value[big[0]], ())) == 1:
            new = list(value)
            new[big[0]] = next(iter(sizes[value[big[0]]]))
            changes.append((module, attr, tuple(new)))
    return changes


def _vote(values: list):
    """The value most candidates agree on (None when there is none, or a tie)."""
    if not values:
        return None
    counts = Counter(values).most_common(2)
    if len(counts) > 1 and counts[0][1] == counts[1][1]:
        return None
    return counts[0][0]


def _candidates(dims: list[SlicedDim], path: str, old_value: int, scale, residual: bool, multiple=False):
    """New sizes (divided by ``scale``) of the dims under ``path`` whose old size is
    ``old_value * scale`` (or a multiple of it, for a packed projection): inner dims (group
    within the parent block) or residual dims (group leaving the parent). ``scale="block"``:
    each dim's own channel width (a head count where a channel of the group is a head)."""
    parent = path.rpartition(".")[0]
    out = []
    for d in dims:
        if not _inside(d.layer, path):
            continue
        if residual == all(_inside(p, parent) for p in d.group_layers):
            continue
        unit = d.block if scale == "block" else scale
        if not unit or (scale == "block" and unit == 1):
            continue
        target = old_value * unit
        parts = d.old // target if multiple and d.old % target == 0 and d.old > target else (1 if d.old == target else 0)
        if parts and (d.new % (parts * unit) == 0):
            out.append(d.new // (parts * unit))
    return out


def block_changes(model: nn.Module, dims: list[SlicedDim]) -> list[tuple]:
    """(module, attribute, new value) for the int size attributes of blocks (attention, MLP,
    decoder layers) above the sliced dims. An attribute no sliced dim explains is left as is."""
    changes = []
    touched = {d.layer for d in dims if d.old != d.new}
    for path, module in model.named_modules():
        if not any(_inside(t, path) for t in touched) or path == "":
            continue
        own = vars(module)
        head_dim = next((own[a] for a in HEAD_DIMS if isinstance(own.get(a), int)), None)
        found = {}
        for attr, value in own.items():
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                continue
            if attr in HEAD_COUNTS:  # scaled by head_dim where the block stores it, else by the heads' groups
                new = _vote(_candidates(dims, path, value, head_dim, residual=False) if head_dim else
                            _candidates(dims, path, value, "block", residual=False))
            elif attr in INNER_WIDTHS:
                new = _vote(_candidates(dims, path, value, 1, residual=False))
            elif attr in SPLIT_WIDTHS:
                new = _vote(_candidates(dims, path, value, 1, residual=False, multiple=True))
            elif attr in RESIDUAL_WIDTHS:
                new = _vote(_candidates(dims, path, value, 1, residual=True))
            else:
                continue
            if new is not None and new != value:
                found[attr] = new
        heads, kv = found.get("num_heads", own.get("num_heads")), found.get("num_key_value_heads", own.get("num_key_value_heads"))
        if isinstance(own.get("num_key_value_groups"), int) and isinstance(heads, int) and isinstance(kv, int) and kv:
            found["num_key_value_groups"] = heads // kv
        changes += [(module, attr, new) for attr, new in found.items() if new != own.get(attr)]
    return changes


def _config_value(config, key):
    """The value of ``key`` in a transformers config, None when the config has no such field."""
    return getattr(config, key, None) if key in config.to_dict() or key in getattr(config, "attribute_map", {}) else None


def config_changes(model: nn.Module, dims: list[SlicedDim]) -> list[tuple]:
    """(config, field, new value) for the fields of a transformers model's config that every
    layer now agrees on: the residual width (the input embeddings' width), the head counts and
    the MLP width. A field whose layers differ keeps its dense value (fxsparse.save records
    the real sizes)."""
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "to_dict"):
        return []
    changes = []
    try:
        embed = model.get_input_embeddings()
    except (AttributeError, NotImplementedError):  # a vision model has none
        embed = None
    width = getattr(embed, "weight", None)
    old_hidden = _config_value(config, "hidden_size")
    if width is not None and isinstance(old_hidden, int) and width.shape[-1] != old_hidden:
        changes.append((config, "hidden_size", int(width.shape[-1])))
    head_dim = _config_value(config, "head_dim")
    heads = _config_value(config, "num_attention_heads")
    if not isinstance(head_dim, int) and isinstance(old_hidden, int) and isinstance(heads, int) and heads:
        head_dim = old_hidden // heads
    layers = {d.layer.rpartition(".")[0] for d in dims}  # blocks that hold a sliced layer
    for key, scale in [(k, head_dim) for k in CONFIG_HEADS] + [(k, 1) for k in CONFIG_INNER]:
        old = _config_value(config, key)
        if key == "n_inner" and old is None and "n_inner" in config.to_dict() and isinstance(old_hidden, int):
            old = 4 * old_hidden  # GPT-2: None means 4 x the width
        if not isinstance(old, int) or not scale:
            continue
        per_block = {}
        for block in layers:
            new = _vote(_candidates(dims, block, old, scale, residual=False))
            if new is not None:
                per_block[block] = new
        values = set(per_block.values())
        if len(values) == 1 and values != {old}:
            changes.append((config, key, values.pop()))
    if changes and not isinstance(_config_value(config, "head_dim"), int) and head_dim and "head_dim" in config.to_dict():
        changes.append((config, "head_dim", head_dim))
    return changes
