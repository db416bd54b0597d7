"""The probe table: one :class:`Probe` entry per probe, and the one place that knows them all.

An entry says everything the rest of landscape needs of a probe:

- ``measure(ctx, options) -> values``: the measurement at one step (a :class:`Context` holds the
  model, loss, batch and the state of that step; ``options`` is the probe's own settings);
- ``options``: a frozen dataclass of those settings, with commented defaults. It is the config
  section ``probes.<name>`` (``probes.sharpness.iters``), ``Monitor(..., options={name: {...}})``
  and the ``monitor.yaml`` of a run;
- ``quantities``: named numbers read off one record's values (``loss_band``, ``ics_cos`` per
  layer, ...). Results, claims, figures and exports read recorded probes only through them;
  ``exported`` names those that are also written as scalars (TensorBoard, W&B: ``landscape/<name>``,
  a per-layer quantity as ``landscape/<name>/<layer>``);
- ``after_step``: measured after ``optimizer.step()`` with the new weights (ICS_opti);
- ``attach(optimizer, options)``: a warning to give once when the probe is attached (e.g. an
  optimizer whose stability threshold is unknown), or None;
- ``fixed_batch(options)``: the size of a fixed training batch the probe measures every time
  instead of the step's own (activation statistics), or None.

Adding a probe is one function, its options, its entry and a call to :func:`register`: ``Monitor``
schedules it, the config validates ``probes.<name>``, the records carry it, exports and results
read its quantities.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

import torch
from torch import nn

from landscape.probes.edge import batch_sharpness, hessian_eigenvalues_above, split_batch
from landscape.probes.curvature import (UnreadableOptimizer, directional_curvature, hessian_trace, layer_sharpness,
                                        min_trace_samples, preconditioner, spectral_density, stability_threshold)
from landscape.probes.functional import (Batch, Objective, Params, current_params, group_size, norm, resolve_layers,
                                        untouched)
from landscape.probes.ics import activation_stats, distribution_shift, ics_opti
from landscape.probes.landscape import gradient_sweep, sharpness
from landscape.probes.slices import evaluate_slice, flat_norm, grid_coords, quadratic_fit, random_direction
from landscape.probes.update import check_readable, update_sweep

DEFAULT_ETA_MULTIPLES = (0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0)  # the paper's [0.5, 4] x lr


@dataclass
class Context:
    """What a probe sees at one step: the model as the training step left it (after backward,
    before the update), the step's batch, and the buffers and RNG state of its forward."""

    step: int
    model: nn.Module
    optimizer: torch.optim.Optimizer
    loss_fn: Callable
    batch: Batch
    buffers: Params
    rng: dict
    grad: Params | None = None  # the step's own gradient (reused when it is exactly this forward's)
    loss: Any = None  # the step's own loss, with ``grad``
    layers: Any = None  # the Monitor's layer selection (see landscape.probes.resolve_layers)
    eval_mode: bool = False
    output_fn: Callable | None = None
    fixed_batch: Batch | None = None  # the Monitor's fixed probe batch, for probes that ask for one
    state: dict = field(default_factory=dict)  # this probe's own state between its steps (checkpointed)
    params: Params | None = None  # after-step probes: the weights before the update (W^t)
    next_params: Params | None = None  # after-step probes: the weights after it (W^{t+1})

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def common(self) -> dict:
        """The keyword arguments every probe function takes for the step's state."""
        return {"eval_mode": self.eval_mode, "buffers": self.buffers, "rng": self.rng, "output_fn": self.output_fn}


@dataclass(frozen=True)
class Probe:
    name: str
    doc: str  # one line: what it measures
    measure: Callable[[Context, Any], dict]
    options: type  # a frozen dataclass; its instance is the probe's settings
    quantities: dict[str, Callable[[dict], Any]] = field(default_factory=dict)  # values -> a number or {layer: number}
    exported: tuple[str, ...] = ()  # the quantities also written as scalars
    after_step: bool = False
    attach: Callable[[torch.optim.Optimizer, Any], "str | None"] | None = None
    fixed_batch: Callable[[Any], "int | None"] | None = None
    check: Callable[[Any], "str | None"] | None = None  # options -> what is wrong with them, or None


