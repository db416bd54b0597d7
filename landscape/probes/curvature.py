"""Curvature beyond the paper: where the optimizer stands against its stability threshold.

Definitions, at weights ``w`` with Hessian ``H`` and gradient ``g`` on one batch:

- stability threshold: the largest curvature along which the optimizer's update is stable on a
  quadratic: ``2/lr`` for plain SGD, ``2(1 + mu)/lr`` with heavy-ball momentum ``mu``,
  ``(2 + 2 mu)/((1 + 2 mu) lr)`` with Nesterov momentum, and ``(2 + 2 beta1)/((1 - beta1) lr)``
  for Adam and AdamW, where it applies to ``P^-1 H`` (Cohen et al., 2021 and 2022). Weight
  decay is left out (it adds its coefficient to every curvature).
- preconditioner: Adam's diagonal ``P = sqrt(v / (1 - beta2^t)) + eps`` from its state (the
  second-moment average ``v`` after ``t`` steps, bias-corrected): the update is ``lr P^-1 m``.
- directional curvature: ``g^T H g / ||g||^2``, the curvature along the step the paper's
  Figure 4 probes; ``beta_eff`` measures the same direction over a finite distance.
- layer sharpness: the top eigenvalue of each layer's diagonal Hessian block ``H_ll``.
- Hessian trace: Hutchinson's ``E[z^T H z]`` over Rademacher ``z`` (or Hutch++, Meyer et al.
  2021), with its standard error.
- spectral density: stochastic Lanczos quadrature (Ghorbani et al., 2019): nodes and weights
  whose measure approximates the eigenvalue distribution of ``H``, and a histogram of it.

Every function here is a probe: pure like the others (see :mod:`landscape.probes.functional`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable, Iterable

import torch
from torch import nn

from landscape.probes.functional import Batch, Params, resolve_layers, untouched
from landscape.probes.landscape import _flat, _unflat, flat_hessian, lanczos, start_vector, tridiagonal


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
    raise UnreadableOptimizer(f"landscape knows the stability threshold of SGD, Adam and AdamW, not of "
                              f"{type(optimizer).__name__}: sharpness is measured on the plain Hessian, without one")


def preconditioner(optimizer: torch.optim.Optimizer, model: nn.Module) -> Params | None:
    """The diagonal preconditioner ``P`` per parameter name that the optimizer's next update
    divides by, read from its state: ``sqrt(v_hat) + eps`` for Adam and AdamW (``max_exp_avg_sq``
    with amsgrad); None for SGD (no preconditioner). Raises :class:`UnreadableOptimizer` for
    other optimizers, and for Adam before its first step (an empty state has no preconditioner)."""
    if isinstance(optimizer, torch.optim.SGD):
        return None
    if not isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)):
        raise UnreadableOptimizer(f"landscape reads the preconditioner of Adam and AdamW, not of "
                                  f"{type(optimizer).__name__}")
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
            out[by_param[p]] = (v / (1 - beta2 ** step)).sqrt() + eps
    return out


@dataclass
class CurvatureResult:
    value: float  # g^T H g / ||g||^2
    grad_norm: float  # ||g||
    cost: dict

    def as_dict(self) -> dict:
        return asdict(self)


def directional_curvature(model: nn.Module, loss_fn: Callable, batch: Batch, *, eval_mode: bool = False,
                          params: Params | None = None, buffers: Params | None = None, rng: dict | None = None,
                          output_fn: Callable | None = None) -> CurvatureResult:
    """The curvature along the gradient, ``g^T H g / ||g||^2``: one Hessian-vector product."""
    with untouched(model, eval_mode):
        H = flat_hessian(model, loss_fn, batch, params, buffers, rng, output_fn)
        g = _flat(H.grad, H.names)
        gg = float(g.double() @ g.double())
        value = float(g.double() @ H(g).double()) / gg if gg > 0 else math.nan
        return CurvatureResult(value=value, grad_norm=math.sqrt(gg), cost=H.objective.cost.as_dict())


@dataclass
class LayerSharpnessResult:
    layers: list[str]
    values: dict[str, float]  # top eigenvalue of each layer's diagonal Hessian block
    residual: dict[str, float]  # its error bound
    hvps: dict[str, int]  # Hessian-vector products per layer
    cost: dict

    def as_dict(self) -> dict:
        return asdict(self)


def layer_sharpness(model: nn.Module, loss_fn: Callable, batch: Batch, layers: Iterable | dict | None = None, *,
                    iters: int = 20, tol: float = 1e-2, seed: int = 0, eval_mode: bool = False,
                    params: Params | None = None, buffers: Params | None = None, rng: dict | None = None,
                    output_fn: Callable | None = None) -> LayerSharpnessResult:
    """Per layer (as :func:`landscape.probes.resolve_layers` selects and groups them), the top
    eigenvalue of its diagonal Hessian block, by Lanczos on products ``v_l -> (H [v_l, 0])_l``
    through one retained graph, started from the layer's gradient (plus a random direction)."""
    with untouched(model, eval_mode):
        H = flat_hessian(model, loss_fn, batch, params, buffers, rng, output_fn)
        f, w, grad, hvp = H.objective, H.w, H.grad, H.hvp
        groups = resolve_layers(model, layers)
        zeros = {n: torch.zeros_like(t) for n, t in w.items()}
        values, residual, hvps = {}, {}, {}
        for label, names in groups:
            def matvec(v: torch.Tensor, names=names) -> torch.Tensor:
                return _flat(hvp({**zeros, **_unflat(v, w, names)}), names)

            before = f.cost.hvp
            like = w[names[0]]
            q = start_vector(sum(w[n].numel() for n in names), seed, like, _flat(grad, names))
            ritz = lanczos(matvec, q, iters, tol)[2]
            values[label], residual[label], hvps[label] = ritz.value, ritz.residual, f.cost.hvp - before
        return LayerSharpnessResult(layers=[label for label, _ in groups], values=values, residual=residual,
                                    hvps=hvps, cost=f.cost.as_dict())


