"""Curvature: the Hessian of the loss at the weights, read through Hessian-vector products.

Definitions, at weights ``w`` with Hessian ``H`` and gradient ``g`` on one batch:

- sharpness: the top eigenvalue of ``H`` (of ``P^-1 H`` for an adaptive optimizer's diagonal
  preconditioner ``P``, the quantity its stability depends on; Cohen et al. 2022), by Lanczos;
- curvature: ``g^T H g / ||g||^2``, the curvature along the step the paper's Figure 4 probes;
  ``beta_eff`` measures the same direction over a finite distance;
- layer sharpness: the top eigenvalue of each layer's diagonal Hessian block ``H_ll``;
- Hessian trace: Hutchinson's ``E[z^T H z]`` over Rademacher ``z`` (or Hutch++, Meyer et al.
  2021), with its standard error;
- spectral density: stochastic Lanczos quadrature (Ghorbani et al., 2019): nodes and weights
  whose measure approximates the eigenvalue distribution of ``H``, and a histogram of it.

Each is a probe: pure like the others (see :mod:`landscape.probes.functional`). The
algorithms are in :mod:`landscape.probes.linalg`; the optimizer's threshold and
preconditioner in :mod:`landscape.probes.optimizer`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Literal

import torch
from torch import nn

from landscape.probes.functional import (
    Batch,
    Params,
    batch_size,
    flat_hessian,
    over_shards,
    resolve_layers,
    shard_draws,
    sharded_vectors,
    take,
    untouched,
)
from landscape.probes.linalg import flat, lanczos, rademacher, start_vector, tridiagonal, unflat
from landscape.probes.optimizer import UnreadableOptimizer, optimizer_facts, preconditioner, threshold_warning
from landscape.probes.registry import MAX_PRODUCTS, Context, Probe, finite_list, layer_list, over, register


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


def sharpness(
    model: nn.Module,
    loss_fn: Callable,
    batch: Batch,
    *,
    iters: int = 20,
    tol: float = 1e-3,
    seed: int = 0,
    start: str | torch.Tensor = "gradient",
    eval_mode: bool = False,
    params: Params | None = None,
    buffers: Params | None = None,
    rng: dict | None = None,
    output_fn: Callable | None = None,
    preconditioner: Params | None = None,
) -> SharpnessResult:
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
        matvec, scale = H.preconditioned(preconditioner)  # scale: P^-1/2

        if isinstance(start, torch.Tensor):
            direction = start.to(H.like) if start.numel() == H.n else None
        elif start == "gradient":
            direction = flat(H.grad, H.names) * (scale if scale is not None else 1)
        else:
            direction = None
        allsum = over_shards if sharded_vectors() else None  # FSDP2: each vector is this rank's shard
        ritz = lanczos(matvec, start_vector(H.n, seed, H.like, direction, allsum=allsum), iters, tol, allsum)[2]
        f = H.objective
        return SharpnessResult(
            value=ritz.value,
            hvps=f.cost.hvp,
            residual=ritz.residual,
            converged=ritz.converged,
            cost=f.cost.as_dict(),
            preconditioned=preconditioner is not None,
            vector=ritz.vector,
        )


@dataclass
class CurvatureResult:
    value: float  # g^T H g / ||g||^2
    grad_norm: float  # ||g||
    cost: dict

    def as_dict(self) -> dict:
        return asdict(self)


def curvature(
    model: nn.Module,
    loss_fn: Callable,
    batch: Batch,
    *,
    eval_mode: bool = False,
    params: Params | None = None,
    buffers: Params | None = None,
    rng: dict | None = None,
    output_fn: Callable | None = None,
) -> CurvatureResult:
    """The curvature along the gradient, ``g^T H g / ||g||^2``: one Hessian-vector product."""
    with untouched(model, eval_mode):
        H = flat_hessian(model, loss_fn, batch, params, buffers, rng, output_fn)
        g = flat(H.grad, H.names)
        gg = float(over_shards(g.double() @ g.double()))
        value = float(over_shards(g.double() @ H(g).double())) / gg if gg > 0 else math.nan
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


def layer_sharpness(
    model: nn.Module,
    loss_fn: Callable,
    batch: Batch,
    layers: Iterable | dict | None = None,
    *,
    iters: int = 20,
    tol: float = 1e-2,
    seed: int = 0,
    eval_mode: bool = False,
    params: Params | None = None,
    buffers: Params | None = None,
    rng: dict | None = None,
    output_fn: Callable | None = None,
) -> LayerSharpnessResult:
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
                return flat(hvp({**zeros, **unflat(v, w, names)}), names)

            before = f.cost.hvp
            like = w[names[0]]
            allsum = over_shards if sharded_vectors() else None  # FSDP2: each vector is this rank's shard
            q = start_vector(sum(w[n].numel() for n in names), seed, like, flat(grad, names), allsum=allsum)
            ritz = lanczos(matvec, q, iters, tol, allsum)[2]
            values[label], residual[label], hvps[label] = ritz.value, ritz.residual, f.cost.hvp - before
        return LayerSharpnessResult(
            layers=[label for label, _ in groups], values=values, residual=residual, hvps=hvps, cost=f.cost.as_dict()
        )


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


def hessian_trace(
    model: nn.Module,
    loss_fn: Callable,
    batch: Batch,
    *,
    samples: int = 30,
    method: str = "hutchinson",
    seed: int = 0,
    eval_mode: bool = False,
    params: Params | None = None,
    buffers: Params | None = None,
    rng: dict | None = None,
    output_fn: Callable | None = None,
) -> TraceResult:
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
        shards = sharded_vectors()  # FSDP2: each vector this rank's shard, drawn to match one process's

        def draw(k: int) -> torch.Tensor:
            return shard_draws(model, H.names, k, gen, "rademacher").to(like) if shards else rademacher(n, k, gen, like)

        exact = 0.0
        if method == "hutch++":
            k = samples // 3
            S = draw(k)
            Y = torch.stack([H(s) for s in S]).T.double()
            if shards:  # QR of a matrix held in row blocks: Cholesky of its Gram matrix (CholeskyQR)
                R = torch.linalg.cholesky(over_shards(Y.T @ Y)).T
                Q = torch.linalg.solve_triangular(R, Y, upper=True, left=False)
            else:
                Q, _ = torch.linalg.qr(Y)
            Q = Q.to(like.dtype)
            exact = sum(float(over_shards(q.double() @ H(q).double())) for q in Q.T)
            G = draw(samples - 2 * k)
            G = G - over_shards(G @ Q) @ Q.T
        else:
            G = draw(samples)
        quad = torch.tensor([float(over_shards(z.double() @ H(z).double())) for z in G], dtype=torch.float64)
        return TraceResult(
            value=exact + float(quad.mean()),
            stderr=float(quad.std() / math.sqrt(len(quad))),
            samples=f.cost.hvp,
            method=method,
            cost=f.cost.as_dict(),
        )


@dataclass
class DensityResult:
    nodes: list[list[float]]  # per probe vector: the Ritz values of its Lanczos run
    weights: list[list[float]]  # per probe vector: their quadrature weights (summing to 1)
    edges: list[float]  # histogram bin edges over [min node, max node]
    density: list[float]  # mass per bin, averaged over probe vectors (sums to 1)
    cost: dict

    def as_dict(self) -> dict:
        return asdict(self)


def spectral_density(
    model: nn.Module,
    loss_fn: Callable,
    batch: Batch,
    *,
    vectors: int = 4,
    steps: int = 20,
    bins: int = 40,
    seed: int = 0,
    eval_mode: bool = False,
    params: Params | None = None,
    buffers: Params | None = None,
    rng: dict | None = None,
    output_fn: Callable | None = None,
) -> DensityResult:
    """The Hessian's eigenvalue density by stochastic Lanczos quadrature: for each of ``vectors``
    random unit vectors ``v``, ``steps`` Lanczos products give a tridiagonal ``T``; its
    eigenvalues are the nodes and the squared first components of its eigenvectors the weights
    of a quadrature for ``v^T f(H) v``, whose average over ``v`` estimates ``tr f(H) / n``."""
    with untouched(model, eval_mode):
        H = flat_hessian(model, loss_fn, batch, params, buffers, rng, output_fn)
        f = H.objective
        nodes, weights = [], []
        shards = sharded_vectors()  # FSDP2: each vector this rank's shard, drawn to match one process's
        for i in range(vectors):
            if shards:
                q = shard_draws(model, H.names, 1, torch.Generator().manual_seed(seed + i), "normal")[0]
                q = (q / over_shards(q @ q).sqrt()).to(H.like)
                alphas, betas, _ = lanczos(H, q, steps, allsum=over_shards)
            else:
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
        return DensityResult(
            nodes=nodes,
            weights=weights,
            edges=edges.tolist(),
            density=(mass / len(nodes)).tolist(),
            cost=f.cost.as_dict(),
        )


directional_curvature = curvature  # its name before 0.4


# ------------------------------------------------------------------ the probe entries


@dataclass(frozen=True)
class SharpnessOptions:
    iters: int = 20  # Lanczos iterations (Hessian-vector products) at most
    tol: float = 1e-3  # stop when the eigenvalue's error bound is below this relative tolerance
    warm_start: bool = False  # start each Lanczos from the previous measurement's eigenvector (checkpointed)
    batch: int = (
        0  # 0: each step's batch; N: a fixed training batch of N examples, the same every time (e.g. the full data set)
    )
    batches: int = 1  # K > 1: the batch cut into K parts, measured on each: their mean and its standard error


def over_batches(ctx: Context, o, measure: Callable[[Batch], dict]) -> dict:
    """``measure`` on the probe's batch (its ``batch`` option), or with ``batches`` K > 1 on each of its K parts:
    then ``value`` is their mean, ``stderr`` its standard error over the parts and ``per_batch`` their values
    (the batch-to-batch spread PyHessian users read a data loader's average with)."""
    fixed = getattr(o, "batch", 0)
    batch = ctx.fixed_part(fixed)
    k = getattr(o, "batches", 1)
    if k == 1:
        out = measure(batch)
        if fixed:
            out["examples"] = batch_size(batch)
        return out
    n = batch_size(batch)
    if n < k:
        return {"value": None, "note": f"batches={k} needs at least {k} examples; the batch has {n}"}
    size = n // k
    parts = [measure(take(batch, i * size, (i + 1) * size)) for i in range(k)]
    values = [p.get("value") for p in parts]
    finite = [v for v in values if isinstance(v, float) and math.isfinite(v)]
    mean = sum(finite) / len(finite) if len(finite) == k else math.nan
    sd = math.sqrt(sum((v - mean) ** 2 for v in finite) / (k - 1)) if len(finite) == k else math.nan
    out = {**parts[-1], "value": mean, "stderr": sd / math.sqrt(k), "per_batch": values, "batches": k, "examples": size}
    out["cost"] = {key: sum(p["cost"].get(key, 0) for p in parts) for key in parts[-1].get("cost", {})}
    return out


def _facts_of(optimizer: torch.optim.Optimizer, preconditioned: bool) -> dict:
    """The optimizer's settings a sharpness is read against; ``threshold`` only where it applies to the
    quantity measured: the raw Hessian's under SGD, ``P^-1 H``'s under Adam (whose threshold, 38/lr at
    beta1 0.9, is said beside a raw sharpness as ``preconditioned_threshold``)."""
    facts = optimizer_facts(optimizer)
    adaptive = isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW))
    if adaptive and not preconditioned:
        facts["preconditioned_threshold"], facts["threshold"] = facts["threshold"], None
    return facts


