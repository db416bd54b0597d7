"""Run the probes on a schedule inside any training loop; every measurement goes to a sink.

    monitor = Monitor("runs/my_model", model, optimizer, loss_fn, every(50))
    ...                                  # your forward and loss.backward()
    monitor.observe(step, (x, y), loss)  # after backward, before optimizer.step()
    optimizer.step()                     # a hook on the optimizer finishes the after-step probes
    monitor.close()

The probes are the entries of the probe table (:mod:`landscape.probes.registry`); ``Monitor``
loops over the enabled ones. A loop that would rather call everything itself (as ``landscape train`` does)
passes ``step_hook=False`` and calls ``monitor.after_step()`` right after ``optimizer.step()``.

Records (one per probe and step): ``{"kind": "probe", "probe": NAME, "step": t, "values": {...},
"cost": {"seconds", "forward", "backward", "hvp"}}``; ``monitor.log_train(step, loss=..., acc=...)``
adds train records. They go to the sink: any callable taking a record, or a run directory
(a path: :mod:`landscape.probes.rundir` creates it and writes ``metrics.jsonl``, ``status.json``, ...).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from landscape.probes import legacy, registry
from landscape.probes.distributed import ProbeFailure, agree, collective_failure, probe_group, rank, ranks, unwrap
from landscape.probes.errors import one_line
from landscape.probes.functional import HVP_MODES, Batch, current_params, evaluation, rng_state, snapshot_buffers
from landscape.probes.records import Fanout
from landscape.probes.registry import Context
from landscape.probes.rundir import monitor_run
from landscape.probes.schedules import Schedule, every

Sink = Callable[[dict], None]


class Monitor:
    """Probes on a schedule for any model, optimizer and loss.

    ``out``: where records go: a callable receiving each record (the trainer passes its run's
    ``log``), or a run directory to create (refused if it exists, unless ``force``; with
    ``resume_step``, continued from that step, its later records dropped: restore the rest with
    :meth:`load_state_dict`). ``probes``: names of entries (:mod:`landscape.probes.registry`).
    ``options``: per probe, a mapping or its options dataclass (``{"sharpness": {"iters": 30}}``;
    0.2's keywords are still read, with a deprecation warning: :mod:`landscape.probes.legacy`).
    ``probe_batch``: the fixed batch of probes that measure one (``activation_stats``;
    default: each step's). ``outputs``: more places for records and their scalars
    (``landscape.outputs``: ``TensorBoard(logdir)``, ``WandB(dir)``, or anything with
    ``scalars``/``close``); :meth:`close` closes them.

    Call :meth:`before_forward` (optional) at the start of a step: on probe steps it snapshots the
    buffers and RNG state, so the probes can reuse the step's own loss and gradient (one pass
    fewer per probe) and see exactly the training forward's randomness.

    How probes evaluate (docs/scale.md): ``hvp`` is ``"auto"`` (exact Hessian-vector products by double
    backward, switching to a central finite difference of two gradients where a kernel has no double
    backward, e.g. fused attention), ``"exact"`` or ``"finite_difference"``. ``autocast``: the keyword
    arguments of the :class:`torch.autocast` the model trains under (``{"device_type": "cpu", "dtype":
    torch.bfloat16}``): probes run their forward passes under it and keep losses, dot products and
    Lanczos in float32 or wider. ``distributed`` (default: whenever ``torch.distributed`` is initialised
    with more than one rank): each rank passes its own batch, as DDP trains; every loss, gradient and
    Hessian-vector product is averaged over the ranks on the unwrapped module (a
    ``DistributedDataParallel`` model is unwrapped; its hooks never run in a probe), so each value is
    the one a single process holding the global batch would record; random vectors are seeded alike on
    every rank; only rank 0 writes records and outputs. The ranks check at construction that they
    agree on probes, options and schedule, and refuse on every rank if not; the probes' collectives run
    in their own process group whose ``timeout`` (seconds) ends a run whose other rank failed with one
    line instead of a hang.
    """

    @legacy.accepts_monitor_keywords
    def __init__(
        self,
        out: str | Path | Sink,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        loss_fn: Callable,
        schedule: Schedule | None = None,
        *,
        probes: Sequence[str] = ("gradient_sweep", "ics_opti"),
        options: Mapping[str, Any] | None = None,
        layers: Iterable | dict | None = None,
        probe_batch: Batch | None = None,
        eval_mode: bool = False,
        output_fn: Callable | None = None,
        force: bool = False,
        step_hook: bool = True,
        outputs: Sequence | None = None,
        resume_step: int | None = None,
        hvp: str = "auto",
        autocast: Mapping[str, Any] | None = None,
        distributed: bool | None = None,
        timeout: float = 600.0,
    ):
        unknown = [p for p in probes if p not in registry.REGISTRY]
        if unknown:
            raise ValueError(f"unknown probes {unknown}; choose from {registry.names()}")
        self.probes = tuple(probes)
        self._order = [n for n in registry.names() if n in self.probes]  # the table's order, whatever the list's
        self.options = {name: registry.options_of(name, (options or {}).get(name)) for name in self.probes}
        registry.warn_at_attach(self.probes, optimizer, self.options)
        if hvp not in HVP_MODES:
            raise ValueError(f"hvp must be one of {', '.join(HVP_MODES)}; got {hvp!r}")
        if autocast is not None and not isinstance(autocast, Mapping):
            raise TypeError(
                "autocast takes torch.autocast's keyword arguments, e.g. "
                "{'device_type': 'cpu', 'dtype': torch.bfloat16}"
            )
        model = unwrap(model)  # DistributedDataParallel's module: probes never run through its hooks
        self.model, self.optimizer, self.loss_fn = model, optimizer, loss_fn
        self.schedule = schedule or every(100)
        self.layers, self.probe_batch = layers, probe_batch
        self.eval_mode, self.output_fn = eval_mode, output_fn
        self.state: dict[str, dict] = {name: {} for name in self.probes}  # each probe's own, between its steps
        self.group, self.rank, self.timeout = None, 0, float(timeout)
        if distributed or (distributed is None and ranks() > 1):
            self.group, self.rank = probe_group(self.timeout), rank()
            agree(self.group, self.settings(), self.schedule)
        self._evaluation = {"hvp": hvp, "autocast": dict(autocast) if autocast else None, "group": self.group}
        self.run = None
        if self.rank != 0:  # only rank 0 writes
            out, outputs = (lambda record: None), None
        if callable(out):
            self.sink = out
        else:
            self.run = monitor_run(
                out, self.settings(), next(model.parameters()).device, force=force, resume_step=resume_step
            )
            self.sink = self.run.log
        self.outputs = list(outputs or [])
        if self.outputs:
            self.sink = Fanout(self.sink, self.outputs)
        self._snapshot: tuple[int, dict, dict] | None = None
        self._pending: list[tuple[str, Context]] = []
        self._last_step = 0
        # Users' loops get the after-step probes finished by the optimizer itself; the trainer calls after_step().
        self._hook = optimizer.register_step_post_hook(lambda *_: self.after_step()) if step_hook else None

    def settings(self) -> dict:
        """What this Monitor measures, as a run's ``monitor.yaml`` records it."""
        import dataclasses

        return {
            "monitor": {
                "model": type(self.model).__name__,
                "optimizer": type(self.optimizer).__name__,
                "probes": list(self.probes),
                "options": {n: dataclasses.asdict(o) for n, o in self.options.items()},
                "eval_mode": self.eval_mode,
            }
        }

    # ---------------------------------------------------------------- the loop's calls
    def before_forward(self, step: int) -> None:
        """Optional: on probe steps, snapshot buffers and RNG before the training forward."""
        self._snapshot = (step, snapshot_buffers(self.model), rng_state()) if self.due(step) else None

    def due(self, step: int) -> bool:
        return bool(self.probes) and self.schedule(step)

    def observe(self, step: int, batch: Batch, loss: torch.Tensor | float | None = None) -> None:
        """After ``loss.backward()``, before ``optimizer.step()``: run the probes due at ``step``.

        With :meth:`before_forward` called for this step, the probes reuse ``p.grad`` and ``loss``
        (so ``p.grad`` must hold exactly this step's gradient: zero it before backward).
        """
        self._last_step = step
        if not self.due(step):
            return
        snap = self._snapshot if self._snapshot is not None and self._snapshot[0] == step else None
        self._snapshot = None
        buffers, rng = (snap[1], snap[2]) if snap else (snapshot_buffers(self.model), rng_state())
        grad = None
        if snap is not None and loss is not None and self.group is None:  # under DDP: recomputed, all-reduced
            grad = {
                n: p.grad.detach().clone()
                for n, p in self.model.named_parameters()
                if p.requires_grad and p.grad is not None
            }
            if len(grad) != sum(p.requires_grad for p in self.model.parameters()):
                grad = None  # some parameter has no gradient this step: compute it instead
        before = None
        for name in self._order:
            probe = registry.get(name)
            ctx = Context(
                step,
                self.model,
                self.optimizer,
                self.loss_fn,
                batch,
                buffers,
                rng,
                grad=grad,
                loss=loss if grad else None,
                layers=self.layers,
                eval_mode=self.eval_mode,
                output_fn=self.output_fn,
                fixed_batch=self.probe_batch,
                state=self.state[name],
            )
            if probe.after_step:  # finished by after_step(), with W^{t+1}
                if before is None:
                    before = {n: p.clone() for n, p in current_params(self.model).items()}
                ctx.params = before
                self._pending.append((name, ctx))
                continue
            t0 = time.perf_counter()
            self._write(step, name, self._measure(name, ctx), t0)

    def _measure(self, name: str, ctx: Context) -> dict:
        """One probe's values, evaluated under this Monitor's settings (HVP route, autocast, process group)."""
        with evaluation(**self._evaluation):
            if self.group is None:
                return registry.get(name).measure(ctx, self.options[name])
            try:
                return registry.get(name).measure(ctx, self.options[name])
            except RuntimeError as exc:
                if not collective_failure(exc):
                    raise
                detail = re.sub(r"^\[[^\]]*\]\s*", "", str(exc).strip()).splitlines()[0][:120]  # gloo's source path
                raise ProbeFailure(
                    f"probe {name} at step {ctx.step} on rank {self.rank}: another rank failed or "
                    f"left, or did not answer within {self.timeout:g} s ({one_line(detail)}); "
                    "see the other ranks' errors"
                ) from None

    def after_step(self) -> None:
        """Right after ``optimizer.step()``: finish the after-step probes (ICS_opti) with the
        optimizer's real update W^{t+1} (called by the optimizer's post-step hook unless the
        Monitor was made with ``step_hook=False``)."""
        pending, self._pending = self._pending, []
        if not pending:
            return
        next_params = current_params(self.model)
        for name, ctx in pending:
            t0 = time.perf_counter()
            ctx.next_params = next_params
            self._write(ctx.step, name, self._measure(name, ctx), t0)

    # ---------------------------------------------------------------- records
    def _write(self, step: int, name: str, values: dict, t0: float) -> None:
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize()  # probe steps only: so the recorded seconds are the probe's
        cost = values.pop("cost", {})
        self.sink(
            {
                "kind": "probe",
                "probe": name,
                "step": step,
                "values": values,
                "cost": {"seconds": time.perf_counter() - t0, **cost},
            }
        )

    def log_train(self, step: int, **metrics: float) -> None:
        """A train record (e.g. ``loss=``, ``acc=``) for the report's training curves."""
        self.sink({"kind": "train", "step": step, **{k: float(v) for k, v in metrics.items()}})

    def state_dict(self) -> dict:
        """What the next probes depend on (saved in checkpoints, so a resumed run records the same)."""
        return {"probes": {name: dict(s) for name, s in self.state.items() if s}}

    def load_state_dict(self, state: dict) -> None:
        saved = legacy.monitor_state(state)["probes"]
        for name in self.probes:
            self.state[name].clear()
            self.state[name].update({k: v for k, v in (saved.get(name) or {}).items() if v is not None})

    def close(self, status: str = "done") -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        for out in self.outputs:
            out.close()
        self.outputs = []
        if self.run is not None:
            self.run.set_status(status, self._last_step)
            self.run.release()  # other writers (a resumed fit in this process) may open it now

    def __enter__(self) -> Monitor:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close("failed" if exc_type is not None else "done")
