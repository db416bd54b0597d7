"""Reading what older releases wrote, in one place: landscape 0.2's probe settings, its Monitor
keywords and its checkpointed probe state, and 0.3's flat model keys (``model.width`` is now
``model.vgg.width``).

Each function takes the old form and returns the current one; nothing else in landscape knows
the old forms. They are read for one more release after they changed (docs/probes.md says which).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

# Settings of landscape 0.2 (flat keys of `probes:` and keywords of Monitor) and where they live now.
# A run directory made by 0.2 (its config.yaml, its checkpoint) reads through this table.
LEGACY_OPTIONS: dict[str, list[tuple[str, str, Callable[[Any], Any]]]] = {
    "etas": [("gradient_sweep", "etas", lambda x: x)],
    "activation_batch": [("activation_stats", "batch", lambda x: x)],
    # 0.2 ran layer_sharpness with sharpness' budget and max(sharpness_tol, 1e-2), a rule no config said
    "sharpness_iters": [("sharpness", "iters", lambda x: x), ("layer_sharpness", "iters", lambda x: x)],
    "sharpness_tol": [
        ("sharpness", "tol", lambda x: x),
        ("layer_sharpness", "tol", lambda x: max(x, 1e-2) if isinstance(x, (int, float)) else x),
    ],
    "warm_start": [("sharpness", "warm_start", lambda x: x)],
    "trace_samples": [("hessian_trace", "samples", lambda x: x)],
    "trace_method": [("hessian_trace", "method", lambda x: x)],
    "density_vectors": [("spectral_density", "vectors", lambda x: x)],
    "density_steps": [("spectral_density", "steps", lambda x: x)],
}
MONITOR_KEYWORDS = ("etas", "eta_multiples", *LEGACY_OPTIONS)  # 0.2's Monitor(...) keywords


def upgrade_probe_settings(flat: dict) -> dict:
    """0.2's flat probe settings (``{"sharpness_iters": 15, ...}``) as nested per-probe options
    (``{"sharpness": {"iters": 15}, ...}``). A nested value given beside a flat one wins. Keys
    that are not 0.2 settings are kept as they are."""
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in flat.items() if k not in LEGACY_OPTIONS}
    for key, targets in LEGACY_OPTIONS.items():
        if key not in flat:
            continue
        for probe, option, convert in targets:
            section = out.setdefault(probe, {})
            if isinstance(section, dict):
                section.setdefault(option, convert(flat[key]))
    return out


upgrade_legacy = upgrade_probe_settings  # its name in 0.3


# landscape 0.3's flat model keys and the architecture section each one moved to in 0.4.
MODEL_KEYS = {
    "vgg_depth": ("vgg", "depth"),
    "width": ("vgg", "width"),
    "head": ("vgg", "head"),
    "dln_depth": ("dln", "depth"),
    "dln_width": ("dln", "width"),
    "vit_patch": ("vit", "patch"),
    "vit_dim": ("vit", "dim"),
    "vit_depth": ("vit", "depth"),
    "vit_heads": ("vit", "heads"),
    "vit_mlp_ratio": ("vit", "mlp_ratio"),
    "vit_attention": ("vit", "attention"),
    "dropout": ("vit", "dropout"),
    "mlp_widths": ("mlp", "widths"),
    "activation": ("mlp", "activation"),
    "resnet_depth": ("resnet", "depth"),
}


def upgrade_model_settings(flat: dict) -> dict:
    """0.3's flat ``model:`` keys (``{"vgg_depth": 13, "width": 0.25}``) in their architecture's section
    (``{"vgg": {"depth": 13, "width": 0.25}}``); a value given in the section beside a flat one wins."""
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in flat.items() if k not in MODEL_KEYS}
    for key, (arch, name) in MODEL_KEYS.items():
        if key in flat:
            section = out.setdefault(arch, {})
            if isinstance(section, dict):
                section.setdefault(name, flat[key])
    return out


ADAPTIVE = ("adam", "adamw")  # optim.name values whose 0.3 `sharpness` was of P^-1 H


def upgrade_config(config: dict) -> dict:
    """A run's saved config (a plain mapping, as ``config.yaml`` holds it) in the current layout. Under Adam and
    AdamW, 0.3's ``sharpness`` measured ``P^-1 H``: it is ``preconditioned_sharpness`` now (and its ``raw: true``,
    the plain Hessian's beside it, is ``sharpness``)."""
    out = dict(config)
    for key, upgrade in (("model", upgrade_model_settings), ("probes", upgrade_probe_settings)):
        if isinstance(out.get(key), dict):
            out[key] = upgrade(out[key])
    probes, optim = out.get("probes"), out.get("optim")
    if not isinstance(probes, dict) or not isinstance(probes.get("sharpness", {}), dict):
        return out
    section = dict(probes.get("sharpness") or {})
    raw = section.pop("raw", None)
    if raw is None:
        return out
    probes = {**probes, "sharpness": section}
    enabled = probes.get("enabled")
    adaptive = isinstance(optim, dict) and optim.get("name") in ADAPTIVE
    if adaptive and isinstance(enabled, list) and "sharpness" in enabled:
        probes["enabled"] = [
            n
            for e in enabled
            for n in (
                ["preconditioned_sharpness", "sharpness"]
                if e == "sharpness" and raw
                else ["preconditioned_sharpness"]
                if e == "sharpness"
                else [e]
            )
        ]
        probes["preconditioned_sharpness"] = section
    out["probes"] = probes
    return out


