"""Curvature with respect to a layer's activations: Hessian-vector products in activation space, for any
``nn.Module`` (the Hessian with respect to a layer's output that PyHessian #13 and curvlinops #65 ask for).

For a layer with output ``a`` (the whole batch's, every position), the loss ``L`` of one batch is a function of
``a`` with everything before the layer held fixed. The probe measures, per layer:

- ``grad_norm``: ``||dL/da||``;
- ``curvature``: ``g'H g / g'g`` with ``g = dL/da`` and ``H = d2L/da2`` (the curvature along the gradient, in
  activation space);
- ``top``: the top eigenvalue of ``H`` by Lanczos on Hessian-vector products (``iters`` of them at most, to
  relative accuracy ``tol``), started from ``g``.

How: one forward with a hook on each layer (the hook hands the rest of the network a copy of the output, so
an in-place operation after the layer cannot overwrite what is differentiated), one differentiable backward
to every tapped output at once, then each product is one more backward through that graph from the layer's
gradient back to its output (reverse over reverse). Buffers, RNG state and parameters are left as found.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

import torch
from torch import nn

from landscape.probes.functional import (
    Batch,
    Objective,
    Params,
    current_params,
    expand_layer_names,
    process_group,
    resolve_layers,
    untouched,
)
from landscape.probes.linalg import lanczos, start_vector
from landscape.probes.registry import MAX_PRODUCTS, Context, Probe, layer_list, per_layer, register

TAPS = ("output", "input")


@dataclass
class Tapped:
    """One forward's loss and the tapped tensors: ``outputs[name]`` what the layer returned, ``inputs[name]``
    a copy of its first input that only the layer reads (so ``dL/d inputs[name]`` is the gradient through that
    layer alone)."""

    loss: torch.Tensor
    outputs: dict[str, torch.Tensor]
    inputs: dict[str, torch.Tensor]
    params: Params


@contextlib.contextmanager
def tapped(model: nn.Module, names: Iterable[str], inputs: Iterable[str] = ()):
    """Hooks that record the output of each module in ``names`` (and the first input of each in ``inputs``) on
    the next forward, refusing a module that runs twice or returns something other than one tensor. Yields the
    dicts the forward fills, ``(outputs, inputs)``."""
    modules = dict(model.named_modules())
    names, inputs = list(names), list(inputs)
    missing = [n for n in names + inputs if n not in modules]
    if missing:
        raise KeyError(f"no module named '{missing[0]}'; see model.named_modules()")
    outs: dict[str, torch.Tensor] = {}
    ins: dict[str, torch.Tensor] = {}

    def leafy(t: torch.Tensor) -> torch.Tensor:
        # A frozen part of the network (no parameter before it requires grad) gives an activation without a
        # graph: it becomes a leaf, so what comes after it can still be differentiated with respect to it.
        return t if t.requires_grad else t.detach().requires_grad_()

    def on_output(name):
        def fn(module, args, output):
            if not torch.is_tensor(output) or not output.is_floating_point():
                raise TypeError(
                    f"layer '{name}' returns {type(output).__name__}, not one floating-point tensor; tap a module "
                    "that returns its activations as a tensor"
                )
            if name in outs:
                raise ValueError(f"layer '{name}' runs more than once in a forward; tap a module that runs once")
            outs[name] = leafy(output)
            return outs[name].clone()  # the rest of the network reads a copy (an in-place ReLU changes only that)

        return fn

    def on_input(name):
        def fn(module, args):
            if not args or not torch.is_tensor(args[0]) or not args[0].is_floating_point():
                raise TypeError(f"layer '{name}' takes no tensor as its first input")
            if name in ins:
                raise ValueError(f"layer '{name}' runs more than once in a forward; tap a module that runs once")
            ins[name] = leafy(args[0]).clone()  # read by this layer only
            return (ins[name].clone(), *args[1:])

        return fn

    handles = [modules[n].register_forward_hook(on_output(n)) for n in names]
    handles += [modules[n].register_forward_pre_hook(on_input(n)) for n in inputs]
    try:
        yield outs, ins
    finally:
        for h in handles:
            h.remove()


def tapped_forward(
    f: Objective, model: nn.Module, outputs: Iterable[str], inputs: Iterable[str] = (), params: Params | None = None
) -> Tapped:
    """``f`` evaluated once with the layers tapped (grad enabled): the loss and the tapped tensors."""
    outputs, inputs = list(outputs), list(inputs)
    params = params if params is not None else current_params(model)
    with tapped(model, outputs, inputs) as (outs, ins), torch.enable_grad():
        f.cost.forward += 1
        loss = f(params)
    missing = [n for n in outputs if n not in outs] + [n for n in inputs if n not in ins]
    if missing:
        raise ValueError(f"layer '{missing[0]}' did not run in the forward pass; tap a module the forward calls")
    if not loss.requires_grad:
        raise ValueError("the loss does not depend on the tapped layers")
    return Tapped(loss, outs, ins, params)


def refuse_process_group(probe: str) -> None:
    if process_group() is not None:
        raise ValueError(
            f"{probe} measures one process's activations; run it outside a process group (each rank's batch is its own)"
        )


@dataclass
class ActivationHessianResult:
    layers: list[str]
    grad_norm: dict[str, float]  # ||dL/da||
    curvature: dict[str, float]  # g'Hg / g'g, H the Hessian with respect to the layer's output a
    top: dict[str, float | None]  # its top eigenvalue (None: not asked for)
    residual: dict[str, float | None]  # the top eigenvalue's error bound
    size: dict[str, int]  # the activation's number of entries (batch x features)
    cost: dict

    def as_dict(self) -> dict:
        return asdict(self)


def activation_hessian(
    model: nn.Module,
    loss_fn: Callable,
    batch: Batch,
    layers: Iterable[str],
    *,
    iters: int = 20,
    tol: float = 1e-2,
    seed: int = 0,
    eval_mode: bool = False,
    params: Params | None = None,
    buffers: Params | None = None,
    rng: dict | None = None,
    output_fn: Callable | None = None,
) -> ActivationHessianResult:
    """Per layer named in ``layers`` (module names; ``"type:Conv2d"`` for every module of a class): the
    gradient's norm, the curvature along it and (``iters`` > 0) the top eigenvalue of the Hessian of the loss
    with respect to the layer's output (see the module's docstring). Everything before the layer is held
    fixed; BatchNorm after it runs as the model's mode says (in train mode its batch statistics are part of
    the function, as in training)."""
    refuse_process_group("activation_hessian")
    names = expand_layer_names(model, layers)
    if not names:
        raise ValueError("activation_hessian needs at least one layer")
    with untouched(model, eval_mode):
        f = Objective.of(model, loss_fn, batch, buffers, rng, output_fn)
        t = tapped_forward(f, model, names, params=params)
        acts = [t.outputs[n] for n in names]
        with torch.enable_grad():
            grads = torch.autograd.grad(t.loss, acts, create_graph=True)
        f.cost.backward += 1
        grad_norm, curv, top, residual, size = {}, {}, {}, {}, {}
        for name, a, g in zip(names, acts, grads):

            def hvp(v: torch.Tensor, a=a, g=g) -> torch.Tensor:
                f.cost.hvp += 1
                with torch.enable_grad():
                    (hv,) = torch.autograd.grad(g, a, grad_outputs=v.view_as(a), retain_graph=True, allow_unused=True)
                return torch.zeros_like(v) if hv is None else hv.reshape(-1)

            gd = g.detach().reshape(-1)
            gg = float(gd.double() @ gd.double())
            grad_norm[name] = math.sqrt(gg)
            curv[name] = float(gd.double() @ hvp(gd).double()) / gg if gg > 0 else math.nan
            size[name] = gd.numel()
            if iters > 0:
                q = start_vector(gd.numel(), seed, gd, gd)
                ritz = lanczos(hvp, q, iters, tol)[2]
                top[name], residual[name] = ritz.value, ritz.residual
            else:
                top[name] = residual[name] = None
        return ActivationHessianResult(names, grad_norm, curv, top, residual, size, f.cost.as_dict())


# ------------------------------------------------------------------ the probe entry


@dataclass(frozen=True)
class ActivationHessianOptions:
    layers: tuple[str, ...] = ()  # module names or type:Class; empty: the Monitor's layers (default: parameterised)
    iters: int = 20  # Lanczos steps for the top eigenvalue per layer (0: gradient norm and curvature only)
    tol: float = 1e-2  # stop when the Ritz residual is below tol x |eigenvalue|
    batch: int = 0  # 0: each step's batch; N: the first N examples of a fixed training batch


def _layers(ctx: Context, chosen: tuple[str, ...]) -> list[str]:
    if chosen:
        return list(chosen)
    if ctx.layers is not None and not isinstance(ctx.layers, dict):
        return list(ctx.layers)
    return [label for label, _ in resolve_layers(ctx.model)]


def _activation_hessian(ctx: Context, o: ActivationHessianOptions) -> dict:
    return activation_hessian(
        ctx.model,
        ctx.loss_fn,
        ctx.fixed_part(o.batch),
        _layers(ctx, o.layers),
        iters=o.iters,
        tol=o.tol,
        seed=ctx.step,
        **ctx.common(),
    ).as_dict()


def _check(o: ActivationHessianOptions) -> str | None:
    if not 0 <= o.iters <= MAX_PRODUCTS:
        return f"iters must be between 0 and {MAX_PRODUCTS:,}; got {o.iters}"
    if not 0 < o.tol < 1:
        return f"tol must be between 0 and 1 (a relative accuracy); got {o.tol}"
    if o.batch < 0:
        return f"batch must be 0 (each step's) or a positive number of examples; got {o.batch}"
    return None


def _mean(d) -> float | None:
    vals = list((per_layer(d) or {}).values())
    return sum(vals) / len(vals) if vals else None


register(
    Probe(
        "activation_hessian",
        "per layer, the Hessian with respect to the layer's output: the gradient's norm, the curvature along it "
        "and the top eigenvalue",
        _activation_hessian,
        ActivationHessianOptions,
        quantities={
            "act_grad_norm": lambda v: v["grad_norm"],
            "act_curvature": lambda v: v["curvature"],
            "act_top": lambda v: v["top"],
            "mean_act_curvature": lambda v: _mean(v["curvature"]),
        },
        exported=("act_grad_norm", "act_curvature", "act_top"),
        views={"layers": layer_list},
        check=_check,
        fixed_batch=lambda o: o.batch or None,
    )
)
