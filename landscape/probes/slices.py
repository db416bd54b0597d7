"""Loss-landscape slices around a point and between points, for any ``nn.Module``.

A slice evaluates ``L(w0 + a d1)`` on a line (1D) or ``L(w0 + a d1 + b d2)`` on a grid (2D),
for directions of four kinds:

- ``random``: Gaussian, filter-normalised as Li et al. (NeurIPS 2018, "Visualizing the Loss
  Landscape of Neural Nets") define it: each filter of the direction (each slice ``d[i]`` along
  a weight's first dimension) rescaled to the norm of the matching filter of the weights,
  ``d[i] <- d[i] ||w[i]|| / ||d[i]||``. One-dimensional parameters (biases and normalisation
  scales and shifts) are left out (``ignore="biasbn"``, their direction is zero) or, with
  ``ignore="none"``, given the weights themselves as direction, as Li et al.'s code does;
- ``hessian``: the top eigenvectors of the Hessian at ``w0`` (Lanczos, then Lanczos again on
  the Hessian deflated by the first), along which a slice reads the curvature that a random
  slice averages away (along a random unit direction the expected curvature is ``tr(H)/n``);
- ``interpolate``: ``w(t) = w_a + t (w_b - w_a)``, the line between two points (Goodfellow et
  al., 2015): ``t = 0`` is ``w_a``, ``t = 1`` is ``w_b``;
- ``pca``: the first two principal directions of a trajectory's points minus its last point
  (Li et al., Section 7), with the variance each explains and the trajectory's coordinates.

BatchNorm is evaluated in one of three stated modes (``BN_MODES``): ``train`` (each batch's
own statistics: the landscape the optimizer sees; every other module in eval mode, so no
dropout), ``recompute`` (eval mode, with running statistics recomputed at each point over
fixed batches, as ``torch.optim.swa_utils.update_bn`` does: what a user evaluating that model
sees) and ``checkpoint`` (eval mode with the running statistics stored with ``w0``: what older
tools silently do). A point costs one forward pass per evaluation batch (``recompute`` adds
one per statistics batch), less the first layer where :class:`InputLayer` applies: the first
layer's output is linear in its own parameters, so it is computed once per batch and direction
and combined at each point. Evaluation is pure: parameters, buffers, every module's mode and
momentum, and the RNG are as they were.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from torch.func import functional_call

from landscape.probes.functional import (
    Params,
    current_buffers,
    current_params,
    default_output,
    flat_hessian,
    forward_context,
    split_inputs,
    sum_over_ranks,
    untouched,
)
from landscape.probes.linalg import flat, lanczos, start_vector, unflat
from landscape.probes.registry import MAX_POINTS, Context, Probe, register, top

BN_MODES = ("train", "recompute", "checkpoint")
IGNORE = ("biasbn", "none")
KINDS = ("random", "hessian", "interpolate", "pca")
NORM_TYPES = (nn.modules.batchnorm._BatchNorm,)


# ------------------------------------------------------------------ directions


def filter_normalise(direction: Params, weights: Params, ignore: str = "biasbn") -> Params:
    """Li et al.'s filter normalisation of ``direction`` against ``weights`` (a new dict)."""
    if ignore not in IGNORE:
        raise ValueError(f"ignore must be one of {', '.join(IGNORE)}; got {ignore!r}")
    out = {}
    for name, d in direction.items():
        w = weights[name]
        if d.dim() <= 1:
            out[name] = torch.zeros_like(d) if ignore == "biasbn" else w.detach().clone()
        else:
            dims = tuple(range(1, d.dim()))
            scale = torch.linalg.vector_norm(w, dim=dims, keepdim=True) / (
                torch.linalg.vector_norm(d, dim=dims, keepdim=True) + 1e-10
            )
            out[name] = d * scale
    return out


