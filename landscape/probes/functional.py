"""The model as a function of a parameter dict, for probes that must not touch the model.

Every probe evaluates ``L(w)`` through :func:`torch.func.functional_call` on dicts:
parameters are passed explicitly (never written into ``p.data``), buffers are *cloned*
for every evaluation (a BatchNorm forward in train mode writes its running statistics
into the buffers it is given), and the RNG state is reset to the same point before every
evaluation (so Dropout draws the same mask for ``L(w)`` and ``L(w - eta g)``) and restored
when the probe ends. ``.grad`` is never touched: gradients come from ``torch.func.grad``.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from landscape.probes.linalg import Params, flat, unflat

Batch = Any  # (inputs, targets), or a mapping of the model's keyword arguments (a Hugging Face batch, labels inside)


def default_output(out: Any) -> torch.Tensor:
    """The tensor a loss sees when a model returns more than a tensor: a tuple/list's first element, or the
    logits of a mapping or object that has them (a Hugging Face ``ModelOutput``). Any other mapping is not
    guessed at: which of its values the loss takes is the user's to say (``output_fn=``)."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out:
        return default_output(out[0])
    if isinstance(out, Mapping):
        if "logits" in out:
            return default_output(out["logits"])
        raise TypeError(
            f"the model returns a mapping with keys {list(out)[:8]} and no 'logits': pass output_fn= to "
            "say which output the loss takes (e.g. output_fn=lambda out: out['scores'])"
        )
    if hasattr(out, "logits"):
        return out.logits
    raise TypeError(f"cannot find the output tensor in a {type(out).__name__}; pass output_fn=")


def model_loss(out: Any) -> torch.Tensor:
    """The loss a model computes itself (``loss_fn=None``): a Hugging Face output's ``loss``, a mapping's
    ``"loss"``, or a scalar the model returns."""
    loss = out.get("loss") if isinstance(out, Mapping) else getattr(out, "loss", out)
    if torch.is_tensor(loss) and loss.numel() == 1:
        return loss.reshape(())
    raise TypeError(
        f"loss_fn=None takes the loss the model computes, but its {type(out).__name__} output has none "
        "(a Hugging Face model computes one when the batch holds 'labels'); pass a loss_fn"
    )


def batch_parts(batch: Batch) -> tuple[Any, Any]:
    """``(inputs, targets)`` of a batch: a pair as given; a mapping is the model's keyword arguments, targets
    inside it (``targets`` None)."""
    if isinstance(batch, Mapping):
        return dict(batch), None
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0], batch[1]
    raise TypeError(
        f"a batch is (inputs, targets) or a mapping of the model's keyword arguments (a Hugging Face "
        f"batch with its labels); got a {type(batch).__name__}"
        + (f" of {len(batch)}" if isinstance(batch, (tuple, list)) else "")
    )


def batch_size(batch: Batch) -> int:
    """Examples in a batch: the first dimension of its first tensor."""

    def first(x):
        if torch.is_tensor(x):
            return x
        values = x.values() if isinstance(x, Mapping) else x if isinstance(x, (tuple, list)) else ()
        return next((t for t in map(first, values) if t is not None), None)

    t = first(batch if isinstance(batch, Mapping) else batch_parts(batch)[0])
    if t is None or t.dim() == 0:
        raise TypeError("a batch needs a tensor whose first dimension counts its examples")
    return len(t)


def take(batch: Batch, start: int, stop: int) -> Batch:
    """Examples ``start:stop`` of a batch (every tensor cut along its first dimension, in any nesting)."""

    def cut(x):
        if torch.is_tensor(x):
            return x[start:stop] if x.dim() else x
        if isinstance(x, Mapping):
            return {k: cut(v) for k, v in x.items()}
        if isinstance(x, (tuple, list)):
            return type(x)(cut(v) for v in x)
        return x

    return cut(batch) if isinstance(batch, Mapping) else tuple(cut(part) for part in batch_parts(batch))


def split_inputs(inputs: Any) -> tuple[tuple, dict]:
    """A batch's inputs: a tensor (one positional argument), a tuple/list (positional
    arguments) or a mapping (keyword arguments)."""
    if isinstance(inputs, Mapping):
        return (), dict(inputs)
    if isinstance(inputs, (tuple, list)):
        return tuple(inputs), {}
    return (inputs,), {}


def current_params(model: nn.Module) -> Params:
    """The parameters probes differentiate (trainable; the optimizer's own under a Monitor), by name, detached
    (views of the live weights, never written); under FSDP2, this rank's shard of each."""
    return {n: local(p.detach()) for n, p in _trainable(model).items()}