@dataclass
class TraceResult:
    value: float  # the estimate of tr(H)
    stderr: float  # its standard error
    samples: int  # Hessian-vector products spent
    method: str  # hutchinson | hutch++
    cost: dict

    def as_dict(self) -> dict:
        return asdict(self)


def min_trace_samples(method: str) -> int:
    """Hutchinson needs 2 products for a standard error; Hutch++ 4 (1 + 1 for the subspace, 2 for the rest)."""
    return 4 if method == "hutch++" else 2


def _rademacher(n: int, k: int, gen: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    return (torch.randint(0, 2, (k, n), generator=gen, dtype=torch.int8).to(like.device, like.dtype) * 2 - 1)


def hessian_trace(model: nn.Module, loss_fn: Callable, batch: Batch, *, samples: int = 30,
                  method: str = "hutchinson", seed: int = 0, eval_mode: bool = False, params: Params | None = None,
                  buffers: Params | None = None, rng: dict | None = None,
                  output_fn: Callable | None = None) -> TraceResult:
    """``tr(H)`` from ``samples`` Hessian-vector products.

    ``hutchinson``: the mean of ``z^T H z`` over Rademacher ``z``; standard error ``sd / sqrt(m)``.
    ``hutch++``: a third of the products find the top subspace ``Q`` (from ``H S``), a third
    give ``tr(Q^T H Q)`` exactly, and a third run Hutchinson on the rest ``(I - QQ^T) H (I - QQ^T)``;
    its standard error is that of the last part. Hutch++ wins when a few eigenvalues dominate,
    as in trained networks."""
    if method not in ("hutchinson", "hutch++"):
        raise ValueError(f"method must be 'hutchinson' or 'hutch++', got {method!r}")
    if samples < min_trace_samples(method):
        raise ValueError(f"{method} needs at least {min_trace_samples(method)} samples for a standard error")
    with untouched(model, eval_mode):
        H = flat_hessian(model, loss_fn, batch, params, buffers, rng, output_fn)
        like, n, f = H.like, H.n, H.objective
        gen = torch.Generator().manual_seed(seed)
        exact = 0.0
        if method == "hutch++":
            k = samples // 3
            S = _rademacher(n, k, gen, like)
            Q, _ = torch.linalg.qr(torch.stack([H(s) for s in S]).T.double())
            Q = Q.to(like.dtype)
            exact = sum(float(q.double() @ H(q).double()) for q in Q.T)
            G = _rademacher(n, samples - 2 * k, gen, like)
            G = G - (G @ Q) @ Q.T
        else:
            G = _rademacher(n, samples, gen, like)
        quad = torch.tensor([float(z.double() @ H(z).double()) for z in G], dtype=torch.float64)
        return TraceResult(value=exact + float(quad.mean()), stderr=float(quad.std() / math.sqrt(len(quad))),
                           samples=f.cost.hvp, method=method, cost=f.cost.as_dict())


@dataclass
class DensityResult:
    nodes: list[list[float]]  # per probe vector: the Ritz values of its Lanczos run
    weights: list[list[float]]  # per probe vector: their quadrature weights (summing to 1)
    edges: list[float]  # histogram bin edges over [min node, max node]
    density: list[float]  # mass per bin, averaged over probe vectors (sums to 1)
    cost: dict

    def as_dict(self) -> dict:
        return asdict(self)


def spectral_density(model: nn.Module, loss_fn: Callable, batch: Batch, *, vectors: int = 4, steps: int = 20,
                     bins: int = 40, seed: int = 0, eval_mode: bool = False, params: Params | None = None,
                     buffers: Params | None = None, rng: dict | None = None,
                     output_fn: Callable | None = None) -> DensityResult:
    """The Hessian's eigenvalue density by stochastic Lanczos quadrature: for each of ``vectors``
    random unit vectors ``v``, ``steps`` Lanczos products give a tridiagonal ``T``; its
    eigenvalues are the nodes and the squared first components of its eigenvectors the weights
    of a quadrature for ``v^T f(H) v``, whose average over ``v`` estimates ``tr f(H) / n``."""
    with untouched(model, eval_mode):
        H = flat_hessian(model, loss_fn, batch, params, buffers, rng, output_fn)
        f = H.objective
        nodes, weights = [], []
        for i in range(vectors):
            alphas, betas, _ = lanczos(H, start_vector(H.n, seed + i, H.like), steps)
            if not alphas or not all(math.isfinite(a) for a in alphas):
                continue
            evals, evecs = torch.linalg.eigh(tridiagonal(alphas, betas))
            nodes.append(evals.tolist())
            weights.append((evecs[0] ** 2).tolist())
        flat_nodes = [x for row in nodes for x in row]
        if not flat_nodes:
            return DensityResult(nodes=[], weights=[], edges=[], density=[], cost=f.cost.as_dict())
        lo, hi = min(flat_nodes), max(flat_nodes)
        hi = hi if hi > lo else lo + 1e-12
        edges = torch.linspace(lo, hi, bins + 1, dtype=torch.float64)
        mass = torch.zeros(bins, dtype=torch.float64)
        for row_n, row_w in zip(nodes, weights):
            idx = torch.bucketize(torch.tensor(row_n, dtype=torch.float64), edges[1:-1])
            mass.index_add_(0, idx, torch.tensor(row_w, dtype=torch.float64))
        return DensityResult(nodes=nodes, weights=weights, edges=edges.tolist(), density=(mass / len(nodes)).tolist(),
                             cost=f.cost.as_dict())