def random_direction(weights: Params, seed: int, ignore: str = "biasbn") -> Params:
    """A filter-normalised Gaussian direction, drawn on the CPU from ``seed`` (the same on every
    device and never from the global RNG), on the weights' device and dtype."""
    gen = torch.Generator().manual_seed(int(seed))
    raw = {
        n: torch.randn(w.shape, generator=gen, dtype=torch.float64).to(device=w.device, dtype=w.dtype)
        for n, w in weights.items()
    }
    return filter_normalise(raw, weights, ignore)


def interpolation(start: Params, end: Params) -> Params:
    """The direction from ``start`` to ``end``: the slice's coordinate t = 1 is ``end``."""
    missing = sorted(set(start) ^ set(end))
    if missing:
        raise ValueError(f"the two points do not have the same parameters (e.g. '{missing[0]}')")
    for n in start:
        if start[n].shape != end[n].shape:
            raise ValueError(
                f"parameter '{n}' has shape {tuple(start[n].shape)} in one point and {tuple(end[n].shape)} in the other"
            )
    return {n: (end[n] - start[n]).detach() for n in start}


@dataclass
class PcaPlane:
    directions: tuple[Params, Params]  # unit principal directions (flat norm 1)
    explained: tuple[float, float]  # fraction of the centred trajectory's variance each explains
    coords: list[tuple[float, float]]  # each trajectory point's coordinates on the plane, around the last point


def pca_plane(trajectory: Sequence[Params], ignore: str = "biasbn") -> PcaPlane:
    """Li et al.'s Section 7 plane: PCA of ``w_i - w_n`` over the trajectory ``w_0 .. w_n``
    (rows centred on their mean, as sklearn's PCA in their code does; one-dimensional
    parameters left out with ``ignore="biasbn"``). The coordinates are the projections of each
    ``w_i - w_n`` on the two (orthonormal) directions, the last point at (0, 0)."""
    if len(trajectory) < 3:
        raise ValueError(f"a PCA plane needs at least 3 points of a trajectory; got {len(trajectory)}")
    last = trajectory[-1]
    names = [n for n in last if not (ignore == "biasbn" and last[n].dim() <= 1)]
    M = torch.stack([flat({n: (w[n] - last[n]).double() for n in names}, names) for w in trajectory[:-1]])
    # Li et al.'s code runs sklearn's PCA on these rows, which centres them on their mean first.
    _, s, vt = torch.linalg.svd(M - M.mean(0, keepdim=True), full_matrices=False)
    total = float((s**2).sum())
    if total == 0 or len(s) < 2:
        raise ValueError("the trajectory does not move: every point equals the last")
    basis = vt[:2]
    like = {n: last[n] for n in names}
    dirs = []
    for row in basis:
        d = unflat(row.to(last[names[0]].dtype), like, names)
        dirs.append({n: d[n] if n in d else torch.zeros_like(last[n]) for n in last})
    A = basis.T  # n x 2, orthonormal columns
    coords = [tuple(float(c) for c in A.T @ r) for r in M] + [(0.0, 0.0)]
    return PcaPlane((dirs[0], dirs[1]), (float(s[0] ** 2) / total, float(s[1] ** 2) / total), coords)


def hessian_directions(
    model: nn.Module,
    loss_fn: Callable,
    batch,
    k: int = 2,
    *,
    iters: int = 30,
    tol: float = 1e-4,
    seed: int = 0,
    params: Params | None = None,
    buffers: Params | None = None,
    eval_mode: bool = False,
    output_fn: Callable | None = None,
) -> tuple[list[Params], list[float]]:
    """The top ``k`` Hessian eigenvectors (unit norm) and eigenvalues at ``params`` on ``batch``:
    Lanczos for the first, then Lanczos on the Hessian deflated by those already found."""
    with untouched(model, eval_mode):
        H = flat_hessian(model, loss_fn, batch, params, buffers, None, output_fn)
        found: list[tuple[float, torch.Tensor]] = []

        def matvec(v: torch.Tensor) -> torch.Tensor:
            out = H(v)
            for lam, u in found:
                out = out - lam * torch.dot(u, v) * u
            return out

        for i in range(k):
            ritz = lanczos(matvec, start_vector(H.n, seed + i, H.like), iters, tol)[2]
            if ritz.vector is None:
                raise ValueError("the Hessian has no finite eigenvector at this point (non-finite loss?)")
            found.append((ritz.value, ritz.vector))
        return [unflat(u, H.w, H.names) for _, u in found], [lam for lam, _ in found]