def is_dtensor(t: Any) -> bool:
    """A ``torch.distributed.tensor.DTensor`` (FSDP2's sharded parameters, their gradients and optimizer state)."""
    return type(t).__name__ == "DTensor" and hasattr(t, "to_local")


def local(t: torch.Tensor) -> torch.Tensor:
    """This rank's part of a DTensor (a view of its storage); any other tensor as it is."""
    return t.to_local() if is_dtensor(t) else t


def sharded(model: nn.Module) -> bool:
    """Whether the model's parameters are sharded over ranks (FSDP2's ``fully_shard``: DTensor parameters)."""
    return any(is_dtensor(p) for p in model.parameters())


def current_buffers(model: nn.Module) -> Params:
    return {n: b for n, b in model.named_buffers()}


def snapshot_buffers(model: nn.Module) -> Params:
    """Copies of the buffers, e.g. taken before a training forward that will update them."""
    return {n: b.detach().clone() for n, b in model.named_buffers()}


def rng_state() -> dict:
    """The global RNG states (CPU, and every CUDA device once CUDA is in use): what probes
    restore, and what a checkpoint saves."""
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["cpu"])
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available():
        if torch.is_tensor(cuda):  # checkpoints written before 0.2 saved the current device's state only
            torch.cuda.set_rng_state(cuda)
        else:
            torch.cuda.set_rng_state_all(list(cuda))


@contextlib.contextmanager
def mode(model: nn.Module, eval_mode: bool):
    """Evaluate in the model's own mode, or in eval mode if asked; restore every module's flag."""
    if not eval_mode:
        yield
        return
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag


# ------------------------------------------------------------------ how probes evaluate: settings of a probe call

HVP_MODES = ("auto", "exact", "finite_difference")
_HVP_MODE: contextvars.ContextVar[str] = contextvars.ContextVar("landscape_hvp_mode", default="auto")
_AUTOCAST: contextvars.ContextVar[dict | None] = contextvars.ContextVar("landscape_autocast", default=None)
_GROUP: contextvars.ContextVar[Any] = contextvars.ContextVar("landscape_process_group", default=None)
_TRAINABLE: contextvars.ContextVar[frozenset | None] = contextvars.ContextVar("landscape_trainable", default=None)
# Under FSDP2 every vector a probe holds is this rank's shard: inner products are summed over the ranks.
_SHARDED: contextvars.ContextVar[bool] = contextvars.ContextVar("landscape_sharded", default=False)


@contextlib.contextmanager
def evaluation(
    hvp: str | None = None,
    autocast: dict | None = None,
    group: Any = None,
    trainable: frozenset | None = None,
    sharded: bool | None = None,
):
    """Settings for every probe evaluated inside: ``hvp`` (``auto``: exact, by double backward, falling back
    to finite differences where a kernel has no double backward; ``exact``; ``finite_difference``),
    ``autocast`` (keyword arguments of :class:`torch.autocast`, e.g. ``{"device_type": "cpu", "dtype":
    torch.bfloat16}``: forward passes under it, losses and dot products in float32 or wider) and ``group``
    (a ``torch.distributed`` process group, or ``True`` for the default one: losses, gradients and
    Hessian-vector products averaged over its ranks, so a probe means what it means on one process
    holding the global batch). ``trainable``: the names of the parameters probes differentiate and step along
    (default: every parameter with ``requires_grad``; a Monitor passes its optimizer's). ``sharded``: the model is
    sharded over the ranks of ``group`` (FSDP2): every vector is this rank's shard, inner products are summed over
    the ranks, and the objective runs the sharded module itself (:class:`ShardedObjective`). Unset arguments keep
    the enclosing setting."""
    if hvp is not None and hvp not in HVP_MODES:
        raise ValueError(f"hvp must be one of {', '.join(HVP_MODES)}; got {hvp!r}")
    tokens = [
        (var, var.set(value))
        for var, value in (
            (_HVP_MODE, hvp),
            (_AUTOCAST, autocast),
            (_GROUP, group),
            (_TRAINABLE, trainable),
            (_SHARDED, sharded),
        )
        if value is not None
    ]
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


def process_group() -> Any:
    """The process group probes average over (None: one process)."""
    return _GROUP.get()


def average_over_ranks(t: torch.Tensor, group: Any = None) -> torch.Tensor:
    """``t`` averaged over the ranks of ``group`` (a new tensor; ``t`` itself when there is no group)."""
    group = process_group() if group is None else group
    if group is None:
        return t
    import torch.distributed as dist

    g = None if group is True else group
    out = t.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM, group=g)
    return out / dist.get_world_size(g)


