"""The training loop: one explicit loop, steps-based.

batch -> forward -> backward -> (due probes) -> optimizer step -> log / evaluate / checkpoint.

Step ``t`` (1-based) is the t-th optimizer update; every record carries the step it
belongs to. Nothing on the hot path reads a value back from the device: train loss,
accuracy and the first non-finite step accumulate in device tensors and are read once
per ``log.train_every`` steps.
"""

from __future__ import annotations

import contextlib
import math
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from landscape.config import Config, to_dict
from landscape.data import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    Batches,
    Split,
    channel_stats,
    fingerprint,
    load_data,
    pixel_stats,
    seeded_generator,
)
from landscape.errors import UserError
from landscape.losses import CLASSIFICATION, LOSSES, mean_squares, sum_squares  # noqa: F401 (the trainer's losses)
from landscape.models import build_model
from landscape.optimizers import build_optimizer
from landscape.outputs import Fanout, build_outputs
from landscape.probes import Monitor, registry, resolve_layers, schedules
from landscape.probes.functional import rng_state, set_rng_state
from landscape.runs import FINISHED, Run, describe_status, read_env

PLATEAU_MARGIN = 0.1  # nats below ln(num_classes): a train loss under it has left the initial plateau


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device '{name}'; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device '{name}' requested but CUDA is not available; use --device cpu or auto")
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"unsupported device '{name}'; use auto, cpu, cuda or cuda:N")
    return device


class TrainMeter:
    """Train loss/accuracy over a logging interval, accumulated on the device (no per-step sync)."""

    def __init__(self, device: torch.device, classify: bool):
        self.classify = classify
        self.loss_sum = torch.zeros((), device=device, dtype=torch.float64)
        self.correct = torch.zeros((), device=device, dtype=torch.int64)
        self.first_nonfinite = torch.full((), -1, device=device, dtype=torch.int64)
        self.steps = 0
        self.examples = 0

    def add(self, step: int, loss: torch.Tensor, out: torch.Tensor, y: torch.Tensor) -> None:
        loss = loss.detach()
        self.loss_sum += loss
        if self.classify:
            self.correct += (out.detach().argmax(1) == y).sum()
        bad = ~torch.isfinite(loss) & (self.first_nonfinite < 0)
        self.first_nonfinite = torch.where(bad, step, self.first_nonfinite)
        self.steps += 1
        self.examples += len(y)

    def flush(self) -> dict:
        """Means since the last flush, and the first non-finite step (None if none); resets."""
        out = {"loss": self.loss_sum.item() / max(self.steps, 1)}
        if self.classify:
            out["acc"] = self.correct.item() / max(self.examples, 1)
        bad = int(self.first_nonfinite.item())
        self.loss_sum.zero_()
        self.correct.zero_()
        self.steps = self.examples = 0
        return {**out, "nonfinite_step": bad if bad >= 0 else None}

    def state_dict(self) -> dict:
        return {
            "loss_sum": self.loss_sum.cpu(),
            "correct": self.correct.cpu(),
            "first_nonfinite": self.first_nonfinite.cpu(),
            "steps": self.steps,
            "examples": self.examples,
        }

    def load_state_dict(self, s: dict) -> None:
        self.loss_sum.copy_(s["loss_sum"])
        self.correct.copy_(s["correct"])
        self.first_nonfinite.copy_(s["first_nonfinite"])
        self.steps, self.examples = s["steps"], s["examples"]


@torch.no_grad()
def evaluate(model: nn.Module, batches: Batches, loss_name: str, classify: bool) -> dict:
    """Mean per-example loss (and accuracy) over a whole split, in eval mode."""
    was_training = model.training
    model.eval()
    loss_fn = LOSSES[loss_name]
    total, correct, n = 0.0, 0, 0
    for x, y in batches.eval_batches():
        out = model(x)
        loss = loss_fn(out, y)
        total += float(loss) * (1 if loss_name == "sum_squares" else len(y))
        if classify:
            correct += int((out.argmax(1) == y).sum())
        n += len(y)
    model.train(was_training)
    result = {"loss": total / n}
    if classify:
        result["acc"] = correct / n
    return result


def _progress(enabled: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}  acc {task.fields[acc]}  {task.fields[speed]} ex/s"),
        TimeRemainingColumn(),
        disable=not enabled,
        transient=False,
    )


