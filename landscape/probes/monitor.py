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

import functools
import inspect
import math
import re
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from landscape.probes import legacy, registry
from landscape.probes.distributed import ProbeFailure, agree, collective_failure, probe_group, rank, ranks, unwrap
from landscape.probes.errors import one_line
from landscape.probes.functional import (
    HVP_MODES,
    Batch,
    InaccurateProducts,
    Objective,
    batch_parts,
    current_params,
    evaluation,
    norm,
    resolve_layers,
    rng_state,
    sharded,
    snapshot_buffers,
    untouched,
)
from landscape.probes.records import Fanout
from landscape.probes.registry import Context
from landscape.probes.rundir import monitor_run
from landscape.probes.schedules import Schedule, every

Sink = Callable[[dict], None]
GRAD_TOLERANCE = 1e-3  # .grad is the batch's gradient when it is this close to the probes' own (relative, l2)
WRAPPER_PREFIXES = ("_orig_mod.", "module.")
# Parameters on the meta device have no values to measure. (tests/probes/test_devices.py turns this off: it runs
# every probe on meta under a dispatch guard that stands in for a GPU, to catch host tensors meeting device ones.)
REFUSE_META = True  # what torch.compile and DDP put before a module's names


def check_attach(model, optimizer, loss_fn, schedule, hvp, autocast, output_fn, timeout) -> frozenset:
    """What a Monitor is given, checked before anything is written (``ValueError``/``TypeError`` in one line);
    returns the names of the parameters probes differentiate: the model's trainable ones the optimizer holds."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    params = list(model.named_parameters())
    if not params:
        raise ValueError("the model has no parameters: the probes measure its loss as a function of them")
    if any(type(m).__name__ == "FullyShardedDataParallel" for m in model.modules()):
        raise ValueError(
            "the model is wrapped in FSDP1 (FullyShardedDataParallel), whose flattened parameters the probes cannot "
            "read right: shard it with FSDP2's torch.distributed.fsdp.fully_shard instead (docs/scale.md)"
        )
    if REFUSE_META and any(p.is_meta for _, p in params):
        raise ValueError("the model's parameters are on the meta device (not materialised): move it to cpu or cuda")
    trainable = [(n, p) for n, p in params if p.requires_grad]
    if not trainable:
        raise ValueError("every parameter of the model is frozen (requires_grad=False): there is nothing to probe")
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    owned = frozenset(n for n, p in trainable if id(p) in held)
    if not owned:
        raise ValueError("the optimizer holds none of the model's trainable parameters: pass the one that trains it")
    if loss_fn is not None and not callable(loss_fn):
        raise TypeError(
            f"loss_fn must be a function (outputs, targets) -> loss, or None for the model's own loss; "
            f"got {type(loss_fn).__name__}"
        )
    if output_fn is not None and not callable(output_fn):
        raise TypeError(f"output_fn must be a function of the model's output; got {type(output_fn).__name__}")
    if schedule is not None and not callable(schedule):
        raise TypeError(
            f"schedule must be a function step -> bool, e.g. every(10) or explicit([1, 100]); got "
            f"{str(schedule)[:40]!r}"
        )
    if hvp not in HVP_MODES:
        raise ValueError(f"hvp must be one of {', '.join(HVP_MODES)}; got {hvp!r}")
    if autocast is not None:
        if not isinstance(autocast, Mapping):
            raise TypeError(
                "autocast takes torch.autocast's keyword arguments, e.g. "
                "{'device_type': 'cpu', 'dtype': torch.bfloat16}"
            )
        allowed = [k for k in inspect.signature(torch.autocast.__init__).parameters if k != "self"]
        unknown = [k for k in autocast if k not in allowed]
        if unknown:
            raise ValueError(f"autocast has no argument {unknown[0]!r}; torch.autocast takes {', '.join(allowed)}")
        device = autocast.get("device_type")
        if device not in ("cpu", "cuda", "xpu", "mps", "hpu", "xla", "mtia", "maia"):
            raise ValueError(
                f"autocast needs device_type 'cpu' or 'cuda' (the device the model trains on); got {device!r}"
            )
        if "dtype" in autocast and not isinstance(autocast["dtype"], torch.dtype):
            raise TypeError(f"autocast's dtype must be a torch.dtype such as torch.bfloat16; got {autocast['dtype']!r}")
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, (int, float))
        or not (0 < timeout and math.isfinite(timeout))
    ):
        raise ValueError(f"timeout must be a positive number of seconds; got {timeout!r}")
    return owned


def clean_layers(layers):
    """Layer names as the unwrapped module names them (``_orig_mod.layer1`` of a compiled model is ``layer1``)."""

    def clean(name):
        for prefix in WRAPPER_PREFIXES:
            while isinstance(name, str) and name.startswith(prefix):
                name = name[len(prefix) :]
        return name

    if layers is None:
        return None
    if isinstance(layers, str):
        return [clean(layers)]
    if isinstance(layers, Mapping):
        return {
            label: [clean(n) for n in ([names] if isinstance(names, str) else names)] for label, names in layers.items()
        }
    return [clean(n) for n in layers]


def refuse_unsharded(probes: Sequence[str], group: Any) -> None:
    """Under FSDP2, only the probes tested on sharded vectors run (each entry's ``sharded``); others are refused."""
    if group is None:
        raise ValueError(
            "the model's parameters are sharded (FSDP2) but torch.distributed is not initialised or distributed=False: "
            "construct the Monitor on every rank after init_process_group, with distributed left on"
        )
    refused = [p for p in probes if not registry.get(p).sharded]
    if refused:
        able = ", ".join(n for n in registry.names() if registry.get(n).sharded)
        raise ValueError(
            f"probes {', '.join(refused)} do not yet run on a model sharded by FSDP2; the ones that do: {able}"
        )


class GradWatch:
    """Watches one backward pass: whether each parameter's ``.grad`` is one fresh accumulation (``.grad`` was None,
    one backward wrote it) left untouched since (its version counter: clipping and unscaling edit it in place)."""

    def __init__(self, model: nn.Module, names: frozenset):
        self.params = {n: p for n, p in model.named_parameters() if n in names}
        self.handles: list = []
        self.seen: dict[str, list] = {}

    def watch(self) -> None:
        self.unwatch()
        for n, p in self.params.items():
            self.handles.append(p.register_hook(functools.partial(self._before, n, p)))
            self.handles.append(p.register_post_accumulate_grad_hook(functools.partial(self._after, n)))

    def _before(self, name: str, p: torch.Tensor, grad: torch.Tensor) -> None:
        count, fresh, _ = self.seen.get(name, (0, True, None))
        self.seen[name] = [count + 1, fresh and count == 0 and p.grad is None, None]

    def _after(self, name: str, p: torch.Tensor) -> None:
        self.seen[name][2] = p.grad._version

    def unwatch(self) -> dict | None:
        """Stop watching; the gradients when every one is a fresh, untouched accumulation, else None."""
        for h in self.handles:
            h.remove()
        watched, self.handles = bool(self.handles), []
        seen, self.seen = self.seen, {}
        if not watched or set(seen) != set(self.params):
            return None
        for n, p in self.params.items():
            count, fresh, version = seen[n]
            if count != 1 or not fresh or p.grad is None or p.grad._version != version:
                return None
        return {n: p.grad for n, p in self.params.items()}


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
        model = unwrap(model)  # DDP's module, a compiled model's original: probes never run through their wrappers
        self.probes = tuple(probes) if not isinstance(probes, str) else (probes,)
        unknown = [p for p in self.probes if p not in registry.REGISTRY]
        if unknown:
            raise ValueError(f"unknown probes {unknown}; choose from {', '.join(registry.names())}")
        self._order = [n for n in registry.names() if n in self.probes]  # the table's order, whatever the list's
        given = dict(options or {})
        stray = [k for k in given if k not in registry.REGISTRY]
        if stray:
            raise ValueError(
                f"options given for {stray[0]!r}, which is no probe; probes: {', '.join(registry.names())}"
            )
        for name in given:  # a shared options mapping may hold probes not enabled here: checked all the same
            registry.options_of(name, given[name])
        self.options = {name: registry.options_of(name, given.get(name)) for name in self.probes}
        self.trainable = check_attach(model, optimizer, loss_fn, schedule, hvp, autocast, output_fn, timeout)
        registry.warn_at_attach(self.probes, optimizer, self.options)
        self.model, self.optimizer, self.loss_fn = model, optimizer, loss_fn
        self.schedule = schedule or every(100)
        self.layers, self.probe_batch = clean_layers(layers), probe_batch
        self.eval_mode, self.output_fn = eval_mode, output_fn
        self._evaluation = {"hvp": hvp, "autocast": dict(autocast) if autocast else None, "trainable": self.trainable}
        with evaluation(**self._evaluation):
            try:
                self.groups = resolve_layers(model, self.layers)  # checked now, not at the first probe step
            except KeyError as exc:
                raise ValueError(f"layers: {exc.args[0]}") from None
        self.state: dict[str, dict] = {name: {} for name in self.probes}  # each probe's own, between its steps
        self.group, self.rank, self.timeout = None, 0, float(timeout)
        if distributed or (distributed is None and ranks() > 1):
            self.group, self.rank = probe_group(self.timeout), rank()
            agree(self.group, self.settings(), self.schedule)
        self._evaluation["group"] = self.group
        if sharded(model):  # FSDP2: every vector a probe holds is this rank's shard
            refuse_unsharded(self.probes, self.group)
            self._evaluation["sharded"] = True
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
        self._started = time.perf_counter()
        self._grads = GradWatch(model, self.trainable)
        self._trust_grad: bool | None = None  # is .grad at observe() the batch's gradient? (checked once, then watched)
        self._said_grad = False
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
                "layers": [label for label, _ in self.groups],
                "parameters": {
                    "trainable": len(self.trainable),
                    "frozen or not the optimizer's": sum(1 for _ in self.model.parameters()) - len(self.trainable),
                },
            }
        }

    # ---------------------------------------------------------------- the loop's calls
    def before_forward(self, step: int) -> None:
        """Optional: on probe steps, snapshot buffers and RNG before the training forward, and watch the backward,
        so the probes can reuse the step's own gradient (one pass fewer per probe) where it is exactly the batch's."""
        due = self.due(step)
        self._snapshot = (step, snapshot_buffers(self.model), rng_state()) if due else None
        if due and self.group is None and self._trust_grad is not False:  # under DDP: recomputed, all-reduced
            self._grads.watch()

    def due(self, step: int) -> bool:
        return bool(self.probes) and bool(self.schedule(step))

    def observe(self, step: int, batch: Batch, loss: torch.Tensor | float | None = None) -> None:
        """After ``loss.backward()``, before ``optimizer.step()``: run the probes due at ``step`` on ``batch`` (a pair
        ``(inputs, targets)``, or a mapping of the model's keyword arguments with ``loss_fn=None``: the loss the model
        computes).

        With :meth:`before_forward` called for this step, the probes reuse ``p.grad`` and ``loss`` where ``p.grad``
        is exactly the gradient of this batch's loss: one fresh accumulation per parameter, untouched since (no
        clipping, no loss scaling, no accumulation over micro-batches), checked against the probes' own gradient at
        the first probe step. Otherwise they compute their own (one pass more per probe step) and say so once.
        """
        self._last_step = step
        if not self.due(step):
            self._grads.unwatch()
            return
        batch_parts(batch)  # a batch of the wrong shape: one line, before any probe runs
        snap = self._snapshot if self._snapshot is not None and self._snapshot[0] == step else None
        self._snapshot = None
        buffers, rng = (snap[1], snap[2]) if snap else (snapshot_buffers(self.model), rng_state())
        fresh = self._grads.unwatch()
        grad = None
        if snap is not None and loss is not None and fresh is None and self.group is None and not self._said_grad:
            self._said_grad = True
            warnings.warn(
                "Monitor: p.grad at observe() is not one fresh backward pass of this step left as it was (accumulated "
                "over several backward passes, not zeroed to None before backward, or edited after it: clipped, "
                "unscaled); the probes compute their own gradient of the batch passed, one pass more per probe step",
                stacklevel=2,
            )
        if snap is not None and loss is not None and self._trust_grad is not False and fresh is not None:
            grad = {n: g.detach().clone() for n, g in fresh.items()}
            if self._trust_grad is None:
                self._trust_grad = self._check_grad(batch, buffers, rng, grad)
                grad = grad if self._trust_grad else None
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
                    with evaluation(**self._evaluation):
                        before = {n: p.clone() for n, p in current_params(self.model).items()}
                ctx.params = before
                self._pending.append((name, ctx))
                continue
            t0 = time.perf_counter()
            self._write(step, name, self._measure(name, ctx), t0)

    def _check_grad(self, batch: Batch, buffers: dict, rng: dict, grad: dict) -> bool:
        """Whether ``p.grad`` is this batch's gradient: compared, once, with the probes' own (one pass)."""
        with evaluation(**self._evaluation), untouched(self.model, self.eval_mode):
            f = Objective.of(self.model, self.loss_fn, batch, buffers, rng, self.output_fn)
            own = f.value_and_grad(current_params(self.model))[1]
        diff, size = norm({n: grad[n].double() - own[n].double() for n in own}), norm(own)
        if float(diff) <= GRAD_TOLERANCE * max(float(size), 1e-30):
            return True
        warnings.warn(
            f"Monitor: p.grad at observe() differs from the gradient of the batch and loss passed (by "
            f"{float(diff) / max(float(size), 1e-30):.2g} of its size: a scaled loss, a gradient summed over "
            "micro-batches, or one edited after backward); the probes compute their own gradient, one pass more "
            "per probe step. Call observe() right after loss.backward() on the batch you pass to let them reuse it.",
            stacklevel=3,
        )
        return False

    def _measure(self, name: str, ctx: Context) -> dict:
        """One probe's values, evaluated under this Monitor's settings (HVP route, autocast, process group). A probe
        whose finite-difference products did not converge records its refusal (a note, no values) and training
        goes on."""
        try:
            values = self._evaluate(name, ctx)
        except InaccurateProducts as exc:
            return {"note": str(exc), "refused": "inaccurate finite-difference products"}
        if not isinstance(values, dict):
            raise TypeError(
                f"probe {name} returned a {type(values).__name__}: a probe's measure returns a dict of "
                "its values, e.g. {'value': 1.0}"
            )
        return values

    def _evaluate(self, name: str, ctx: Context):
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
        with evaluation(**self._evaluation):
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
        if self.run is not None:  # the loop's wall time since the Monitor was made: the report's time columns
            self.run.set_status(status, self._last_step, train_seconds=time.perf_counter() - self._started)
            self.run.release()  # other writers (a resumed fit in this process) may open it now

    def __enter__(self) -> Monitor:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close("failed" if exc_type is not None else "done")