def sharded_vectors() -> bool:
    """Whether the vectors probes hold are shards of longer ones (FSDP2, :func:`evaluation`'s ``sharded``)."""
    return _SHARDED.get()


def over_shards(t: torch.Tensor) -> torch.Tensor:
    """A sum over this rank's shard of vectors completed over the ranks under FSDP2 (``t`` itself otherwise)."""
    return sum_over_ranks(t) if _SHARDED.get() else t


def shard_draws(model: nn.Module, names: Sequence[str], k: int, gen: torch.Generator, kind: str) -> torch.Tensor:
    """``k`` seeded random vectors over the parameters ``names`` of an FSDP2 model, as the rows of a matrix of this
    rank's shards: each parameter's full-size draw (``rademacher`` +-1 or ``normal``), vector by vector and parameter
    by parameter in order, cut into the ranks' row chunks as FSDP2's ``Shard(0)`` cuts it, this rank's kept. One
    parameter is drawn at a time, never a model-sized vector; one process making the same draws and concatenating
    them holds the whole vectors (what the tests compare against)."""
    import torch.distributed as dist

    group = process_group()
    g = None if group is True else group
    rank, world = dist.get_rank(g), dist.get_world_size(g)
    live = dict(model.named_parameters())
    rows = []
    for _ in range(k):
        parts = []
        for n in names:
            p = live[n]
            if kind == "rademacher":
                full = torch.randint(0, 2, tuple(p.shape), generator=gen, dtype=torch.int8).double() * 2 - 1
            else:
                full = torch.randn(tuple(p.shape), generator=gen, dtype=torch.float64)
            pieces = list(torch.chunk(full, world, dim=0)) if full.dim() else [full]
            mine = pieces[rank] if rank < len(pieces) else full[:0]
            mine_local = local(p.detach())
            if tuple(mine.shape) != tuple(mine_local.shape):
                raise ValueError(
                    f"parameter {n} is sharded as {tuple(mine_local.shape)} on rank {rank}, not in FSDP2's row chunks "
                    f"of {tuple(p.shape)}: random probe vectors cannot be drawn to match one process"
                )
            parts.append(mine.reshape(-1).to(mine_local.device, mine_local.dtype))
        rows.append(torch.cat(parts))
    return torch.stack(rows)


def sum_over_ranks(t: torch.Tensor) -> torch.Tensor:
    """``t`` summed over the ranks of the probes' process group (``t`` itself without one)."""
    group = process_group()
    return t if group is None else average_over_ranks(t) * group_size()


def group_size() -> int:
    """The number of ranks probes average over (1: one process)."""
    group = process_group()
    if group is None:
        return 1
    import torch.distributed as dist

    return dist.get_world_size(None if group is True else group)


def forward_context():
    """The autocast context probes' forward passes run under (a null context without one)."""
    cast = _AUTOCAST.get()
    return torch.autocast(**cast) if cast else contextlib.nullcontext()


def _dtype_of(v: Params) -> str:
    return str(next(iter(v.values())).dtype).replace("torch.", "")


def fd_step(w: Params, v: Params) -> float:
    """The finite-difference Hessian-vector product's step ``h`` (the points ``w +- h v``): the cube root of
    the dtype's machine epsilon (the central difference's best balance of truncation and rounding),
    relative to the size of the weights: ``||h v|| = eps^(1/3) max(||w||, 1)``."""
    names = list(w)
    eps = torch.finfo(w[names[0]].dtype).eps
    wn, vn = float(norm(w, names)), float(norm(v, names))
    return eps ** (1 / 3) * max(wn, 1.0) / vn if vn > 0 else 0.0


@dataclass
class Cost:
    """Passes a probe made: forward, backward (one per gradient), and Hessian-vector products
    (``fd_hvp`` of them by finite differences, recorded only when nonzero, with the calibrated step's
    ``fd_shrink`` and its estimated relative error ``fd_error``: :class:`FiniteDifference`)."""

    forward: int = 0
    backward: int = 0
    hvp: int = 0
    fd_hvp: int = 0
    fd_shrink: float | None = None
    fd_error: float | None = None

    def as_dict(self) -> dict:
        out = {"forward": self.forward, "backward": self.backward, "hvp": self.hvp}
        if not self.fd_hvp:
            return out
        return {**out, "fd_hvp": self.fd_hvp, "fd_shrink": self.fd_shrink, "fd_error": self.fd_error}


FD_TOLERANCE = 1e-3  # two central differences a factor 4 apart in step agree to this: the step is small enough
FD_REFUSE = 1e-2  # no pair agreed better than this: the products are refused, not returned


