"""Section 4 of Santurkar et al. (2018), measured term by term at a BatchNorm layer of the network as it trains.

Notation (one BN channel j, its batch of m activations: the samples, and for a conv layer every position):
``y`` the layer's input (pre-normalisation), ``mu``, ``var`` its batch mean and (biased) variance,
``sigma = sqrt(var + eps)``, ``y_hat = (y - mu) / sigma``, the output ``z = gamma y_hat + beta``;
``g = dL/dz`` (what the same network without the normalisation would see as ``dL/dy``, the paper's
``grad_{y_j} L``) and ``dL/dy`` the gradient through BN.

**Theorem 4.1** (gradient magnitude). BN's backward pass is
``dL/dy = (gamma / sigma) (g - mean(g) 1 - y_hat mean(g y_hat))``, so exactly
``||dL/dy||^2 = (gamma^2/sigma^2) (||g||^2 - <1, g>^2 / m - (2 - rho) <g, y_hat>^2 / m)``, ``rho = var / (var +
eps)`` (``rho = 1`` without eps: the paper's identity, whose two projections have coefficient 1/m). Since
``2 - rho >= 1``, the paper's bound ``||dL/dy||^2 <= (gamma^2/sigma^2) (||g||^2 - <1, g>^2 / m - <g, y_hat>^2 /
m)`` holds with the slack that eps leaves. :func:`bn_gradient` records, per layer (channels summed), the left side,
each term of the right side, the bound, how tight it is, and the split of the reduction
``||dL/dy||^2 / ||g||^2`` into the scale ``sum (gamma^2/sigma^2) ||g_j||^2 / ||g||^2`` and the projections'
share ``||dL/dy||^2 / sum (gamma^2/sigma^2) ||g_j||^2`` (at most 1).

**Theorem 4.2** (curvature along the gradient). With ``v = dL/dy``, ``H_y`` and ``H_z`` the Hessians of the loss
with respect to ``y`` and ``z``, and ``J = dz/dy`` (symmetric: ``(gamma/sigma)(I - 11'/m - y_hat y_hat'/m)`` per
channel), the chain rule gives exactly ``v'H_y v = (Jv)' H_z (Jv) + sum_i g_i v' (d2 z_i/dy2) v``. The second
term is the normalisation's own curvature; per channel, with ``c = sigma mean(y_hat v)`` and ``s = var(v)``, it
is ``gamma (<g, y_hat> (3c^2/sigma^4 - s/sigma^2) - 2c <g, v - mean(v)> / sigma^3)``, which for ``v`` orthogonal to
``1`` and ``y_hat`` (no eps) is the paper's ``-(gamma / (m sigma^2)) <g, y_hat> ||v||^2``, and ``Jv = (gamma /
sigma) v``: the theorem's ``(gamma^2/sigma^2)(v'H_z v - <g, y_hat> ||v||^2 / (m gamma))``. :func:`bn_curvature`
records both sides of the identity per layer, and beside them the curvature the same network without the
normalisation sees along its own gradient, ``g'H_z g / g'g``.

BN layers are the modules of PyTorch's own BatchNorm classes (their forward unchanged) that normalise with the
batch's statistics (train mode, or no running statistics); a layer whose output feeds back into itself, or
noise added inside the layer (``NoisyBatchNorm``), is not what the theorems describe and is refused.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from landscape.probes.activations import refuse_process_group, tapped_forward
from landscape.probes.functional import Batch, Objective, Params, expand_layer_names, untouched
from landscape.probes.registry import Context, Probe, layer_list, number, per_layer, register

ROUNDING = 1e-4  # a channel violates the bound when its left side exceeds the right by more than this x its scale


def batch_norm_layers(model: nn.Module, layers: Iterable[str] | None = None) -> list[str]:
    """The BatchNorm layers the theorems describe: all of them by default (those normalising with batch
    statistics), or the named ones (each must be one: ``ValueError`` otherwise)."""
    modules = dict(model.named_modules())
    if layers is None:
        return [n for n, m in modules.items() if _plain_bn(m) and _batch_statistics(m)]
    names = expand_layer_names(model, layers)
    for n in names:
        if n not in modules:
            raise KeyError(f"no module named '{n}'; see model.named_modules()")
        m = modules[n]
        if not _plain_bn(m):
            raise ValueError(
                f"layer '{n}' ({type(m).__name__}) is not one of PyTorch's BatchNorm layers with its own forward; "
                "Theorems 4.1 and 4.2 are about plain BatchNorm"
            )
        if not _batch_statistics(m):
            raise ValueError(
                f"layer '{n}' normalises with its running statistics (eval mode): the theorems are about the "
                "batch's statistics; measure in train mode"
            )
    return names


def _plain_bn(m: nn.Module) -> bool:
    return isinstance(m, _BatchNorm) and type(m).forward is _BatchNorm.forward


def _batch_statistics(m: nn.Module) -> bool:
    return m.training or m.running_mean is None


def _channels(t: torch.Tensor) -> torch.Tensor:
    """(N, C, ...) -> (C, m) in float64: each channel's batch of activations."""
    return t.detach().double().transpose(0, 1).reshape(t.shape[1], -1)


