"""Internal covariate shift, both views of the paper (docs/protocol.md).

ICS_opti (Experiment 3), for layer i at step t on one batch:
    ``G  = grad_{W_i} L(W_1^t, ..., W_k^t)``
    ``G' = grad_{W_i} L(W_1^{t+1}, ..., W_{i-1}^{t+1}, W_i^t, ..., W_k^t)``
i.e. only the layers before i have taken this step's actual optimizer update, and the
measures are ``||G - G'||_2`` (0 without shift) and ``cos(G, G')`` (1 without shift).
"Before" is registration order, which is forward order for sequential models.

ICS_distrib (Experiment 2): the distribution of a layer's input over training, measured
on a fixed batch by :func:`activation_stats`; :func:`distribution_shift` compares two
measurements (change of mean and std, and the Wasserstein-1 distance).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

import torch
from torch import nn

from landscape.probes.functional import (
    Batch,
    Objective,
    Params,
    current_params,
    dot,
    expand_layer_names,
    norm,
    resolve_layers,
    untouched,
)
from landscape.probes.registry import (
    MAX_EXAMPLES,
    Context,
    NoOptions,
    Probe,
    layer_list,
    mean,
    mean_over_layers,
    numbers,
    register,
)


@dataclass
class IcsResult:
    layers: list[str]
    l2: dict[str, float]  # ||G - G'||_2 per layer
    cosine: dict[str, float]  # cos(G, G') per layer
    grad_norm: dict[str, float]  # ||G|| per layer, to read l2 relative to it
    cost: dict

    def as_dict(self) -> dict:
        return asdict(self)


def ics_opti(
    model: nn.Module,
    loss_fn: Callable,
    batch: Batch,
    next_params: Params,
    *,
    params: Params | None = None,
    layers: Iterable | dict | None = None,
    grad: Params | None = None,
    eval_mode: bool = False,
    buffers: Params | None = None,
    rng: dict | None = None,
    output_fn: Callable | None = None,
) -> IcsResult:
    """ICS_opti per layer. ``next_params`` are the weights after the optimizer's real update.

    ``params`` are the weights at step t (default: the model's current weights; the trainer
    calls this after ``optimizer.step()`` and so passes the pre-step weights it saved).
    ``grad`` (G for all layers, e.g. the step's ``p.grad``) saves one pass: L layers then
    cost at most L passes (the first layer, with nothing before it, costs none), and each
    G' backpropagates only down to its own layer.
    """
    with untouched(model, eval_mode):
        f = Objective.of(model, loss_fn, batch, buffers, rng, output_fn)
        w = params if params is not None else current_params(model)
        groups = resolve_layers(model, layers)
        if grad is None:
            _, grad = f.value_and_grad(w)
        order = {n: i for i, n in enumerate(w)}
        l2, cos, gnorm = {}, {}, {}
        for label, names in groups:
            first = min(order[n] for n in names)
            before = [n for n in w if order[n] < first]
            G = {n: grad[n].detach() for n in names}
            if before:
                mixed = {**w, **{n: next_params[n].detach() for n in before}}
                G_new = f.grad_of(names, mixed)
            else:
                G_new = G  # nothing precedes this layer: G' = G exactly
            diff = {n: G[n] - G_new[n] for n in names}
            l2[label] = norm(diff)
            denom = norm(G) * norm(G_new)
            cos[label] = dot(G, G_new) / denom if denom > 0 else torch.tensor(math.nan)
            gnorm[label] = norm(G)
        return IcsResult(
            layers=[label for label, _ in groups],
            l2={k: float(v) for k, v in l2.items()},
            cosine={k: float(v) for k, v in cos.items()},
            grad_norm={k: float(v) for k, v in gnorm.items()},
            cost=f.cost.as_dict(),
        )


QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
UNIT_QUANTILES = (0.15, 0.5, 0.85)  # per unit: the percentiles of Ioffe and Szegedy's Figure 1(b, c)
MAX_QUANTILE_ELEMENTS = 1 << 22  # torch.quantile's input limit is 2**24; subsample evenly above this


@dataclass
class ActivationStats:
    where: str  # "input" or "output" of each layer module
    layers: list[str]
    stats: dict[str, dict]  # per layer: numel, mean, std, min, max, quantiles, hist {edges, counts}, sketch

    def as_dict(self) -> dict:
        return asdict(self)


def _summarise(x: torch.Tensor, bins: int, sketch: int) -> dict:
    x = x.detach().reshape(-1).double()
    sample = x[:: max(1, math.ceil(x.numel() / MAX_QUANTILE_ELEMENTS))]
    levels = torch.cat(
        [torch.tensor(QUANTILES, dtype=torch.float64), torch.linspace(0, 1, sketch, dtype=torch.float64)]
    )
    both = torch.quantile(sample, levels.to(x.device))  # one sort for both sets of levels
    qs, sk = both[: len(QUANTILES)], both[len(QUANTILES) :]
    lo, hi = float(x.min()), float(x.max())
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return {
            "numel": x.numel(),
            "mean": math.nan,
            "std": math.nan,
            "min": lo,
            "max": hi,
            "quantiles": {},
            "hist": {"edges": [], "counts": []},
            "sketch": [],
        }
    if hi == lo:
        hi = lo + 1e-12
    counts = torch.histc(x, bins=bins, min=lo, max=hi)
    return {
        "numel": x.numel(),
        "mean": float(x.mean()),
        "std": float(x.std()),
        "min": lo,
        "max": float(x.max()),
        "quantiles": {str(q): float(v) for q, v in zip(QUANTILES, qs)},
        "hist": {"edges": torch.linspace(lo, hi, bins + 1).tolist(), "counts": [int(c) for c in counts]},
        "sketch": sk.tolist(),
    }


def activation_stats(
    model: nn.Module,
    batch: Batch | torch.Tensor,
    layers: Iterable[str] | None = None,
    *,
    where: str = "input",
    bins: int = 50,
    sketch: int = 128,
    units: int = 0,
    eval_mode: bool = False,
    params: Params | None = None,
    buffers: Params | None = None,
    rng: dict | None = None,
) -> ActivationStats:
    """Distribution of each layer's input (``where="input"``, default: what the layer sees,
    the quantity ICS_distrib is about) or output, on one batch, in the model's mode.

    ``layers`` are module names (default: every module that owns parameters). Per layer:
    mean, std, min, max, the quantiles in ``QUANTILES``, a ``bins``-bin histogram over
    [min, max], and a ``sketch`` of evenly spaced quantiles used by :func:`distribution_shift`.
    ``units`` > 0 adds, for each of the layer's first ``units`` units (channels, dimension 1), the quantiles in
    ``UNIT_QUANTILES`` of that unit's values over the batch (and positions): ``units: {"0.15": [per unit], ...}``.
    ``batch`` may be ``(inputs, targets)`` or just the inputs.
    """
    if units < 0:
        raise ValueError(f"units must be 0 or a positive number of units; got {units}")
    if where not in ("input", "output"):
        raise ValueError(f"where must be 'input' or 'output', got {where!r}")
    inputs = batch[0] if isinstance(batch, tuple) and len(batch) == 2 else batch  # a mapping: keyword arguments
    names = expand_layer_names(model, layers) if layers is not None else [label for label, _ in resolve_layers(model)]
    modules = dict(model.named_modules())
    missing = [n for n in names if n not in modules]
    if missing:
        raise KeyError(f"no module named {missing}; see model.named_modules()")
    captured: dict[str, torch.Tensor] = {}

    def hook(name):
        def fn(module, args, output):
            value = args[0] if where == "input" else output
            captured[name] = value.detach().clone()  # an in-place ReLU after it would overwrite it

        return fn

    handles = [modules[n].register_forward_hook(hook(n)) for n in names]
    try:
        with untouched(model, eval_mode), torch.no_grad():
            f = Objective.of(model, lambda out, t: out, (inputs, None), buffers, rng, output_fn=lambda o: o)
            f(params if params is not None else current_params(model))
    finally:
        for h in handles:
            h.remove()
    seen = [n for n in names if n in captured]  # modules whose forward never runs (MultiheadAttention's
    return ActivationStats(
        where=where,
        layers=seen,  # out_proj is used through its weights) are left out
        stats={n: {**_summarise(captured[n], bins, sketch), **_units(captured[n], units)} for n in seen},
    )


def _units(x: torch.Tensor, units: int) -> dict:
    """The ``UNIT_QUANTILES`` of each of the first ``units`` units (dimension 1) over everything else."""
    if units == 0 or x.dim() < 2:
        return {}
    per_unit = x.detach().transpose(0, 1)[:units].reshape(min(units, x.shape[1]), -1).double()
    q = torch.quantile(per_unit, torch.tensor(UNIT_QUANTILES, dtype=torch.float64, device=x.device), dim=1)
    return {"units": {str(level): row.tolist() for level, row in zip(UNIT_QUANTILES, q)}}


def distribution_shift(before: ActivationStats | dict, after: ActivationStats | dict) -> dict[str, dict]:
    """ICS_distrib between two measurements of the same layers (on the same fixed batch):
    per layer, the change of mean and std, and the Wasserstein-1 distance (scipy) between
    the two distributions, computed on their quantile sketches."""
    from scipy.stats import wasserstein_distance

    a = before.stats if isinstance(before, ActivationStats) else before["stats"]
    b = after.stats if isinstance(after, ActivationStats) else after["stats"]
    out = {}
    for layer in a:
        if layer not in b:
            continue
        sa, sb = a[layer], b[layer]
        finite = sa["sketch"] and sb["sketch"]
        out[layer] = {
            "mean_change": sb["mean"] - sa["mean"],
            "std_change": sb["std"] - sa["std"],
            "wasserstein": float(wasserstein_distance(sa["sketch"], sb["sketch"])) if finite else math.nan,
        }
    return out


# ------------------------------------------------------------------ the probe entries


@dataclass(frozen=True)
class ActivationStatsOptions:
    batch: int = 256  # size of the fixed training batch measured every time (the same for paired runs)
    layers: tuple[str, ...] = ()  # module names or type:Class (e.g. type:Sigmoid); empty: the Monitor's layers
    units: int = 0  # N > 0: also the 15th, 50th and 85th percentiles of each of a layer's first N units


def _activation_stats(ctx: Context, o: ActivationStatsOptions) -> dict:
    batch = ctx.fixed_batch if ctx.fixed_batch is not None else ctx.batch
    layers = None if ctx.layers is None or isinstance(ctx.layers, dict) else list(ctx.layers)
    stats = activation_stats(
        ctx.model,
        batch,
        list(o.layers) or layers,
        units=o.units,
        eval_mode=ctx.eval_mode,
        buffers=ctx.buffers,
        rng=ctx.rng,
    ).as_dict()
    previous = ctx.state.get("previous")
    stats["shift"] = distribution_shift(previous, stats) if previous is not None else None
    ctx.state["previous"] = {"stats": stats["stats"]}
    return stats


MAX_UNITS = 100_000  # units whose own percentiles one record may hold


def _units_view(v: dict) -> dict[str, dict[str, list[float | None]]]:
    """Each layer's per-unit percentiles, ``{layer: {"0.15": [per unit], "0.5": [...], "0.85": [...]}}`` (layers
    recorded without them left out)."""
    out = {}
    for layer, s in v["stats"].items():
        units = s.get("units") if isinstance(s, dict) else None
        if isinstance(units, dict) and all(isinstance(row, list) for row in units.values()):
            out[str(layer)] = {str(level): numbers(row) for level, row in units.items()}
    return out


def _histograms(v: dict) -> dict[str, dict]:
    """Each layer's recorded histogram, ``{layer: {"edges": [...], "counts": [...]}}`` (a layer without one left
    out)."""
    out = {}
    for layer, s in v["stats"].items():
        h = s.get("hist") if isinstance(s, dict) else None
        if isinstance(h, dict) and isinstance(h.get("edges"), list) and isinstance(h.get("counts"), list):
            out[str(layer)] = {"edges": h["edges"], "counts": h["counts"]}
    return out


def _shift(v: dict) -> dict:
    shift = v.get("shift") or {}
    return {k: s.get("wasserstein") for k, s in shift.items() if isinstance(s, dict)}


register(
    Probe(
        "activation_stats",
        "each layer's input distribution on a fixed batch, and its shift since the last probe (ICS_distrib)",
        _activation_stats,
        ActivationStatsOptions,
        quantities={
            "shift": _shift,
            "mean_shift": lambda v: mean(_shift(v).values()) if v.get("shift") else None,
            "mean_std": lambda v: mean(s.get("std") for s in v["stats"].values() if isinstance(s, dict)),
        },
        exported=("shift",),
        fixed_batch=lambda o: o.batch,
        views={"layers": layer_list, "histograms": _histograms, "units": _units_view},
        check=lambda o: (
            None
            if 0 < o.batch <= MAX_EXAMPLES and 0 <= o.units <= MAX_UNITS
            else f"batch must be between 1 and {MAX_EXAMPLES:,} and units between 0 and {MAX_UNITS:,}; got "
            f"{o.batch} and {o.units}"
        ),
    )
)


def _ics(ctx: Context, o: NoOptions) -> dict:
    return ics_opti(
        ctx.model,
        ctx.loss_fn,
        ctx.batch,
        ctx.next_params,
        params=ctx.params,
        layers=ctx.layers,
        grad=ctx.grad,
        **ctx.common(),
    ).as_dict()


register(
    Probe(
        "ics_opti",
        "ICS_opti per layer: ||G - G'|| and cos(G, G') after the layers before it take the step's update",
        _ics,
        NoOptions,
        quantities={
            "ics_l2": lambda v: v["l2"],
            "ics_cos": lambda v: v["cosine"],
            "mean_l2": lambda v: mean_over_layers(v, "l2"),
            "mean_cos": lambda v: mean_over_layers(v, "cosine"),
        },
        exported=("ics_l2", "ics_cos"),
        after_step=True,
        views={"layers": layer_list},
    )
)
