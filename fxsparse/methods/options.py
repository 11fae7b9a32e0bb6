"""Checking a method's options, in one place: unknown names, choices, numbers. Each error is
a ValueError naming the method (or whatever ``method`` names), the option, the value and
what it may be."""
from __future__ import annotations


def check_options(method: str, options: dict, defaults: dict) -> dict:
    """``defaults`` updated with ``options``; an unknown option raises ValueError naming the known ones."""
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise ValueError(f"{method}: unknown option(s) {unknown}; known options: {', '.join(sorted(defaults))}")
    out = dict(defaults)
    out.update(options)
    return out


def check_choice(method: str, key: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"{method}: option {key} must be one of {', '.join(map(repr, choices))}, got {value!r}")


def check_number(method: str, key: str, value, lo=None, hi=None, integer=False, lo_open=False, allow_none=False):
    if value is None and allow_none:
        return
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value == value
    if integer:
        ok = ok and float(value).is_integer()
    if ok and lo is not None:
        ok = value > lo if lo_open else value >= lo
    if ok and hi is not None:
        ok = value <= hi
    if not ok:
        rng = f"{'(' if lo_open else '['}{lo if lo is not None else '-inf'}, {hi if hi is not None else 'inf'}]"
        kind = "an integer" if integer else "a number"
        raise ValueError(f"{method}: option {key} must be {kind} in {rng}, got {value!r}")


def check_choices(method: str, **values_and_choices) -> None:
    """``check_choices("vrpge", form=(value, choices), ...)``: :func:`check_choice` for each."""
    for key, (value, choices) in values_and_choices.items():
        check_choice(method, key, value, choices)


def check_state_keys(method: str, state: dict, keys) -> None:
    """A method's ``load_state_dict`` input has every key its ``state_dict()`` writes."""
    missing = set(keys) - set(state)
    if missing:
        raise ValueError(f"{method}.load_state_dict: missing keys {sorted(missing)}; pass what state_dict() returned")
