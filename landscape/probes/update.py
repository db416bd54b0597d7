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
- critical sharpness (Kalra et al. 2026, arXiv 2601.16979): ``lambda_c = 2 / eta_c``, where ``eta_c`` is
  the smallest learning rate at which the step along the optimizer's update direction stops
  decreasing the batch loss. With ``u`` the update at the optimizer's learning rate ``lr`` and
  ``phi(s) = L(w + s u) - L(w)``, ``s_c`` is the smallest ``s > 0`` with ``phi(s) >= 0`` and
  ``eta_c = s_c lr``; found by forward passes only (no gradient, no Hessian-vector product): a
  bracket by doubling or halving ``s`` from 1 (the step itself), then false position on
  ``phi(s) / s``, which is linear in ``s`` on a quadratic, so that a quadratic's root is exact
  after one interpolation. On a quadratic, ``lambda_c = d'Hd / (-g'd)`` with ``d = u / lr``: for
  plain SGD ``g'Hg / g'g``, the curvature along the gradient, at most the top eigenvalue. The
  step about to be taken raises the batch loss exactly when ``lambda_c > 2 / lr``
  (``over_threshold = 1 / s_c > 1``), whatever the optimizer.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from landscape.probes.functional import Batch, Objective, Params, current_params, norm, untouched
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


def critical_search(phi: Callable[[float], float], max_evals: int, rtol: float) -> dict:
    """The smallest ``s > 0`` where ``phi`` (``phi(0) = 0``, falling at 0) comes back to 0, in at most
    ``max_evals`` calls: a bracket from ``s = 1`` by doubling (``phi(1) < 0``) or halving (``phi(1) >= 0``),
    then Illinois false position on ``psi(s) = phi(s) / s`` until two successive estimates agree to ``rtol``.
    A non-finite ``phi`` (the loss overflowed) counts as a rise. Returns the estimate (None where no
    bracket was found within the budget, with the side it lies on), the bracket and the calls made."""
    calls = 0

    def psi(s: float) -> float:
        nonlocal calls
        calls += 1
        v = phi(s)
        return v / s if math.isfinite(v) else math.inf

    lo = hi = None
    p_lo = p_hi = math.nan
    s, p = 1.0, psi(1.0)
    if p < 0:
        lo, p_lo = s, p
        while calls < max_evals:
            s *= 2
            p = psi(s)
            if p >= 0:
                hi, p_hi = s, p
                break
            lo, p_lo = s, p
        if hi is None:
            return {"s": None, "below": None, "above": lo, "bracket": None, "calls": calls, "converged": False}
    else:
        hi, p_hi = s, p
        while calls < max_evals:
            s /= 2
            p = psi(s)
            if p < 0:
                lo, p_lo = s, p
                break
            hi, p_hi = s, p
        if lo is None:
            return {"s": None, "below": hi, "above": None, "bracket": None, "calls": calls, "converged": False}

    def estimate() -> float:
        if not math.isfinite(p_hi):  # the loss overflowed at hi: bisect (geometrically) until it does not
            return math.sqrt(lo * hi)
        return lo - p_lo * (hi - lo) / (p_hi - p_lo)

    est, converged, stale = estimate(), False, None
    while calls < max_evals and not converged:
        s = est
        p = psi(s)
        if p < 0:
            lo, p_lo = s, p
            if stale == "lo" and math.isfinite(p_hi):
                p_hi /= 2  # Illinois: the end that stayed twice counts half
            stale = "lo"
        else:
            hi, p_hi = s, p
            if stale == "hi":
                p_lo /= 2
            stale = "hi"
        new = estimate()
        converged = abs(new - est) <= rtol * new or p == 0
        est = new
    return {"s": est, "below": None, "above": None, "bracket": [lo, hi], "calls": calls, "converged": converged}