@dataclass
class _Stats:
    gamma: torch.Tensor  # (C,)
    sigma: torch.Tensor  # (C,)
    y_hat: torch.Tensor  # (C, m)
    rho: torch.Tensor  # (C,) var / (var + eps)
    m: int


def _stats(module: nn.Module, name: str, y: torch.Tensor, params: Params) -> _Stats:
    Y = _channels(y)
    mu, var = Y.mean(1), Y.var(1, unbiased=False)
    sigma = (var + module.eps).sqrt()
    weight = params.get(f"{name}.weight") if module.affine else None
    gamma = weight.detach().double() if weight is not None else torch.ones_like(mu)
    return _Stats(gamma, sigma, (Y - mu[:, None]) / sigma[:, None], var / (var + module.eps), Y.shape[1])


def _no_batch_norm(model: nn.Module) -> ValueError:
    return ValueError(
        f"{type(model).__name__} has no BatchNorm layer normalising with batch statistics (train mode): nothing "
        "for Theorems 4.1 and 4.2 to measure"
    )


@dataclass
class BnGradientResult:
    layers: list[str]
    grad_y_sq: dict[str, float]  # ||dL/dy||^2: the left side
    grad_z_sq: dict[str, float]  # ||g||^2, g = dL/dz
    scaled: dict[str, float]  # sum_j (gamma_j^2/sigma_j^2) ||g_j||^2
    mean_part: dict[str, float]  # sum_j (gamma_j^2/sigma_j^2) <1, g_j>^2 / m
    proj_part: dict[str, float]  # sum_j (gamma_j^2/sigma_j^2) <g_j, y_hat_j>^2 / m
    bound: dict[str, float]  # scaled - mean_part - proj_part: the right side
    scale_factor: dict[str, float]  # scaled / ||g||^2
    projection_factor: dict[str, float]  # ||dL/dy||^2 / scaled (<= 1)
    tightness: dict[str, float]  # left / right (<= 1)
    violations: dict[str, int]  # channels whose left side exceeds their right side beyond rounding
    identity_error: dict[str, float]  # max over channels of |left - exact identity| / scaled
    channels: dict[str, int]
    m: dict[str, int]  # activations per channel (batch x positions)
    cost: dict

    def as_dict(self) -> dict:
        return asdict(self)


def bn_gradient(
    model: nn.Module,
    loss_fn: Callable,
    batch: Batch,
    layers: Iterable[str] | None = None,
    *,
    eval_mode: bool = False,
    params: Params | None = None,
    buffers: Params | None = None,
    rng: dict | None = None,
    output_fn: Callable | None = None,
) -> BnGradientResult:
    """Theorem 4.1's terms at each BatchNorm layer (see the module's docstring): one forward and one backward."""
    refuse_process_group("bn_gradient")
    with untouched(model, eval_mode):
        names = batch_norm_layers(model, layers)
        if not names:
            raise _no_batch_norm(model)
        f = Objective.of(model, loss_fn, batch, buffers, rng, output_fn)
        t = tapped_forward(f, model, names, names, params)
        with torch.enable_grad():
            grads = torch.autograd.grad(t.loss, [t.inputs[n] for n in names] + [t.outputs[n] for n in names])
        f.cost.backward += 1
        modules = dict(model.named_modules())
        out = {k: {} for k in BnGradientResult.__dataclass_fields__ if k not in ("layers", "cost")}
        for i, name in enumerate(names):
            s = _stats(modules[name], name, t.inputs[name], t.params)
            gy, gz = _channels(grads[i]), _channels(grads[len(names) + i])
            k = s.gamma**2 / s.sigma**2
            lhs = (gy**2).sum(1)
            gz2 = (gz**2).sum(1)
            scaled = k * gz2
            mean_part = k * gz.sum(1) ** 2 / s.m
            proj_part = k * (gz * s.y_hat).sum(1) ** 2 / s.m
            rhs = scaled - mean_part - proj_part
            exact = scaled - mean_part - (2 - s.rho) * proj_part
            scale = scaled.clamp_min(torch.finfo(torch.float64).tiny)
            row = {
                "grad_y_sq": float(lhs.sum()),
                "grad_z_sq": float(gz2.sum()),
                "scaled": float(scaled.sum()),
                "mean_part": float(mean_part.sum()),
                "proj_part": float(proj_part.sum()),
                "bound": float(rhs.sum()),
                "scale_factor": _over(scaled.sum(), gz2.sum()),
                "projection_factor": _over(lhs.sum(), scaled.sum()),
                "tightness": _over(lhs.sum(), rhs.sum()),
                "violations": int(((lhs - rhs) > ROUNDING * scale).sum()),
                "identity_error": float(((lhs - exact).abs() / scale).max()),
                "channels": int(lhs.numel()),
                "m": s.m,
            }
            for key, value in row.items():
                out[key][name] = value
        return BnGradientResult(layers=names, cost=f.cost.as_dict(), **out)