def _monitor(cfg: Config, log, model, optimizer, loss_fn, batches: Batches, train_split: Split):
    """The probes of ``cfg.probes`` as a Monitor writing into the run (None when none are enabled):
    the config's section of each probe is its options."""
    p = cfg.probes
    if not p.enabled:
        return None
    schedule = schedules.build(p.schedule, cfg.steps, p.every, p.points, p.steps)
    options = {name: getattr(p, name) for name in p.enabled}
    sizes = [n for name in p.enabled if (f := registry.get(name).fixed_batch) and (n := f(options[name]))]
    probe_batch = None
    if sizes:  # one fixed training batch, the same for paired runs (data_seed), for the probes that measure one
        fixed = train_split.subset(max(sizes), seed=cfg.data_seed)
        probe_batch = (
            batches.prepare(fixed.inputs.to(batches.split.inputs.device)),
            fixed.targets.to(batches.split.targets.device),
        )
    try:
        return Monitor(
            log,
            model,
            optimizer,
            loss_fn,
            schedule,
            probes=p.enabled,
            options=options,
            layers=list(p.layers) or None,
            probe_batch=probe_batch,
            eval_mode=p.eval_mode,
            step_hook=False,
        )
    except (KeyError, ValueError) as exc:  # checked in _setup already; a probe's own refusal, said in one line
        raise UserError(f"probes: {exc.args[0]}") from None


def describe(name: str, status: dict) -> str:
    """One line for a finished (or diverged) run: its status in words, test metrics."""
    text = f"{name}: {describe_status(status, detail=True)}"
    test = status.get("test") or {}
    parts = [f"test {k} {test[k]:.4g}" for k in ("acc", "loss") if isinstance(test.get(k), (int, float))]
    if parts:
        text += ", " + ", ".join(parts)
    return text


class Interrupted(KeyboardInterrupt):
    """Training stopped by SIGINT or SIGTERM; the run is resumable (its message says how)."""


@contextlib.contextmanager
def _sigterm_interrupts():
    """SIGTERM ends training like Ctrl-C: records and checkpoint consistent, status ``interrupted``."""

    def handler(signum, frame):
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (e.g. a Ray worker thread): leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def train(
    cfg: Config,
    out: str | Path = "runs",
    data_dir: str | Path | None = None,
    resume: bool = False,
    force: bool = False,
    progress: bool = False,
    splits: dict[str, Split] | None = None,
    extend: bool = False,
) -> dict:
    """Train one run into ``out/cfg.name``; returns its final status record.

    Everything that can be checked (the run directory, the data, the model and probe options)
    is checked before the run directory is touched. ``splits`` lets callers (experiments,
    tests) pass data already in memory. A run that is already finished is not trained again
    when resumed; with ``extend`` (``landscape train --resume`` with a larger ``steps``) it continues from its last
    checkpoint to the new step count (its weights then equal those of a run made that long).
    """
    device = resolve_device(cfg.device)
    path = Path(out) / cfg.name
    mode = Run.check(path, cfg, resume=resume, force=force, extend=extend)
    if mode == "resume" and Run(path).status().get("status") in FINISHED:
        return Run(path).status()
    if splits is None:
        splits = load_data(cfg.data, data_dir)
    checkpoint = Run(path).load_checkpoint(device) if mode in ("resume", "extend") else None
    recorded = read_env(path).get("memory_format") if checkpoint is not None else None
    setup = _setup(cfg, device, splits, checkpoint, recorded)
    run = Run.open(path, cfg, resume=resume, force=force, extend=extend)
    if run.removed:
        print(f"removed the old run '{path}' ({', '.join(run.removed)})", flush=True)
    try:
        # Dropout and any other draw from the global generators come from a stream seeded by the run's
        # config (a resume restores the checkpoint's state), never from whatever the process did before;
        # fork_rng leaves the caller's generators as they were.
        with (
            _sigterm_interrupts(),
            torch.random.fork_rng(devices=[device] if device.type == "cuda" else []),
            _threads(cfg.threads),
        ):
            start = setup.checkpoint["step"] if setup.checkpoint is not None else 0
            log = Fanout(run.log, build_outputs(cfg.outputs, run.path, cfg.name, start))  # TensorBoard, W&B
            torch.manual_seed(run_seed(cfg))
            try:
                return _train(cfg, run, log, device, progress, setup, data_dir)
            finally:
                log.close()
    except KeyboardInterrupt:
        step = _safe_status(run, "interrupted")
        raise Interrupted(
            f"run '{path}' interrupted; its last checkpoint is step {step}: continue it with "
            "--resume (an experiment: run the same command again)"
        ) from None
    except Exception as exc:
        _safe_status(run, "failed", error=f"{type(exc).__name__}: {exc}"[:500])
        raise
    finally:
        run.release()