def _sharpness(ctx: Context, o: SharpnessOptions) -> dict:
    """The top eigenvalue of the Hessian H itself, whatever the optimizer."""

    def measure(batch) -> dict:
        previous = ctx.state.get("vector")
        start = previous if o.warm_start and previous is not None else "gradient"
        result = sharpness(ctx.model, ctx.loss_fn, batch, iters=o.iters, tol=o.tol, start=start, **ctx.common())
        ctx.state["vector"] = result.vector if o.warm_start else None
        return {**result.as_dict(), "warm_start": not isinstance(start, str)}

    return {**over_batches(ctx, o, measure), **_facts_of(ctx.optimizer, preconditioned=False)}


def preconditioned_sharpness(
    model: nn.Module, optimizer: torch.optim.Optimizer, loss_fn: Callable, batch: Batch, **kwargs
) -> SharpnessResult:
    """The top eigenvalue of ``P^-1 H`` for the diagonal preconditioner ``P`` the optimizer's next update divides
    by (Adam's, read from its state: :func:`landscape.probes.preconditioner`): the quantity its stability depends on
    (Cohen et al., 2022). Under SGD (no preconditioner) it is the sharpness of H. ``kwargs`` as :func:`sharpness`'s;
    :class:`UnreadableOptimizer` for an optimizer it cannot read, and for Adam before its first step."""
    return sharpness(model, loss_fn, batch, preconditioner=preconditioner(optimizer, model), **kwargs)


