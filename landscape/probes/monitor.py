"""Run the probes on a schedule inside any training loop, and write run-directory records.

    monitor = Monitor("runs/my_model", model, optimizer, loss_fn, every(50))
    ...                                  # your forward and loss.backward()
    monitor.observe(step, (x, y), loss)  # after backward, before optimizer.step()
    optimizer.step()                     # a hook on the optimizer finishes ics_opti
    monitor.close()

A loop that would rather call everything itself (as ``landscape train`` does) passes
``step_hook=False`` and calls ``monitor.after_step()`` right after ``optimizer.step()``.

Records (one JSON line each, in ``metrics.jsonl``), as ``landscape train`` writes them:
``{"kind": "probe", "probe": NAME, "step": t, "values": {...}, "cost": {"seconds", "forward",
"backward", "hvp"}}``. ``monitor.log_train(step, loss=..., acc=...)`` adds train records.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Callable, Iterable, Sequence

import torch
from torch import nn

from landscape.probes.curvature import (UnreadableOptimizer, directional_curvature, hessian_trace, layer_sharpness,
                                        preconditioner, spectral_density, stability_threshold)
from landscape.probes.functional import Batch, current_params, rng_state, snapshot_buffers
from landscape.probes.ics import activation_stats, distribution_shift, ics_opti
from landscape.probes.landscape import gradient_sweep, sharpness
from landscape.probes.schedules import Schedule, every

PROBE_NAMES = ("gradient_sweep", "ics_opti", "activation_stats", "sharpness", "curvature", "layer_sharpness",
               "hessian_trace", "spectral_density")
DEFAULT_ETA_MULTIPLES = (0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0)  # the paper's [0.5, 4] x lr
CURVATURE_PROBES = ("sharpness", "curvature", "layer_sharpness", "hessian_trace", "spectral_density")


class Monitor:
    """Probes on a schedule for any model, optimizer and loss.

    ``out``: a run directory to create (refuses to overwrite one unless ``force``), or a
    callable that receives each record (the trainer passes its run's ``log``).
    ``etas`` are absolute step sizes; ``eta_multiples`` are multiples of the optimizer's
    current lr (the paper's convention; used when ``etas`` is None).
    ``probe_batch`` is the fixed batch ``activation_stats`` measures (default: each step's).
    ``outputs``: more places for the records and their scalars (``landscape.outputs``:
    ``TensorBoard(logdir)``, ``WandB(dir)``, or anything with ``record``/``scalars``/``close``);
    :meth:`close` closes them. ``resume_step``: continue the run directory ``out`` from this step
    (its later records are dropped; restore the rest with :meth:`load_state_dict`).

    Call :meth:`before_forward` (optional) at the start of a step: on probe steps it
    snapshots the buffers and RNG state, so the probes can reuse the step's own loss and
    gradient (one pass fewer per probe) and see exactly the training forward's randomness.
    """

    def __init__(self, out: str | Path | Callable[[dict], None], model: nn.Module,
                 optimizer: torch.optim.Optimizer, loss_fn: Callable, schedule: Schedule | None = None, *,
                 probes: Sequence[str] = ("gradient_sweep", "ics_opti"), etas: Sequence[float] | None = None,
                 eta_multiples: Sequence[float] = DEFAULT_ETA_MULTIPLES,
                 layers: Iterable | dict | None = None, probe_batch: Batch | None = None,
                 sharpness_iters: int = 20, sharpness_tol: float = 1e-3, warm_start: bool = False,
                 trace_samples: int = 30, trace_method: str = "hutchinson", density_vectors: int = 4,
                 density_steps: int = 20, eval_mode: bool = False, output_fn: Callable | None = None,
                 force: bool = False, step_hook: bool = True, outputs: Sequence | None = None,
                 resume_step: int | None = None):
        unknown = [p for p in probes if p not in PROBE_NAMES]
        if unknown:
            raise ValueError(f"unknown probes {unknown}; choose from {PROBE_NAMES}")
        if "sharpness" in probes:
            try:
                stability_threshold(optimizer)
            except UnreadableOptimizer as exc:  # said once, at attach time; sharpness is still measured
                warnings.warn(str(exc), stacklevel=2)
        self.warm_start, self._sharpness_vector = warm_start, None
        self.trace_samples, self.trace_method = trace_samples, trace_method
        self.density_vectors, self.density_steps = density_vectors, density_steps
        self.model, self.optimizer, self.loss_fn = model, optimizer, loss_fn
        self.schedule = schedule or every(100)
        self.probes = tuple(probes)
        self.etas, self.eta_multiples = etas, tuple(eta_multiples)
        self.layers = layers
        self.probe_batch = probe_batch
        self.sharpness_iters, self.sharpness_tol = sharpness_iters, sharpness_tol
        self.eval_mode, self.output_fn = eval_mode, output_fn
        self.run = None
        if callable(out):
            self.sink = out
        else:
            from landscape.runs import Run

            self.run = Run.fresh(out, force=force) if resume_step is None else Run.reopen(out, resume_step)
            self.run.write_settings({"monitor": {"model": type(model).__name__, "optimizer": type(optimizer).__name__,
                                                 "probes": list(self.probes), "etas": etas,
                                                 "eta_multiples": list(self.eta_multiples),
                                                 "eval_mode": eval_mode}})
            self.run.write_env(next(model.parameters()).device)
            self.run.set_status("running", resume_step or 0)
            self.sink = self.run.log
        self.outputs = list(outputs or [])
        if self.outputs:
            from landscape.outputs import Fanout

            self.sink = Fanout(self.sink, self.outputs)
        self.previous_activations: dict | None = None
        self._snapshot: tuple[int, dict, dict] | None = None
        self._pending: dict | None = None
        self._last_step = 0
        # Users' loops get ics_opti finished by the optimizer itself; the trainer calls after_step().
        self._hook = optimizer.register_step_post_hook(lambda *_: self.after_step()) if step_hook else None

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
        if snap is not None and loss is not None:
            grad = {n: p.grad.detach().clone() for n, p in self.model.named_parameters()
                    if p.requires_grad and p.grad is not None}
            if len(grad) != sum(p.requires_grad for p in self.model.parameters()):
                grad = None  # some parameter has no gradient this step: compute it instead
        common = dict(eval_mode=self.eval_mode, buffers=buffers, rng=rng)
        lr = self.optimizer.param_groups[0]["lr"]

        if "gradient_sweep" in self.probes:
            etas = list(self.etas) if self.etas is not None else [m * lr for m in self.eta_multiples]
            reuse = {"grad": grad, "loss": loss.detach() if torch.is_tensor(loss) else loss} if grad else {}
            self._timed(step, "gradient_sweep", lambda: gradient_sweep(
                self.model, self.loss_fn, batch, etas, output_fn=self.output_fn, **reuse, **common).as_dict(),
                extra={"lr": lr, "eta_multiples": None if self.etas is not None else list(self.eta_multiples)})
        if "sharpness" in self.probes:
            self._timed(step, "sharpness", lambda: self._sharpness(batch, common), extra=self._optimizer_facts())
        if "curvature" in self.probes:
            self._timed(step, "curvature", lambda: directional_curvature(
                self.model, self.loss_fn, batch, output_fn=self.output_fn, **common).as_dict())
        if "layer_sharpness" in self.probes:
            self._timed(step, "layer_sharpness", lambda: layer_sharpness(
                self.model, self.loss_fn, batch, self.layers, iters=self.sharpness_iters, tol=max(self.sharpness_tol, 1e-2),
                output_fn=self.output_fn, **common).as_dict())
        if "hessian_trace" in self.probes:
            self._timed(step, "hessian_trace", lambda: hessian_trace(
                self.model, self.loss_fn, batch, samples=self.trace_samples, method=self.trace_method, seed=step,
                output_fn=self.output_fn, **common).as_dict())
        if "spectral_density" in self.probes:
            self._timed(step, "spectral_density", lambda: spectral_density(
                self.model, self.loss_fn, batch, vectors=self.density_vectors, steps=self.density_steps, seed=step,
                output_fn=self.output_fn, **common).as_dict())
        if "activation_stats" in self.probes:
            probe_batch = self.probe_batch if self.probe_batch is not None else batch
            layers = None if self.layers is None or isinstance(self.layers, dict) else list(self.layers)

            def measure():
                stats = activation_stats(self.model, probe_batch, layers, eval_mode=self.eval_mode,
                                         buffers=buffers, rng=rng).as_dict()
                stats["shift"] = (distribution_shift(self.previous_activations, stats)
                                  if self.previous_activations is not None else None)
                self.previous_activations = {"stats": stats["stats"]}
                return stats

            self._timed(step, "activation_stats", measure)
        if "ics_opti" in self.probes:  # finished by after_step(), with W^{t+1}
            self._pending = {"step": step, "batch": batch, "grad": grad, "buffers": buffers, "rng": rng,
                             "params": {n: p.clone() for n, p in current_params(self.model).items()}}

    def _optimizer_facts(self) -> dict:
        group = self.optimizer.param_groups[0]
        try:
            threshold = stability_threshold(self.optimizer)  # per call: the lr may change
        except UnreadableOptimizer:
            threshold = None
        facts = {"lr": group["lr"], "optimizer": type(self.optimizer).__name__, "threshold": threshold}
        if "momentum" in group:
            facts["momentum"] = group["momentum"]
        if "betas" in group:
            facts["betas"] = list(group["betas"])
        return facts

    def _sharpness(self, batch: Batch, common: dict) -> dict:
        """Optimizer-aware sharpness: of P^-1 H for Adam/AdamW (P its preconditioner), of H otherwise."""
        try:
            P = preconditioner(self.optimizer, self.model)
        except UnreadableOptimizer as exc:
            if isinstance(self.optimizer, (torch.optim.Adam, torch.optim.AdamW)):  # before its first step
                return {"value": None, "preconditioned": True, "note": str(exc)}
            P = None  # an optimizer we cannot read: the plain Hessian (said at attach time)
        start = self._sharpness_vector if self.warm_start and self._sharpness_vector is not None else "gradient"
        result = sharpness(self.model, self.loss_fn, batch, iters=self.sharpness_iters, tol=self.sharpness_tol,
                           output_fn=self.output_fn, preconditioner=P, start=start, **common)
        self._sharpness_vector = result.vector if self.warm_start else None
        return {**result.as_dict(), "warm_start": not isinstance(start, str)}

    def after_step(self) -> None:
        """Right after ``optimizer.step()``: finish ics_opti with the optimizer's real update W^{t+1}
        (called by the optimizer's post-step hook unless the Monitor was made with ``step_hook=False``)."""
        pending, self._pending = self._pending, None
        if pending is None:
            return
        t0 = time.perf_counter()
        result = ics_opti(self.model, self.loss_fn, pending["batch"], current_params(self.model),
                          params=pending["params"], layers=self.layers, grad=pending["grad"],
                          eval_mode=self.eval_mode, buffers=pending["buffers"], rng=pending["rng"],
                          output_fn=self.output_fn).as_dict()
        self._write(pending["step"], "ics_opti", result, t0)

    # ---------------------------------------------------------------- records
    def _timed(self, step: int, name: str, fn: Callable[[], dict], extra: dict | None = None) -> None:
        t0 = time.perf_counter()
        values = fn()
        self._write(step, name, {**values, **(extra or {})}, t0)

    def _write(self, step: int, name: str, values: dict, t0: float) -> None:
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize()  # probe steps only: so the recorded seconds are the probe's
        cost = values.pop("cost", {})
        self.sink({"kind": "probe", "probe": name, "step": step, "values": values,
                   "cost": {"seconds": time.perf_counter() - t0, **cost}})

    def log_train(self, step: int, **metrics: float) -> None:
        """A train record (e.g. ``loss=``, ``acc=``) for the report's training curves."""
        self.sink({"kind": "train", "step": step, **{k: float(v) for k, v in metrics.items()}})

    def state_dict(self) -> dict:
        """What the next probes depend on (saved in checkpoints, so a resumed run records the same)."""
        return {"previous_activations": self.previous_activations, "sharpness_vector": self._sharpness_vector}

    def load_state_dict(self, state: dict) -> None:
        self.previous_activations = state.get("previous_activations")
        self._sharpness_vector = state.get("sharpness_vector")

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

    def __enter__(self) -> "Monitor":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close("failed" if exc_type is not None else "done")
