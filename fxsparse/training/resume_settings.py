"""Whether ``--resume`` may continue the run in ``--out`` with the settings given: it compares
the *effective* settings (every default filled in) of the checkpoint's config and of the
given one, so that a checkpoint written when the CLI recorded every flag (an older fxsparse)
resumes under a CLI that passes only the flags given. Where they truly differ, the error names
each setting, its recorded and given values, and what to do.

A checkpoint resumes on another device (it is loaded to the CPU, then copied where the model
and the optimizer live) and logs anywhere: ``out``, ``device`` and ``log_dir`` may differ.
A setting this version no longer has cannot be given, so it is not compared."""
from __future__ import annotations

import dataclasses

from fxsparse.training.config import TrainConfig

WHERE = ("out", "device", "log_dir")  # where the run lives and computes: free to change


def effective_settings(config: dict) -> dict:
    """``config`` (a TrainConfig as a dict, maybe an older fxsparse's) with every default filled
    in: TrainConfig's for the fields it lacks (the default method for its setting included),
    and the method's option defaults for its setting (:meth:`Method.option_defaults`)."""
    from fxsparse.methods import get_method

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    out = dataclasses.asdict(TrainConfig(**{k: v for k, v in config.items() if k in fields}))
    try:
        defaults = get_method(out["method"]).option_defaults(trained=out["init"] is not None)
    except KeyError:  # a method this version does not have: its options as recorded
        defaults = {}
    given = dict(out["method_options"] or {})
    if defaults:  # options the method no longer takes cannot be given: not compared
        given = {k: v for k, v in given.items() if k in defaults}
    out["method_options"] = {**defaults, **given}
    return out


def differences(recorded: dict, given: dict) -> list[tuple[str, object, object]]:
    """(setting, recorded value, given value) for each effective setting that differs; a
    method option is named ``method_options.NAME``."""
    a, b = effective_settings(recorded), effective_settings(given)
    out = [(k, a[k], b[k]) for k in a if k not in WHERE and k != "method_options" and a[k] != b[k]]
    if a["method"] == b["method"]:  # another method is named above; its options are another's
        opts_a, opts_b = a["method_options"], b["method_options"]
        out += [(f"method_options.{k}", opts_a.get(k), opts_b.get(k)) for k in sorted(set(opts_a) | set(opts_b))
                if opts_a.get(k) != opts_b.get(k)]
    return out


def check_resume_settings(recorded: dict, given: dict, out: str) -> None:
    """Refuse to resume the run in ``out`` (its checkpoint's config ``recorded``) with the
    config ``given`` when their effective settings differ; the error says which, how, and what to do."""
    differ = differences(recorded, given)
    if not differ:
        return
    method = effective_settings(given)["method"]
    said = "; ".join(f"{_flag(name, method)}: {r!r} in the checkpoint, {g!r} given" for name, r, g in differ)
    raise ValueError(f"--resume: the run in {out!r} was trained with other settings ({said}). To continue it, "
                     f"give the checkpoint's values (a flag left out takes its default); to train with the new "
                     f"ones, start a new run with another --out")


def _flag(setting: str, method: str) -> str:
    """The flag that sets ``setting`` (a TrainConfig field or ``method_options.NAME``)."""
    if not setting.startswith("method_options."):
        return "--" + setting.replace("_", "-")
    name = setting.split(".", 1)[1]
    from fxsparse.methods import get_method

    try:
        flags = {kw["dest"]: flag[0] for flag, kw in get_method(method).cli_options}
    except KeyError:
        flags = {}
    return flags.get(name, f"option {name!r} of method {method!r}")
