"""Einsums that are no single matrix product (``'bzch,bzhpn->bchpn'``: Mamba2's chunked scan,
two column letters, several operands), read letter by letter.

A tensor's channels run along one of its dims (a [heads, head_dim] grid is tied per head, so
its ids vary along one dim), so each operand brings channels on at most one letter:
- a letter of several operands is the same index in each: their channels there are coupled,
  and an operand with fixed values of size > 1 there makes them unprunable;
- a letter kept in the output carries its channels into it; when two output letters carry
  channels (an outer product), one keeps them (``outer.keep_one_axis``), the other's stay;
- a letter of one operand that the output drops is summed over: its channels cannot go.
A parameter operand (a view of one) takes the channels it meets where its dim is one
parameter dim, else those channels stay.
"""
from __future__ import annotations

import numpy as np
import torch.fx as fx

from fxsparse.core.broadcast import along
from fxsparse.core.elements import varying_dims
from .outer import keep_one_axis


def _line(ids, d):
    return np.moveaxis(ids, d, 0).reshape(ids.shape[d], -1)[:, 0]


def general_einsum(ctx, node, eq: str, operands: list):
    """The output ids of ``torch.einsum(eq, *operands)`` (see the module doc), or None."""
    loc = f"einsum '{eq}' at {ctx.where(node)}"
    eq = eq.replace(" ", "")
    terms = eq.split("->")[0].split(",") if "->" in eq else []
    out_term = eq.split("->")[1] if "->" in eq else ""
    shapes = [ctx.shape(o) if isinstance(o, fx.Node) else None for o in operands]
    if ("..." in eq or len(terms) != len(operands) or any(len(set(t)) != len(t) for t in terms + [out_term])
            or any(s is None or len(s) != len(t) for s, t in zip(shapes, terms))):
        ctx.opaque(node, f"{loc}: only explicit equations without ellipsis or repeated letters are supported")
        return None
    # letter -> [(operand, line of channel ids)], and operands without channels per letter
    carried: dict[str, list] = {}
    for i, (op, term) in enumerate(zip(operands, terms)):
        ids = ctx.padded_ids(op)
        if ids is None:
            continue
        vd = varying_dims(ids)
        if len(vd) > 1:
            ctx.unprunable(ids, f"{loc}: operand {i}'s channels vary along several dims")
            continue
        for d in vd:
            carried.setdefault(term[d], []).append((i, _line(ids, d)))
    lines = {}
    for letter, found in carried.items():
        line = found[0][1]
        for _, other in found[1:]:
            ctx.couple(line, other)
        fixed = []
        for i, (op, term) in enumerate(zip(operands, terms)):
            if letter not in term or i in {j for j, _ in found}:
                continue
            d = term.index(letter)
            if shapes[i][d] == 1:
                continue  # broadcast
            refs = ctx.free(op)
            if refs is None or ctx.ids(op) is not None or not ctx.bind_free(refs, d, line):
                fixed.append(i)
        if fixed:
            ctx.unprunable(line, f"{loc}: letter '{letter}' meets operand {fixed[0]}, whose values there cannot be removed")
            continue
        if letter not in out_term and len(found) == 1 and not any(letter in t for k, t in enumerate(terms) if k != found[0][0]):
            ctx.unprunable(line, f"{loc}: letter '{letter}' carries channels and is summed over")
            continue
        if letter in out_term:
            lines[letter] = line
        else:
            ctx.mark_summing(node, [operands[i] for i, _ in found], f"{loc}: letter '{letter}' is summed over")
    if len(lines) > 1:  # an outer product: one ids array holds one channel axis
        letters = list(lines)
        kept = letters[keep_one_axis(ctx, [(f"letter '{k}'", lines[k]) for k in letters], loc)]
        lines = {kept: lines[kept]}
    if not lines:
        return None
    (letter, line), = lines.items()
    return along(line, out_term.index(letter), len(out_term))


__all__ = ["general_einsum"]