def _preconditioned_sharpness(ctx: Context, o: SharpnessOptions) -> dict:
    facts = optimizer_facts(ctx.optimizer)
    try:
        P = preconditioner(ctx.optimizer, ctx.model)
    except UnreadableOptimizer as exc:  # Adam before its first step, or an optimizer landscape cannot read
        return {"value": None, "preconditioned": True, "note": str(exc), **facts}

    def measure(batch) -> dict:
        previous = ctx.state.get("vector")
        start = previous if o.warm_start and previous is not None else "gradient"
        result = sharpness(
            ctx.model, ctx.loss_fn, batch, iters=o.iters, tol=o.tol, preconditioner=P, start=start, **ctx.common()
        )
        ctx.state["vector"] = result.vector if o.warm_start else None
        return {**result.as_dict(), "warm_start": not isinstance(start, str)}

    return {**over_batches(ctx, o, measure), **facts}


def _sharpness_check(o) -> str | None:
    if o.batch < 0:
        return f"batch must be 0 (each step's) or a number of examples; got {o.batch}"
    if not 1 <= o.batches <= 1000:
        return f"batches must be between 1 and 1000; got {o.batches}"
    return _lanczos_check(o)


def _lanczos_check(o) -> str | None:
    if not 0 < o.iters <= MAX_PRODUCTS:
        return f"iters must be between 1 and {MAX_PRODUCTS}; got {o.iters}"
    if not 0 < o.tol < 1:
        return f"tol must be in (0, 1); got {o.tol}"
    return None


