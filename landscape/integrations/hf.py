"""The probes as a Hugging Face ``TrainerCallback`` (``pip install 'landscape[hf]'``).

    from landscape.integrations.hf import LandscapeHFCallback

    trainer = Trainer(model=model, args=args, train_dataset=ds,
                      callbacks=[LandscapeHFCallback("runs/my_bert", every(100))])
    trainer.train()

The Trainer does not hand callbacks the batch. This callback takes it where the model receives
it: a forward pre-hook on the model records the keyword arguments of each training forward
(``input_ids``, ``attention_mask``, ``labels``, ...) and snapshots the RNG and buffers there, so
the probes evaluate the step's own batch with the training forward's dropout masks. The loss
is the model's own ``output.loss`` (the model must receive ``labels``); pass ``loss_fn`` and
``output_fn`` for a model that returns something else. With gradient accumulation the probes
measure the step's last micro-batch; the gradient is recomputed on it (never the clipped one).

``on_pre_optimizer_step`` runs the probes due at step ``t = state.global_step + 1`` (1-based,
as in ``landscape train``); ``on_optimizer_step`` finishes ICS_opti with the optimizer's real
update. Records go to the run directory ``out``. Scalars (``landscape/...``) follow the
Trainer's ``report_to``: ``tensorboard`` writes event files to ``<output_dir>/runs/landscape``
(beside the Trainer's own run folder) and ``wandb`` logs into the Trainer's active W&B run
against ``train/global_step``; other integrations of ``report_to`` are not fed.
``resume=True`` continues ``out`` from the step the Trainer resumes at (records after it are
dropped; the activation-shift baseline starts again).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from landscape.errors import UserError
from landscape.extras import require
from landscape.integrations.common import check_probeable
from landscape.outputs import TensorBoard
from landscape.probes.monitor import Monitor
from landscape.probes.schedules import Schedule

transformers = require("transformers", "landscape.integrations.hf")


def model_loss(output: Any, _targets: Any) -> torch.Tensor:
    """The loss a Hugging Face model computes itself from ``labels``."""
    loss = getattr(output, "loss", None)
    if loss is None and isinstance(output, dict):
        loss = output.get("loss")
    if loss is None:
        raise UserError(
            "LandscapeHFCallback: the model's output has no .loss: the Trainer must pass labels to the model, or pass "
            "loss_fn=(output, batch) -> loss and output_fn="
        )
    return loss


def _identity(output: Any) -> Any:
    return output


class _ActiveWandB:
    """Scalars into the W&B run the Trainer's WandbCallback started, on its step axis."""

    def scalars(self, step: int, values: dict[str, float]) -> None:
        import wandb

        if wandb.run is not None:
            wandb.run.log({**values, "train/global_step": step})

    def close(self) -> None:
        pass


