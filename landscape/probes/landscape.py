"""The loss landscape along the gradient (the paper's Figure 4; docs/protocol.md) and its curvature.

Definitions, at weights ``w`` with gradient ``g = grad L(w)`` on one batch ``B``, for
absolute step sizes ``eta`` (trainer configs give them as multiples of the lr):

- loss variation:            ``losses[k] = L(w - eta_k g)``
- gradient predictiveness:   ``grad_change[k] = ||grad L(w - eta_k g) - grad L(w)||_2``
- effective beta-smoothness: ``beta_eff = max_k grad_change[k] / ||eta_k g||_2``
- sharpness:                 the top eigenvalue of the Hessian ``grad^2 L(w)``

All are evaluated on the same batch, with the buffers and random state of one forward
(see :mod:`landscape.probes.functional`), and never change the model.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

import torch
from torch import nn

from landscape.probes.functional import Batch, Objective, Params, current_params, dot, norm, untouched


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


def gradient_sweep(model: nn.Module, loss_fn: Callable, batch: Batch, etas: Sequence[float], *,
                   eval_mode: bool = False, params: Params | None = None, grad: Params | None = None,
                   loss: float | torch.Tensor | None = None, buffers: Params | None = None, rng: dict | None = None,
                   output_fn: Callable | None = None) -> SweepResult:
    """Step along the gradient by each ``eta`` and measure loss, gradient change and beta_eff.

    ``grad`` and ``loss`` may be passed when they come from this very forward (same weights,
    buffers and random state, e.g. the training step's ``p.grad``): that saves one pass, so a
    K-point sweep costs K forward-backward passes. ``buffers`` and ``rng`` fix the state the
    evaluations use (defaults: the model's current buffers, cloned per evaluation, and the
    current RNG state). ``params`` evaluates at other weights than the model's.
    """
    r = direction_sweep(model, loss_fn, batch, None, etas, eval_mode=eval_mode, params=params, grad=grad, loss=loss,
                        buffers=buffers, rng=rng, output_fn=output_fn)
    return SweepResult(etas=r.scales, loss=r.loss, grad_norm=r.grad_norm, losses=r.losses, grad_change=r.grad_change,
                       beta_eff=r.beta_eff, cost=r.cost)


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


def direction_sweep(model: nn.Module, loss_fn: Callable, batch: Batch, direction: Params | None,
                    scales: Sequence[float], *, eval_mode: bool = False, params: Params | None = None,
                    grad: Params | None = None, loss: float | torch.Tensor | None = None,
                    buffers: Params | None = None, rng: dict | None = None,
                    output_fn: Callable | None = None) -> DirectionSweep:
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
        return DirectionSweep(scales=[float(s) for s in scales], loss=float(loss), grad_norm=g_norm_f,
                              direction_norm=d_norm_f, losses=losses_f, grad_change=changes_f,
                              beta_eff=max(ratios) if ratios else math.nan,
                              slope=float(dot(g, d)) / d_norm_f if d_norm_f > 0 else math.nan, slopes=slopes_f,
                              cost=f.cost.as_dict())


@dataclass
class SharpnessResult:
    value: float  # top eigenvalue (largest Ritz value) of the Hessian, or of P^-1 H when preconditioned
    hvps: int  # Hessian-vector products used
    residual: float  # ||A y - value y|| for the Ritz vector y of the operator A: |lambda - value| <= residual
    converged: bool  # residual <= tol * |value|
    cost: dict
    preconditioned: bool = False  # True: the eigenvalue of P^-1 H for the optimizer's diagonal preconditioner P
    vector: torch.Tensor | None = field(default=None, repr=False)  # the Ritz vector (flat), to warm-start the next call

    def as_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "vector"}


def _flat(d: Params, names: list[str]) -> torch.Tensor:
    return torch.cat([d[n].reshape(-1) for n in names])


def _unflat(v: torch.Tensor, like: Params, names: list[str]) -> Params:
    out, i = {}, 0
    for n in names:
        k = like[n].numel()
        out[n] = v[i:i + k].view_as(like[n])
        i += k
    return out


@dataclass
class Ritz:
    """The top eigenpair estimate of a Lanczos run."""

    value: float
    residual: float
    converged: bool
    vector: torch.Tensor | None
    steps: int


def tridiagonal(alphas: list[float], betas: list[float]) -> torch.Tensor:
    T = torch.diag(torch.tensor(alphas, dtype=torch.float64))
    if betas:
        off = torch.tensor(betas[:len(alphas) - 1], dtype=torch.float64)
        T += torch.diag(off, 1) + torch.diag(off, -1)
    return T


def lanczos(matvec: Callable[[torch.Tensor], torch.Tensor], q: torch.Tensor, steps: int, tol: float | None = None
            ) -> tuple[list[float], list[float], Ritz]:
    """Lanczos with full reorthogonalisation on a symmetric operator, from the unit vector ``q``.

    Runs ``steps`` products, or stops early when ``tol`` is given and the top Ritz value's
    residual (a bound on its error) is below ``tol`` times its magnitude, or when the Krylov
    space is exhausted. Returns the tridiagonal's ``alphas`` and ``betas`` and the top Ritz pair."""
    n_max = min(steps, q.numel())
    # The basis twice: as separate vectors for the products and the recurrence (fresh, aligned
    # tensors: the same floating-point results as always), and as the rows of one matrix, grown
    # by doubling, to reorthogonalise against without stacking the list at every step (that
    # copy cost 0.5 s of 4.8 s for a 40-step density).
    basis, alphas, betas = [q], [], []
    Q = q.new_empty((max(1, min(n_max, 8)), q.numel()))
    Q[0] = q
    value, residual, converged = math.nan, math.inf, False
    evecs = None
    for _ in range(n_max):
        hq = matvec(basis[-1])
        alpha = torch.dot(hq, basis[-1])
        hq = hq - alpha * basis[-1] - (betas[-1] * basis[-2] if betas else 0)
        B = Q[:len(basis)]
        for _ in range(2):  # full reorthogonalisation, twice is enough (Kahan)
            hq = hq - B.T @ (B @ hq)
        beta = float(hq.norm())
        if not (math.isfinite(float(alpha)) and math.isfinite(beta)):  # diverged weights: no eigenvalue
            return alphas, betas, Ritz(math.nan, math.nan, False, None, len(alphas))
        alphas.append(float(alpha))
        evals, evecs = torch.linalg.eigh(tridiagonal(alphas, betas))
        value = float(evals[-1])
        residual = abs(beta) * abs(float(evecs[-1, -1]))
        if tol is not None and residual <= tol * abs(value):
            converged = True
            break
        if beta <= 1e-10 * max(abs(value), 1e-30):  # invariant subspace: the Ritz values are exact
            converged, residual = True, 0.0
            break
        betas.append(beta)
        basis.append(hq / beta)
        if len(basis) > len(Q):
            grown = Q.new_empty((min(2 * len(Q), n_max + 1), Q.shape[1]))
            grown[:len(Q)] = Q
            Q = grown
        Q[len(basis) - 1] = basis[-1]
    vector = None
    if evecs is not None:
        y = Q[:len(alphas)].T @ evecs[:, -1].to(dtype=q.dtype, device=q.device)
        vector = y / y.norm() if y.norm() > 0 else None
    return alphas, betas, Ritz(value, residual, converged, vector, len(alphas))


@dataclass
class FlatHessian:
    """The Hessian at ``w`` as a function of flat vectors, through one retained graph; built by :func:`flat_hessian`."""

    objective: Objective
    w: Params
    names: list[str]
    grad: Params  # the gradient at w, from the same forward
    hvp: Callable[[Params], Params]
    like: torch.Tensor  # dtype and device of flat vectors
    n: int  # their length

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        return _flat(self.hvp(_unflat(v, self.w, self.names)), self.names)


def flat_hessian(model: nn.Module, loss_fn: Callable, batch: Batch, params: Params | None, buffers: Params | None,
                 rng: dict | None, output_fn: Callable | None) -> FlatHessian:
    """One forward and differentiable backward at ``params`` (default: the model's); call inside :func:`untouched`."""
    f = Objective.of(model, loss_fn, batch, buffers, rng, output_fn)
    w = params if params is not None else current_params(model)
    names = list(w)
    _, grad, hvp = f.hessian_operator(w)
    return FlatHessian(f, w, names, grad, hvp, w[names[0]], sum(w[k].numel() for k in names))


def start_vector(n: int, seed: int, like: torch.Tensor, direction: torch.Tensor | None = None,
                 noise: float = 0.3) -> torch.Tensor:
    """A unit start vector: ``direction`` (normalised) plus ``noise`` times a seeded random unit
    vector, so every eigenvector stays reachable; just the random vector without a direction."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(n, generator=gen, dtype=torch.float64)
    q = (q / q.norm()).to(device=like.device, dtype=like.dtype)
    if direction is not None and direction.norm() > 0 and torch.isfinite(direction).all():
        q = direction.to(dtype=like.dtype) / direction.norm() + noise * q
    return q / q.norm()


def sharpness(model: nn.Module, loss_fn: Callable, batch: Batch, *, iters: int = 20, tol: float = 1e-3,
              seed: int = 0, start: str | torch.Tensor = "gradient", eval_mode: bool = False,
              params: Params | None = None, buffers: Params | None = None, rng: dict | None = None,
              output_fn: Callable | None = None, preconditioner: Params | None = None) -> SharpnessResult:
    """Top Hessian eigenvalue by Lanczos on Hessian-vector products.

    The products are backward passes through the retained graph of one differentiable
    gradient (reverse over reverse). Lanczos runs with full reorthogonalisation and stops
    when the Ritz residual, a bound on the eigenvalue's error, is below ``tol`` times its
    magnitude, or after ``iters`` products.

    ``preconditioner`` (a diagonal P per parameter, e.g. from :func:`landscape.probes.preconditioner`
    for Adam) makes it the top eigenvalue of ``P^-1 H``, computed as that of the symmetric
    ``P^-1/2 H P^-1/2`` (the same eigenvalues): the quantity an adaptive optimizer's stability
    depends on (Cohen et al., 2022).

    ``start="gradient"`` starts from the normalised gradient (preconditioned by ``P^-1/2``)
    plus a 0.3-weight random direction: the gradient lies mostly in the top Hessian subspace
    (Gur-Ari et al., 2018), which cut the products needed for 1% accuracy on VGG from 18 to 6
    (bench_probes.py), and the random part keeps every eigenvector reachable. ``start="random"``
    is the textbook start; a tensor (e.g. the previous call's ``vector``) warm-starts from it,
    again mixed with the random direction. Random draws use ``seed``, not the global RNG.
    """
    if isinstance(start, str) and start not in ("gradient", "random"):
        raise ValueError(f"start must be 'gradient', 'random' or a tensor, got {start!r}")
    with untouched(model, eval_mode):
        H = flat_hessian(model, loss_fn, batch, params, buffers, rng, output_fn)
        scale = None
        if preconditioner is not None:
            scale = _flat({k: preconditioner[k].to(H.like) for k in H.names}, H.names).rsqrt()  # P^-1/2

        def matvec(v: torch.Tensor) -> torch.Tensor:
            return H(v) if scale is None else scale * H(scale * v)

        if isinstance(start, torch.Tensor):
            direction = start.to(H.like) if start.numel() == H.n else None
        elif start == "gradient":
            direction = _flat(H.grad, H.names) * (scale if scale is not None else 1)
        else:
            direction = None
        ritz = lanczos(matvec, start_vector(H.n, seed, H.like, direction), iters, tol)[2]
        f = H.objective
        return SharpnessResult(value=ritz.value, hvps=f.cost.hvp, residual=ritz.residual, converged=ritz.converged,
                               cost=f.cost.as_dict(), preconditioned=preconditioner is not None, vector=ritz.vector)
