"""Where records go besides the run directory: a small protocol, and TensorBoard and W&B.

The run directory (``metrics.jsonl``) stays the source of truth (``landscape report`` reads
only it). An :class:`Output` receives every record as it is written and its scalars under
stable names (:func:`scalars_of`); ``Monitor``, the Lightning and Hugging Face callbacks and
``landscape train --output tensorboard`` all feed the same outputs.

Scalar names: ``landscape/train_loss``, ``landscape/train_acc``, ``landscape/test_loss``,
``landscape/test_acc``, and for probe records ``landscape/<quantity>`` (``landscape/<quantity>/<layer>``
per layer) for each quantity a probe's entry exports (:mod:`landscape.probes.registry`; the list
is in docs/integrations.md).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

from landscape.errors import UserError
from landscape.extras import require
from landscape.probes.records import Fanout, scalars_of

__all__ = [
    "OUTPUT_NAMES",
    "Output",
    "TensorBoard",
    "WandB",
    "ScalarFn",
    "build_outputs",
    "Fanout",
    "scalars_of",
]
OUTPUT_NAMES = ("tensorboard", "wandb")  # what --output / the config's `outputs` accept


class Output(Protocol):
    """Receives a run's scalars (every record's, under their documented names) and the end of the run."""

    def scalars(self, step: int, values: dict[str, float]) -> None: ...

    def close(self) -> None: ...


class TensorBoard:
    """Scalars as TensorBoard event files in ``logdir`` (``torch.utils.tensorboard.SummaryWriter``).
    ``purge_step``: a resumed run's first step; TensorBoard hides what an earlier writer logged
    from that step on (the records a resume rewrites)."""

    def __init__(self, logdir: str | Path, purge_step: int | None = None):
        require("tensorboard", "--output tensorboard")
        from torch.utils.tensorboard import SummaryWriter

        self.logdir = Path(logdir)
        self.writer = SummaryWriter(str(logdir), purge_step=purge_step)

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

    def __init__(
        self,
        dir: str | Path,
        project: str = "landscape",
        name: str | None = None,
        mode: str = "offline",
        config: dict | None = None,
    ):
        wandb = require("wandb", "--output wandb")
        Path(dir).mkdir(parents=True, exist_ok=True)
        import os

        self.run = wandb.init(
            project=project,
            name=name,
            dir=str(dir),
            mode=os.environ.get("WANDB_MODE", mode),
            config=config or {},
            reinit="create_new",
        )
        self.run.define_metric("landscape/step")
        self.run.define_metric("landscape/*", step_metric="landscape/step")

    def scalars(self, step: int, values: dict[str, float]) -> None:
        self.run.log({**values, "landscape/step": step})

    def close(self) -> None:
        self.run.finish()


class ScalarFn:
    """Scalars to any ``fn(step, values)`` (the Lightning callback passes its trainer's loggers)."""

    def __init__(self, fn: Callable[[int, dict[str, float]], None]):
        self.fn = fn

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
        outputs.append(
            TensorBoard(run_dir / "tensorboard", purge_step=start or None)
            if name == "tensorboard"
            else WandB(run_dir, name=run_name or run_dir.name)
        )  # wandb makes <run>/wandb/
    return outputs
