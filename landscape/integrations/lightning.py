"""The probes as a PyTorch Lightning callback (``pip install 'landscape[lightning]'``).

    from landscape.integrations.lightning import LandscapeCallback

    trainer = lightning.Trainer(max_steps=2000, callbacks=[LandscapeCallback("runs/my_cnn", every(100))])
    trainer.fit(module, datamodule)

The same probes, schedules and records as :class:`landscape.probes.Monitor`, on Lightning's
own hooks: the step's batch before its forward (``on_train_batch_start``: buffers and RNG are
snapshot there, so the probes see the training forward's own dropout masks and BatchNorm
statistics), the accumulated gradient before ``optimizer.step()`` (``on_before_optimizer_step``:
gradient sweep, sharpness, curvature, activation statistics) and the new weights after it
(``on_train_batch_end``: ICS_opti with the optimizer's real update). Steps are 1-based, as in
``landscape train``: step ``t`` is the ``t``-th optimizer update (``trainer.global_step + 1``).

Probe records go to the run directory ``out`` (``landscape report out`` reads it); their
scalars (``landscape/beta_eff``, ... see ``landscape.outputs``) go to the trainer's loggers.
The callback's state (the step and what the next probes depend on) is saved in Lightning's
checkpoints; ``trainer.fit(..., ckpt_path=...)`` continues the run directory from the
checkpoint's step, dropping records written after it (no gap, no duplicate).

The loss is ``loss_fn(model(inputs), targets)`` on ``batch_fn(batch) -> (inputs, targets)``
(default: a batch that is ``(inputs, targets)``, and cross-entropy). With gradient
accumulation the probes measure the step's last micro-batch. Probes run on global rank 0.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from landscape.errors import UserError
from landscape.extras import require
from landscape.integrations.common import check_probeable
from landscape.outputs import ScalarFn
from landscape.probes.monitor import Monitor
from landscape.probes.schedules import Schedule

pl = require("lightning.pytorch", "landscape.integrations.lightning")


def default_batch_fn(batch: Any) -> tuple[Any, Any]:
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0], batch[1]
    raise UserError(
        f"LandscapeCallback cannot read a {type(batch).__name__} batch as (inputs, targets); "
        "pass batch_fn=lambda batch: (inputs, targets)"
    )


class LandscapeCallback(pl.Callback):
    """Probes on a schedule inside ``Trainer.fit``. ``monitor_options`` are passed to
    :class:`~landscape.probes.Monitor` (``options``, ``layers``, ``probe_batch``, ``eval_mode``, ...).
    ``outputs``: more outputs (``landscape.outputs.TensorBoard``...); ``log_scalars=False`` keeps scalars off the
    loggers.
    ``train_every``: steps between train-loss records in the run directory (from the step's
    ``training_step`` output)."""

    def __init__(
        self,
        out: str | Path,
        schedule: Schedule | None = None,
        *,
        probes: Sequence[str] = ("gradient_sweep", "ics_opti"),
        loss_fn: Callable = F.cross_entropy,
        batch_fn: Callable[[Any], tuple[Any, Any]] = default_batch_fn,
        output_fn: Callable | None = None,
        log_scalars: bool = True,
        outputs: Sequence | None = None,
        train_every: int = 50,
        force: bool = False,
        **monitor_options,
    ):
        from landscape.probes import registry

        unknown = [p for p in probes if p not in registry.REGISTRY]
        if unknown:
            raise UserError(f"LandscapeCallback: unknown probes {unknown}; choose from {', '.join(registry.names())}")
        if train_every <= 0:
            raise UserError(f"LandscapeCallback: train_every must be positive; got {train_every}")
        self.out, self.schedule, self.probes = Path(out), schedule, tuple(probes)
        self.loss_fn, self.batch_fn, self.output_fn = loss_fn, batch_fn, output_fn
        self.log_scalars, self.extra_outputs, self.train_every = log_scalars, list(outputs or []), train_every
        self.force, self.monitor_options = force, monitor_options
        self.monitor: Monitor | None = None
        self._resumed: dict | None = None
        self._checked = False
        self._batch = None
        self._step = 0  # optimizer updates completed (what a checkpoint taken now has seen)

    # ---------------------------------------------------------------- attach
    def on_train_start(self, trainer, pl_module) -> None:
        # Every rank attaches (under strategy="ddp" the probes average over the ranks); only rank 0 writes.
        if len(trainer.optimizers) != 1:
            raise UserError(f"LandscapeCallback probes one optimizer; this module has {len(trainer.optimizers)}")
        if not pl_module.automatic_optimization:
            raise UserError(
                "LandscapeCallback needs automatic optimization (Lightning calls optimizer.step()); "
                "with manual optimization use landscape.probes.Monitor in training_step"
            )
        outputs = list(self.extra_outputs)
        if self.log_scalars and trainer.loggers:
            loggers = list(trainer.loggers)
            outputs.append(ScalarFn(lambda step, values: [lg.log_metrics(values, step=step) for lg in loggers]))
        resume_step = None
        if self._resumed is not None:
            resume_step = self._resumed.get("step", trainer.global_step)
        elif trainer.global_step > 0:  # a checkpoint without this callback's state
            resume_step = trainer.global_step
        options = dict(self.monitor_options)
        cast = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(str(trainer.precision))
        if cast is not None and "autocast" not in options:  # probe under the autocast Lightning trains under
            options["autocast"] = {"device_type": pl_module.device.type, "dtype": cast}
        self.monitor = Monitor(
            self.out,
            pl_module,
            trainer.optimizers[0],
            self.loss_fn,
            self.schedule,
            probes=self.probes,
            output_fn=self.output_fn,
            force=self.force,
            step_hook=False,
            outputs=outputs if trainer.is_global_zero else [],
            resume_step=resume_step,
            **options,
        )
        if self._resumed is not None:
            self.monitor.load_state_dict(self._resumed.get("monitor", {}))
        self._step = trainer.global_step

    # ---------------------------------------------------------------- the step
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.monitor is None:
            return
        self._batch = self.batch_fn(batch)
        if not self._checked:  # the first batch, before the first update
            check_probeable(pl_module, self.loss_fn, self._batch, self.output_fn, self.monitor.layers)
            self._checked = True
        self.monitor.before_forward(trainer.global_step + 1)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if self.monitor is not None and self._batch is not None:
            self.monitor.observe(trainer.global_step + 1, self._batch)  # gradients recomputed on the step's batch

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.monitor is None or trainer.global_step == self._step:
            return  # an accumulation micro-batch: no update yet
        self._step = trainer.global_step
        self.monitor.after_step()  # ICS_opti with W^{t+1}
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if torch.is_tensor(loss) and self._step % self.train_every == 0:
            self.monitor.log_train(self._step, loss=loss.detach().float().item())

    # ---------------------------------------------------------------- checkpoints and the end
    def state_dict(self) -> dict:
        return {"step": self._step, "monitor": self.monitor.state_dict() if self.monitor is not None else {}}

    def load_state_dict(self, state_dict: dict) -> None:
        self._resumed = dict(state_dict)

    def on_train_end(self, trainer, pl_module) -> None:
        self._close("done")

    def on_exception(self, trainer, pl_module, exception) -> None:
        self._close("interrupted" if isinstance(exception, KeyboardInterrupt) else "failed")

    def _close(self, status: str) -> None:
        if self.monitor is not None:
            self.monitor.close(status)
            self.monitor = None
