"""The ``landscape`` command line. Every command ends bad input with one line and exit status 2."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import List, Optional

import typer

from landscape.errors import UserError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Measure how smooth a network's loss landscape is while it trains, with and without "
    "normalisation (Santurkar et al., NeurIPS 2018).",
)

SET_HELP = "Override a config key, e.g. --set optim.lr=0.5 (repeatable; values are YAML scalars)."
DATA_HELP = ("CIFAR-10 folder: cifar-10-batches-py/ or train/<class>/*.jpg + test/<class>/. "
             "Without it, the official archive is downloaded into ~/.cache/landscape (LANDSCAPE_CACHE).")


@app.callback()
def root() -> None:
    """Reproduce Santurkar et al. (2018): train VGG/DLN with and without normalisation and
    measure the loss landscape (smoothness, ICS) along the way. Run `landscape COMMAND --help`."""


def user_errors(fn):
    """Turn a UserError into one line on stderr and exit status 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None

    return wrapper


@app.command()
@user_errors
def train(
    config: str = typer.Argument(..., help="YAML config, e.g. configs/vgg_bn.yaml (see configs/)."),
    set_: Optional[List[str]] = typer.Option(None, "--set", help=SET_HELP),
    data_dir: Optional[str] = typer.Option(None, "--data-dir", help=DATA_HELP),
    out: str = typer.Option("runs", "--out", help="Parent folder of run directories."),
    device: Optional[str] = typer.Option(None, "--device", help="auto (CUDA when present) | cpu | cuda | cuda:N."),
    name: Optional[str] = typer.Option(None, "--name", help="Run name (default: the config's name, else its file name)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run from its last checkpoint."),
    force: bool = typer.Option(False, "--force", help="Delete an existing run of the same name and start again."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
):
    """Train one run (VGG or deep linear network) into OUT/NAME and print its final status."""
    from landscape.config import Config, load_config
    from landscape.train import train as run_training

    if resume and force:
        raise UserError("--resume and --force contradict each other; pass one of them")
    overrides = list(set_ or [])
    if device:
        overrides.append(f"device={device}")
    if name:
        overrides.append(f"name={name}")
    cfg = load_config(config, overrides, base=Config(name=Path(config).stem))
    status = run_training(cfg, out=out, data_dir=data_dir, resume=resume, force=force, progress=progress)
    summary = f"{cfg.name}: {status['status']} at step {status['step']}"
    if status.get("diverged_step") is not None:
        summary += f" (first non-finite loss at step {status['diverged_step']})"
    test = status.get("test") or {}
    if "acc" in test:
        summary += f", test acc {test['acc']:.4f}, test loss {test['loss']:.4f}"
    elif "loss" in test:
        summary += f", test loss {test['loss']:.4g}"
    if status.get("stuck_on_plateau"):
        summary += ", never left the initial loss plateau"
    typer.echo(f"{summary} -> {Path(out) / cfg.name}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