class InaccurateProducts(RuntimeError):
    """Finite-difference Hessian-vector products that did not converge on this model and precision."""


FD_SHRINKS = 6  # the calibration's steps at most: h, h/4, ..., h/4^6


class FiniteDifference:
    """Hessian-vector products at ``params`` by central differences of two gradients,
    ``D(h) = (grad L(w + h v) - grad L(w - h v)) / 2h``, each checked against the difference at a quarter of the step.

    The starting step (:func:`fd_step`) balances truncation and rounding for weights of the size of the whole
    ``||w||``; a direction living in small tensors (a language model's embeddings, std 0.02) sees a loss far from
    quadratic over that step: on a small GPT in float32 it gave 7.9 for a top eigenvalue of 35.1. So every product
    computes ``D(h)`` and ``D(h/4)``; where they differ by more than ``FD_TOLERANCE`` (relative), the step shrinks by
    4 and the next pair is compared, until they agree or stop improving (rounding has taken over). The product is
    the Richardson extrapolation ``(16 D(h/4) - D(h)) / 15`` of the best pair (its truncation error O(h^4)); later
    products start from the step reached, so each costs four gradients where its pair agrees at once. The cost
    records the shrink reached (``fd_shrink``, of the starting step) and the largest disagreement of an accepted pair
    (``fd_error``: an estimate of a product's error relative to the operator's scale, the largest ``||Hv|| / ||v||``
    seen; a direction of almost no curvature is all rounding relative to its own tiny product, and accurate
    relative to that scale, which is what Lanczos and the estimators need). Where no pair agrees to ``FD_REFUSE``
    (truncation and rounding leave no step between them: torchvision's ResNet-18 in float32 with BatchNorm in train
    mode, 81% apart at best, the products 1,377 against an exact 752), :class:`InaccurateProducts` is raised: the
    probe refuses rather than return a wrong number."""

    def __init__(self, grad: Callable[[Params], Params], params: Params, cost: Cost):
        self.grad, self.params, self.cost = grad, params, cost
        self.shrink, self.worst = 1.0, 0.0
        self.largest = 0.0  # the largest ||Hv|| / ||v|| seen: the operator's scale, which errors are measured against

    def _difference(self, v: Params, h: float) -> Params:
        w = self.params
        plus, minus = self.grad({n: w[n] + h * v[n] for n in w}), self.grad({n: w[n] - h * v[n] for n in w})
        return {n: (plus[n] - minus[n]) / (2 * h) for n in w}

    def __call__(self, v: Params) -> Params:
        self.cost.fd_hvp += 1
        h = fd_step(self.params, v)
        if h == 0:
            return {n: torch.zeros_like(v[n]) for n in self.params}
        shrink = self.shrink
        larger = self._difference(v, h * shrink)
        best, best_error, best_shrink = None, math.inf, shrink
        v_norm = float(norm(v))
        for _ in range(FD_SHRINKS):
            smaller = self._difference(v, h * shrink / 4)
            # against the operator's scale: a direction of almost no curvature (Hv ~ 0, late in a Krylov space) has
            # a product that is all rounding relative to itself, and accurate relative to ||H||
            size = max(float(norm(smaller)), self.largest * v_norm)
            error = float(norm({n: smaller[n] - larger[n] for n in smaller})) / size if size > 0 else 0.0
            if not math.isfinite(error):
                break
            if error < best_error:
                best = {n: (16 * smaller[n] - larger[n]) / 15 for n in smaller}
                best_error, best_shrink = error, shrink
            if error <= FD_TOLERANCE or error > 4 * best_error:  # agreed, or rounding has taken over
                break
            larger, shrink = smaller, shrink / 4
        if best is None:  # nothing finite: the plain difference, as it is
            best, best_error = larger, math.nan
        if math.isfinite(best_error) and best_error > FD_REFUSE:
            raise InaccurateProducts(
                f"finite-difference Hessian-vector products do not converge on this model at {_dtype_of(v)}: the "
                f"differences at steps a factor 4 apart disagree by {best_error:.0%} at best; probe it in float64 "
                "(model.double()), or with exact products (a model with a double backward, hvp='exact')"
            )
        self.shrink = best_shrink
        if v_norm > 0:
            self.largest = max(self.largest, float(norm(best)) / v_norm)
        self.worst = max(self.worst, best_error) if math.isfinite(best_error) else math.nan
        self.cost.fd_shrink, self.cost.fd_error = self.shrink, self.worst
        return best