def check_direction(direction: Params, weights: Params) -> None:
    """A direction fits the weights: the same names and shapes (raises ValueError naming the first misfit)."""
    extra = sorted(set(direction) - set(weights))
    missing = sorted(set(weights) - set(direction))
    if extra or missing:
        what = f"has '{extra[0]}', which the model does not" if extra else f"lacks the model's '{missing[0]}'"
        raise ValueError(f"the direction does not fit the model: it {what}")
    for n, d in direction.items():
        if tuple(d.shape) != tuple(weights[n].shape):
            raise ValueError(
                f"the direction does not fit the model: '{n}' is {tuple(d.shape)}, the model's "
                f"{tuple(weights[n].shape)}"
            )


# ------------------------------------------------------------------ grids


def grid_coords(dims: int, points: int, lo: float, hi: float) -> list[tuple[float, ...]]:
    """The slice's points in order: a line of ``points`` from lo to hi, or a ``points x points``
    grid, row-major (the first coordinate varies slowest)."""
    if dims not in (1, 2):
        raise ValueError(f"dims must be 1 or 2; got {dims}")
    if points < 2:
        raise ValueError(f"a grid needs at least 2 points per side; got {points}")
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"the range must be a:b with a < b (finite); got {lo}:{hi}")
    axis = [lo + (hi - lo) * i / (points - 1) for i in range(points)]
    return [(a,) for a in axis] if dims == 1 else [(a, b) for a in axis for b in axis]


def shard(n_points: int, k: int, n: int) -> list[int]:
    """Point indices of shard ``k`` of ``n`` (round-robin: shards take equal work on a grid whose cost varies)."""
    if not 0 <= k < n:
        raise ValueError(f"shard {k} of {n} does not exist")
    return list(range(k, n_points, n))


# ------------------------------------------------------------------ evaluation


@contextlib.contextmanager
def _bn_mode(model: nn.Module, bn: str):
    """Eval mode for every module; BatchNorm in train mode for ``train`` (batch statistics), and
    momentum None (a cumulative average) for ``recompute``. Every flag and momentum restored."""
    saved = [(m, m.training, getattr(m, "momentum", None)) for m in model.modules()]
    try:
        model.eval()
        for m in model.modules():
            if isinstance(m, NORM_TYPES):
                if bn == "train":
                    m.train()
                elif bn == "recompute":
                    m.momentum = None
        yield
    finally:
        for m, flag, momentum in saved:
            m.training = flag
            if isinstance(m, NORM_TYPES):
                m.momentum = momentum


def _bn_buffers(model: nn.Module) -> set[str]:
    return {
        f"{name}.{b}" if name else b
        for name, m in model.named_modules()
        if isinstance(m, NORM_TYPES)
        for b, _ in m.named_buffers(recurse=False)
    }


INPUT_LAYER_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
INPUT_LAYER_BYTES = 2**29  # the most memory the first layer's cached outputs may take (512 MiB)
# A cached point costs 1 + k passes over the layer's output (copy and axpys), a computed one the layer's
# multiply-adds: ``auto`` caches only a layer with at least this many multiply-adds per output element
# per pass. Measured (benchmarks/bench_slices.py): fc-tanh's first layer (3,072 per element) 3.3-3.6x
# faster with the cache; VGG-11's first conv (27 per element) from 10% faster to 20% slower over three
# runs, no gain this machine can resolve.
INPUT_LAYER_MIN_MACS = 32


class _Found(Exception):
    pass