_SHARPNESS_VIEWS = {"preconditioned": lambda v: bool(v.get("preconditioned"))}

register(
    Probe(
        "sharpness",
        "the top eigenvalue of the Hessian (raw, whatever the optimizer), against the optimizer's stability "
        "threshold where that applies to H (SGD)",
        _sharpness,
        SharpnessOptions,
        quantities={
            "sharpness": lambda v: v["value"],
            "sharpness_threshold": lambda v: v["threshold"],
            "over_threshold": lambda v: over(v["value"], v["threshold"]),
            "sharpness_stderr": lambda v: v["stderr"],
            # Adam's threshold is of P^-1 H; the raw sharpness is read against it to show that it is not at it
            "over_preconditioned_threshold": lambda v: over(v["value"], v["preconditioned_threshold"]),
        },
        exported=("sharpness", "sharpness_threshold"),
        attach=threshold_warning,
        check=_sharpness_check,
        views=_SHARPNESS_VIEWS,
        fixed_batch=lambda o: o.batch or None,
        sharded=True,
    )
)

register(
    Probe(
        "preconditioned_sharpness",
        "the top eigenvalue of P^-1 H, P the optimizer's diagonal preconditioner (Adam's; SGD: the identity), "
        "against its stability threshold (38/lr for Adam at beta1 0.9)",
        _preconditioned_sharpness,
        SharpnessOptions,
        quantities={
            "preconditioned_sharpness": lambda v: v["value"],
            "preconditioned_threshold": lambda v: v["threshold"],
            "preconditioned_over_threshold": lambda v: over(v["value"], v["threshold"]),
            "preconditioned_stderr": lambda v: v["stderr"],
        },
        exported=("preconditioned_sharpness", "preconditioned_threshold"),
        attach=threshold_warning,
        check=_sharpness_check,
        views=_SHARPNESS_VIEWS,
        fixed_batch=lambda o: o.batch or None,
        sharded=True,
    )
)


@dataclass(frozen=True)
class CurvatureOptions:
    batch: int = 0  # 0: each step's batch; N: a fixed training batch of N examples
    batches: int = 1  # K > 1: the batch cut into K parts, measured on each: their mean and its standard error


def _curvature(ctx: Context, o: CurvatureOptions) -> dict:
    return over_batches(ctx, o, lambda batch: curvature(ctx.model, ctx.loss_fn, batch, **ctx.common()).as_dict())