def upgrade_records(records: list[dict]) -> list[dict]:
    """A run's records in the current names: 0.3's ``sharpness`` record of ``P^-1 H`` (``"preconditioned": true``,
    under Adam) is a ``preconditioned_sharpness`` record, and the plain Hessian's value it carried beside
    (``raw_value``) a ``sharpness`` record of its own."""
    out = []
    for r in records:
        v = r.get("values")
        if (
            r.get("kind") != "probe"
            or r.get("probe") != "sharpness"
            or not isinstance(v, dict)
            or v.get("preconditioned") is not True
        ):
            out.append(r)
            continue
        rest = {k: x for k, x in v.items() if k not in ("raw_value", "raw_residual")}
        out.append({**r, "probe": "preconditioned_sharpness", "values": rest})
        if "raw_value" in v:
            raw = {
                **rest,
                "value": v["raw_value"],
                "residual": v.get("raw_residual"),
                "preconditioned": False,
                "threshold": None,
                "preconditioned_threshold": v.get("threshold"),
            }
            out.append({**r, "values": raw, "cost": {}})
    return out


def monitor_keywords(legacy: dict) -> dict:
    """0.2's ``Monitor`` keywords (``etas`` absolute, ``eta_multiples``, ``sharpness_iters``, ...) as per-probe
    options, with a deprecation warning; ``TypeError`` for any other keyword (as a function would raise)."""
    unknown = [k for k in legacy if k not in MONITOR_KEYWORDS]
    if unknown:
        raise TypeError(f"Monitor() got unexpected keyword arguments {unknown}")
    if not legacy:
        return {}
    warnings.warn(
        f"Monitor keywords {sorted(legacy)} are landscape 0.2's; pass options={{probe: {{...}}}} instead "
        "(they are read until 0.5)",
        DeprecationWarning,
        stacklevel=3,
    )
    legacy = dict(legacy)
    absolute, multiples = legacy.pop("etas", None), legacy.pop("eta_multiples", None)
    upgraded = upgrade_probe_settings(legacy)
    sweep = dict(upgraded.get("gradient_sweep", {}))
    if absolute is not None:
        sweep.update(etas=tuple(absolute), absolute=True)
    elif multiples is not None:
        sweep.update(etas=tuple(multiples))
    if sweep:
        upgraded["gradient_sweep"] = sweep
    return upgraded


def monitor_state(state: dict) -> dict:
    """A checkpoint's probe state as ``{"probes": {name: state}}``; 0.2 saved two fields at the top level."""
    if "probes" in state:
        return state
    return {
        "probes": {
            "activation_stats": {"previous": state.get("previous_activations")},
            "sharpness": {"vector": state.get("sharpness_vector")},
        }
    }


def accepts_monitor_keywords(init):
    """``Monitor.__init__`` that also takes 0.2's keywords (through :func:`monitor_keywords`) while its
    signature shows only the current ones."""
    import functools
    import inspect

    params = inspect.signature(init).parameters

    @functools.wraps(init)
    def wrapper(self, *args, **kwargs):
        legacy = {k: kwargs.pop(k) for k in list(kwargs) if k not in params}
        if legacy:
            given = dict(kwargs.get("options") or {})
            enabled = kwargs.get("probes", params["probes"].default)
            for name, opts in monitor_keywords(legacy).items():
                mine = given.get(name)
                if name not in enabled:
                    continue
                if isinstance(mine, dict) or mine is None:
                    given[name] = {**opts, **(mine or {})}
            kwargs["options"] = given
        return init(self, *args, **kwargs)

    return wrapper