class InputLayer:
    """The first layer's outputs at every point of a slice, from 1 + k outputs per batch.

    When the model applies an ``nn.Linear`` or ``nn.ConvNd`` (the exact classes, so ``forward`` is
    theirs) to its own input tensor, that layer's output is a linear map of its (weight, bias):
    ``f(x; w0 + sum_i c_i d_i) = f(x; w0) + sum_i c_i f(x; d_i)``. :meth:`build` computes
    ``f(x; w0)`` and each ``f(x; d_i)`` once per batch; each point then costs an axpy instead
    of the layer. This pays most where the first layer carries most of the work (an MLP on
    images: fc-tanh's first layer is 93% of its multiply-adds) and little on a VGG (a 3-channel
    conv). The layer's forward is replaced only while a point is evaluated, and only for the input
    tensor it was built for, or a contiguous view of exactly its memory (``nn.Flatten``): identity,
    not equality. Any other call, e.g. a second use of the layer or statistics batches that are not
    the evaluation batches, runs the layer.
    Results equal the plain forward up to rounding (float64 tests: 1e-12)."""

    def __init__(self, module: nn.Module, outputs: list[list[torch.Tensor]]):
        self.module, self.outputs = module, outputs
        self.inputs: list[tuple[torch.Tensor, int]] = []

    @classmethod
    def build(
        cls,
        model: nn.Module,
        origin: Params,
        buffers: Params,
        directions: Sequence[Params],
        batches: Sequence,
        prepare: Callable,
        n_points: int,
        budget: int = INPUT_LAYER_BYTES,
        min_macs: int = INPUT_LAYER_MIN_MACS,
    ) -> InputLayer | None:
        """The model's input layer with its outputs cached, or None where that does not apply or
        pay: no such layer, a grid (``n_points``: the whole grid, so that every shard of it takes the same
        path and gives the same bits) of at most 1 + k points, or a cache over ``budget`` bytes."""
        if n_points <= 1 + len(directions):
            return None
        module, names, outputs, used = None, {}, [], 0
        for x, _ in batches:
            layer = _first_layer(model, origin, buffers, prepare(x))  # with the tensor it reads (a view)
            if layer is None or (module is not None and layer[1] is not module):
                return None
            if module is None:
                name, module, _ = layer
                if macs_per_output(module) < min_macs * (1 + len(directions)):
                    return None
                names = {
                    local: f"{name}.{local}" if name else local for local, _ in module.named_parameters(recurse=False)
                }
                if any(full not in origin or any(full not in d for d in directions) for full in names.values()):
                    return None
            with forward_context():
                per = [
                    functional_call(module, {k: src[f] for k, f in names.items()}, (layer[2],))
                    for src in (origin, *directions)
                ]
            used += sum(t.numel() * t.element_size() for t in per)
            if used > budget:
                return None
            outputs.append(per)
        return cls(module, outputs) if outputs else None

    @contextlib.contextmanager
    def at(self, coords: Sequence[float]):
        """Within: the layer answers from the cache at ``coords`` for the inputs it was built on."""
        original = self.module.forward
        self.inputs = []

        def forward(x, *rest, **kw):
            b = next((i for raw, i in self.inputs if reads_input(x, raw)), None)
            if b is None or rest or kw:
                return original(x, *rest, **kw)
            base, *dirs = self.outputs[b]
            out = base.clone()
            for c, d in zip(coords, dirs):
                out.add_(d, alpha=float(c))
            return out

        self.module.forward = forward
        try:
            yield self
        finally:
            del self.module.forward  # back to the class's forward

    def batch(self, index: int, inputs: tuple) -> None:
        """Mark ``inputs[0]`` as batch ``index``'s input for the point being evaluated."""
        self.inputs = [(inputs[0], index)] if inputs and index is not None else []


def macs_per_output(module: nn.Module) -> int:
    """Multiply-adds per output element of a Linear or ConvNd layer."""
    if isinstance(module, nn.Linear):
        return module.in_features
    return module.in_channels // module.groups * math.prod(module.kernel_size)


