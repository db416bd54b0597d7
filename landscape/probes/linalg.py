"""The linear algebra behind the curvature probes, on plain vectors and operators.

Nothing here knows a model: every algorithm takes a symmetric operator ``matvec`` on flat
vectors (a Hessian, or a plain matrix in the tests), so each is tested on matrices whose
spectrum is known. Parameter dicts become flat vectors with :func:`flat` and back with
:func:`unflat`.

- :func:`lanczos`: Lanczos with full reorthogonalisation (the top eigenpair, and the
  tridiagonal behind stochastic Lanczos quadrature);
- :func:`eigenvalues_above`: every eigenvalue above a line, by block Krylov iteration with
  Rayleigh-Ritz;
- :func:`start_vector`, :func:`rademacher`: seeded start and probe vectors (never the global RNG).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch

Params = dict[str, torch.Tensor]


def flat(d: Params, names: list[str]) -> torch.Tensor:
    """The tensors of ``d`` named ``names``, concatenated into one vector (in that order)."""
    return torch.cat([d[n].reshape(-1) for n in names])


def unflat(v: torch.Tensor, like: Params, names: list[str]) -> Params:
    """The inverse of :func:`flat`: views of ``v`` shaped like ``like``'s tensors."""
    out, i = {}, 0
    for n in names:
        k = like[n].numel()
        out[n] = v[i : i + k].view_as(like[n])
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
        off = torch.tensor(betas[: len(alphas) - 1], dtype=torch.float64)
        T += torch.diag(off, 1) + torch.diag(off, -1)
    return T