REGISTRY: dict[str, Probe] = {}


def register(probe: Probe) -> Probe:
    REGISTRY[probe.name] = probe
    return probe


def unregister(name: str) -> None:
    REGISTRY.pop(name, None)


def names() -> tuple[str, ...]:
    return tuple(REGISTRY)


def get(name: str) -> Probe:
    if name not in REGISTRY:
        raise ValueError(f"unknown probe '{name}'; choose from {', '.join(REGISTRY)}")
    return REGISTRY[name]


# ------------------------------------------------------------------ reading a record's numbers


def number(x: Any) -> float | None:
    """A finite number, else None (records write non-finite values as null)."""
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) else None


def numbers(xs: Any) -> list[float | None] | None:
    """A list of numbers, each None where it is not a finite one; None when ``xs`` is not a list."""
    return [number(x) for x in xs] if isinstance(xs, (list, tuple)) else None


def per_layer(d: Any) -> dict[str, float] | None:
    """``{layer: number}`` with the finite numbers of a per-layer record field (None if it is not a mapping)."""
    if not isinstance(d, dict):
        return None
    return {str(k): v for k, v in ((k, number(x)) for k, x in d.items()) if v is not None}


def quantity(name: str, values: Any, key: str) -> Any:
    """Quantity ``key`` of a ``name`` probe's recorded ``values``: a finite number, ``{layer:
    number}``, or None when the record does not have it in a usable form (a record of the wrong
    shape never raises here)."""
    probe = REGISTRY.get(name)
    fn = probe.quantities.get(key) if probe else None
    if fn is None or not isinstance(values, dict):
        return None
    try:
        out = fn(values)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, ZeroDivisionError, OverflowError):
        return None
    return per_layer(out) if isinstance(out, dict) else number(out)


def scalars(name: str, values: Any) -> dict[str, float]:
    """A probe record's exported scalars, ``{quantity: number}`` and ``{quantity/layer: number}``."""
    probe = REGISTRY.get(name)
    out: dict[str, float] = {}
    for key in probe.exported if probe else ():
        v = quantity(name, values, key)
        if isinstance(v, dict):
            out.update({f"{key}/{layer}": x for layer, x in v.items()})
        elif v is not None:
            out[key] = v
    return out


def _band(xs: Any) -> float | None:
    """max - min of a list when every element is a finite number."""
    vals = numbers(xs)
    return max(vals) - min(vals) if vals and None not in vals else None


def _top(xs: Any) -> float | None:
    vals = numbers(xs)
    return max(vals) if vals and None not in vals else None


def mean_over_layers(values: dict, key: str, skip_first: bool = True) -> float | None:
    """Mean of a per-layer ICS value over the recorded layers; the first layer (G' = G by
    definition) is left out."""
    layers = values.get("layers", [])
    by_layer = values.get(key)
    if not isinstance(layers, list) or not isinstance(by_layer, dict):
        return None
    vals = [v for v in (number(by_layer.get(layer)) for layer in (layers[1:] if skip_first else layers)
                        if isinstance(layer, str)) if v is not None]
    return sum(vals) / len(vals) if vals else None


def _mean(xs) -> float | None:
    vals = [v for v in (number(x) for x in xs) if v is not None]
    return sum(vals) / len(vals) if vals else None


def _over(value: Any, threshold: Any) -> float | None:
    v, t = number(value), number(threshold)
    return v / t if v is not None and t is not None and t > 0 else None


# ------------------------------------------------------------------ the probes


@dataclass(frozen=True)
class GradientSweepOptions:
    etas: tuple[float, ...] = DEFAULT_ETA_MULTIPLES  # step sizes, as multiples of the optimizer's lr (the paper's [0.5, 4] x lr)
    absolute: bool = False  # true: etas are absolute step sizes instead


