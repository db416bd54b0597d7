"""Probes along the optimizer's own update: the step it is about to take, read without taking it.

Definitions, at weights ``w`` with the gradient ``p.grad`` the optimizer is about to use:

- update ``u``: ``w_{t+1} - w_t`` of the next ``optimizer.step()``
  (:func:`landscape.probes.optimizer.update_direction`: the optimizer's state is never written);
- the sweep along the update: ``L(w + s u)`` and ``||grad L(w + s u) - grad L(w)||`` for multiples
  ``s`` of the step, and ``beta_eff = max_s ||grad L(w + s u) - grad L(w)|| / ||s u||``. Under
  plain SGD ``u = -lr g`` and this is the paper's Figure 4 sweep with ``eta = s lr``; under
  momentum or Adam it is the landscape where the optimizer actually moves;
- ``alpha`` (Cockpit's, Schneider et al. 2021): a parabola fitted by least squares to the loss
  and its slope along ``u`` at the start (``s = 0``) and the end (``s = 1``) of the step; with
  ``tau`` the distance along ``u``, ``alpha = 2 ||u|| / tau_bar - 1`` where ``tau_bar`` is the
  distance at which the parabola is back at its starting height: -1 the step barely moves, 0 it
  lands at the valley floor, 1 on the opposite wall at the starting height, above 1 beyond it.
  A concave fit is recorded as -1, as Cockpit does (the step still goes downhill). Cockpit weights
  the four observations by their variance over the batch's examples; here they are weighted
  equally (the probe sees the batch's loss, not its per-example losses).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from landscape.probes.functional import Batch, Params, current_params
from landscape.probes.optimizer import UnreadableOptimizer, check_readable, update_direction, update_warning
from landscape.probes.registry import MAX_POINTS, Context, Probe, band, register, top
from landscape.probes.sweeps import direction_sweep


def step_alpha(distance: float, f0: float, f1: float, d0: float, d1: float) -> float | None:
    """Cockpit's alpha from the loss (``f0``, ``f1``) and its slope along the step (``d0``, ``d1``,
    per unit distance) at the start and at ``distance``: least-squares parabola ``c + b tau + a tau^2``;
    ``2 distance / (-b / a) - 1``; -1 for a concave (or flat) fit; None if nothing can be fitted."""
    vals = [distance, f0, f1, d0, d1]
    if not all(math.isfinite(v) for v in vals) or distance <= 0:
        return None
    t = distance
    phi = torch.tensor([[1.0, 0.0, 0.0], [1.0, t, t * t], [0.0, 1.0, 0.0], [0.0, 1.0, 2 * t]], dtype=torch.float64)
    obs = torch.tensor([f0, f1, d0, d1], dtype=torch.float64)
    c, b, a = torch.linalg.lstsq(phi, obs.unsqueeze(1)).solution.squeeze(1).tolist()
    if not a > 0:
        return -1.0
    return 2 * t / (-b / a) - 1


def update_sweep(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: Callable,
    batch: Batch,
    scales: Sequence[float],
    *,
    eval_mode: bool = False,
    grad: Params | None = None,
    loss=None,
    buffers: Params | None = None,
    rng: dict | None = None,
    output_fn: Callable | None = None,
) -> dict:
    """The sweep along the optimizer's next update ``u`` (multiples ``scales`` of it), and ``alpha``
    (from the point ``s = 1``, evaluated as part of the sweep whether or not ``scales`` holds it)."""
    u = update_direction(optimizer, model)
    points = list(scales) if 1.0 in scales else [*scales, 1.0]
    r = direction_sweep(
        model,
        loss_fn,
        batch,
        u,
        points,
        eval_mode=eval_mode,
        params=current_params(model),
        grad=grad,
        loss=loss,
        buffers=buffers,
        rng=rng,
        output_fn=output_fn,
    )
    k = points.index(1.0)
    alpha = step_alpha(r.direction_norm, r.loss, r.losses[k], r.slope, r.slopes[k])
    keep = [i for i, s in enumerate(points) if s in scales]
    return {
        "scales": [points[i] for i in keep],
        "loss": r.loss,
        "grad_norm": r.grad_norm,
        "update_norm": r.direction_norm,
        "losses": [r.losses[i] for i in keep],
        "grad_change": [r.grad_change[i] for i in keep],
        "beta_eff": max(
            (
                r.grad_change[i] / (abs(points[i]) * r.direction_norm)
                for i in keep
                if points[i] != 0 and r.direction_norm > 0
            ),
            default=math.nan,
        ),
        "slope": r.slope,
        "slopes": [r.slopes[i] for i in keep],
        "step_loss": r.losses[k],
        "step_slope": r.slopes[k],
        "alpha": alpha,
        "lr": optimizer.param_groups[0]["lr"],
        "optimizer": type(optimizer).__name__,
        "cost": r.cost,
    }


# ------------------------------------------------------------------ the probe entry


@dataclass(frozen=True)
class UpdateSweepOptions:
    scales: tuple[float, ...] = (
        0.5,
        1.0,
        1.5,
        2.0,
        2.5,
        3.0,
        3.5,
        4.0,
    )  # multiples of the optimizer's next step (1: the step itself)


def _update_sweep(ctx: Context, o: UpdateSweepOptions) -> dict:
    try:
        check_readable(ctx.optimizer)
    except UnreadableOptimizer as exc:
        return {"alpha": None, "note": str(exc), "optimizer": type(ctx.optimizer).__name__}
    return update_sweep(ctx.model, ctx.optimizer, ctx.loss_fn, ctx.batch, list(o.scales), **ctx.reuse(), **ctx.common())


register(
    Probe(
        "update_sweep",
        "loss variation, gradient change and beta_eff along the optimizer's own next update, and "
        "Cockpit's alpha (where in the valley the step lands)",
        _update_sweep,
        UpdateSweepOptions,
        quantities={
            "update_loss_band": lambda v: band(v["losses"]),
            "update_grad_change": lambda v: top(v["grad_change"]),
            "update_beta_eff": lambda v: v["beta_eff"],
            "alpha": lambda v: v["alpha"],
            "update_norm": lambda v: v["update_norm"],
        },
        exported=("update_loss_band", "update_grad_change", "update_beta_eff", "alpha"),
        attach=update_warning,
        check=lambda o: (
            None
            if 0 < len(o.scales) <= MAX_POINTS and all(s > 0 and math.isfinite(s) for s in o.scales)
            else f"scales must be positive multiples of the step, at most {MAX_POINTS}; got {list(o.scales)[:8]}"
        ),
    )
)