def lanczos(
    matvec: Callable[[torch.Tensor], torch.Tensor],
    q: torch.Tensor,
    steps: int,
    tol: float | None = None,
    allsum: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[list[float], list[float], Ritz]:
    """Lanczos with full reorthogonalisation on a symmetric operator, from the unit vector ``q``.

    Runs ``steps`` products, or stops early when ``tol`` is given and the top Ritz value's
    residual (a bound on its error) is below ``tol`` times its magnitude, or when the Krylov
    space is exhausted. Returns the tridiagonal's ``alphas`` and ``betas`` and the top Ritz pair.

    ``allsum``: where each vector is one part of a longer one held across processes (a sharded model), the
    sum over the parts of a local inner product; every inner product and norm is completed by it."""
    red = allsum or (lambda t: t)
    total = q.numel() if allsum is None else int(red(torch.tensor(float(q.numel()), dtype=torch.float64)))
    n_max = min(steps, total)
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
        alpha = red(torch.dot(hq, basis[-1]))
        hq = hq - alpha * basis[-1] - (betas[-1] * basis[-2] if betas else 0)
        B = Q[: len(basis)]
        for _ in range(2):  # full reorthogonalisation, twice is enough (Kahan)
            hq = hq - B.T @ red(B @ hq)
        beta = float(hq.norm()) if allsum is None else float(red(torch.dot(hq, hq)).sqrt())
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
            grown[: len(Q)] = Q
            Q = grown
        Q[len(basis) - 1] = basis[-1]
    vector = None
    if evecs is not None:
        y = Q[: len(alphas)].T @ evecs[:, -1].to(dtype=q.dtype, device=q.device)
        y_norm = y.norm() if allsum is None else red(torch.dot(y, y)).sqrt()
        vector = y / y_norm if y_norm > 0 else None
    return alphas, betas, Ritz(value, residual, converged, vector, len(alphas))


def start_vector(
    n: int,
    seed: int,
    like: torch.Tensor,
    direction: torch.Tensor | None = None,
    noise: float = 0.3,
    allsum: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """A unit start vector: ``direction`` (normalised) plus ``noise`` times a seeded random unit
    vector, so every eigenvector stays reachable; just the random vector without a direction.
    ``allsum``: as in :func:`lanczos`, for a vector held in parts (each part draws its own, from ``seed``)."""

    def norm(v: torch.Tensor) -> torch.Tensor:
        return v.norm() if allsum is None else allsum(torch.dot(v.double(), v.double())).sqrt().to(v.dtype)

    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(n, generator=gen, dtype=torch.float64)
    q = (q / norm(q)).to(device=like.device, dtype=like.dtype)
    if direction is not None and norm(direction) > 0 and torch.isfinite(direction).all():
        q = direction.to(dtype=like.dtype) / norm(direction) + noise * q
    return q / norm(q)


def rademacher(n: int, k: int, gen: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    """``k`` seeded Rademacher (+-1) vectors of length ``n``, as the rows of a matrix like ``like``."""
    return torch.randint(0, 2, (k, n), generator=gen, dtype=torch.int8).to(like.device, like.dtype) * 2 - 1


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


def orthonormal_against(
    X: torch.Tensor, V: torch.Tensor | None, allsum: Callable[[torch.Tensor], torch.Tensor] | None = None
) -> torch.Tensor:
    """The columns of ``X`` made orthonormal and orthogonal to ``V``'s (twice: Kahan), in float64; dependent
    columns dropped. ``allsum`` (as in :func:`lanczos`: columns held in row blocks across processes): the Gram
    matrices are summed over the blocks, and the QR is Cholesky-free: ``X`` times the inverse square root of its
    Gram matrix's kept eigenpairs."""
    X = X.double()
    for _ in range(2):
        if V is not None and V.shape[1]:
            X = X - V @ (V.T @ X if allsum is None else allsum(V.T @ X))
        if allsum is not None:
            s, U = torch.linalg.eigh(allsum(X.T @ X))
            keep = s > 1e-20 * max(float(s.max()) if len(s) else 0.0, 1.0)
            X = X @ (U[:, keep] / s[keep].sqrt())
            continue
        Q, R = torch.linalg.qr(X)
        d = R.diagonal().abs().tolist()  # k numbers: the one synchronisation of a block
        X = Q[:, [i for i, r in enumerate(d) if r > 1e-10 * max([1.0, *d])]]
    return X


def eigenvalues_above(
    matvec: Callable[[torch.Tensor], torch.Tensor],
    n: int,
    line: float,
    *,
    block: int = 4,
    max_products: int = 200,
    tol: float = 1e-2,
    start: torch.Tensor | None = None,
    seed: int = 0,
    min_products: int = 20,
    like: torch.Tensor | None = None,
    allsum: Callable[[torch.Tensor], torch.Tensor] | None = None,
    draw: Callable[[int], torch.Tensor] | None = None,
) -> EigenResult:
    """Every eigenvalue of the symmetric operator ``matvec`` (on length-``n`` vectors) above ``line``.

    Block Krylov with Rayleigh-Ritz: the space grows by ``A`` times the newest block, orthogonalised
    against all before it; its Ritz pairs and their residuals ``||A y - theta y||`` (which bound
    each Ritz value's error) come from the products already made. It stops when every Ritz value
    above the line has a residual below ``tol`` x its size and fewer Ritz values sit above the
    line than the block holds (so the block has room for one more: were another eigenvalue above
    the line, the block's extra direction would be finding it); the block doubles when it is full.
    ``start`` (columns: e.g. the previous call's ``vectors``) fills the first block, the rest is random
    (seeded, never the global RNG).

    For vectors held in row blocks across processes (a sharded model): ``allsum`` completes every inner product
    (as in :func:`lanczos`), ``n`` is the whole length and ``draw(k)`` gives ``k`` random columns of this block."""
    like = like if like is not None else torch.zeros(1)
    dev = like.device  # the Krylov basis lives on the model's device (float64); only the random draws start on the CPU
    gen = torch.Generator().manual_seed(seed)  # seeded on the CPU: the same vectors on every device and rank
    red = allsum or (lambda t: t)

    def randn(k: int) -> torch.Tensor:
        if draw is not None:
            return draw(k).to(dev, torch.float64)
        return torch.randn(n, k, generator=gen, dtype=torch.float64).to(dev)

    rows = n if draw is None else randn(0).shape[0]  # this process's part of each vector
    cols = (
        []
        if start is None
        else [start.to(dev, torch.float64)[:, i] for i in range(start.shape[1]) if start.shape[0] == rows]
    )
    k = max(block, len(cols) + 1)
    random = randn(max(k - len(cols), 1))
    X = torch.stack(cols, 1) if cols else random[:, :0]
    X = orthonormal_against(torch.cat([X, random], 1)[:, :k], None, allsum)

    def apply(B: torch.Tensor) -> torch.Tensor:
        return torch.stack([matvec(B[:, j].to(dtype=like.dtype)).double() for j in range(B.shape[1])], 1)

    V, W = X, apply(X)
    products = X.shape[1]
    values, residuals, ritz, converged = [], [], None, False
    while True:
        T = red(V.T @ W)
        evals, evecs = torch.linalg.eigh((T + T.T) / 2)
        order = evals.argsort(descending=True)
        evals, evecs = evals[order], evecs[:, order]
        gap = W @ evecs - (V @ evecs) * evals
        res = gap.norm(dim=0) if allsum is None else red((gap * gap).sum(0)).sqrt()
        above = int((evals >= line).sum())
        done_above = all(res[i] <= tol * abs(evals[i]) for i in range(above))
        if above < len(evals):  # the largest Ritz value below the line must have converged too
            done_above = done_above and bool(res[above] <= tol * max(abs(evals[above]), abs(line)))
        values, residuals = evals[:above].tolist(), res[:above].tolist()
        ritz = V @ evecs[:, : max(above, 1)]  # warm-starts the next call
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
        nxt = orthonormal_against(
            torch.cat(
                [
                    W[:, -X.shape[1] :],
                    randn(max(0, k - X.shape[1])),
                ],
                1,
            ),
            V,
            allsum,
        )
        nxt = nxt[:, : min(k, max(max_products - products, 0), n - V.shape[1])]
        if nxt.shape[1] == 0:
            converged = done_above
            break
        X = nxt
        V, W = torch.cat([V, X], 1), torch.cat([W, apply(X)], 1)
        products += X.shape[1]
    top = float(evals[0]) if len(evals) else math.nan
    return EigenResult(
        values=values,
        line=line,
        count=len(values),
        top=top,
        residuals=residuals,
        products=products,
        block=k,
        converged=bool(converged),
        warm=start is not None and bool(cols),
        cost={},
        vectors=None if ritz is None else ritz.to(dtype=like.dtype, device=like.device),
    )