def reads_input(t, raw) -> bool:
    """Whether ``t`` is the tensor ``raw`` or a contiguous view of exactly its memory (``nn.Flatten``
    of the input): then a layer applied to ``t`` reads the model's own input and nothing else."""
    if t is raw:
        return True
    return (
        isinstance(t, torch.Tensor)
        and isinstance(raw, torch.Tensor)
        and t.is_contiguous()
        and raw.is_contiguous()
        and t.numel() == raw.numel()
        and t.dtype == raw.dtype
        and t.device == raw.device
        and t.data_ptr() == raw.data_ptr()
    )


def _first_layer(
    model: nn.Module, params: Params, buffers: Params, inputs
) -> tuple[str, nn.Module, torch.Tensor] | None:
    """The first parameterised module a forward reaches, with the tensor it is called on, if it is an
    input layer: of ``INPUT_LAYER_TYPES``, called on the model's own input tensor or a view of exactly
    its memory (:func:`reads_input`), with only ``weight`` and ``bias`` as parameters (weight
    normalisation's ``weight_g`` and ``weight_v`` make the map nonlinear), the class's own forward and
    no forward pre-hook. The forward stops there, so this costs only what runs before it."""
    args, kwargs = split_inputs(inputs)
    found: list = []
    mods = {m: n for n, m in model.named_modules() if any(True for _ in m.parameters(recurse=False))}

    def hook(module, inp):
        found.append((mods[module], module, inp))
        raise _Found

    handles = [m.register_forward_pre_hook(hook) for m in mods]
    try:
        with forward_context():
            functional_call(model, (params, {n: b.clone() for n, b in buffers.items()}), args, kwargs, strict=False)
    except _Found:
        pass
    finally:
        for h in handles:
            h.remove()
    if not found:
        return None
    name, module, inp = found[0]
    own = {n for n, _ in module.named_parameters(recurse=False)}
    plain = (
        "weight" in own
        and own <= {"weight", "bias"}
        and "forward" not in vars(module)
        and not module._forward_pre_hooks
    )  # a user's pre-hook may change the weight or the input
    if type(module) in INPUT_LAYER_TYPES and plain and args and len(inp) == 1 and reads_input(inp[0], args[0]):
        return name, module, inp[0]
    return None


@dataclass
class PointValue:
    loss: float
    acc: float | None  # None unless the targets are class labels


def evaluate_point(
    model: nn.Module,
    loss_fn: Callable,
    params: Params,
    buffers: Params,
    batches: Iterable,
    bn: str = "checkpoint",
    bn_batches: Iterable | None = None,
    prepare: Callable | None = None,
    output_fn: Callable | None = None,
    input_layer: InputLayer | None = None,
) -> PointValue:
    """Loss (the batch means averaged with the batches' sizes as weights: ``loss_fn`` must
    return a batch mean) and accuracy at ``params``; call inside :func:`slicing` (and, with an
    ``input_layer``, inside its :meth:`InputLayer.at` for this point)."""
    mark = input_layer.batch if input_layer is not None else (lambda index, inputs: None)
    prepare = prepare or (lambda x: x)
    output_fn = output_fn or default_output
    bufs = {n: b.clone() for n, b in buffers.items()}
    bn_mods = [m for m in model.modules() if isinstance(m, NORM_TYPES)]
    if bn == "recompute" and bn_mods:  # without BatchNorm there are no statistics to recompute
        names = _bn_buffers(model)
        for n in names:  # reset_running_stats, on the clones
            if n.endswith("running_mean") or n.endswith("num_batches_tracked"):
                bufs[n].zero_()
            elif n.endswith("running_var"):
                bufs[n].fill_(1)
        for m in bn_mods:
            m.train()
        for i, x in enumerate(bn_batches if bn_batches is not None else (b[0] for b in batches)):
            args, kwargs = split_inputs(prepare(x))
            mark(i if bn_batches is None else None, args)
            functional_call(model, (params, bufs), args, kwargs, strict=False)
        for m in bn_mods:
            m.eval()
    total, correct, n_total = 0.0, 0, 0
    classify = None
    for i, (x, y) in enumerate(batches):
        args, kwargs = split_inputs(prepare(x))
        mark(i, args)
        with forward_context():
            out = output_fn(functional_call(model, (params, bufs), args, kwargs, strict=False))
        out = out.float() if out.is_floating_point() and out.dtype in (torch.float16, torch.bfloat16) else out
        n = len(y)
        total += float(loss_fn(out, y)) * n
        if classify is None:
            classify = out.dim() == 2 and not y.is_floating_point() and y.dim() == 1
        if classify:
            correct += int((out.argmax(1) == y).sum())
        n_total += n
    if n_total == 0:
        raise ValueError("the slice's data are empty: pass at least one batch")
    total, correct, n_total = sum_over_ranks(
        torch.tensor([total, correct, n_total], dtype=torch.float64, device=out.device)
    ).tolist()  # DDP: every rank's share
    return PointValue(total / n_total, correct / n_total if classify else None)


