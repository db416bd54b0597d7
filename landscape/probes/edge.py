"""The edge of stability, beyond the top eigenvalue: batch sharpness and every eigenvalue above a line.

Definitions, at weights ``w``:

- batch sharpness (Andreyev and Beneventano, "Edge of Stochastic Stability"): the mean over
  minibatches ``B`` of ``g_B' H_B g_B / ||g_B||^2``, the curvature of each minibatch's loss along
  its own gradient: the quantity that minibatch SGD holds at ``2/lr`` while the full-batch
  top eigenvalue stays below. One forward, one differentiable backward and one Hessian-vector
  product per minibatch;
- the eigenvalues above a line: every eigenvalue of ``H`` (of ``P^-1/2 H P^-1/2`` under Adam)
  above ``fraction`` x the optimizer's stability threshold, by block Krylov iteration with
  Rayleigh-Ritz (block Lanczos with full reorthogonalisation) started from the previous
  measurement's eigenvectors when there are any: how many directions sit at the edge.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch
from torch import nn

from landscape.probes.functional import Batch, Objective, Params, current_params, dot, untouched
from landscape.probes.landscape import _flat, flat_hessian


@dataclass
class BatchSharpnessResult:
    value: float  # mean over minibatches of g_B' H_B g_B / ||g_B||^2
    per_batch: list[float]
    batch_size: int
    cost: dict

    def as_dict(self) -> dict:
        return asdict(self)


def split_batch(batch: Batch, size: int) -> list[Batch]:
    """``batch`` (a tensor of inputs and one of targets) cut into consecutive minibatches of ``size``
    (a shorter remainder is dropped: every minibatch has the training batch's size)."""
    x, y = batch
    n = len(y) // size
    return [(x[i * size:(i + 1) * size], y[i * size:(i + 1) * size]) for i in range(n)]


def batch_sharpness(model: nn.Module, loss_fn: Callable, batches: list[Batch], *, eval_mode: bool = False,
                    params: Params | None = None, buffers: Params | None = None, rng: dict | None = None,
                    output_fn: Callable | None = None) -> BatchSharpnessResult:
    """``mean_B g_B' H_B g_B / ||g_B||^2`` over ``batches`` (each its own loss, gradient and Hessian)."""
    if not batches:
        raise ValueError("batch_sharpness needs at least one minibatch")
    with untouched(model, eval_mode):
        values, cost = [], {"forward": 0, "backward": 0, "hvp": 0}
        w = params if params is not None else current_params(model)
        for b in batches:
            f = Objective.of(model, loss_fn, b, buffers, rng, output_fn)
            _, g, hvp = f.hessian_operator(w)
            gg = float(dot(g, g))
            values.append(float(dot(g, hvp(g))) / gg if gg > 0 else math.nan)
            for k, v in f.cost.as_dict().items():
                cost[k] += v
        finite = [v for v in values if math.isfinite(v)]
        return BatchSharpnessResult(value=sum(finite) / len(finite) if len(finite) == len(values) else math.nan,
                                    per_batch=values, batch_size=len(batches[0][1]), cost=cost)


@dataclass
class EigenResult:
    values: list[float]  # the converged eigenvalues at or above the line, largest first
    line: float  # fraction x threshold (or the absolute line asked for)
    count: int  # len(values): how many directions sit above the line
    top: float  # the largest eigenvalue
    residuals: list[float]  # ||A y - theta y|| of each, a bound on its error
    products: int  # Hessian-vector products spent
    block: int  # the block size it ended with
    converged: bool  # every value above the line met the tolerance, and the block was larger than the count
    warm: bool  # started from the previous measurement's vectors
    cost: dict
    vectors: torch.Tensor | None = field(default=None, repr=False)  # (n, k) Ritz vectors, to warm-start the next call

    def as_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "vectors"}


def _orthonormal_against(X: torch.Tensor, V: torch.Tensor | None) -> torch.Tensor:
    """The columns of ``X`` made orthonormal and orthogonal to ``V``'s (twice: Kahan), in float64; dependent columns dropped."""
    X = X.double()
    for _ in range(2):
        if V is not None and V.shape[1]:
            X = X - V @ (V.T @ X)
        Q, R = torch.linalg.qr(X)
        d = R.diagonal().abs().tolist()  # k numbers: the one synchronisation of a block
        X = Q[:, [i for i, r in enumerate(d) if r > 1e-10 * max([1.0, *d])]]
    return X


