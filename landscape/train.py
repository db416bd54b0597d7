"""The training loop: one explicit loop, steps-based.

batch -> forward -> backward -> (due probes) -> optimizer step -> log / evaluate / checkpoint.

Step ``t`` (1-based) is the t-th optimizer update; every record carries the step it
belongs to. Nothing on the hot path reads a value back from the device: train loss,
accuracy and the first non-finite step accumulate in device tensors and are read once
per ``log.train_every`` steps.
"""

from __future__ import annotations

import math
import shutil
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from landscape.config import Config, to_dict
from landscape.data import Batches, Split, load_splits
from landscape.errors import UserError
from landscape.models import build_model
from landscape.probes import Monitor, every, explicit, log_spaced
from landscape.runs import FINISHED, Run

PLATEAU_MARGIN = 0.1  # nats below ln(num_classes): a train loss under it has left the initial plateau


def sum_squares(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``sum_i ||f(x_i) - y_i||^2``: the deep linear network's loss in PAPER.md."""
    return (out - y).pow(2).sum()


LOSSES = {"cross_entropy": F.cross_entropy, "sum_squares": sum_squares, "mse": F.mse_loss}


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
        return {"loss_sum": self.loss_sum.cpu(), "correct": self.correct.cpu(),
                "first_nonfinite": self.first_nonfinite.cpu(), "steps": self.steps, "examples": self.examples}

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


def _rng_state(device: torch.device) -> dict:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _progress(enabled: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("loss {task.fields[loss]}  acc {task.fields[acc]}  {task.fields[speed]} ex/s"),
                    TimeRemainingColumn(), disable=not enabled, transient=False)


def _monitor(cfg: Config, run: Run, model, optimizer, loss_fn, batches: Batches, train_split: Split):
    """The probes of ``cfg.probes`` as a Monitor writing into the run (None when none are enabled)."""
    p = cfg.probes
    if not p.enabled:
        return None
    schedule = {"every": lambda: every(p.every), "log": lambda: log_spaced(cfg.steps, p.points),
                "list": lambda: explicit(p.steps)}[p.schedule]()
    fixed = train_split.subset(p.activation_batch, seed=cfg.data_seed)
    probe_batch = (batches.prepare(fixed.inputs.to(batches.split.inputs.device)),
                   fixed.targets.to(batches.split.targets.device))
    try:
        return Monitor(run.log, model, optimizer, loss_fn, schedule, probes=p.enabled, eta_multiples=p.etas,
                       layers=list(p.layers) or None, probe_batch=probe_batch, sharpness_iters=p.sharpness_iters,
                       sharpness_tol=p.sharpness_tol, eval_mode=p.eval_mode)
    except KeyError as exc:
        raise UserError(f"probes.layers: {exc.args[0]}") from None


def train(cfg: Config, out: str | Path = "runs", data_dir: str | Path | None = None, resume: bool = False,
          force: bool = False, progress: bool = False, splits: dict[str, Split] | None = None) -> dict:
    """Train one run into ``out/cfg.name``; returns its final status record.

    ``splits`` lets callers (experiments, tests) pass data already in memory. A run that
    is already finished is not trained again when resumed.
    """
    device = resolve_device(cfg.device)
    path = Path(out) / cfg.name
    if path.exists() and not force:  # refuse, or find a finished run, before any work
        existing = Run.open(path, cfg, resume=resume)
        if existing.status().get("status") in FINISHED:
            return existing.status()
    if splits is None:  # a bad data path fails here, before anything on disk changes (even with --force)
        d = cfg.data
        splits = load_splits(d.dataset, data_dir, d.synthetic_size, d.gaussian_samples, d.gaussian_dim,
                             d.gaussian_seed)
    fresh = force or not path.exists()
    run = Run.open(path, cfg, resume=resume, force=force)
    try:
        return _train(cfg, run, device, resume, progress, splits)
    except KeyboardInterrupt:
        run.set_status("failed", run.status().get("step", 0), error="interrupted")
        raise
    except UserError:
        run.close()
        if fresh and not run.checkpoint_path.exists():  # bad input before any work: leave nothing behind
            shutil.rmtree(run.path, ignore_errors=True)
        else:
            run.set_status("failed", run.status().get("step", 0), error="bad input")
        raise
    except Exception as exc:
        run.set_status("failed", run.status().get("step", 0), error=f"{type(exc).__name__}: {exc}")
        raise
    finally:
        run.close()


def _train(cfg: Config, run: Run, device: torch.device, resume: bool, progress: bool, splits) -> dict:
    d = cfg.data
    classify = cfg.loss == "cross_entropy"
    train_split, test_split = splits["train"].subset(d.train_subset), splits["test"].subset(d.test_subset)
    batches = Batches(train_split, d.batch_size, cfg.data_seed, d.augment, device)
    test_batches = Batches(test_split, 0, cfg.data_seed, False, device)
    is_image = train_split.inputs.dtype == torch.uint8
    in_dim = 3 if is_image else train_split.inputs.shape[1]
    out_dim = (int(max(train_split.targets.max(), test_split.targets.max())) + 1 if classify
               else train_split.targets.shape[1])
    if classify and cfg.model.arch == "dln":
        raise UserError("the deep linear network is a regression model; set loss=sum_squares or loss=mse")
    if is_image != (cfg.model.arch == "vgg"):
        raise UserError(f"model.arch={cfg.model.arch} does not fit data.dataset={d.dataset}; "
                        "use vgg with cifar10/synthetic and dln with gaussian")

    model = build_model(cfg.model, cfg.seed, cfg.noise_seed, in_dim, out_dim).to(device)
    if device.type == "cuda" and is_image:
        model = model.to(memory_format=torch.channels_last)  # faster convolutions with cuDNN
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.optim.lr, momentum=cfg.optim.momentum,
                                weight_decay=cfg.optim.weight_decay)
    loss_fn = LOSSES[cfg.loss]
    meter = TrainMeter(device, classify)
    plateau = math.log(out_dim) - PLATEAU_MARGIN if classify else None
    left_plateau_step = None

    monitor = _monitor(cfg, run, model, optimizer, loss_fn, batches, train_split)
    start = 0
    checkpoint = run.load_checkpoint(device) if resume else None
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        meter.load_state_dict(checkpoint["meter"])
        _set_rng_state(checkpoint["rng"], device)
        start, left_plateau_step = checkpoint["step"], checkpoint["left_plateau_step"]
        if monitor is not None:
            monitor.load_state_dict(checkpoint["monitor"])
    run.truncate(start)
    run.write_env(device)
    run.set_status("running", start)

    def save_checkpoint(step: int) -> None:
        run.save_checkpoint({"step": step, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                             "meter": meter.state_dict(), "rng": _rng_state(device),
                             "left_plateau_step": left_plateau_step, "config": to_dict(cfg),
                             "monitor": monitor.state_dict() if monitor is not None else {}})

    status, diverged_step, last_test = "done", None, None
    t_start = t_log = time.perf_counter()
    examples_since_log = 0
    with _progress(progress) as bar:
        task = bar.add_task(cfg.name, total=cfg.steps, completed=start, loss="-", acc="-", speed="-")
        model.train()
        for step in range(start + 1, cfg.steps + 1):
            x, y = batches(step - 1)
            if device.type == "cuda" and is_image:
                x = x.contiguous(memory_format=torch.channels_last)
            if monitor is not None:
                monitor.before_forward(step)  # probe steps only: snapshot buffers and RNG
            output = model(x)
            loss = loss_fn(output, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if monitor is not None:
                monitor.observe(step, (x, y), loss)  # due probes; they change nothing
            optimizer.step()  # the monitor's post-step hook measures ics_opti with the new weights
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
                run.log({"kind": "train", "step": step, **rec, "epoch": step * batches.batch_size / batches.n,
                         "examples_per_s": speed, "elapsed_s": now - t_start})
                bar.update(task, loss=f"{rec['loss']:.3f}", acc=f"{rec.get('acc', float('nan')):.3f}",
                           speed=f"{speed:,.0f}")
                if nonfinite is not None:
                    status, diverged_step = "diverged", nonfinite
                    break
            if (cfg.log.eval_every and step % cfg.log.eval_every == 0) or last:
                last_test = evaluate(model, test_batches, cfg.loss, classify)
                run.log({"kind": "test", "step": step, **last_test})
                model.train()
            if step % cfg.log.checkpoint_every == 0 or last:
                save_checkpoint(step)
                run.set_status("running", step)

    if monitor is not None:
        monitor.close()
    final = {"steps": cfg.steps, "test": last_test, "left_plateau_step": left_plateau_step,
             "stuck_on_plateau": plateau is not None and left_plateau_step is None,
             "train_seconds": time.perf_counter() - t_start}
    if status == "diverged":
        run.set_status("diverged", step, diverged_step=diverged_step, **final)
    else:
        run.set_status("done", cfg.steps, **final)
    return run.status()
