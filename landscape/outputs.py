"""Where records go besides the run directory: a small protocol, and TensorBoard and W&B.

The run directory (``metrics.jsonl``) stays the source of truth (``landscape report`` reads
only it). An :class:`Output` receives every record as it is written and its scalars under
stable names (:func:`scalars_of`); ``Monitor``, the Lightning and Hugging Face callbacks and
``landscape train --output tensorboard`` all feed the same outputs.

Scalar names (``landscape/...``), one per record field that is a single number per step:

========================================  =================================================
``landscape/train_loss``, ``train_acc``    train records (mean over the logging interval)
``landscape/test_loss``, ``test_acc``      test records (``landscape train``)
``landscape/loss``                         gradient sweep: L(w) on the probe batch
``landscape/loss_band``                    gradient sweep: max - min of L(w - eta g) over etas
``landscape/grad_change``                  gradient sweep: max ||grad L(w - eta g) - g||
``landscape/beta_eff``                     gradient sweep: effective beta-smoothness
``landscape/grad_norm``                    gradient sweep: ||g||
``landscape/sharpness``                    top Hessian eigenvalue (of P^-1 H for Adam)
``landscape/sharpness_threshold``          the optimizer's stability threshold (2/lr for SGD)
``landscape/curvature``                    g^T H g / ||g||^2
``landscape/hessian_trace``                tr(H) estimate
``landscape/layer_sharpness/<layer>``      top eigenvalue of each layer's Hessian block
``landscape/ics_l2/<layer>``               ICS_opti: ||G - G'|| per layer
``landscape/ics_cos/<layer>``              ICS_opti: cos(G, G') per layer
``landscape/shift/<layer>``                activation statistics: Wasserstein shift since the last probe
========================================  =================================================
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Protocol, Sequence

from landscape.errors import UserError

OUTPUT_NAMES = ("tensorboard", "wandb")  # what --output / the config's `outputs` accept
EXTRAS = {"tensorboard": "tensorboard", "wandb": "wandb", "lightning": "lightning", "transformers": "hf"}


def require(module: str, what: str):
    """Import an optional dependency, or one line naming the extra that installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        extra = EXTRAS.get(module.split(".")[0], module)
        raise UserError(f"{what} needs the '{extra}' extra: pip install 'landscape[{extra}]'") from None


class Output(Protocol):
    """Receives what a run writes: every record, its scalars, and the end of the run."""

    def record(self, record: dict) -> None: ...

    def scalars(self, step: int, values: dict[str, float]) -> None: ...

    def close(self) -> None: ...


def _number(x) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) else None


def scalars_of(record: dict) -> dict[str, float]:
    """A record's scalars under their documented names (non-finite and missing values left out)."""
    out: dict[str, float | None] = {}
    kind = record.get("kind")
    if kind in ("train", "test"):
        for key in ("loss", "acc"):
            out[f"landscape/{kind}_{key}"] = _number(record.get(key))
    elif kind == "probe":
        name, v = record.get("probe"), record.get("values") or {}
        if name == "gradient_sweep":
            losses = [_number(x) for x in v.get("losses") or []]
            changes = [_number(x) for x in v.get("grad_change") or []]
            out["landscape/loss"] = _number(v.get("loss"))
            out["landscape/loss_band"] = max(losses) - min(losses) if losses and None not in losses else None
            out["landscape/grad_change"] = max(changes) if changes and None not in changes else None
            out["landscape/beta_eff"] = _number(v.get("beta_eff"))
            out["landscape/grad_norm"] = _number(v.get("grad_norm"))
        elif name == "sharpness":
            out["landscape/sharpness"] = _number(v.get("value"))
            out["landscape/sharpness_threshold"] = _number(v.get("threshold"))
        elif name in ("curvature", "hessian_trace"):
            out[f"landscape/{name}"] = _number(v.get("value"))
        elif name == "layer_sharpness":
            out.update({f"landscape/layer_sharpness/{k}": _number(x) for k, x in (v.get("values") or {}).items()})
        elif name == "ics_opti":
            out.update({f"landscape/ics_l2/{k}": _number(x) for k, x in (v.get("l2") or {}).items()})
            out.update({f"landscape/ics_cos/{k}": _number(x) for k, x in (v.get("cosine") or {}).items()})
        elif name == "activation_stats":
            shift = v.get("shift") or {}
            out.update({f"landscape/shift/{k}": _number(s.get("wasserstein")) for k, s in shift.items()
                        if isinstance(s, dict)})
    return {k: x for k, x in out.items() if x is not None}