def eigenvalues_above(matvec: Callable[[torch.Tensor], torch.Tensor], n: int, line: float, *, block: int = 4,
                      max_products: int = 200, tol: float = 1e-2, start: torch.Tensor | None = None, seed: int = 0,
                      min_products: int = 20,
                      like: torch.Tensor | None = None) -> EigenResult:
    """Every eigenvalue of the symmetric operator ``matvec`` (on length-``n`` vectors) above ``line``.

    Block Krylov with Rayleigh-Ritz: the space grows by ``A`` times the newest block, orthogonalised
    against all before it; its Ritz pairs and their residuals ``||A y - theta y||`` (which bound
    each Ritz value's error) come from the products already made. It stops when every Ritz value
    above the line has a residual below ``tol`` x its size and fewer Ritz values sit above the
    line than the block holds (so the block has room for one more: were another eigenvalue above
    the line, the block's extra direction would be finding it); the block doubles when it is full.
    ``start`` (columns: e.g. the previous call's ``vectors``) fills the first block, the rest is random
    (seeded, never the global RNG)."""
    like = like if like is not None else torch.zeros(1)
    dev = like.device  # the Krylov basis lives on the model's device (float64); only the random draws start on the CPU
    gen = torch.Generator().manual_seed(seed)  # seeded on the CPU: the same vectors on every device and rank
    cols = [] if start is None else [start.to(dev, torch.float64)[:, i] for i in range(start.shape[1])
                                     if start.shape[0] == n]
    k = max(block, len(cols) + 1)
    random = torch.randn(n, max(k - len(cols), 1), generator=gen, dtype=torch.float64).to(dev)
    X = torch.stack(cols, 1) if cols else random[:, :0]
    X = _orthonormal_against(torch.cat([X, random], 1)[:, :k], None)

    def apply(B: torch.Tensor) -> torch.Tensor:
        return torch.stack([matvec(B[:, j].to(dtype=like.dtype)).double() for j in range(B.shape[1])], 1)

    V, W = X, apply(X)
    products = X.shape[1]
    values, residuals, ritz, converged = [], [], None, False
    while True:
        T = V.T @ W
        evals, evecs = torch.linalg.eigh((T + T.T) / 2)
        order = evals.argsort(descending=True)
        evals, evecs = evals[order], evecs[:, order]
        res = (W @ evecs - (V @ evecs) * evals).norm(dim=0)
        above = int((evals >= line).sum())
        done_above = all(res[i] <= tol * abs(evals[i]) for i in range(above))
        if above < len(evals):  # the largest Ritz value below the line must have converged too
            done_above = done_above and bool(res[above] <= tol * max(abs(evals[above]), abs(line)))
        values, residuals = evals[:above].tolist(), res[:above].tolist()
        ritz = V @ evecs[:, :max(above, 1)]  # warm-starts the next call
        # A Ritz value's small residual proves an eigenvalue near it, never the absence of one above the line: an
        # eigenvector with a tiny overlap with the start (1/sqrt(n) for a random one) hides behind residuals far
        # below tol x line. So nothing is declared before the space holds min_products products (a Krylov degree
        # of min_products / block, which lifts such a direction by (lambda_top / lambda_rest)^degree).
        if done_above and above < k and V.shape[1] >= min(min_products, n):
            converged = True
            break
        if above >= k:  # the block is full: double it, so one direction is always free to find the next
            k *= 2
        if products >= max_products or V.shape[1] >= n:
            converged = done_above and above < k or V.shape[1] >= n
            break
        # the next block: A times the newest Ritz directions' complement, orthogonalised against the space
        nxt = _orthonormal_against(torch.cat([W[:, -X.shape[1]:], torch.randn(n, max(0, k - X.shape[1]),
                                                                               generator=gen, dtype=torch.float64).to(dev)],
                                             1), V)
        nxt = nxt[:, :min(k, max(max_products - products, 0), n - V.shape[1])]
        if nxt.shape[1] == 0:
            converged = done_above
            break
        X = nxt
        V, W = torch.cat([V, X], 1), torch.cat([W, apply(X)], 1)
        products += X.shape[1]
    top = float(evals[0]) if len(evals) else math.nan
    return EigenResult(values=values, line=line, count=len(values), top=top, residuals=residuals, products=products,
                       block=k, converged=bool(converged), warm=start is not None and bool(cols), cost={},
                       vectors=None if ritz is None else ritz.to(dtype=like.dtype, device=like.device))


def hessian_eigenvalues_above(model: nn.Module, loss_fn: Callable, batch: Batch, line: float, *, block: int = 4,
                              max_products: int = 200, tol: float = 1e-2, start: torch.Tensor | None = None,
                              seed: int = 0, min_products: int = 20, preconditioner: Params | None = None,
                              eval_mode: bool = False,
                              params: Params | None = None, buffers: Params | None = None, rng: dict | None = None,
                              output_fn: Callable | None = None) -> EigenResult:
    """The Hessian's eigenvalues above ``line`` (of ``P^-1/2 H P^-1/2`` with a preconditioner), through one
    retained graph (see :func:`eigenvalues_above`)."""
    with untouched(model, eval_mode):
        H = flat_hessian(model, loss_fn, batch, params, buffers, rng, output_fn)
        scale = None
        if preconditioner is not None:
            scale = _flat({k: preconditioner[k].to(H.like) for k in H.names}, H.names).rsqrt()

        def matvec(v: torch.Tensor) -> torch.Tensor:
            return H(v) if scale is None else scale * H(scale * v)

        r = eigenvalues_above(matvec, H.n, line, block=block, max_products=max_products, tol=tol, start=start,
                              min_products=min_products,
                              seed=seed, like=H.like)
        r.cost = H.objective.cost.as_dict()
        return r