def _channels_last(cfg: Config, model: nn.Module, is_image: bool, resumed_from: str | None = None) -> bool:
    """Whether the run's convolutions take channels-last tensors. ``memory_format: auto`` means wherever the model
    has a convolution, on the CPU too (oneDNN's channels-last kernels: a VGG step in 0.64x the time here,
    docs/benchmarks.md); a resumed run keeps the format its ``env.json`` recorded, so a run's kernels never
    change midway (runs made before auto meant this were contiguous on the CPU)."""
    if not is_image:
        return False
    if cfg.memory_format == "auto" and resumed_from in ("channels_last", "contiguous"):
        return resumed_from == "channels_last"
    if cfg.memory_format == "auto":
        return any(isinstance(m, nn.Conv2d) for m in model.modules())
    return cfg.memory_format == "channels_last"


@contextlib.contextmanager
def _threads(n: int):
    """``n`` CPU threads for the run (0: as they are), the caller's count restored after. A model as small as
    Ioffe and Szegedy's MLP trains 10x faster on one thread than on two that wait for each other."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run_seed(cfg: Config) -> int:
    """The seed of a run's global random stream (dropout): a pure function of its seeds."""
    return int(seeded_generator(cfg.seed, cfg.data_seed, 29).initial_seed())


def _safe_status(run: Run, status: str, **info) -> int:
    """Record how a run ended, if the disk still lets us; returns the step of its last checkpoint."""
    step = run.status().get("step", 0)
    try:
        run.set_status(status, step if isinstance(step, int) else 0, **info)
    except OSError:
        pass  # a full disk: status.json still says running, and the run resumes from its checkpoint
    return step


@dataclass
class Setup:
    """Everything a run needs that does not touch its directory (built and checked up front)."""

    classify: bool
    train_split: Split
    batches: Batches
    test_batches: Batches
    is_image: bool
    out_dim: int
    model: nn.Module
    optimizer: torch.optim.Optimizer
    checkpoint: dict | None  # to resume from (already loaded into model and optimizer)
    data_sha256: str = ""  # of the splits in host memory, before any copy to the device
    channels_last: bool = False  # the convolutions' memory format (config key memory_format)


CHECKPOINT_KEYS = ("step", "model", "optimizer", "meter", "rng", "left_plateau_step", "monitor")
METER_FIELDS = {
    "loss_sum": torch.Tensor,
    "correct": torch.Tensor,
    "first_nonfinite": torch.Tensor,
    "steps": int,
    "examples": int,
}


def checkpoint_problem(checkpoint, cfg: Config, optimizer: torch.optim.Optimizer) -> str | None:
    """What makes a checkpoint unusable for ``cfg`` beyond its model's and optimizer's shapes (None if nothing):
    every field checked before the run directory is touched, so a bad one changes nothing."""
    if not isinstance(checkpoint, dict):
        return "it is not a mapping"
    missing = [k for k in CHECKPOINT_KEYS if k not in checkpoint and not (k == "monitor" and not cfg.probes.enabled)]
    if missing:
        return f"it lacks {', '.join(missing)}"
    step = checkpoint["step"]
    if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step <= cfg.steps:
        return f"its step {str(step)[:40]!r} is not a step between 0 and the run's {cfg.steps}"
    meter = checkpoint["meter"]
    if not isinstance(meter, dict) or any(
        not isinstance(meter.get(k), t) or isinstance(meter.get(k), bool) for k, t in METER_FIELDS.items()
    ):
        return "its train meter is not one landscape wrote"
    if any(meter[k].numel() != 1 for k in ("loss_sum", "correct", "first_nonfinite")):
        return "its train meter is not one landscape wrote"
    rng = checkpoint["rng"]
    cpu = rng.get("cpu") if isinstance(rng, dict) else None
    if not (torch.is_tensor(cpu) and cpu.dtype == torch.uint8 and cpu.numel() == torch.get_rng_state().numel()):
        return "its random-number state is not a CPU generator's"
    plateau = checkpoint["left_plateau_step"]
    if plateau is not None and (isinstance(plateau, bool) or not isinstance(plateau, int) or not 0 < plateau <= step):
        return f"its left_plateau_step {str(plateau)[:40]!r} is not a step up to {step}"
    if not isinstance(checkpoint.get("monitor", {}), dict):
        return "its probe state is not a mapping"
    saved = checkpoint["optimizer"].get("param_groups") if isinstance(checkpoint["optimizer"], dict) else None
    if not isinstance(saved, list) or len(saved) != len(optimizer.param_groups):
        return "its optimizer state is not one of this run's optimizer"
    for group, now in zip(saved, optimizer.param_groups):  # the config's settings, never the checkpoint's
        for key, value in now.items():
            if (
                key != "params"
                and isinstance(value, (int, float, bool, tuple))
                and key in group
                and (tuple(group[key]) if isinstance(group[key], list) else group[key]) != value
            ):
                return f"its optimizer's {key} is {str(group[key])[:40]}, the config's is {value}"
    return None


