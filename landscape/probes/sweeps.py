"""The loss landscape along the gradient (the paper's Figure 4; docs/protocol.md).

Definitions, at weights ``w`` with gradient ``g = grad L(w)`` on one batch ``B``, for
absolute step sizes ``eta`` (trainer configs give them as multiples of the lr):

- loss variation:            ``losses[k] = L(w - eta_k g)``
- gradient predictiveness:   ``grad_change[k] = ||grad L(w - eta_k g) - grad L(w)||_2``
- effective beta-smoothness: ``beta_eff = max_k grad_change[k] / ||eta_k g||_2``

All are evaluated on the same batch, with the buffers and random state of one forward
(see :mod:`landscape.probes.functional`), and never change the model. :func:`direction_sweep`
is the same walk along any direction (the optimizer's update: :mod:`landscape.probes.update`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn

from landscape.probes.functional import Batch, Objective, Params, current_params, dot, norm, untouched
from landscape.probes.registry import MAX_POINTS, Context, Probe, band, finite_list, number, numbers, register, top

DEFAULT_ETA_MULTIPLES = (0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0)  # the paper's [0.5, 4] x lr


@dataclass
class SweepResult:
    etas: list[float]  # absolute step sizes
    loss: float  # L(w)
    grad_norm: float  # ||g||
    losses: list[float]  # L(w - eta_k g)
    grad_change: list[float]  # ||grad L(w - eta_k g) - g||  (gradient predictiveness)
    beta_eff: float  # max_k grad_change[k] / (eta_k ||g||)
    cost: dict

    def as_dict(self) -> dict:
        return asdict(self)


def gradient_sweep(
    model: nn.Module,
    loss_fn: Callable,
    batch: Batch,
    etas: Sequence[float],
    *,
    eval_mode: bool = False,
    params: Params | None = None,
    grad: Params | None = None,
    loss: float | torch.Tensor | None = None,
    buffers: Params | None = None,
    rng: dict | None = None,
    output_fn: Callable | None = None,
) -> SweepResult:
    """Step along the gradient by each ``eta`` and measure loss, gradient change and beta_eff.

    ``grad`` and ``loss`` may be passed when they come from this very forward (same weights,
    buffers and random state, e.g. the training step's ``p.grad``): that saves one pass, so a
    K-point sweep costs K forward-backward passes. ``buffers`` and ``rng`` fix the state the
    evaluations use (defaults: the model's current buffers, cloned per evaluation, and the
    current RNG state). ``params`` evaluates at other weights than the model's.
    """
    r = direction_sweep(
        model,
        loss_fn,
        batch,
        None,
        etas,
        eval_mode=eval_mode,
        params=params,
        grad=grad,
        loss=loss,
        buffers=buffers,
        rng=rng,
        output_fn=output_fn,
    )
    return SweepResult(
        etas=r.scales,
        loss=r.loss,
        grad_norm=r.grad_norm,
        losses=r.losses,
        grad_change=r.grad_change,
        beta_eff=r.beta_eff,
        cost=r.cost,
    )


@dataclass
class DirectionSweep:
    scales: list[float]  # s_k: the points w + s_k d
    loss: float  # L(w)
    grad_norm: float  # ||g||
    direction_norm: float  # ||d||
    losses: list[float]  # L(w + s_k d)
    grad_change: list[float]  # ||grad L(w + s_k d) - g||
    beta_eff: float  # max_k grad_change[k] / ||s_k d||
    slope: float  # g . d / ||d||: the loss's slope along d at w
    slopes: list[float]  # grad L(w + s_k d) . d / ||d||
    cost: dict


def direction_sweep(
    model: nn.Module,
    loss_fn: Callable,
    batch: Batch,
    direction: Params | None,
    scales: Sequence[float],
    *,
    eval_mode: bool = False,
    params: Params | None = None,
    grad: Params | None = None,
    loss: float | torch.Tensor | None = None,
    buffers: Params | None = None,
    rng: dict | None = None,
    output_fn: Callable | None = None,
) -> DirectionSweep:
    """Loss, gradient change and slope at ``w + s d`` for each ``s``; ``direction=None`` is ``-grad L(w)``
    (then ``s`` is the paper's eta). Costs one forward-backward per point (and one for ``L(w)``
    unless ``grad`` and ``loss`` come from this very forward)."""
    with untouched(model, eval_mode):
        f = Objective.of(model, loss_fn, batch, buffers, rng, output_fn)
        w = params if params is not None else current_params(model)
        if grad is None or loss is None:
            loss, grad = f.value_and_grad(w)
        g = {n: grad[n].detach() for n in w}
        g_norm = norm(g)
        d = {n: -g[n] for n in w} if direction is None else {n: direction[n].detach() for n in w}
        d_norm = g_norm if direction is None else norm(d)
        losses, changes, slopes = [], [], []
        for s in scales:
            stepped = {n: w[n] + s * d[n] for n in w}
            loss_k, grad_k = f.value_and_grad(stepped)
            losses.append(loss_k)
            changes.append(norm({n: grad_k[n] - g[n] for n in w}))
            slopes.append(dot(grad_k, d))
        losses_f = [float(v) for v in losses]  # one host read at the end, not per point
        changes_f = [float(v) for v in changes]
        g_norm_f, d_norm_f = float(g_norm), float(d_norm)
        slopes_f = [float(v) / d_norm_f if d_norm_f > 0 else math.nan for v in slopes]
        ratios = [c / (abs(s) * d_norm_f) if abs(s) * d_norm_f > 0 else math.nan for c, s in zip(changes_f, scales)]
        return DirectionSweep(
            scales=[float(s) for s in scales],
            loss=float(loss),
            grad_norm=g_norm_f,
            direction_norm=d_norm_f,
            losses=losses_f,
            grad_change=changes_f,
            beta_eff=max(ratios) if ratios else math.nan,
            slope=float(dot(g, d)) / d_norm_f if d_norm_f > 0 else math.nan,
            slopes=slopes_f,
            cost=f.cost.as_dict(),
        )


@dataclass(frozen=True)
class GradientSweepOptions:
    etas: tuple[float, ...] = (
        DEFAULT_ETA_MULTIPLES  # step sizes, as multiples of the optimizer's lr (the paper's [0.5, 4] x lr)
    )
    absolute: bool = False  # true: etas are absolute step sizes instead
    # true: etas are step sizes relative to the weights, each step's norm that fraction of the weights' norm:
    # eta_k = etas[k] ||w|| / ||g||. Under BatchNorm a layer's loss ignores its weights' scale, so the same
    # fraction is the same effective step whatever the weights' norm (matched effective step size)
    relative: bool = False


def _sweep(ctx: Context, o: GradientSweepOptions) -> dict:
    if o.relative:
        return relative_sweep(ctx, o)
    etas = list(o.etas) if o.absolute else [m * ctx.lr for m in o.etas]
    values = gradient_sweep(ctx.model, ctx.loss_fn, ctx.batch, etas, **ctx.reuse(), **ctx.common()).as_dict()
    return {**values, "lr": ctx.lr, "eta_multiples": None if o.absolute else list(o.etas)}


def relative_sweep(ctx: Context, o: GradientSweepOptions) -> dict:
    """The sweep at steps relative to the weights (``relative=True``): ``eta_k = etas[k] ||w|| / ||g||``, ``w`` the
    parameters the probes step along and ``g`` the step's gradient of them (one pass if the step's is not
    reusable)."""
    w = current_params(ctx.model)  # the parameters every probe differentiates
    reuse = ctx.reuse()
    if reuse:
        g = reuse["grad"]
    else:
        with untouched(ctx.model, ctx.eval_mode):
            f = Objective.of(ctx.model, ctx.loss_fn, ctx.batch, ctx.buffers, ctx.rng, ctx.output_fn)
            g = f.value_and_grad(w)[1]
    names = [n for n in w if n in g]
    w_norm, g_norm = float(norm(w, names)), float(norm(g, names))
    etas = [e * w_norm / g_norm if g_norm > 0 else 0.0 for e in o.etas]
    values = gradient_sweep(ctx.model, ctx.loss_fn, ctx.batch, etas, **reuse, **ctx.common()).as_dict()
    return {**values, "lr": ctx.lr, "eta_multiples": None, "relative_steps": list(o.etas), "weight_norm": w_norm}


def _positive_etas(o: GradientSweepOptions) -> str | None:
    if not 0 < len(o.etas) <= MAX_POINTS or any(not (e > 0 and math.isfinite(e)) for e in o.etas):
        return f"etas must be positive step sizes, at most {MAX_POINTS} of them; got {list(o.etas)[:8]}"
    if o.absolute and o.relative:
        return "absolute and relative cannot both be true: etas are absolute step sizes, or fractions of ||w||"
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
    ``max_k ||grad L(w - eta_k g) - g|| / ||g||`` (on a quadratic ``eta_max ||Hg|| / ||g||``: scale-free in
    ``||g||``)."""
    largest, g = top(v["grad_change"]), number(v["grad_norm"])
    return largest / g if largest is not None and g is not None and g > 0 else None


register(
    Probe(
        "gradient_sweep",
        "loss variation, gradient predictiveness and beta_eff along the gradient (the paper's Figure 4)",
        _sweep,
        GradientSweepOptions,
        quantities={
            "loss": lambda v: v["loss"],
            "loss_band": lambda v: band(v["losses"]),
            "grad_change": lambda v: top(v["grad_change"]),
            "beta_eff": lambda v: v["beta_eff"],
            "grad_norm": lambda v: v["grad_norm"],
            "rel_loss_departure": relative_loss_departure,
            "rel_grad_change": relative_grad_change,
        },
        exported=("loss", "loss_band", "grad_change", "beta_eff", "grad_norm", "rel_loss_departure", "rel_grad_change"),
        views={"losses": lambda v: finite_list(v["losses"]), "grad_changes": lambda v: finite_list(v["grad_change"])},
        check=_positive_etas,
        sharded=True,
    )
)