class LandscapeHFCallback(transformers.TrainerCallback):
    """Probes on a schedule inside ``Trainer.train``. ``monitor_options`` go to
    :class:`~landscape.probes.Monitor` (``options``, ``layers``, ``eval_mode``, ...)."""

    def __init__(
        self,
        out: str | Path,
        schedule: Schedule | None = None,
        *,
        probes: Sequence[str] = ("gradient_sweep", "ics_opti"),
        loss_fn: Callable = model_loss,
        output_fn: Callable = _identity,
        outputs: Sequence | None = None,
        follow_report_to: bool = True,
        resume: bool = False,
        force: bool = False,
        **monitor_options,
    ):
        from landscape.probes import registry

        unknown = [p for p in probes if p not in registry.REGISTRY]
        if unknown:
            raise UserError(f"LandscapeHFCallback: unknown probes {unknown}; choose from {', '.join(registry.names())}")
        self.out, self.schedule, self.probes = Path(out), schedule, tuple(probes)
        self.loss_fn, self.output_fn = loss_fn, output_fn
        self.extra_outputs, self.follow_report_to = list(outputs or []), follow_report_to
        self.resume, self.force, self.monitor_options = resume, force, monitor_options
        self.monitor: Monitor | None = None
        self._hook = None
        self._batch = None
        self._busy = False  # the probes' own forwards pass through the hook too: ignore them
        self._checked = False
        self._step = 0

    def _report_outputs(self, args) -> list:
        report_to = args.report_to if isinstance(args.report_to, (list, tuple)) else [args.report_to]
        outputs = []
        if "tensorboard" in report_to or "all" in report_to:
            logdir = os.environ.get("TENSORBOARD_LOGGING_DIR") or os.path.join(args.output_dir, "runs")
            outputs.append(TensorBoard(Path(logdir) / "landscape"))
        if "wandb" in report_to or "all" in report_to:
            outputs.append(_ActiveWandB())
        return outputs

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        # Every rank attaches (under DDP the probes average over the ranks); only the world's rank 0 writes.
        if model is None or optimizer is None:
            raise UserError("LandscapeHFCallback needs the Trainer's model and optimizer (transformers >= 4.45)")
        optimizer = getattr(optimizer, "optimizer", optimizer)  # accelerate wraps the torch optimizer
        outputs = (
            self.extra_outputs + (self._report_outputs(args) if self.follow_report_to else [])
            if state.is_world_process_zero
            else []
        )
        options = dict(self.monitor_options)
        cast = (
            torch.bfloat16 if getattr(args, "bf16", False) else torch.float16 if getattr(args, "fp16", False) else None
        )
        if cast is not None and "autocast" not in options:  # probe under the autocast the Trainer trains under
            options["autocast"] = {"device_type": next(model.parameters()).device.type, "dtype": cast}
        self.monitor = Monitor(
            self.out,
            model,
            optimizer,
            self.loss_fn,
            self.schedule,
            probes=self.probes,
            output_fn=self.output_fn,
            force=self.force,
            step_hook=False,
            outputs=outputs,
            resume_step=state.global_step if self.resume else None,
            **options,
        )
        self._hook = model.register_forward_pre_hook(self._capture, with_kwargs=True)
        self._step = state.global_step

    def _capture(self, module, args, kwargs):
        if self._busy or not module.training or not torch.is_grad_enabled():
            return None  # an evaluation forward, or one of the probes'
        if args:
            raise UserError(
                "LandscapeHFCallback reads the batch from keyword arguments (model(**inputs)), "
                f"but the model got {len(args)} positional ones"
            )
        self._batch = (dict(kwargs), None)
        with self._probing():
            if not self._checked:  # the first training forward, before the first update
                check_probeable(
                    module, self.loss_fn, self._batch, self.output_fn, self.monitor.layers, who="LandscapeHFCallback"
                )
                self._checked = True
            self.monitor.before_forward(self._step + 1)
        return None

    @contextlib.contextmanager
    def _probing(self):
        """While the callback's own code runs, forwards through the hook are the probes', not training's."""
        self._busy = True
        try:
            yield
        finally:
            self._busy = False

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        if self.monitor is not None and self._batch is not None:
            self._step = state.global_step
            with self._probing():
                self.monitor.observe(state.global_step + 1, self._batch)

    def on_optimizer_step(self, args, state, control, **kwargs):
        if self.monitor is not None:
            with self._probing():
                self.monitor.after_step()
            self._step = state.global_step + 1

    def on_log(self, args, state, control, logs=None, **kwargs):
        """The Trainer's own training loss into the run's train records (the report's training curves)."""
        loss = (logs or {}).get("loss")
        if self.monitor is not None and isinstance(loss, (int, float)) and state.global_step > 0:
            self.monitor.log_train(state.global_step, loss=loss)

    def on_train_end(self, args, state, control, **kwargs):
        self._close("done")

    def _close(self, status: str) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        if self.monitor is not None:
            self.monitor.close(status)
            self.monitor = None
