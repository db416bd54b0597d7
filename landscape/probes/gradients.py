"""The gradient per layer: its norm, and the first layer's over the last's (gradient explosion with depth,
Yang et al. 2019)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

from torch import nn

from landscape.probes.functional import Batch, Objective, Params, current_params, norm, resolve_layers, untouched
from landscape.probes.registry import Context, NoOptions, Probe, layer_list, per_layer, register


@dataclass
class LayerGradNormResult:
    layers: list[str]
    values: dict[str, float]  # ||grad L|| per layer
    total: float  # over all parameters
    cost: dict

    def as_dict(self) -> dict:
        return asdict(self)


def layer_grad_norm(
    model: nn.Module,
    loss_fn: Callable,
    batch: Batch,
    layers: Iterable | dict | None = None,
    *,
    grad: Params | None = None,
    eval_mode: bool = False,
    buffers: Params | None = None,
    rng: dict | None = None,
    output_fn: Callable | None = None,
) -> LayerGradNormResult:
    """``||grad L||`` per layer (as :func:`landscape.probes.resolve_layers` selects and groups them) and over
    all parameters. ``grad`` (e.g. the step's ``p.grad``, from this very forward) saves the one pass it costs."""
    with untouched(model, eval_mode):
        f = Objective.of(model, loss_fn, batch, buffers, rng, output_fn)
        if grad is None:
            grad = f.value_and_grad(current_params(model))[1]
        groups = resolve_layers(model, layers)
        norms = {label: float(norm(grad, names)) for label, names in groups}
        return LayerGradNormResult(
            layers=[label for label, _ in groups], values=norms, total=float(norm(grad)), cost=f.cost.as_dict()
        )


def _layer_grad_norm(ctx: Context, o: NoOptions) -> dict:
    values = layer_grad_norm(ctx.model, ctx.loss_fn, ctx.batch, ctx.layers, grad=ctx.grad, **ctx.common()).as_dict()
    if not any(values["cost"].values()):
        values.pop("cost")  # the step's own gradient, reused: no passes (recorded as before 0.4)
    return values


def _first_over_last(v: dict) -> float | None:
    layers, values = v.get("layers"), per_layer(v.get("values"))
    if not isinstance(layers, list) or not layers or values is None:
        return None
    first, last = values.get(str(layers[0])), values.get(str(layers[-1]))
    return first / last if first is not None and last else None


register(
    Probe(
        "layer_grad_norm",
        "the gradient's norm per layer, and the first layer's over the last's (gradient explosion)",
        _layer_grad_norm,
        NoOptions,
        quantities={
            "layer_grad_norm": lambda v: v["values"],
            "grad_first_over_last": _first_over_last,
            "grad_total": lambda v: v["total"],
        },
        exported=("layer_grad_norm", "grad_first_over_last"),
        views={"layers": layer_list},
        sharded=True,
    )
)