def _sweep(ctx: Context, o: GradientSweepOptions) -> dict:
    etas = list(o.etas) if o.absolute else [m * ctx.lr for m in o.etas]
    reuse = {"grad": ctx.grad, "loss": ctx.loss.detach() if torch.is_tensor(ctx.loss) else ctx.loss} if ctx.grad else {}
    values = gradient_sweep(ctx.model, ctx.loss_fn, ctx.batch, etas, **reuse, **ctx.common()).as_dict()
    return {**values, "lr": ctx.lr, "eta_multiples": None if o.absolute else list(o.etas)}


def _positive_etas(o: GradientSweepOptions) -> str | None:
    if not o.etas or any(not (e > 0 and math.isfinite(e)) for e in o.etas):
        return f"etas must be positive step sizes; got {list(o.etas)}"
    return None


def relative_loss_departure(v: dict) -> float | None:
    """The loss's departure from its first-order prediction along the step, relative to the predicted
    decrease: ``max_k |L(w - eta_k g) - (L(w) - eta_k ||g||^2)| / (eta_k ||g||^2)``.

    Scale-free in the gradient's size: on a quadratic it is ``eta_max (g'Hg / g'g) / 2``, so a flat
    plateau (a tiny gradient, hence a tiny raw loss band) and a smooth landscape no longer read the same."""
    loss, g = number(v["loss"]), number(v["grad_norm"])
    etas, losses = numbers(v["etas"]), numbers(v["losses"])
    if loss is None or g is None or not etas or not losses or len(etas) != len(losses) or None in etas + losses:
        return None
    ratios = [abs(lk - (loss - e * g * g)) / (e * g * g) for e, lk in zip(etas, losses) if e * g * g > 0]
    return max(ratios) if len(ratios) == len(etas) else None


def relative_grad_change(v: dict) -> float | None:
    """The largest gradient change along the step relative to the gradient itself,
    ``max_k ||grad L(w - eta_k g) - g|| / ||g||`` (on a quadratic ``eta_max ||Hg|| / ||g||``: scale-free in ``||g||``)."""
    top, g = _top(v["grad_change"]), number(v["grad_norm"])
    return top / g if top is not None and g is not None and g > 0 else None


register(Probe(
    "gradient_sweep", "loss variation, gradient predictiveness and beta_eff along the gradient (the paper's Figure 4)",
    _sweep, GradientSweepOptions,
    quantities={"loss": lambda v: v["loss"], "loss_band": lambda v: _band(v["losses"]),
                "grad_change": lambda v: _top(v["grad_change"]), "beta_eff": lambda v: v["beta_eff"],
                "grad_norm": lambda v: v["grad_norm"], "rel_loss_departure": relative_loss_departure,
                "rel_grad_change": relative_grad_change},
    exported=("loss", "loss_band", "grad_change", "beta_eff", "grad_norm", "rel_loss_departure", "rel_grad_change"),
    check=_positive_etas))


@dataclass(frozen=True)
class SharpnessOptions:
    iters: int = 20  # Lanczos iterations (Hessian-vector products) at most
    tol: float = 1e-3  # stop when the eigenvalue's error bound is below this relative tolerance
    warm_start: bool = False  # start each Lanczos from the previous measurement's eigenvector (checkpointed)
    batch: int = 0  # 0: each step's batch; N: a fixed training batch of N examples, the same every time (e.g. the full data set)
    raw: bool = False  # under Adam/AdamW, also the plain Hessian's top eigenvalue (recorded as raw_value)


def fixed_part(ctx: Context, n: int) -> Batch:
    """The first ``n`` examples of the Monitor's fixed probe batch (``n`` = 0, or no fixed batch: the step's own)."""
    if not n or ctx.fixed_batch is None:
        return ctx.batch
    x, y = ctx.fixed_batch
    return x[:n], y[:n]


def optimizer_facts(optimizer: torch.optim.Optimizer) -> dict:
    """The optimizer settings a sharpness record is read against: lr, threshold (2/lr for SGD), momentum or betas."""
    group = optimizer.param_groups[0]
    try:
        threshold = stability_threshold(optimizer)  # per call: the lr may change
    except UnreadableOptimizer:
        threshold = None
    facts = {"lr": group["lr"], "optimizer": type(optimizer).__name__, "threshold": threshold}
    if "momentum" in group:
        facts["momentum"] = group["momentum"]
    if "betas" in group:
        facts["betas"] = list(group["betas"])
    return facts


