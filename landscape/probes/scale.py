"""Scale invariance and the effective learning rate (van Laarhoven 2017; Arora, Li and Lyu 2019).

With BatchNorm after it, a layer's output is normalised, so the loss does not change when the layer's weights
(weight and bias together) are multiplied by any ``c > 0``: ``L(c w) = L(w)`` (to BN's eps). Its gradient is then
orthogonal to ``w`` and scales as ``1/c``, so a step of SGD turns ``w`` by an angle that depends on ``lr /
||w||^2``, the layer's *effective learning rate*: growing weight norms lower it, and weight decay raises it back.
Under Adam the update's size does not depend on the gradient's scale, so the angle goes as ``lr / ||w||``.

Per layer, at the step's weights ``w`` and the optimizer's real update ``w'`` (an after-step probe):

- ``weight_norm``: ``||w||``;
- ``angle``: the angle between ``w`` and ``w'`` in radians, ``2 asin(||u - u'|| / 2)`` for the unit vectors (exact
  for small angles, where ``acos`` of the cosine loses them);
- ``relative_update``: ``||w' - w|| / ||w||``;
- ``effective_lr``: ``lr / ||w||^2`` (SGD, with or without momentum and weight decay) or ``lr / ||w||`` (Adam,
  AdamW), ``lr`` that of the layer's parameter group; None for another optimizer;
- ``invariance``: ``|L(c w) - L(w)| / |L(w)|`` with the layer's weights scaled by ``factor`` and everything else
  fixed, on the step's batch: 0 (to rounding and eps) for a scale-invariant layer; ``invariant``: below
  ``tolerance``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

import torch
from torch import nn

from landscape.probes.functional import Batch, Objective, Params, current_params, resolve_layers, untouched
from landscape.probes.registry import Context, Probe, layer_list, per_layer, register

RULES = {"sgd": "lr/||w||^2", "adam": "lr/||w||"}


def effective_lr_rule(optimizer: torch.optim.Optimizer | None) -> str | None:
    """``"sgd"`` or ``"adam"``: how the optimizer's effective learning rate reads a weight norm (None: unknown)."""
    if isinstance(optimizer, torch.optim.SGD):
        return "sgd"
    if isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)):
        return "adam"
    return None


@dataclass
class EffectiveLrResult:
    layers: list[str]
    weight_norm: dict[str, float]
    angle: dict[str, float]  # radians between w and w'
    relative_update: dict[str, float]  # ||w' - w|| / ||w||
    effective_lr: dict[str, float | None]
    invariance: dict[str, float | None]  # |L(c w) - L(w)| / |L(w)| (None: not checked)
    invariant: dict[str, bool | None]
    rule: str | None  # lr/||w||^2 | lr/||w|| | None
    factor: float
    cost: dict

    def as_dict(self) -> dict:
        return asdict(self)


def _angle(a: torch.Tensor, b: torch.Tensor) -> float:
    na, nb = a.norm(), b.norm()
    if na == 0 or nb == 0:
        return math.nan
    return float(2 * torch.asin(((a / na - b / nb).norm() / 2).clamp(max=1.0)))