def _batches_check(o) -> str | None:
    if o.batch < 0:
        return f"batch must be 0 (each step's) or a number of examples; got {o.batch}"
    if not 1 <= o.batches <= 1000:
        return f"batches must be between 1 and 1000; got {o.batches}"
    return None


register(
    Probe(
        "curvature",
        "the curvature along the gradient, g'Hg / g'g (one Hessian-vector product per batch)",
        _curvature,
        CurvatureOptions,
        quantities={"curvature": lambda v: v["value"], "curvature_stderr": lambda v: v["stderr"]},
        exported=("curvature",),
        check=_batches_check,
        fixed_batch=lambda o: o.batch or None,
        sharded=True,
    )
)


@dataclass(frozen=True)
class LayerSharpnessOptions:
    iters: int = 20  # Lanczos iterations per layer at most
    tol: float = 1e-2  # relative tolerance per layer (coarser than sharpness': one Lanczos per layer)


register(
    Probe(
        "layer_sharpness",
        "per layer, the top eigenvalue of its diagonal Hessian block",
        lambda ctx, o: layer_sharpness(
            ctx.model, ctx.loss_fn, ctx.batch, ctx.layers, iters=o.iters, tol=o.tol, **ctx.common()
        ).as_dict(),
        LayerSharpnessOptions,
        quantities={"layer_sharpness": lambda v: v["values"]},
        exported=("layer_sharpness",),
        views={"layers": layer_list},
        check=_lanczos_check,
        sharded=True,
    )
)


@dataclass(frozen=True)
class HessianTraceOptions:
    samples: int = 30  # Hessian-vector products (probe vectors)
    method: Literal["hutchinson", "hutch++"] = "hutchinson"  # the estimator
    batches: int = 1  # K > 1: the step's batch cut into K parts, a trace each: their mean and its standard error


def _trace_check(o: HessianTraceOptions) -> str | None:
    least = min_trace_samples(o.method)
    if not least <= o.samples <= MAX_PRODUCTS:
        return (
            f"samples must be between {least} (with {o.method}, for a standard error) and {MAX_PRODUCTS}; "
            f"got {o.samples}"
        )
    if not 1 <= o.batches <= 1000:
        return f"batches must be between 1 and 1000; got {o.batches}"
    return None


def _trace(ctx: Context, o: HessianTraceOptions) -> dict:
    return over_batches(
        ctx,
        o,
        lambda batch: hessian_trace(
            ctx.model, ctx.loss_fn, batch, samples=o.samples, method=o.method, seed=ctx.step, **ctx.common()
        ).as_dict(),
    )


register(
    Probe(
        "hessian_trace",
        "the Hessian's trace (Hutchinson or Hutch++) with its standard error",
        _trace,
        HessianTraceOptions,
        quantities={"hessian_trace": lambda v: v["value"], "trace_stderr": lambda v: v["stderr"]},
        exported=("hessian_trace",),
        check=_trace_check,
        sharded=True,
    )
)


def _density_histogram(v: dict) -> dict | None:
    """``{"edges", "density"}`` of a density record: bins of the recorded eigenvalue range and their mass."""
    edges, mass = finite_list(v["edges"]), finite_list(v["density"])
    return {"edges": edges, "density": mass} if mass and len(edges) == len(mass) + 1 else None


@dataclass(frozen=True)
class SpectralDensityOptions:
    vectors: int = 4  # random start vectors (one Lanczos run each)
    steps: int = 20  # Lanczos steps per vector (quadrature nodes)


register(
    Probe(
        "spectral_density",
        "the Hessian's eigenvalue density by stochastic Lanczos quadrature",
        lambda ctx, o: spectral_density(
            ctx.model, ctx.loss_fn, ctx.batch, vectors=o.vectors, steps=o.steps, seed=ctx.step, **ctx.common()
        ).as_dict(),
        SpectralDensityOptions,
        views={"histogram": _density_histogram},
        check=lambda o: (
            None
            if 0 < o.vectors <= 1000 and 0 < o.steps and o.vectors * o.steps <= MAX_PRODUCTS
            else f"vectors and steps must be positive, vectors at most 1000 and vectors x steps (products) at most "
            f"{MAX_PRODUCTS}; got {o.vectors} and {o.steps}"
        ),
        sharded=True,
    )
)
