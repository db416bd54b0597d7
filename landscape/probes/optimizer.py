"""What the probes read off an optimizer: its stability threshold, its preconditioner and its next update.

Definitions:

- stability threshold: the largest curvature along which the optimizer's update is stable on a
  quadratic: ``2/lr`` for plain SGD, ``2(1 + mu)/lr`` with heavy-ball momentum ``mu``,
  ``(2 + 2 mu)/((1 + 2 mu) lr)`` with Nesterov momentum, and ``(2 + 2 beta1)/((1 - beta1) lr)``
  for Adam and AdamW, where it applies to ``P^-1 H`` (Cohen et al., 2021 and 2022). Weight
  decay is left out (it adds its coefficient to every curvature).
- preconditioner: Adam's diagonal ``P = sqrt(v / (1 - beta2^t)) + eps`` from its state (the
  second-moment average ``v`` after ``t`` steps, bias-corrected): the update is ``lr P^-1 m``.
- update ``u``: ``w_{t+1} - w_t`` of the next ``optimizer.step()``, computed from the optimizer's
  settings and state by the same formulas PyTorch's SGD (momentum, dampening, Nesterov, weight
  decay, maximize), Adam and AdamW (bias correction, amsgrad, decoupled decay) apply, on copies:
  the optimizer's state is never written.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from landscape.probes.functional import local
from landscape.probes.linalg import Params


class UnreadableOptimizer(ValueError):
    """An optimizer whose stability threshold or preconditioner landscape cannot read."""


def stability_threshold(optimizer: torch.optim.Optimizer) -> float:
    """The sharpness above which the optimizer's update diverges on a quadratic (see the module
    docstring); for Adam and AdamW a bound on the preconditioned sharpness. Raises
    :class:`UnreadableOptimizer` for optimizers it does not know."""
    group = optimizer.param_groups[0]
    lr = group["lr"]
    if isinstance(optimizer, torch.optim.SGD):
        mu = group.get("momentum", 0.0)
        if group.get("nesterov") and mu > 0:
            return (2 + 2 * mu) / ((1 + 2 * mu) * lr)
        return 2 * (1 + mu) / lr
    if isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)):
        beta1 = group["betas"][0]
        return (2 + 2 * beta1) / ((1 - beta1) * lr)
    raise UnreadableOptimizer(
        f"landscape knows the stability threshold of SGD, Adam and AdamW, not of "
        f"{type(optimizer).__name__}: sharpness is measured on the plain Hessian, without one"
    )


def preconditioner(optimizer: torch.optim.Optimizer, model: nn.Module) -> Params | None:
    """The diagonal preconditioner ``P`` per parameter name that the optimizer's next update
    divides by, read from its state: ``sqrt(v_hat) + eps`` for Adam and AdamW (``max_exp_avg_sq``
    with amsgrad); None for SGD (no preconditioner). Raises :class:`UnreadableOptimizer` for
    other optimizers, and for Adam before its first step (an empty state has no preconditioner)."""
    if isinstance(optimizer, torch.optim.SGD):
        return None
    if not isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)):
        raise UnreadableOptimizer(
            f"landscape reads the preconditioner of Adam and AdamW, not of {type(optimizer).__name__}"
        )
    by_param = {p: n for n, p in model.named_parameters()}
    out: Params = {}
    for group in optimizer.param_groups:
        beta2, eps = group["betas"][1], group["eps"]
        for p in group["params"]:
            state = optimizer.state.get(p, {})
            if "exp_avg_sq" not in state:
                raise UnreadableOptimizer("Adam has no preconditioner before its first step")
            step = float(state["step"])
            v = state["max_exp_avg_sq"] if group.get("amsgrad") else state["exp_avg_sq"]
            out[by_param[p]] = local((v / (1 - beta2**step)).sqrt() + eps)  # FSDP2: this rank's shard
    return out


READABLE = (torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW)


def check_readable(optimizer: torch.optim.Optimizer) -> None:
    """Raise :class:`UnreadableOptimizer` unless landscape can compute this optimizer's next update."""
    if type(optimizer) not in READABLE:  # a subclass may change the step: read only these exactly
        raise UnreadableOptimizer(
            f"landscape reads the update of SGD, Adam and AdamW, not of {type(optimizer).__name__}"
        )


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
    # under FSDP2 (DTensor parameters, gradients and state): this rank's shard of the update
    return {n: local(out[n]) for n, p in model.named_parameters() if p.requires_grad}


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
    c1, c2 = 1 - beta1**step, math.sqrt(1 - beta2**step)
    if group.get("amsgrad"):
        v = torch.maximum(state.get("max_exp_avg_sq", torch.zeros_like(w)), v)
    denom = (v.sqrt() / c2).add(eps)
    return decay + m / denom * (-lr / c1)


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


def threshold_warning(optimizer: torch.optim.Optimizer, options: Any) -> str | None:
    """A probe entry's ``attach``: a warning when the optimizer's stability threshold is unknown."""
    try:
        stability_threshold(optimizer)
    except UnreadableOptimizer as exc:
        return str(exc)
    return None


def update_warning(optimizer: torch.optim.Optimizer, options: Any) -> str | None:
    """A probe entry's ``attach``: a warning when landscape cannot compute the optimizer's next update."""
    try:
        check_readable(optimizer)
    except UnreadableOptimizer as exc:
        return f"{exc}: this probe records no values (the others run)"
    return None