@dataclass
class Objective:
    """``L(params)`` for one batch with fixed buffers and RNG: the object every probe differentiates.

    Build it with :meth:`of`; call :meth:`value_and_grad` / :meth:`grad` / :meth:`hvp`.
    """

    model: nn.Module
    loss_fn: Callable | None  # None: the loss the model computes itself (model_loss)
    args: tuple
    kwargs: dict
    targets: Any
    buffers: Params
    rng: dict
    output_fn: Callable = default_output
    cost: Cost = field(default_factory=Cost)

    @classmethod
    def of(
        cls,
        model: nn.Module,
        loss_fn: Callable,
        batch: Batch,
        buffers: Params | None = None,
        rng: dict | None = None,
        output_fn: Callable | None = None,
    ) -> Objective:
        inputs, targets = batch_parts(batch)
        args, kwargs = split_inputs(inputs)
        if cls is Objective and _SHARDED.get():
            cls = ShardedObjective
        return cls(
            model,
            loss_fn,
            args,
            kwargs,
            targets,
            buffers if buffers is not None else current_buffers(model),
            rng if rng is not None else rng_state(),
            output_fn or default_output,
        )

    def __call__(self, params: Params) -> torch.Tensor:
        set_rng_state(self.rng)  # the same dropout masks / random draws for every evaluation
        buffers = {n: b.clone() for n, b in self.buffers.items()}
        with forward_context():
            out = functional_call(self.model, (params, buffers), self.args, self.kwargs, strict=False)
        if self.loss_fn is None:  # the model computes its own loss (a Hugging Face model given its labels)
            return model_loss(out).float() if _AUTOCAST.get() else model_loss(out)
        out = self.output_fn(out)
        if _AUTOCAST.get() and torch.is_tensor(out) and out.is_floating_point():
            out = out.float()  # the loss in float32 whatever the forward's precision
        return self.loss_fn(out, self.targets)

    # Gradients come from torch.autograd.grad on the functional call: nothing accumulates in
    # .grad, and it measured 23% faster than torch.func.grad on VGG (benchmarks/bench_probes.py).
    def _grad(self, names: Sequence[str], params: Params, create_graph: bool = False):
        leaves = {n: params[n].detach().requires_grad_() for n in names}
        with torch.enable_grad():
            value = self({**params, **leaves})
            grads = torch.autograd.grad(value, list(leaves.values()), create_graph=create_graph)
        return value, dict(zip(names, grads)), leaves

    def _reduced(self, value: torch.Tensor, grads: Params) -> tuple[torch.Tensor, Params]:
        """Value and gradients averaged over the ranks (under a process group), detached."""
        if process_group() is None:
            return value.detach(), {n: g.detach() for n, g in grads.items()}
        flat = torch.cat(
            [value.detach().reshape(1).to(next(iter(grads.values())).dtype)]
            + [g.detach().reshape(-1) for g in grads.values()]
        )
        flat = average_over_ranks(flat)
        out, i = {}, 1
        for n, g in grads.items():
            out[n] = flat[i : i + g.numel()].view_as(g)
            i += g.numel()
        return flat[0].to(value.dtype), out

    def value(self, params: Params) -> torch.Tensor:
        """``L(params)`` by one forward pass, no graph (averaged over the ranks under a process group)."""
        self.cost.forward += 1
        with torch.no_grad():
            value = self(params).detach()
        return average_over_ranks(value.reshape(1).to(torch.float64)).reshape(()) if process_group() else value

    def value_and_grad(self, params: Params) -> tuple[torch.Tensor, Params]:
        self.cost.forward += 1
        self.cost.backward += 1
        value, grads, _ = self._grad(list(params), params)
        return self._reduced(value, grads)

    def grad_of(self, names: Sequence[str], params: Params) -> Params:
        """Gradient with respect to ``names`` only: backpropagation stops at the earliest of them."""
        self.cost.forward += 1
        self.cost.backward += 1
        value, grads, _ = self._grad(list(names), params)
        return self._reduced(value, grads)[1]

    def hessian_operator(self, params: Params) -> tuple[torch.Tensor, Params, Callable[[Params], Params]]:
        """``(L(w), grad L(w), v -> H v)``: one forward and one differentiable backward, then every
        Hessian-vector product is one more backward through that retained graph (reverse over
        reverse). Measured 2.2x faster per product than ``jvp(grad(L))``, which re-runs the forward.

        Where a kernel has no double backward (PyTorch's fused attention on the CPU, say), ``hvp="auto"``
        (see :func:`evaluation`) switches to a central difference of two gradients,
        ``(grad L(w + h v) - grad L(w - h v)) / 2h`` with ``h`` from :func:`fd_step`, at the first product;
        ``"finite_difference"`` uses it throughout. Under a process group every product is averaged over
        the ranks."""
        self.cost.forward += 1
        self.cost.backward += 1
        names = list(params)
        mode = _HVP_MODE.get()
        value, grads, leaves = self._grad(names, params, create_graph=mode != "finite_difference")
        route = ["finite_difference" if mode == "finite_difference" else "exact"]
        flat_grads = [grads[n] for n in names]

        def exact(v: Params) -> Params:
            with torch.enable_grad():
                hv = torch.autograd.grad(
                    flat_grads, list(leaves.values()), grad_outputs=[v[n] for n in names], retain_graph=True
                )
            return dict(zip(names, hv))

        def one_gradient(at: Params) -> Params:
            self.cost.forward += 1
            self.cost.backward += 1
            return self._grad(names, at)[1]

        finite_difference = FiniteDifference(one_gradient, params, self.cost)

        def hvp(v: Params) -> Params:
            self.cost.hvp += 1
            if route[0] == "exact":
                try:
                    out = exact(v)
                except RuntimeError as exc:
                    if mode == "exact" or not _no_double_backward(exc):
                        raise
                    route[0] = "finite_difference"
                    out = finite_difference(v)
            else:
                out = finite_difference(v)
            return self._reduced(torch.zeros(()), out)[1] if process_group() is not None else out

        value, grads = self._reduced(value, grads)
        return value, grads, hvp

    def hvp(self, params: Params, v: Params) -> Params:
        """One Hessian-vector product by forward-over-reverse, ``jvp(grad(L))`` (no graph kept)."""
        self.cost.hvp += 1
        return torch.func.jvp(torch.func.grad(self), (params,), (v,))[1]