def _setup(
    cfg: Config,
    device: torch.device,
    splits: dict[str, Split],
    checkpoint: dict | None = None,
    recorded_memory_format: str | None = None,
) -> Setup:
    d = cfg.data
    classify = cfg.loss in CLASSIFICATION
    train_split, test_split = splits["train"].subset(d.train_subset), splits["test"].subset(d.test_subset)
    is_image = train_split.inputs.dtype == torch.uint8
    in_dim = train_split.inputs.shape[1]  # image channels, or the regression input's width
    if classify:
        out_dim = int(max(train_split.targets.max(), test_split.targets.max())) + 1
        if len(train_split.targets.unique()) < 2:
            raise UserError(
                f"the training data hold {len(train_split.targets.unique())} class; a classifier needs "
                "at least 2 (check --data-dir or data.train_subset)"
            )
    else:
        out_dim = train_split.targets.shape[1]
    image_size = train_split.inputs.shape[-1] if is_image else 32
    model = build_model(cfg.model, cfg.seed, cfg.noise_seed, in_dim, out_dim, image_size).to(device)
    if cfg.probes.layers:
        try:
            resolve_layers(model, list(cfg.probes.layers))
        except KeyError as exc:
            raise UserError(f"probes.layers: {exc.args[0]}") from None
    channels_last = _channels_last(cfg, model, is_image, recorded_memory_format)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)  # faster convolutions with cuDNN, and with oneDNN
    optimizer = build_optimizer(
        model,
        cfg.optim.name,
        cfg.optim.lr,
        cfg.optim.momentum,
        cfg.optim.nesterov,
        cfg.optim.weight_decay,
        cfg.optim.betas,
        cfg.optim.eps,
    )
    if checkpoint is not None:
        try:
            problem = checkpoint_problem(checkpoint, cfg, optimizer)
            if problem:
                raise ValueError(problem)
            model.load_state_dict(checkpoint["model"])
            optimizer.load_state_dict(checkpoint["optimizer"])
        except (ValueError, RuntimeError, KeyError, TypeError) as exc:
            reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
            raise UserError(
                f"the checkpoint of run '{cfg.name}' does not fit its config ({reason}); --force starts the run again"
            ) from None
    # CIFAR-10 (and the synthetic test images) use CIFAR-10's published statistics; other image
    # data sets are normalised by their own training split's per-channel mean and std.
    if is_image and d.normalize == "pixel":  # over the whole training split, before any subset (as Cohen et al.)
        mean, std = pixel_stats(splits["train"])
    else:
        mean, std = (
            (CIFAR10_MEAN, CIFAR10_STD)
            if d.dataset in ("cifar10", "synthetic") or not is_image
            else channel_stats(train_split)
        )
    return Setup(
        classify,
        train_split,
        Batches(train_split, d.batch_size, cfg.data_seed, d.augment, device, mean, std),
        Batches(test_split, 0, cfg.data_seed, False, device, mean, std),
        is_image,
        out_dim,
        model,
        optimizer,
        checkpoint,
        fingerprint(train_split, test_split),
        channels_last,
    )