@contextlib.contextmanager
def slicing(model: nn.Module, bn: str):
    """The context every slice evaluation runs in: no autograd, modules set for ``bn``, RNG restored."""
    if bn not in BN_MODES:
        raise ValueError(f"bn must be one of {', '.join(BN_MODES)}; got {bn!r}")
    with untouched(model), torch.no_grad(), _bn_mode(model, bn):
        yield


def evaluate_slice(
    model: nn.Module,
    loss_fn: Callable,
    directions: Sequence[Params],
    coords: Sequence[Sequence[float]],
    batches: Sequence,
    *,
    bn: str,
    origin: Params | None = None,
    buffers: Params | None = None,
    bn_batches: Sequence | None = None,
    prepare: Callable | None = None,
    output_fn: Callable | None = None,
    indices: Iterable[int] | None = None,
    on_point: Callable[[int, PointValue], None] | None = None,
    input_layer: bool | str = "auto",
) -> dict[int, PointValue]:
    """``L(origin + sum_i c_i d_i)`` at every point of ``coords`` (or those of ``indices``).

    ``origin`` defaults to the model's parameters, ``buffers`` to its buffers (the running
    statistics ``checkpoint`` mode uses); ``batches`` are ``(inputs, targets)`` on the model's
    device (``prepare`` maps stored inputs, e.g. uint8 images, to the model's); ``bn_batches``
    are the inputs ``recompute`` computes statistics over (default: the evaluation inputs).
    ``on_point(index, value)`` is called as each point is done (e.g. to append it to a file).
    ``input_layer``: ``"auto"`` caches the first layer (:class:`InputLayer`) where that pays
    (``INPUT_LAYER_MIN_MACS``), ``True`` wherever it applies, ``False`` never."""
    if input_layer not in ("auto", True, False):
        raise ValueError(f"input_layer must be 'auto', True or False; got {input_layer!r}")
    origin = origin if origin is not None else current_params(model)
    buffers = buffers if buffers is not None else current_buffers(model)
    for d in directions:
        check_direction(d, origin)
    batches = list(batches)
    if not batches:
        raise ValueError("the slice's data are empty: pass at least one batch")
    out: dict[int, PointValue] = {}
    work = {n: torch.empty_like(w) for n, w in origin.items()}
    todo = list(range(len(coords)) if indices is None else indices)
    for i in todo:
        if len(coords[i]) != len(directions):
            raise ValueError(f"point {i} has {len(coords[i])} coordinates for {len(directions)} directions")
    with slicing(model, bn):
        cache = (
            InputLayer.build(
                model,
                origin,
                buffers,
                directions,
                batches,
                prepare or (lambda x: x),
                len(coords),
                min_macs=INPUT_LAYER_MIN_MACS if input_layer == "auto" else 0,
            )
            if input_layer
            else None
        )
        for i in todo:
            c = coords[i]
            for n, w in origin.items():
                p = work[n]
                p.copy_(w)
                for ci, d in zip(c, directions):
                    p.add_(d[n], alpha=float(ci))
            with cache.at(c) if cache is not None else contextlib.nullcontext():
                value = evaluate_point(
                    model, loss_fn, work, buffers, batches, bn, bn_batches, prepare, output_fn, cache
                )
            out[i] = value
            if on_point is not None:
                on_point(i, value)
    return out