class ShardedObjective(Objective):
    """``L(params)`` of an FSDP2 model, whose parameters are DTensors sharded over the ranks: ``params`` are this
    rank's shards. Each evaluation writes them into the live shards, runs the sharded module itself (its own
    all-gathers in the forward and reduce-scatter of the gradient, averaged over the ranks as training does),
    reads this rank's shard of the gradient, and puts back the weights, ``.grad`` and buffers exactly as they
    were (copies of this rank's shards only: no parameter-sized vector is ever gathered on a rank). The loss is
    averaged over the ranks, so with equal shares of the global batch every value is the one a single process
    holding that batch computes. FSDP's all-gathered parameters are not leaves a second backward can reach, so
    Hessian-vector products are central differences of two gradients (:func:`fd_step`)."""

    def _reshard(self) -> None:
        """Every FSDP unit back to its sharded parameters (a forward without a backward leaves the root's gathered)."""
        for m in self.model.modules():
            if type(m).__name__.startswith("FSDP") and callable(getattr(m, "reshard", None)):
                m.reshard()

    def _run(self, params: Params, backward: bool) -> tuple[torch.Tensor, Params | None]:
        self._reshard()
        live = {n: p for n, p in self.model.named_parameters() if n in params}
        weights = {n: local(p.detach()).clone() for n, p in live.items()}
        grads = {n: p.grad for n, p in live.items()}
        kept = {n: b.detach().clone() for n, b in self.model.named_buffers()}
        try:
            with torch.no_grad():
                for n, p in live.items():
                    local(p.detach()).copy_(params[n])
                for n, b in self.model.named_buffers():
                    if n in self.buffers:
                        b.copy_(self.buffers[n])
            for p in live.values():
                p.grad = None
            set_rng_state(self.rng)
            with torch.set_grad_enabled(backward), forward_context():
                out = self.model(*self.args, **self.kwargs)
                if self.loss_fn is None:
                    value = model_loss(out)
                else:
                    out = self.output_fn(out)
                    if _AUTOCAST.get() and torch.is_tensor(out) and out.is_floating_point():
                        out = out.float()
                    value = self.loss_fn(out, self.targets)
            got = None
            if backward:
                value.backward()
                got = {
                    n: local(p.grad).detach().clone() if p.grad is not None else torch.zeros_like(params[n])
                    for n, p in live.items()
                }
        finally:
            self._reshard()
            with torch.no_grad():
                for n, p in live.items():
                    local(p.detach()).copy_(weights[n])
                for n, b in self.model.named_buffers():
                    b.copy_(kept[n])
            for n, p in live.items():
                p.grad = grads[n]
        value = average_over_ranks(value.detach().reshape(1).to(torch.float64)).reshape(())
        return value, got

    def __call__(self, params: Params) -> torch.Tensor:
        return self._run(params, backward=False)[0]

    def value(self, params: Params) -> torch.Tensor:
        self.cost.forward += 1
        return self._run(params, backward=False)[0]

    def value_and_grad(self, params: Params) -> tuple[torch.Tensor, Params]:
        self.cost.forward += 1
        self.cost.backward += 1
        return self._run(params, backward=True)

    def grad_of(self, names: Sequence[str], params: Params) -> Params:
        grads = self.value_and_grad(params)[1]
        return {n: grads[n] for n in names}

    def hessian_operator(self, params: Params) -> tuple[torch.Tensor, Params, Callable[[Params], Params]]:
        if _HVP_MODE.get() == "exact":
            raise ValueError(
                "hvp='exact' under FSDP2: its all-gathered parameters have no second backward; use hvp='auto' or "
                "'finite_difference' (central differences of two gradients, error analysis in docs/scale.md)"
            )
        value, grads = self.value_and_grad(params)
        difference = FiniteDifference(lambda at: self.value_and_grad(at)[1], params, self.cost)

        def hvp(v: Params) -> Params:
            self.cost.hvp += 1
            return difference(v)

        return value, grads, hvp

    def hvp(self, params: Params, v: Params) -> Params:
        return self.hessian_operator(params)[2](v)


