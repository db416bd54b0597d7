"""What every integration shares: the attach-time check that the probes can reach the loss."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from landscape.errors import UserError
from landscape.probes.functional import Objective, current_params, evaluation, local, resolve_layers, sharded, untouched


def check_probeable(
    model: torch.nn.Module,
    loss_fn: Callable,
    batch: Any,
    output_fn: Callable | None,
    layers=None,
    who: str = "LandscapeCallback",
) -> None:
    """One evaluation of the probes' loss on ``batch`` (model, buffers and RNG untouched): a model
    the probes cannot differentiate is refused here, in one line, before the first update."""
    params = current_params(model)
    if not params:
        raise UserError(f"{who}: the model has no trainable parameters to probe")
    if layers is not None:
        try:
            resolve_layers(model, layers)
        except KeyError as exc:
            raise UserError(f"{who}: layers: {exc.args[0]}") from None
    try:
        if sharded(model):  # FSDP2: every rank runs the sharded module together (its all-gathers), on its shards
            shards = {n: local(p.detach()).clone() for n, p in params.items()}
            with untouched(model), evaluation(sharded=True):
                value, _ = Objective.of(model, loss_fn, batch, output_fn=output_fn).value_and_grad(shards)
            value = value.requires_grad_()  # the gradient came back: the loss depends on the parameters
        else:
            leaves = {n: p.detach().requires_grad_() for n, p in params.items()}
            with untouched(model), torch.enable_grad():
                value = Objective.of(model, loss_fn, batch, output_fn=output_fn)(leaves)
    except UserError:
        raise
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise UserError(
            f"{who}: the loss cannot be computed from the model's output ({type(exc).__name__}: "
            f"{reason}); pass loss_fn=, batch_fn= or output_fn= that fit this model"
        ) from None
    if not torch.is_tensor(value) or value.numel() != 1 or not value.requires_grad:
        what = (
            "does not depend on the parameters"
            if torch.is_tensor(value) and value.numel() == 1
            else f"is not a scalar tensor ({type(value).__name__}"
            f"{tuple(value.shape) if torch.is_tensor(value) else ''})"
        )
        raise UserError(f"{who}: the loss {what}; pass a loss_fn that returns the scalar training loss")