def _sharpness(ctx: Context, o: SharpnessOptions) -> dict:
    """Optimizer-aware sharpness: of P^-1 H for Adam/AdamW (P its preconditioner), of H otherwise."""
    try:
        P = preconditioner(ctx.optimizer, ctx.model)
    except UnreadableOptimizer as exc:
        if isinstance(ctx.optimizer, (torch.optim.Adam, torch.optim.AdamW)):  # before its first step
            return {"value": None, "preconditioned": True, "note": str(exc), **optimizer_facts(ctx.optimizer)}
        P = None  # an optimizer we cannot read: the plain Hessian (said at attach time)
    previous = ctx.state.get("vector")
    start = previous if o.warm_start and previous is not None else "gradient"
    batch = fixed_part(ctx, o.batch)
    result = sharpness(ctx.model, ctx.loss_fn, batch, iters=o.iters, tol=o.tol, preconditioner=P, start=start,
                       **ctx.common())
    ctx.state["vector"] = result.vector if o.warm_start else None
    out = {**result.as_dict(), "warm_start": not isinstance(start, str), **optimizer_facts(ctx.optimizer)}
    if o.batch:
        out["examples"] = len(batch[1])
    if o.raw and P is not None:
        plain = sharpness(ctx.model, ctx.loss_fn, batch, iters=o.iters, tol=o.tol, **ctx.common())
        out.update(raw_value=plain.value, raw_residual=plain.residual)
        out["cost"] = {k: out["cost"][k] + plain.cost[k] for k in out["cost"]}
    return out


def _threshold_known(optimizer: torch.optim.Optimizer, options: Any) -> str | None:
    try:
        stability_threshold(optimizer)
    except UnreadableOptimizer as exc:
        return str(exc)
    return None


def _sharpness_check(o) -> str | None:
    if o.batch < 0:
        return f"batch must be 0 (each step's) or a number of examples; got {o.batch}"
    return _lanczos_check(o)


def _lanczos_check(o) -> str | None:
    if o.iters <= 0:
        return f"iters must be positive; got {o.iters}"
    if not 0 < o.tol < 1:
        return f"tol must be in (0, 1); got {o.tol}"
    return None


register(Probe(
    "sharpness", "the top Hessian eigenvalue (of P^-1 H under Adam) and the optimizer's stability threshold",
    _sharpness, SharpnessOptions,
    quantities={"sharpness": lambda v: v["value"], "sharpness_threshold": lambda v: v["threshold"],
                "over_threshold": lambda v: _over(v["value"], v["threshold"]),
                "raw_sharpness": lambda v: v["raw_value"],
                "raw_over_threshold": lambda v: _over(v["raw_value"], v["threshold"])},
    exported=("sharpness", "sharpness_threshold"), attach=_threshold_known, check=_sharpness_check,
    fixed_batch=lambda o: o.batch or None))


@dataclass(frozen=True)
class NoOptions:
    pass


register(Probe(
    "curvature", "the curvature along the gradient, g'Hg / g'g (one Hessian-vector product)",
    lambda ctx, o: directional_curvature(ctx.model, ctx.loss_fn, ctx.batch, **ctx.common()).as_dict(), NoOptions,
    quantities={"curvature": lambda v: v["value"]}, exported=("curvature",)))


@dataclass(frozen=True)
class LayerSharpnessOptions:
    iters: int = 20  # Lanczos iterations per layer at most
    tol: float = 1e-2  # relative tolerance per layer (coarser than sharpness': one Lanczos per layer)


register(Probe(
    "layer_sharpness", "per layer, the top eigenvalue of its diagonal Hessian block",
    lambda ctx, o: layer_sharpness(ctx.model, ctx.loss_fn, ctx.batch, ctx.layers, iters=o.iters, tol=o.tol,
                                   **ctx.common()).as_dict(),
    LayerSharpnessOptions, quantities={"layer_sharpness": lambda v: v["values"]}, exported=("layer_sharpness",),
    check=_lanczos_check))