def _no_double_backward(exc: RuntimeError) -> bool:
    """A kernel without a second derivative (the error PyTorch raises at the double backward)."""
    text = str(exc)
    return (
        "not implemented" in text
        and ("derivative for" in text or "double backward" in text.lower())
        or "does not support double backward" in text.lower()
    )


@contextlib.contextmanager
def untouched(model: nn.Module, eval_mode: bool = False):
    """Run probe code with the model's mode set as asked and the global RNG state restored after."""
    saved = rng_state()
    try:
        with mode(model, eval_mode):
            yield
    finally:
        set_rng_state(saved)


# ------------------------------------------------------------------ layers


MAX_DEFAULT_LAYERS = 32  # the default selection groups a deeper model's layers into at most this many blocks


def _trainable(model: nn.Module) -> Params:
    """The parameters probes differentiate, by name: trainable, and the optimizer's own when
    :func:`evaluation` says which those are (a parameter training never moves is not stepped along)."""
    names = _TRAINABLE.get()
    return {n: p for n, p in model.named_parameters() if p.requires_grad and (names is None or n in names)}


def resolve_layers(model: nn.Module, layers: Iterable | None = None) -> list[tuple[str, list[str]]]:
    """Layers as (name, parameter names), in registration order.

    By default a layer is every module that owns trainable parameters directly; a model with more
    than ``MAX_DEFAULT_LAYERS`` of them is grouped into at most that many blocks, named for the
    modules they are (``layer1``, ``transformer.h.0``; see :func:`default_groups`). ``layers`` may
    select or group: a list of module names (each module with all parameters beneath it;
    ``"type:Conv2d"`` selects every module of a class), or a dict ``{label: [module names]}`` to
    group several modules as one layer. Parameters are resolved by identity: a weight shared by two
    modules (a language model's embedding and output layer) is one parameter, named as
    ``named_parameters()`` names it, and belongs to the first module that uses it.
    """
    params = _trainable(model)
    canonical = {id(p): n for n, p in model.named_parameters()}  # a tied weight: its first name
    modules = dict(model.named_modules())

    def names_under(prefix: str) -> list[str]:
        if prefix not in modules:
            raise KeyError(
                f"no module named '{prefix}'; modules with parameters: {', '.join(n for n, _ in _owning(model))}"
            )
        return [canonical[id(p)] for p in modules[prefix].parameters() if canonical.get(id(p)) in params]

    if layers is not None and not isinstance(layers, dict):
        layers = expand_layer_names(model, layers)
    if layers is None:
        groups, claimed = [], set()
        for name, m in _owning(model):
            own = [canonical[id(p)] for p in m.parameters(recurse=False) if canonical.get(id(p)) in params]
            own = [n for n in own if n not in claimed]
            claimed.update(own)
            if own:
                groups.append((name, own))
        return groups if len(groups) <= MAX_DEFAULT_LAYERS else default_groups(groups)
    if isinstance(layers, dict):
        groups = [
            (label, [n for prefix in prefixes for n in names_under(prefix)]) for label, prefixes in layers.items()
        ]
    else:
        groups = [(prefix, names_under(prefix)) for prefix in layers]
    order = {n: i for i, n in enumerate(params)}
    return [(label, sorted(set(names), key=order.get)) for label, names in groups if names]