def quadratic_fit(coords: Sequence[float], losses: Sequence[float]) -> tuple[float, float, float]:
    """Least-squares ``L(a) ~ c0 + c1 a + c2 a^2`` over a 1D slice: (c0, c1, c2)."""
    A = torch.tensor([[1.0, a, a * a] for a in coords], dtype=torch.float64)
    y = torch.tensor(list(losses), dtype=torch.float64).unsqueeze(1)
    sol = torch.linalg.lstsq(A, y).solution.squeeze(1)
    return float(sol[0]), float(sol[1]), float(sol[2])


def flat_norm(d: Params) -> float:
    return float(math.sqrt(sum(float((t.double() ** 2).sum()) for t in d.values())))


# ------------------------------------------------------------------ the probe entry: a line through the weights


@dataclass(frozen=True)
class LossSliceOptions:
    points: int = 9  # points of the line, from -radius to radius (an odd number includes the point itself)
    radius: float = 1.0  # the line's half-length, in units of the filter-normalised direction
    ignore: Literal["biasbn", "none"] = "biasbn"  # leave biases and normalisation parameters out (Li et al.)
    bn: Literal["train", "checkpoint"] = "train"  # BatchNorm on the batch's statistics, or the running ones


def loss_slice(
    model: nn.Module,
    loss_fn: Callable,
    batch,
    *,
    points: int = 9,
    radius: float = 1.0,
    ignore: str = "biasbn",
    bn: str = "train",
    seed: int = 0,
    buffers: Params | None = None,
    output_fn: Callable | None = None,
) -> dict:
    """A 1D slice of the batch loss along a filter-normalised random direction (seeded by ``seed``):
    ``points`` points from ``-radius`` to ``radius``, the loss at the weights themselves, and the curvature
    of a quadratic fitted to the line (per unit length of the direction)."""
    w = current_params(model)
    d = random_direction(w, seed=seed, ignore=ignore)
    coords = grid_coords(1, points, -radius, radius)
    values = evaluate_slice(
        model, loss_fn, [d], [*coords, (0.0,)], [batch], bn=bn, origin=w, buffers=buffers, output_fn=output_fn
    )  # the last point: the weights themselves
    losses = [values[i].loss for i in range(len(coords))]
    loss0 = values[len(coords)].loss
    alphas = [c[0] for c in coords]
    norm2 = flat_norm(d) ** 2
    fit = quadratic_fit(alphas, losses) if all(math.isfinite(x) for x in losses) else (math.nan,) * 3
    return {
        "alphas": alphas,
        "losses": losses,
        "loss": loss0,
        "direction_norm": math.sqrt(norm2),
        "curvature": 2 * fit[2] / norm2 if norm2 > 0 else None,
        "ignore": ignore,
        "bn": bn,
        "seed": seed,
    }


def _loss_slice(ctx: Context, o: LossSliceOptions) -> dict:
    return loss_slice(
        ctx.model,
        ctx.loss_fn,
        ctx.batch,
        points=o.points,
        radius=o.radius,
        ignore=o.ignore,
        bn=o.bn,
        seed=ctx.step,
        buffers=ctx.buffers,
        output_fn=ctx.output_fn,
    )


def _slice_check(o: LossSliceOptions) -> str | None:
    if not 3 <= o.points <= MAX_POINTS:
        return f"points must be between 3 (a quadratic is fitted to them) and {MAX_POINTS}; got {o.points}"
    if not 0 < o.radius <= 1e3:
        return f"radius must be a positive number of filter-normalised directions, at most 1000; got {o.radius}"
    return None


register(
    Probe(
        "loss_slice",
        "the loss along a filter-normalised random direction (Li et al. 2018) around the weights: "
        "its rise and its fitted curvature",
        _loss_slice,
        LossSliceOptions,
        quantities={"slice_rise": lambda v: top(v["losses"]) - v["loss"], "slice_curvature": lambda v: v["curvature"]},
        exported=("slice_rise", "slice_curvature"),
        check=_slice_check,
    )
)