def _over(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = float(a), float(b)
    return a / b if b > 0 and math.isfinite(a) and math.isfinite(b) else math.nan


@dataclass
class BnCurvatureResult:
    layers: list[str]
    quad_y: dict[str, float]  # v'H_y v, v = dL/dy: the left side
    quad_z: dict[str, float]  # (Jv)'H_z (Jv): the downstream curvature seen through BN's Jacobian
    bn_term: dict[str, float]  # sum_i g_i v'(d2 z_i/dy2) v: the normalisation's own curvature
    identity_error: dict[str, float]  # |quad_y - quad_z - bn_term| / max(|quad_y|, |quad_z|, |bn_term|)
    curvature_y: dict[str, float]  # v'H_y v / v'v: the BN network's curvature along its activation gradient
    curvature_z: dict[str, float]  # g'H_z g / g'g: what the network without BN sees along its own
    ratio: dict[str, float]  # curvature_y / curvature_z
    cost: dict

    def as_dict(self) -> dict:
        return asdict(self)


def _jacobian_times(v: torch.Tensor, s: _Stats) -> torch.Tensor:
    """``J v`` per channel, ``(gamma/sigma)(v - mean(v) - y_hat mean(v y_hat))``, for (C, m) float64 ``v``."""
    inner = v - v.mean(1, keepdim=True) - s.y_hat * (v * s.y_hat).mean(1, keepdim=True)
    return (s.gamma / s.sigma)[:, None] * inner


def _bn_second_derivative(v: torch.Tensor, g: torch.Tensor, s: _Stats) -> torch.Tensor:
    """``sum_i g_i v'(d2 z_i / dy2) v`` summed over channels (see the module's docstring)."""
    sigma = s.sigma
    vc = v - v.mean(1, keepdim=True)
    c = sigma * (s.y_hat * v).mean(1)
    var_v = (vc**2).mean(1)
    g_yhat = (g * s.y_hat).sum(1)
    g_vc = (g * vc).sum(1)
    per_channel = s.gamma * (g_yhat * (3 * c**2 / sigma**4 - var_v / sigma**2) - 2 * c * g_vc / sigma**3)
    return per_channel.sum()


def _unchannels(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(C, m) float64 back to ``like``'s shape and dtype."""
    shape = (like.shape[1], like.shape[0], *like.shape[2:])
    return v.reshape(shape).transpose(0, 1).to(like.dtype).contiguous()


def bn_curvature(
    model: nn.Module,
    loss_fn: Callable,
    batch: Batch,
    layers: Iterable[str] | None = None,
    *,
    eval_mode: bool = False,
    params: Params | None = None,
    buffers: Params | None = None,
    rng: dict | None = None,
    output_fn: Callable | None = None,
) -> BnCurvatureResult:
    """Theorem 4.2's terms at each BatchNorm layer (see the module's docstring): one forward, one differentiable
    backward, and three Hessian-vector products per layer (with respect to y along v, to z along Jv and along
    g)."""
    refuse_process_group("bn_curvature")
    with untouched(model, eval_mode):
        names = batch_norm_layers(model, layers)
        if not names:
            raise _no_batch_norm(model)
        f = Objective.of(model, loss_fn, batch, buffers, rng, output_fn)
        t = tapped_forward(f, model, names, names, params)
        ys, zs = [t.inputs[n] for n in names], [t.outputs[n] for n in names]
        with torch.enable_grad():
            grads = torch.autograd.grad(t.loss, ys + zs, create_graph=True)
        f.cost.backward += 1
        modules = dict(model.named_modules())

        def quad(grad: torch.Tensor, x: torch.Tensor, v: torch.Tensor) -> float:
            f.cost.hvp += 1
            with torch.enable_grad():
                (hv,) = torch.autograd.grad(grad, x, grad_outputs=v, retain_graph=True, allow_unused=True)
            return 0.0 if hv is None else float((hv.double() * v.double()).sum())

        out = {k: {} for k in BnCurvatureResult.__dataclass_fields__ if k not in ("layers", "cost")}
        for i, name in enumerate(names):
            y, z = ys[i], zs[i]
            gy, gz = grads[i], grads[len(names) + i]
            s = _stats(modules[name], name, y, t.params)
            v, g = _channels(gy), _channels(gz)
            jv = _unchannels(_jacobian_times(v, s), z)
            quad_y = quad(gy, y, gy.detach())
            quad_z = quad(gz, z, jv)
            bn_term = float(_bn_second_derivative(v, g, s))
            along_g = quad(gz, z, gz.detach())
            vv, gg = float((v**2).sum()), float((g**2).sum())
            largest = max(abs(quad_y), abs(quad_z), abs(bn_term))
            curv_y = quad_y / vv if vv > 0 else math.nan
            curv_z = along_g / gg if gg > 0 else math.nan
            row = {
                "quad_y": quad_y,
                "quad_z": quad_z,
                "bn_term": bn_term,
                "identity_error": abs(quad_y - quad_z - bn_term) / largest if largest > 0 else 0.0,
                "curvature_y": curv_y,
                "curvature_z": curv_z,
                "ratio": curv_y / curv_z if curv_z and math.isfinite(curv_z) else math.nan,
            }
            for key, value in row.items():
                out[key][name] = value
        return BnCurvatureResult(layers=names, cost=f.cost.as_dict(), **out)


# ------------------------------------------------------------------ the probe entries


@dataclass(frozen=True)
class BnOptions:
    layers: tuple[str, ...] = ()  # BatchNorm module names; empty: every BatchNorm layer using batch statistics
    batch: int = 0  # 0: each step's batch; N: the first N examples of a fixed training batch


def _measure(fn: Callable) -> Callable[[Context, BnOptions], dict]:
    def measure(ctx: Context, o: BnOptions) -> dict:
        layers = list(o.layers) or None
        if layers is None and not batch_norm_layers(ctx.model):  # a network without BN (the paired standard run)
            return {"layers": [], "note": str(_no_batch_norm(ctx.model))}
        return fn(ctx.model, ctx.loss_fn, ctx.fixed_part(o.batch), layers, **ctx.common()).as_dict()

    return measure


def _check(o: BnOptions) -> str | None:
    return None if o.batch >= 0 else f"batch must be 0 (each step's) or a positive number of examples; got {o.batch}"


def _log_mean(d) -> float | None:
    """The geometric mean over layers of a positive per-layer value (None without one)."""
    vals = [x for x in (per_layer(d) or {}).values() if x > 0]
    return math.exp(sum(math.log(x) for x in vals) / len(vals)) if vals else None


def _total(d) -> float | None:
    vals = list((per_layer(d) or {}).values())
    return sum(vals) if vals else None


def _largest(d) -> float | None:
    vals = list((per_layer(d) or {}).values())
    return max(vals) if vals else None


register(
    Probe(
        "bn_gradient",
        "Theorem 4.1 at each BatchNorm layer: ||dL/dy||^2 against (gamma^2/sigma^2)(||g||^2 - projections), term by "
        "term",
        _measure(bn_gradient),
        BnOptions,
        quantities={
            "bn_grad_y_sq": lambda v: v["grad_y_sq"],
            "bn_grad_z_sq": lambda v: v["grad_z_sq"],
            "bn_scale_factor": lambda v: v["scale_factor"],
            "bn_projection_factor": lambda v: v["projection_factor"],
            "bn_tightness": lambda v: v["tightness"],
            "bn_scale": lambda v: _log_mean(v["scale_factor"]),  # geometric mean over layers
            "bn_projection": lambda v: _log_mean(v["projection_factor"]),
            "bn_reduction": lambda v: _log_mean(
                {k: v["grad_y_sq"][k] / v["grad_z_sq"][k] for k in v["layers"] if number(v["grad_z_sq"][k])}
            ),
            "bn_violations": lambda v: _total(v["violations"]),
            "bn_identity_error": lambda v: _largest(v["identity_error"]),
        },
        exported=("bn_scale_factor", "bn_projection_factor", "bn_tightness", "bn_violations"),
        views={"layers": layer_list},
        check=_check,
        fixed_batch=lambda o: o.batch or None,
    )
)

register(
    Probe(
        "bn_curvature",
        "Theorem 4.2 at each BatchNorm layer: the curvature along the activation gradient, v'H_y v = (Jv)'H_z(Jv) + "
        "BN's own term",
        _measure(bn_curvature),
        BnOptions,
        quantities={
            "bn_quad_y": lambda v: v["quad_y"],
            "bn_quad_z": lambda v: v["quad_z"],
            "bn_term": lambda v: v["bn_term"],
            "bn_curvature_y": lambda v: v["curvature_y"],
            "bn_curvature_z": lambda v: v["curvature_z"],
            "bn_curvature_ratio": lambda v: v["ratio"],
            "bn_curvature_identity_error": lambda v: _largest(v["identity_error"]),
        },
        exported=("bn_curvature_y", "bn_curvature_z", "bn_curvature_ratio"),
        views={"layers": layer_list},
        check=_check,
        fixed_batch=lambda o: o.batch or None,
    )
)