def default_groups(layers: list[tuple[str, list[str]]], limit: int = MAX_DEFAULT_LAYERS) -> list[tuple[str, list[str]]]:
    """Per-module layers merged into at most ``limit`` blocks: the finest cut of the module tree that fits
    (``layer1.0`` ... before ``layer1`` ...), each block named for its module. Where that cut is much coarser
    than the limit (a long ``nn.Sequential``: its top level is one module), consecutive runs of the next finer
    cut instead, named ``first..last``. ICS_opti costs a pass per layer: a 41-module ResNet-18 is probed as its
    11 top-level blocks, a 12-layer GPT-2 as its embeddings, 12 transformer blocks and final norm."""

    def cut(depth: int) -> list[tuple[str, list[str]]]:
        out: dict[str, list[str]] = {}
        for name, params in layers:
            out.setdefault(".".join(name.split(".")[:depth]), []).extend(params)
        return list(out.items())

    finer = layers
    for depth in range(max(len(name.split(".")) for name, _ in layers), 0, -1):
        grouped = cut(depth)
        if len(grouped) <= limit:
            if len(grouped) * 4 >= limit:
                return grouped
            break
        finer = grouped
    size = -(-len(finer) // limit)  # ceil: consecutive runs of the finer cut
    runs = [finer[i : i + size] for i in range(0, len(finer), size)]
    return [
        (run[0][0] if len(run) == 1 else f"{run[0][0]}..{run[-1][0]}", [n for _, ps in run for n in ps]) for run in runs
    ]


def expand_layer_names(model: nn.Module, names: Iterable[str]) -> list[str]:
    """Module names, where ``"type:Conv2d"`` stands for every module of that class (in order); a wrapper class made
    from it (FSDP2's ``FSDPConv2d``, a subclass) is that class too."""
    out: list[str] = []
    for name in names:
        if name.startswith("type:"):
            cls = name[len("type:") :]
            matches = [n for n, m in model.named_modules() if type(m).__name__ == cls or _made_from(type(m), cls)]
            if not matches:
                raise KeyError(f"no module of type '{cls}' in {type(model).__name__}")
            out += [n for n in matches if n not in out]
        elif name not in out:
            out.append(name)
    return out


def _made_from(kind: type, cls: str) -> bool:
    """Whether ``kind`` is FSDP2's class made from one named ``cls`` (``FSDPLinear`` from ``Linear``)."""
    return kind.__name__ == f"FSDP{cls}" and any(base.__name__ == cls for base in kind.__mro__[1:])


def _owning(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(name, m) for name, m in model.named_modules() if any(p.requires_grad for p in m.parameters(recurse=False))]


def dot(a: Params, b: Params, names: Iterable[str] | None = None) -> torch.Tensor:
    """The inner product over ``names`` in float64 (under FSDP2, of the whole vectors: shards summed over ranks)."""
    names = list(a) if names is None else names
    local_sum = sum((a[n].double() * b[n].double()).sum() for n in names)
    if not _SHARDED.get():
        return local_sum
    if not torch.is_tensor(local_sum):
        local_sum = torch.zeros((), dtype=torch.float64)
    return sum_over_ranks(local_sum)


def norm(a: Params, names: Iterable[str] | None = None) -> torch.Tensor:
    return dot(a, a, names).sqrt()


# ------------------------------------------------------------------ the Hessian on flat vectors


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
        return flat(self.hvp(unflat(v, self.w, self.names)), self.names)

    def preconditioned(
        self, preconditioner: Params | None
    ) -> tuple[Callable[[torch.Tensor], torch.Tensor], torch.Tensor | None]:
        """``(v -> P^-1/2 H P^-1/2 v, P^-1/2 as a flat vector)`` for a diagonal preconditioner ``P`` per parameter
        (the symmetric form of ``P^-1 H``, with the same eigenvalues); ``(self, None)`` without one."""
        if preconditioner is None:
            return self, None
        scale = flat({k: preconditioner[k].to(self.like) for k in self.names}, self.names).rsqrt()
        return (lambda v: scale * self(scale * v)), scale


def flat_hessian(
    model: nn.Module,
    loss_fn: Callable,
    batch: Batch,
    params: Params | None,
    buffers: Params | None,
    rng: dict | None,
    output_fn: Callable | None,
) -> FlatHessian:
    """One forward and differentiable backward at ``params`` (default: the model's); call inside :func:`untouched`."""
    f = Objective.of(model, loss_fn, batch, buffers, rng, output_fn)
    w = params if params is not None else current_params(model)
    names = list(w)
    _, grad, hvp = f.hessian_operator(w)
    return FlatHessian(f, w, names, grad, hvp, w[names[0]], sum(w[k].numel() for k in names))