def critical_sharpness(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: Callable,
    batch: Batch,
    max_forward: int = 10,
    rtol: float = 0.01,
    *,
    eval_mode: bool = False,
    buffers: Params | None = None,
    rng: dict | None = None,
    output_fn: Callable | None = None,
) -> dict:
    """Critical sharpness ``2 / eta_c`` along the optimizer's next update (module docstring) from at
    most ``max_forward`` forward passes, ``L(w)`` included; no gradient beyond the one the optimizer
    already holds. None where the budget found no step at which the loss stops falling (then
    ``bound``: the critical sharpness is below it) or where the loss rises at every step tried
    (``bound``: above it, or the update does not descend)."""
    u = update_direction(optimizer, model)
    lr = float(optimizer.param_groups[0]["lr"])
    lrs = {float(g["lr"]) for g in optimizer.param_groups}
    with untouched(model, eval_mode):
        f = Objective.of(model, loss_fn, batch, buffers, rng, output_fn)
        w = current_params(model)
        base = float(f.value(w))

        def phi(s: float) -> float:
            return float(f.value({n: w[n] + s * u[n].to(w[n].dtype) for n in w})) - base

        r = critical_search(phi, max_forward - 1, rtol)
    s_c = r["s"]
    out = {
        "critical_sharpness": 2 / (s_c * lr) if s_c and lr > 0 else None,
        "critical_multiple": s_c,  # s_c: the multiple of the next step at which the loss stops falling
        "over_threshold": 1 / s_c if s_c else None,  # lambda_c / (2 / lr): above 1 the next step raises the loss
        "threshold": 2 / lr if lr > 0 else None,
        "lr": lr,
        "loss": base,
        "bracket": r["bracket"],
        "converged": r["converged"],
        "update_norm": float(norm(u)),
        "optimizer": type(optimizer).__name__,
        "cost": f.cost.as_dict(),
    }
    if len(lrs) > 1:
        out["critical_sharpness"] = None
        out["note"] = (
            f"the optimizer's parameter groups have different learning rates ({sorted(lrs)}): over_threshold "
            "(1 / s_c) is read against each group's own step; lambda_c has no single lr to be stated in"
        )
    if s_c is None:
        if r["above"] is not None:
            out["bound"] = {"below": 2 / (r["above"] * lr)} if lr > 0 else None
            out["note"] = f"the loss still falls at {r['above']:g} x the step: critical sharpness below the bound"
        else:
            out["bound"] = {"above": 2 / (r["below"] * lr)} if lr > 0 else None
            out["note"] = (
                f"the loss rises even at {r['below']:g} x the step: critical sharpness above the bound, or the "
                "update does not descend on this batch"
            )
    return out


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
        sharded=True,
    )
)


@dataclass(frozen=True)
class CriticalSharpnessOptions:
    max_forward: int = 10  # forward passes at most, L(w) included (Kalra et al.: fewer than 10)
    rtol: float = 0.01  # stop when two successive estimates of the critical step agree to this


def _critical_sharpness(ctx: Context, o: CriticalSharpnessOptions) -> dict:
    try:
        check_readable(ctx.optimizer)
    except UnreadableOptimizer as exc:
        return {"critical_sharpness": None, "note": str(exc), "optimizer": type(ctx.optimizer).__name__}
    return critical_sharpness(ctx.model, ctx.optimizer, ctx.loss_fn, ctx.batch, o.max_forward, o.rtol, **ctx.common())


register(
    Probe(
        "critical_sharpness",
        "2 / eta_c, eta_c the smallest learning rate at which the step along the optimizer's update stops "
        "decreasing the batch loss (Kalra et al. 2026): a handful of forward passes, no Hessian-vector product",
        _critical_sharpness,
        CriticalSharpnessOptions,
        quantities={
            "critical_sharpness": lambda v: v["critical_sharpness"],
            "critical_threshold": lambda v: v.get("threshold"),
            "critical_over_threshold": lambda v: v.get("over_threshold"),
        },
        exported=("critical_sharpness", "critical_over_threshold"),
        attach=update_warning,
        check=lambda o: (
            None
            if 3 <= o.max_forward <= 100 and 0 < o.rtol < 1
            else f"max_forward must be 3 to 100 and rtol in (0, 1); got {o.max_forward}, {o.rtol}"
        ),
        sharded=True,
    )
)
