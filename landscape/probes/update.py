"""Probes along the optimizer's own update: the step it is about to take, read without taking it.

Definitions, at weights ``w`` with the gradient ``p.grad`` the optimizer is about to use:

- update ``u``: ``w_{t+1} - w_t`` of the next ``optimizer.step()``, computed from the optimizer's
  settings and state by the same formulas PyTorch's SGD (momentum, dampening, Nesterov, weight
  decay, maximize), Adam and AdamW (bias correction, amsgrad, decoupled decay) apply, on copies:
  the optimizer's state is never written;
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
from typing import Callable, Sequence

import torch
from torch import nn

from landscape.probes.curvature import UnreadableOptimizer
from landscape.probes.functional import Batch, Params, current_params
from landscape.probes.landscape import direction_sweep

READABLE = (torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW)


def check_readable(optimizer: torch.optim.Optimizer) -> None:
    """Raise :class:`UnreadableOptimizer` unless landscape can compute this optimizer's next update."""
    if type(optimizer) not in READABLE:  # a subclass may change the step: read only these exactly
        raise UnreadableOptimizer(f"landscape reads the update of SGD, Adam and AdamW, not of "
                                  f"{type(optimizer).__name__}")


def update_direction(optimizer: torch.optim.Optimizer, model: nn.Module) -> Params:
    """``w_{t+1} - w_t`` that ``optimizer.step()`` would make now, by parameter name (zero for a
    parameter without a gradient, which the optimizers skip). Pure: reads ``p.grad`` and the
    optimizer's state, writes neither."""
    check_readable(optimizer)
    names = {p: n for n, p in model.named_parameters()}
    out: Params = {}
    for group in optimizer.param_groups:
        lr = float(group["lr"])
        for p in group["params"]:
            if p not in names:
                continue
            if p.grad is None:
                out[names[p]] = torch.zeros_like(p)
                continue
            state = optimizer.state.get(p, {})
            grad = p.grad.detach()
            grad = -grad if group.get("maximize") else grad
            w = p.detach()
            if isinstance(optimizer, torch.optim.SGD):
                out[names[p]] = _sgd(w, grad, state, group, lr)
            else:
                out[names[p]] = _adam(w, grad, state, group, lr, decoupled=_decoupled(optimizer, group))
    for n, p in model.named_parameters():  # parameters the optimizer does not hold do not move
        if p.requires_grad and n not in out:
            out[n] = torch.zeros_like(p)
    return {n: out[n] for n, p in model.named_parameters() if p.requires_grad}


def _decoupled(optimizer, group) -> bool:
    return isinstance(optimizer, torch.optim.AdamW) or bool(group.get("decoupled_weight_decay"))


def _sgd(w, grad, state, group, lr) -> torch.Tensor:
    d = grad
    if group.get("weight_decay", 0):
        d = d.add(w, alpha=group["weight_decay"])
    mu = group.get("momentum", 0)
    if mu:
        buf = state.get("momentum_buffer")
        buf = d.clone() if buf is None else buf.mul(mu).add(d, alpha=1 - group.get("dampening", 0))
        d = d.add(buf, alpha=mu) if group.get("nesterov") else buf
    return d * -lr


def _adam(w, grad, state, group, lr, decoupled: bool) -> torch.Tensor:
    beta1, beta2 = group["betas"]
    wd, eps = group.get("weight_decay", 0), group["eps"]
    decay = torch.zeros_like(w)
    if wd:
        if decoupled:
            decay = w * (-lr * wd)  # w <- w (1 - lr wd) before the Adam step
            w = w * (1 - lr * wd)
        else:
            grad = grad.add(w, alpha=wd)
    m = state.get("exp_avg", torch.zeros_like(w)).lerp(grad, 1 - beta1)
    v = state.get("exp_avg_sq", torch.zeros_like(w)).mul(beta2).addcmul(grad, grad, value=1 - beta2)
    step = float(state["step"]) + 1 if "step" in state else 1.0
    c1, c2 = 1 - beta1 ** step, math.sqrt(1 - beta2 ** step)
    if group.get("amsgrad"):
        v = torch.maximum(state.get("max_exp_avg_sq", torch.zeros_like(w)), v)
    denom = (v.sqrt() / c2).add(eps)
    return decay + m / denom * (-lr / c1)


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


def update_sweep(model: nn.Module, optimizer: torch.optim.Optimizer, loss_fn: Callable, batch: Batch,
                 scales: Sequence[float], *, eval_mode: bool = False, grad: Params | None = None,
                 loss=None, buffers: Params | None = None, rng: dict | None = None,
                 output_fn: Callable | None = None) -> dict:
    """The sweep along the optimizer's next update ``u`` (multiples ``scales`` of it), and ``alpha``
    (from the point ``s = 1``, evaluated as part of the sweep whether or not ``scales`` holds it)."""
    u = update_direction(optimizer, model)
    points = list(scales) if 1.0 in scales else [*scales, 1.0]
    r = direction_sweep(model, loss_fn, batch, u, points, eval_mode=eval_mode, params=current_params(model),
                        grad=grad, loss=loss, buffers=buffers, rng=rng, output_fn=output_fn)
    k = points.index(1.0)
    alpha = step_alpha(r.direction_norm, r.loss, r.losses[k], r.slope, r.slopes[k])
    keep = [i for i, s in enumerate(points) if s in scales]
    return {"scales": [points[i] for i in keep], "loss": r.loss, "grad_norm": r.grad_norm,
            "update_norm": r.direction_norm, "losses": [r.losses[i] for i in keep],
            "grad_change": [r.grad_change[i] for i in keep],
            "beta_eff": max((r.grad_change[i] / (abs(points[i]) * r.direction_norm) for i in keep
                             if points[i] != 0 and r.direction_norm > 0), default=math.nan),
            "slope": r.slope, "slopes": [r.slopes[i] for i in keep], "step_loss": r.losses[k],
            "step_slope": r.slopes[k], "alpha": alpha,
            "lr": optimizer.param_groups[0]["lr"], "optimizer": type(optimizer).__name__, "cost": r.cost}