@dataclass(frozen=True)
class HessianTraceOptions:
    samples: int = 30  # Hessian-vector products (probe vectors)
    method: Literal["hutchinson", "hutch++"] = "hutchinson"  # the estimator


def _trace_check(o: HessianTraceOptions) -> str | None:
    least = min_trace_samples(o.method)
    return None if o.samples >= least else \
        f"samples must be at least {least} with {o.method}, for a standard error; got {o.samples}"


register(Probe(
    "hessian_trace", "the Hessian's trace (Hutchinson or Hutch++) with its standard error",
    lambda ctx, o: hessian_trace(ctx.model, ctx.loss_fn, ctx.batch, samples=o.samples, method=o.method,
                                 seed=ctx.step, **ctx.common()).as_dict(),
    HessianTraceOptions, quantities={"hessian_trace": lambda v: v["value"]}, exported=("hessian_trace",),
    check=_trace_check))


@dataclass(frozen=True)
class SpectralDensityOptions:
    vectors: int = 4  # random start vectors (one Lanczos run each)
    steps: int = 20  # Lanczos steps per vector (quadrature nodes)


register(Probe(
    "spectral_density", "the Hessian's eigenvalue density by stochastic Lanczos quadrature",
    lambda ctx, o: spectral_density(ctx.model, ctx.loss_fn, ctx.batch, vectors=o.vectors, steps=o.steps,
                                    seed=ctx.step, **ctx.common()).as_dict(),
    SpectralDensityOptions,
    check=lambda o: None if o.vectors > 0 and o.steps > 0 else
    f"vectors and steps must be positive; got {o.vectors} and {o.steps}"))


@dataclass(frozen=True)
class ActivationStatsOptions:
    batch: int = 256  # size of the fixed training batch measured every time (the same for paired runs)


def _activation_stats(ctx: Context, o: ActivationStatsOptions) -> dict:
    batch = ctx.fixed_batch if ctx.fixed_batch is not None else ctx.batch
    layers = None if ctx.layers is None or isinstance(ctx.layers, dict) else list(ctx.layers)
    stats = activation_stats(ctx.model, batch, layers, eval_mode=ctx.eval_mode, buffers=ctx.buffers,
                             rng=ctx.rng).as_dict()
    previous = ctx.state.get("previous")
    stats["shift"] = distribution_shift(previous, stats) if previous is not None else None
    ctx.state["previous"] = {"stats": stats["stats"]}
    return stats


def _shift(v: dict) -> dict:
    shift = v.get("shift") or {}
    return {k: s.get("wasserstein") for k, s in shift.items() if isinstance(s, dict)}


register(Probe(
    "activation_stats", "each layer's input distribution on a fixed batch, and its shift since the last probe "
    "(ICS_distrib)", _activation_stats, ActivationStatsOptions,
    quantities={"shift": _shift, "mean_shift": lambda v: _mean(_shift(v).values()) if v.get("shift") else None,
                "mean_std": lambda v: _mean(s.get("std") for s in v["stats"].values() if isinstance(s, dict))},
    exported=("shift",), fixed_batch=lambda o: o.batch,
    check=lambda o: None if o.batch > 0 else f"batch must be positive; got {o.batch}"))


@dataclass(frozen=True)
class LossSliceOptions:
    points: int = 9  # points of the line, from -radius to radius (an odd number includes the point itself)
    radius: float = 1.0  # the line's half-length, in units of the filter-normalised direction
    ignore: Literal["biasbn", "none"] = "biasbn"  # leave biases and normalisation parameters out (Li et al.)
    bn: Literal["train", "checkpoint"] = "train"  # BatchNorm on the batch's statistics, or the running ones


