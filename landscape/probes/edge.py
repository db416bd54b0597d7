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
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import nn

from landscape.probes.functional import (
    Batch,
    Objective,
    Params,
    batch_size,
    current_params,
    dot,
    flat_hessian,
    group_size,
    over_shards,
    shard_draws,
    sharded_vectors,
    take,
    untouched,
)
from landscape.probes.linalg import EigenResult, eigenvalues_above
from landscape.probes.optimizer import UnreadableOptimizer, optimizer_facts, preconditioner, threshold_warning
from landscape.probes.registry import MAX_EXAMPLES, MAX_PRODUCTS, Context, Probe, over, register


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
    n = batch_size(batch) // size
    return [take(batch, i * size, (i + 1) * size) for i in range(n)]


def batch_sharpness(
    model: nn.Module,
    loss_fn: Callable,
    batches: list[Batch],
    *,
    eval_mode: bool = False,
    params: Params | None = None,
    buffers: Params | None = None,
    rng: dict | None = None,
    output_fn: Callable | None = None,
) -> BatchSharpnessResult:
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
        return BatchSharpnessResult(
            value=sum(finite) / len(finite) if len(finite) == len(values) else math.nan,
            per_batch=values,
            batch_size=batch_size(batches[0]),
            cost=cost,
        )


def edge_eigenvalues(
    model: nn.Module,
    loss_fn: Callable,
    batch: Batch,
    line: float,
    *,
    block: int = 4,
    max_products: int = 200,
    tol: float = 1e-2,
    start: torch.Tensor | None = None,
    seed: int = 0,
    min_products: int = 20,
    preconditioner: Params | None = None,
    eval_mode: bool = False,
    params: Params | None = None,
    buffers: Params | None = None,
    rng: dict | None = None,
    output_fn: Callable | None = None,
) -> EigenResult:
    """The Hessian's eigenvalues above ``line`` (of ``P^-1/2 H P^-1/2`` with a preconditioner), through one
    retained graph (see :func:`eigenvalues_above`)."""
    with untouched(model, eval_mode):
        H = flat_hessian(model, loss_fn, batch, params, buffers, rng, output_fn)
        matvec = H.preconditioned(preconditioner)[0]
        allsum, draw, n = None, None, H.n
        if sharded_vectors():  # FSDP2: each vector this rank's shard; random columns cut from per-parameter draws
            gen = torch.Generator().manual_seed(seed)
            allsum, n = over_shards, int(over_shards(torch.tensor(float(H.n), dtype=torch.float64)))

            def draw(k: int) -> torch.Tensor:
                if k == 0:
                    return torch.zeros(H.n, 0, dtype=torch.float64)
                return shard_draws(model, H.names, k, gen, "normal").T

        r = eigenvalues_above(
            matvec,
            n,
            line,
            block=block,
            max_products=max_products,
            tol=tol,
            start=start,
            min_products=min_products,
            seed=seed,
            like=H.like,
            allsum=allsum,
            draw=draw,
        )
        r.cost = H.objective.cost.as_dict()
        return r


hessian_eigenvalues_above = edge_eigenvalues  # its name before 0.4


# ------------------------------------------------------------------ the probe entries


@dataclass(frozen=True)
class BatchSharpnessOptions:
    batches: int = 8  # minibatches averaged over (fixed training batches, the same every time)
    batch_size: int = 128  # their size: the training batch size (Andreyev and Beneventano's B)


def _batch_sharpness(ctx: Context, o: BatchSharpnessOptions) -> dict:
    source = ctx.fixed_batch if ctx.fixed_batch is not None else ctx.batch
    minibatches = split_batch(source, o.batch_size)[: o.batches]
    if not minibatches:  # a step's batch smaller than batch_size and no fixed batch
        minibatches = [ctx.batch]
    out = batch_sharpness(ctx.model, ctx.loss_fn, minibatches, **ctx.common()).as_dict()
    out["batch_size"] *= group_size()  # under DDP a minibatch is every rank's share of it
    return {**out, **optimizer_facts(ctx.optimizer)}