class TensorBoard:
    """Scalars as TensorBoard event files in ``logdir`` (``torch.utils.tensorboard.SummaryWriter``).
    ``purge_step``: a resumed run's first step; TensorBoard hides what an earlier writer logged
    from that step on (the records a resume rewrites)."""

    def __init__(self, logdir: str | Path, purge_step: int | None = None):
        require("tensorboard", "--output tensorboard")
        from torch.utils.tensorboard import SummaryWriter

        self.logdir = Path(logdir)
        self.writer = SummaryWriter(str(logdir), purge_step=purge_step)

    def record(self, record: dict) -> None:
        pass

    def scalars(self, step: int, values: dict[str, float]) -> None:
        for name, value in values.items():
            self.writer.add_scalar(name, value, step)
        self.writer.flush()  # probe steps are rare: flushing each keeps the event file current

    def close(self) -> None:
        self.writer.close()


class WandB:
    """Scalars to a Weights & Biases run (``mode="offline"`` by default: ``wandb sync`` uploads it;
    the ``WANDB_MODE`` environment variable overrides it). W&B writes into ``dir/wandb/``.

    W&B wants its own step to increase; probe records may arrive slightly out of step order
    (ICS_opti finishes after the step), so every scalar is logged with ``landscape/step`` and
    charts use it as their x axis (``define_metric``)."""

    def __init__(self, dir: str | Path, project: str = "landscape", name: str | None = None, mode: str = "offline",
                 config: dict | None = None):
        wandb = require("wandb", "--output wandb")
        Path(dir).mkdir(parents=True, exist_ok=True)
        import os

        self.run = wandb.init(project=project, name=name, dir=str(dir), mode=os.environ.get("WANDB_MODE", mode),
                              config=config or {},
                              reinit="create_new")
        self.run.define_metric("landscape/step")
        self.run.define_metric("landscape/*", step_metric="landscape/step")

    def record(self, record: dict) -> None:
        pass

    def scalars(self, step: int, values: dict[str, float]) -> None:
        self.run.log({**values, "landscape/step": step})

    def close(self) -> None:
        self.run.finish()


class ScalarFn:
    """Scalars to any ``fn(step, values)`` (the Lightning callback passes its trainer's loggers)."""

    def __init__(self, fn: Callable[[int, dict[str, float]], None]):
        self.fn = fn

    def record(self, record: dict) -> None:
        pass

    def scalars(self, step: int, values: dict[str, float]) -> None:
        self.fn(step, values)

    def close(self) -> None:
        pass


def build_outputs(names: Sequence[str], run_dir: Path, run_name: str | None = None, start: int = 0) -> list[Output]:
    """The named outputs for a run directory: TensorBoard event files in ``<run>/tensorboard``,
    an offline W&B run in ``<run>/wandb``. ``start``: the step a resumed run continues from."""
    unknown = [n for n in names if n not in OUTPUT_NAMES]
    if unknown:
        raise UserError(f"unknown output '{unknown[0]}'; choose from {', '.join(OUTPUT_NAMES)}")
    for name in names:  # every extra checked before any output is made
        require(name, f"--output {name}")
    outputs: list[Output] = []
    for name in dict.fromkeys(names):
        outputs.append(TensorBoard(run_dir / "tensorboard", purge_step=start or None) if name == "tensorboard"
                       else WandB(run_dir, name=run_name or run_dir.name))  # wandb makes <run>/wandb/
    return outputs


class Fanout:
    """A record sink that writes to the run (``sink``) first, then to every output."""

    def __init__(self, sink: Callable[[dict], None], outputs: Sequence[Output]):
        self.sink, self.outputs = sink, list(outputs)

    def __call__(self, record: dict) -> None:
        self.sink(record)
        if not self.outputs:
            return
        values = scalars_of(record)
        for out in self.outputs:
            out.record(record)
            if values:
                out.scalars(int(record.get("step", 0)), values)

    def close(self) -> None:
        for out in self.outputs:
            out.close()
        self.outputs = []


EXPORT_FORMATS = ("tensorboard",)


def export_runs(paths: Sequence[str | Path], to: str, out_dir: str | Path) -> list[Path]:
    """``landscape export``: every run at or below ``paths`` as TensorBoard event files, one
    folder per run under ``out_dir`` (named after the run, numbered when two runs share a name).
    Everything is checked before anything is written; existing files are never removed."""
    from landscape.results import find_runs

    if to not in EXPORT_FORMATS:
        raise UserError(f"--to must be one of {', '.join(EXPORT_FORMATS)}; got '{to}'")
    missing = [p for p in paths if not Path(p).exists()]
    if missing:
        raise UserError(f"'{missing[0]}' does not exist; pass run directories or folders holding them")
    runs = find_runs(list(paths))
    if not runs:
        raise UserError(f"no runs found under {', '.join(map(str, paths))}")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out '{out_dir}' is a file; pass a folder")
    require("tensorboard", "landscape export --to tensorboard")
    names: dict[str, int] = {}
    written = []
    for run in runs:
        k = names[run.name] = names.get(run.name, 0) + 1
        target = out_dir / (run.name if k == 1 else f"{run.name}-{k}")
        tb = TensorBoard(target)
        try:
            for record in run.records:
                values = scalars_of(record)
                if values:
                    tb.scalars(int(record.get("step", 0)), values)
        finally:
            tb.close()
        written.append(target)
    return written