def effective_lr(
    model: nn.Module,
    loss_fn: Callable,
    batch: Batch,
    next_params: Params,
    *,
    params: Params | None = None,
    layers: Iterable | dict | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    factor: float = 2.0,
    tolerance: float = 1e-3,
    check: bool = True,
    eval_mode: bool = False,
    buffers: Params | None = None,
    rng: dict | None = None,
    output_fn: Callable | None = None,
) -> EffectiveLrResult:
    """Per layer (as :func:`landscape.probes.resolve_layers` groups them): weight norm, the angle of the update
    from ``params`` (default: the model's weights) to ``next_params``, the relative update, the effective
    learning rate for ``optimizer`` (its parameter groups' learning rates) and, with ``check``, how far the loss
    moves when the layer's weights are scaled by ``factor`` (one forward per layer, plus one)."""
    if not (factor > 0 and factor != 1 and math.isfinite(factor)):
        raise ValueError(f"factor must be a positive number other than 1; got {factor}")
    with untouched(model, eval_mode):
        f = Objective.of(model, loss_fn, batch, buffers, rng, output_fn)
        w = params if params is not None else current_params(model)
        groups = resolve_layers(model, layers)
        rule = effective_lr_rule(optimizer)
        lrs = {}
        if optimizer is not None:
            by_id = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
            lrs = {n: by_id.get(id(p)) for n, p in model.named_parameters()}
        base = None
        if check:
            with torch.no_grad():
                f.cost.forward += 1
                base = float(f(w))
        out = {k: {} for k in ("weight_norm", "angle", "relative_update", "effective_lr", "invariance", "invariant")}
        for label, names in groups:
            a = torch.cat([w[n].detach().reshape(-1).double() for n in names])
            b = torch.cat([next_params[n].detach().reshape(-1).double() for n in names])
            wn = float(a.norm())
            out["weight_norm"][label] = wn
            out["angle"][label] = _angle(a, b)
            out["relative_update"][label] = float((b - a).norm()) / wn if wn > 0 else math.nan
            lr = lrs.get(names[0])
            if rule is None or lr is None or wn == 0:
                out["effective_lr"][label] = None
            else:
                out["effective_lr"][label] = lr / wn**2 if rule == "sgd" else lr / wn
            if check:
                with torch.no_grad():
                    f.cost.forward += 1
                    scaled = float(f({**w, **{n: w[n].detach() * factor for n in names}}))
                change = abs(scaled - base) / abs(base) if base else math.nan
                out["invariance"][label] = change
                out["invariant"][label] = bool(change < tolerance) if math.isfinite(change) else None
            else:
                out["invariance"][label] = out["invariant"][label] = None
        return EffectiveLrResult(
            layers=[label for label, _ in groups],
            rule=RULES.get(rule) if rule else None,
            factor=factor,
            cost=f.cost.as_dict(),
            **out,
        )


@dataclass(frozen=True)
class ScaleOptions:
    check: bool = True  # measure each layer's scale invariance (one forward per layer)
    factor: float = 2.0  # the scale the check multiplies a layer's weights by
    tolerance: float = 1e-3  # invariant: the loss moves by less than this, relatively


def _scale(ctx: Context, o: ScaleOptions) -> dict:
    return effective_lr(
        ctx.model,
        ctx.loss_fn,
        ctx.batch,
        ctx.next_params,
        params=ctx.params,
        layers=ctx.layers,
        optimizer=ctx.optimizer,
        factor=o.factor,
        tolerance=o.tolerance,
        check=o.check,
        **ctx.common(),
    ).as_dict()


def _check(o: ScaleOptions) -> str | None:
    if not (o.factor > 0 and o.factor != 1):
        return f"factor must be a positive number other than 1; got {o.factor}"
    if not 0 < o.tolerance < 1:
        return f"tolerance must be between 0 and 1; got {o.tolerance}"
    return None


def invariant_layers(v: dict) -> list[str]:
    """The layers a record found scale-invariant."""
    flags = v.get("invariant")
    return [str(k) for k, x in flags.items() if x is True] if isinstance(flags, dict) else []


def _geometric_mean_over(v: dict, key: str, which: list[str]) -> float | None:
    d = per_layer(v.get(key)) or {}
    vals = [d[k] for k in which if k in d and d[k] > 0]
    return math.exp(sum(math.log(x) for x in vals) / len(vals)) if vals else None


register(
    Probe(
        "effective_lr",
        "per layer: weight norm, the update's angle, the effective learning rate (lr/||w||^2 under SGD) and "
        "whether the loss is invariant to the layer's scale (BatchNorm after it)",
        _scale,
        ScaleOptions,
        quantities={
            "weight_norm": lambda v: v["weight_norm"],
            "angular_update": lambda v: v["angle"],
            "effective_lr": lambda v: v["effective_lr"],
            "scale_invariance": lambda v: v["invariance"],
            # over the scale-invariant layers: geometric means
            "invariant_effective_lr": lambda v: _geometric_mean_over(v, "effective_lr", invariant_layers(v)),
            "invariant_angular_update": lambda v: _geometric_mean_over(v, "angle", invariant_layers(v)),
            "invariant_layers": lambda v: len(invariant_layers(v)),
        },
        exported=("weight_norm", "angular_update", "effective_lr"),
        after_step=True,
        views={"layers": layer_list, "invariant": invariant_layers},
        check=_check,
    )
)