def _loss_slice(ctx: Context, o: LossSliceOptions) -> dict:
    """A 1D slice of the step's batch loss along a filter-normalised random direction (seeded by the step)."""
    w = current_params(ctx.model)
    d = random_direction(w, seed=ctx.step, ignore=o.ignore)
    coords = grid_coords(1, o.points, -o.radius, o.radius)
    values = evaluate_slice(ctx.model, ctx.loss_fn, [d], [*coords, (0.0,)], [ctx.batch], bn=o.bn, origin=w,
                            buffers=ctx.buffers, output_fn=ctx.output_fn)  # the last point: the weights themselves
    losses = [values[i].loss for i in range(len(coords))]
    loss0 = values[len(coords)].loss
    alphas = [c[0] for c in coords]
    norm2 = flat_norm(d) ** 2
    fit = quadratic_fit(alphas, losses) if all(math.isfinite(x) for x in losses) else (math.nan,) * 3
    return {"alphas": alphas, "losses": losses, "loss": loss0, "direction_norm": math.sqrt(norm2),
            "curvature": 2 * fit[2] / norm2 if norm2 > 0 else None, "ignore": o.ignore, "bn": o.bn,
            "seed": ctx.step}


def _slice_check(o: LossSliceOptions) -> str | None:
    if o.points < 3:
        return f"points must be at least 3 (a quadratic is fitted to them); got {o.points}"
    if not (o.radius > 0 and math.isfinite(o.radius)):
        return f"radius must be a positive number; got {o.radius}"
    return None


register(Probe(
    "loss_slice", "the loss along a filter-normalised random direction (Li et al. 2018) around the weights: "
    "its rise and its fitted curvature", _loss_slice, LossSliceOptions,
    quantities={"slice_rise": lambda v: _top(v["losses"]) - v["loss"], "slice_curvature": lambda v: v["curvature"]},
    exported=("slice_rise", "slice_curvature"), check=_slice_check))


def _ics(ctx: Context, o: NoOptions) -> dict:
    return ics_opti(ctx.model, ctx.loss_fn, ctx.batch, ctx.next_params, params=ctx.params, layers=ctx.layers,
                    grad=ctx.grad, **ctx.common()).as_dict()


register(Probe(
    "ics_opti", "ICS_opti per layer: ||G - G'|| and cos(G, G') after the layers before it take the step's update",
    _ics, NoOptions,
    quantities={"ics_l2": lambda v: v["l2"], "ics_cos": lambda v: v["cosine"],
                "mean_l2": lambda v: mean_over_layers(v, "l2"), "mean_cos": lambda v: mean_over_layers(v, "cosine")},
    exported=("ics_l2", "ics_cos"), after_step=True))


def _layer_grad_norm(ctx: Context, o: NoOptions) -> dict:
    """||grad L|| per layer (Monitor's selection), from the step's own gradient when it has it."""
    grad = ctx.grad
    if grad is None:
        f = Objective.of(ctx.model, ctx.loss_fn, ctx.batch, ctx.buffers, ctx.rng, ctx.output_fn)
        with untouched(ctx.model, ctx.eval_mode):
            grad = f.value_and_grad(current_params(ctx.model))[1]
    groups = resolve_layers(ctx.model, ctx.layers)
    norms = {label: float(norm(grad, names)) for label, names in groups}
    return {"layers": [label for label, _ in groups], "values": norms, "total": float(norm(grad))}


def _first_over_last(v: dict) -> float | None:
    layers, values = v.get("layers"), per_layer(v.get("values"))
    if not isinstance(layers, list) or not layers or values is None:
        return None
    first, last = values.get(str(layers[0])), values.get(str(layers[-1]))
    return first / last if first is not None and last else None


register(Probe(
    "layer_grad_norm", "the gradient's norm per layer, and the first layer's over the last's (gradient explosion)",
    _layer_grad_norm, NoOptions,
    quantities={"layer_grad_norm": lambda v: v["values"], "grad_first_over_last": _first_over_last,
                "grad_total": lambda v: v["total"]}, exported=("layer_grad_norm", "grad_first_over_last")))


# ------------------------------------------------------------------ the optimizer's update and the edge of stability


@dataclass(frozen=True)
class UpdateSweepOptions:
    scales: tuple[float, ...] = (0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0)  # multiples of the optimizer's next step (1: the step itself)