register(
    Probe(
        "batch_sharpness",
        "batch sharpness: the mean over minibatches of g_B'H_B g_B / |g_B|^2 (Edge of Stochastic "
        "Stability), against the stability threshold",
        _batch_sharpness,
        BatchSharpnessOptions,
        quantities={
            "batch_sharpness": lambda v: v["value"],
            "batch_over_threshold": lambda v: over(v["value"], v["threshold"]),
        },
        exported=("batch_sharpness",),
        fixed_batch=lambda o: o.batches * o.batch_size,
        check=lambda o: (
            None
            if 0 < o.batches <= 1000 and 0 < o.batch_size <= MAX_EXAMPLES
            else f"batches must be between 1 and 1000 and batch_size between 1 and {MAX_EXAMPLES:,}; got {o.batches} "
            f"and {o.batch_size}"
        ),
    )
)


@dataclass(frozen=True)
class EdgeEigenvaluesOptions:
    fraction: float = 0.75  # the line: this fraction of the stability threshold (0.75 x 2/lr = 1.5/lr)
    block: int = 4  # starting block size (it doubles while the block is full of eigenvalues above the line)
    max_products: int = 200  # Hessian-vector products at most
    min_products: int = 20  # at least (none "above the line" is declared on a smaller Krylov space)
    tol: float = 1e-2  # relative residual every eigenvalue above the line must reach
    batch: int = 0  # 0: each step's batch; N: a fixed training batch of N examples
    warm_start: bool = True  # start from the previous measurement's eigenvectors (checkpointed)


def _edge(ctx: Context, o: EdgeEigenvaluesOptions) -> dict:
    facts = optimizer_facts(ctx.optimizer)
    try:
        P = preconditioner(ctx.optimizer, ctx.model)
    except UnreadableOptimizer as exc:
        return {"values": None, "count": None, "note": str(exc), **facts}
    if facts["threshold"] is None:
        return {"values": None, "count": None, "note": "no stability threshold for this optimizer", **facts}
    previous = ctx.state.get("vectors") if o.warm_start else None
    r = edge_eigenvalues(
        ctx.model,
        ctx.loss_fn,
        ctx.fixed_part(o.batch),
        o.fraction * facts["threshold"],
        block=o.block,
        max_products=o.max_products,
        tol=o.tol,
        start=previous,
        min_products=o.min_products,
        seed=ctx.step,
        preconditioner=P,
        **ctx.common(),
    )
    ctx.state["vectors"] = r.vectors if o.warm_start else None
    return {**r.as_dict(), "fraction": o.fraction, "preconditioned": P is not None, **facts}


def _edge_check(o: EdgeEigenvaluesOptions) -> str | None:
    if not 0 <= o.fraction < 100:  # 0: every positive eigenvalue (as many as max_products find)
        return f"fraction must be a share of the threshold in [0, 100); got {o.fraction}"
    if not 1 <= o.block <= o.max_products <= MAX_PRODUCTS or not 0 <= o.min_products <= o.max_products:
        return (
            f"need 1 <= block <= max_products <= {MAX_PRODUCTS} and 0 <= min_products <= max_products; got block "
            f"{o.block}, min_products {o.min_products}, max_products {o.max_products}"
        )
    if not 0 < o.tol < 1 or not 0 <= o.batch <= MAX_EXAMPLES:
        return f"need tol in (0, 1) and batch in [0, {MAX_EXAMPLES:,}]; got {o.tol} and {o.batch}"
    return None


register(
    Probe(
        "edge_eigenvalues",
        "every Hessian eigenvalue (of P^-1 H under Adam) above a fraction of the stability "
        "threshold, by warm-started block Krylov: how many directions sit at the edge",
        _edge,
        EdgeEigenvaluesOptions,
        quantities={
            "edge_count": lambda v: v["count"],
            "edge_top": lambda v: v["top"],
            "edge_products": lambda v: v["products"],
        },
        exported=("edge_count",),
        attach=threshold_warning,
        fixed_batch=lambda o: o.batch or None,
        check=_edge_check,
        sharded=True,
    )
)