def _train(
    cfg: Config,
    run: Run,
    log: Callable[[dict], None],
    device: torch.device,
    progress: bool,
    setup: Setup,
    data_dir: str | Path | None = None,
) -> dict:
    classify, train_split, batches, test_batches = setup.classify, setup.train_split, setup.batches, setup.test_batches
    model, optimizer = setup.model, setup.optimizer
    loss_fn = LOSSES[cfg.loss]
    meter = TrainMeter(device, classify)
    plateau = math.log(setup.out_dim) - PLATEAU_MARGIN if classify else None
    left_plateau_step = None

    monitor = _monitor(cfg, log, model, optimizer, loss_fn, batches, train_split)
    start = 0
    checkpoint = setup.checkpoint
    if checkpoint is not None:
        meter.load_state_dict(checkpoint["meter"])
        set_rng_state(checkpoint["rng"])
        start, left_plateau_step = checkpoint["step"], checkpoint["left_plateau_step"]
        if monitor is not None:
            monitor.load_state_dict(checkpoint["monitor"])
    run.truncate(start)
    run.write_env(
        device,
        data_sha256=setup.data_sha256,
        data_dir=str(Path(data_dir).expanduser().resolve()) if data_dir is not None else None,  # for landscape slice
        memory_format="channels_last" if setup.channels_last else "contiguous",
    )
    channels_last = setup.channels_last
    run.set_status("running", start)

    def save_checkpoint(step: int) -> None:
        run.save_checkpoint(
            {
                "step": step,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "meter": meter.state_dict(),
                "rng": rng_state(),
                "left_plateau_step": left_plateau_step,
                "config": to_dict(cfg),
                "monitor": monitor.state_dict() if monitor is not None else {},
            }
        )

    status, diverged_step, last_test = "done", None, None
    t_start = t_log = time.perf_counter()
    examples_since_log = 0
    with _progress(progress) as bar:
        task = bar.add_task(cfg.name, total=cfg.steps, completed=start, loss="-", acc="-", speed="-")
        model.train()
        for step in range(start + 1, cfg.steps + 1):
            x, y = batches(step - 1)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            if monitor is not None:
                monitor.before_forward(step)  # probe steps only: snapshot buffers and RNG
            output = model(x)
            loss = loss_fn(output, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if monitor is not None:
                monitor.observe(step, (x, y), loss)  # due probes; they change nothing
            optimizer.step()
            if monitor is not None:
                monitor.after_step()  # a due ics_opti, with the weights this step produced
            meter.add(step, loss, output, y)
            examples_since_log += len(y)
            bar.advance(task)

            last = step == cfg.steps
            if step % cfg.log.train_every == 0 or last:
                now = time.perf_counter()
                rec = meter.flush()
                nonfinite = rec.pop("nonfinite_step")
                speed = examples_since_log / max(now - t_log, 1e-9)
                t_log, examples_since_log = now, 0
                if plateau is not None and left_plateau_step is None and rec["loss"] < plateau:
                    left_plateau_step = step
                log(
                    {
                        "kind": "train",
                        "step": step,
                        **rec,
                        "epoch": step * batches.batch_size / batches.n,
                        "examples_per_s": speed,
                        "elapsed_s": now - t_start,
                    }
                )
                acc = rec.get("acc")
                bar.update(
                    task, loss=f"{rec['loss']:.3f}", acc="-" if acc is None else f"{acc:.3f}", speed=f"{speed:,.0f}"
                )
                if nonfinite is not None:
                    status, diverged_step = "diverged", nonfinite
                    break
            if (cfg.log.eval_every and step % cfg.log.eval_every == 0) or last:
                last_test = evaluate(model, test_batches, cfg.loss, classify)
                log({"kind": "test", "step": step, **last_test})
                model.train()
            if step % cfg.log.checkpoint_every == 0 or last:
                save_checkpoint(step)
                run.set_status("running", step)

    if monitor is not None:
        monitor.close()
    if last_test is None:  # resumed from the final checkpoint: its test record is already written
        last_test = next(
            (
                {k: r.get(k) for k in ("loss", "acc") if k in r}
                for r in reversed(run.records())
                if r.get("kind") == "test"
            ),
            None,
        )
    final = {
        "steps": cfg.steps,
        "test": last_test,
        "left_plateau_step": left_plateau_step,
        # "stuck" only once the run saw every example at least once: before that it could still leave
        "stuck_on_plateau": (plateau is not None and left_plateau_step is None)
        if cfg.steps * batches.batch_size >= batches.n
        else None,
        "train_seconds": time.perf_counter() - t_start,
    }
    if status == "diverged":
        run.set_status("diverged", step, diverged_step=diverged_step, **final)
    else:
        run.set_status("done", cfg.steps, **final)
    return run.status()