def _update_sweep(ctx: Context, o: UpdateSweepOptions) -> dict:
    try:
        check_readable(ctx.optimizer)
    except UnreadableOptimizer as exc:
        return {"alpha": None, "note": str(exc), "optimizer": type(ctx.optimizer).__name__}
    reuse = {"grad": ctx.grad, "loss": ctx.loss.detach() if torch.is_tensor(ctx.loss) else ctx.loss} if ctx.grad else {}
    return update_sweep(ctx.model, ctx.optimizer, ctx.loss_fn, ctx.batch, list(o.scales), **reuse, **ctx.common())


def _readable(optimizer: torch.optim.Optimizer, options: Any) -> str | None:
    try:
        check_readable(optimizer)
    except UnreadableOptimizer as exc:
        return f"{exc}: this probe records no values (the others run)"
    return None


register(Probe(
    "update_sweep", "loss variation, gradient change and beta_eff along the optimizer's own next update, and "
    "Cockpit's alpha (where in the valley the step lands)", _update_sweep, UpdateSweepOptions,
    quantities={"update_loss_band": lambda v: _band(v["losses"]), "update_grad_change": lambda v: _top(v["grad_change"]),
                "update_beta_eff": lambda v: v["beta_eff"], "alpha": lambda v: v["alpha"],
                "update_norm": lambda v: v["update_norm"]},
    exported=("update_loss_band", "update_grad_change", "update_beta_eff", "alpha"), attach=_readable,
    check=lambda o: None if o.scales and all(s > 0 and math.isfinite(s) for s in o.scales) else
    f"scales must be positive multiples of the step; got {list(o.scales)}"))


@dataclass(frozen=True)
class BatchSharpnessOptions:
    batches: int = 8  # minibatches averaged over (fixed training batches, the same every time)
    batch_size: int = 128  # their size: the training batch size (Andreyev and Beneventano's B)


def _batch_sharpness(ctx: Context, o: BatchSharpnessOptions) -> dict:
    source = ctx.fixed_batch if ctx.fixed_batch is not None else ctx.batch
    minibatches = split_batch(source, o.batch_size)[:o.batches]
    if not minibatches:  # a step's batch smaller than batch_size and no fixed batch
        minibatches = [ctx.batch]
    out = batch_sharpness(ctx.model, ctx.loss_fn, minibatches, **ctx.common()).as_dict()
    out["batch_size"] *= group_size()  # under DDP a minibatch is every rank's share of it
    return {**out, **optimizer_facts(ctx.optimizer)}


register(Probe(
    "batch_sharpness", "batch sharpness: the mean over minibatches of g_B'H_B g_B / |g_B|^2 (Edge of Stochastic "
    "Stability), against the stability threshold", _batch_sharpness, BatchSharpnessOptions,
    quantities={"batch_sharpness": lambda v: v["value"],
                "batch_over_threshold": lambda v: _over(v["value"], v["threshold"])},
    exported=("batch_sharpness",), fixed_batch=lambda o: o.batches * o.batch_size,
    check=lambda o: None if o.batches > 0 and o.batch_size > 0 else
    f"batches and batch_size must be positive; got {o.batches} and {o.batch_size}"))


@dataclass(frozen=True)
class EdgeEigenvaluesOptions:
    fraction: float = 0.75  # the line: this fraction of the stability threshold (0.75 x 2/lr = 1.5/lr)
    block: int = 4  # starting block size (it doubles while the block is full of eigenvalues above the line)
    max_products: int = 200  # Hessian-vector products at most
    min_products: int = 20  # at least (none "above the line" is declared on a smaller Krylov space)
    tol: float = 1e-2  # relative residual every eigenvalue above the line must reach
    batch: int = 0  # 0: each step's batch; N: a fixed training batch of N examples
    warm_start: bool = True  # start from the previous measurement's eigenvectors (checkpointed)


def _edge_eigenvalues(ctx: Context, o: EdgeEigenvaluesOptions) -> dict:
    facts = optimizer_facts(ctx.optimizer)
    try:
        P = preconditioner(ctx.optimizer, ctx.model)
    except UnreadableOptimizer as exc:
        return {"values": None, "count": None, "note": str(exc), **facts}
    if facts["threshold"] is None:
        return {"values": None, "count": None, "note": "no stability threshold for this optimizer", **facts}
    previous = ctx.state.get("vectors") if o.warm_start else None
    r = hessian_eigenvalues_above(ctx.model, ctx.loss_fn, fixed_part(ctx, o.batch), o.fraction * facts["threshold"],
                                  block=o.block, max_products=o.max_products, tol=o.tol, start=previous,
                                  min_products=o.min_products,
                                  seed=ctx.step, preconditioner=P, **ctx.common())
    ctx.state["vectors"] = r.vectors if o.warm_start else None
    return {**r.as_dict(), "fraction": o.fraction, "preconditioned": P is not None, **facts}


def _edge_check(o: EdgeEigenvaluesOptions) -> str | None:
    if not 0 < o.fraction < 100:
        return f"fraction must be a positive share of the threshold; got {o.fraction}"
    if o.block < 1 or o.max_products < o.block or not 0 < o.tol < 1 or o.batch < 0 or o.min_products < 0:
        return (f"need block >= 1, max_products >= block, tol in (0, 1) and batch >= 0; got {o.block}, "
                f"{o.max_products}, {o.tol}, {o.batch}")
    return None


register(Probe(
    "edge_eigenvalues", "every Hessian eigenvalue (of P^-1 H under Adam) above a fraction of the stability "
    "threshold, by warm-started block Krylov: how many directions sit at the edge", _edge_eigenvalues,
    EdgeEigenvaluesOptions,
    quantities={"edge_count": lambda v: v["count"], "edge_top": lambda v: v["top"],
                "edge_products": lambda v: v["products"]},
    exported=("edge_count",), attach=_threshold_known, fixed_batch=lambda o: o.batch or None, check=_edge_check))


# ------------------------------------------------------------------ options


def options_of(name: str, given: Any = None) -> Any:
    """A probe's options: its defaults, updated by a mapping or given as its options dataclass."""
    cls = get(name).options
    if given is None:
        return cls()
    if isinstance(given, cls):
        return given
    if isinstance(given, dict):
        return dataclasses.replace(cls(), **given)
    raise TypeError(f"options of probe '{name}' must be a mapping or {cls.__name__}, got {type(given).__name__}")


# Settings of landscape 0.2 (flat keys of `probes:` and keywords of Monitor) and where they live now.
# A run directory made by 0.2 (its config.yaml, its checkpoint) reads through this table.
LEGACY_OPTIONS: dict[str, list[tuple[str, str, Callable[[Any], Any]]]] = {
    "etas": [("gradient_sweep", "etas", lambda x: x)],
    "activation_batch": [("activation_stats", "batch", lambda x: x)],
    # 0.2 ran layer_sharpness with sharpness' budget and max(sharpness_tol, 1e-2), a rule no config said
    "sharpness_iters": [("sharpness", "iters", lambda x: x), ("layer_sharpness", "iters", lambda x: x)],
    "sharpness_tol": [("sharpness", "tol", lambda x: x),
                      ("layer_sharpness", "tol", lambda x: max(x, 1e-2) if isinstance(x, (int, float)) else x)],
    "warm_start": [("sharpness", "warm_start", lambda x: x)],
    "trace_samples": [("hessian_trace", "samples", lambda x: x)],
    "trace_method": [("hessian_trace", "method", lambda x: x)],
    "density_vectors": [("spectral_density", "vectors", lambda x: x)],
    "density_steps": [("spectral_density", "steps", lambda x: x)],
}


def upgrade_legacy(flat: dict) -> dict:
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


def attach_warnings(probes, optimizer: torch.optim.Optimizer, options: dict) -> list[str]:
    """What attaching these probes to this optimizer should say once (one line each)."""
    out = []
    for name in probes:
        probe = get(name)
        if probe.attach is not None:
            msg = probe.attach(optimizer, options.get(name))
            if msg:
                out.append(f"{name}: {msg}")
    return out


def warn_at_attach(probes, optimizer, options: dict, stacklevel: int = 3) -> None:
    for msg in attach_warnings(probes, optimizer, options):
        warnings.warn(msg, stacklevel=stacklevel)
