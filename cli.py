"""The ``landscape`` command line. Every command ends bad input with one line and exit status 2."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated, List, Optional

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
    name: Optional[str] = typer.Option(None, "--name", help="Run name (default: the config's name, else file name)."),
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


PRESET_HELP = "smoke (seconds, generated data) | quick (2-core CPU, ~15 min for reproduce) | paper (PAPER.md, GPU)."
EXPERIMENT_HELP = {
    "train-compare": "Figure 1: VGG standard vs BN at lr 0.1 and 0.5 (training curves, activation distributions).",
    "ics-distrib": "Figure 2: standard vs BN vs noisy BN (accuracy and ICS_distrib, the activation shift).",
    "ics-opti": "Figure 3: ICS_opti (l2 and cosine between G and G') for VGG and the deep linear network.",
    "smoothness": "Figure 4: loss variation, gradient predictiveness, beta_eff and sharpness, VGG and DLN.",
    "norms": "Appendix: l1, l2 and l_inf normalisation against BN and standard.",
}


LAUNCHER_HELP = "local (this process, one run after another) | ray (one Ray task per run)."
ADDRESS_HELP = "Ray cluster address (host:port), or auto to join a running one; none starts a local instance."


def _launch(launcher: str, address: Optional[str], cpus: float, gpus: float, progress: bool):
    from landscape.experiments import Launch

    if launcher not in ("local", "ray"):
        raise UserError(f"--launcher must be local or ray; got '{launcher}'")
    if cpus <= 0 or gpus < 0:
        raise UserError("--cpus-per-run must be > 0 and --gpus-per-run >= 0")
    if launcher == "local" and address:
        raise UserError("--address needs --launcher ray")
    return Launch(launcher, address, cpus, gpus, progress)


# Options shared by every experiment command and reproduce (typer reads them from Annotated).
Preset = Annotated[str, typer.Option("--preset", help=PRESET_HELP)]
Seeds = Annotated[int, typer.Option("--seeds", help="Seeds per configuration; >= 2 adds 95% confidence intervals.")]
DataDir = Annotated[Optional[str], typer.Option("--data-dir", help=DATA_HELP)]
Out = Annotated[Optional[str], typer.Option("--out", help="Results folder (default: results/PRESET).")]
Device = Annotated[Optional[str], typer.Option("--device", help="auto | cpu | cuda | cuda:N (default: auto).")]
Sets = Annotated[Optional[List[str]], typer.Option("--set", help=SET_HELP + " Applied to every run.")]
Launcher = Annotated[str, typer.Option("--launcher", help=LAUNCHER_HELP)]
Address = Annotated[Optional[str], typer.Option("--address", help=ADDRESS_HELP)]
CpusPerRun = Annotated[float, typer.Option("--cpus-per-run", help="Ray CPUs (and torch threads) per run.")]
GpusPerRun = Annotated[float, typer.Option("--gpus-per-run", help="Ray GPUs per run.")]
Progress = Annotated[bool, typer.Option("--progress/--no-progress", help="Progress bar per run (local).")]


def _experiment_command(experiment: str):
    @user_errors
    def command(preset: Preset = "quick", seeds: Seeds = 1, data_dir: DataDir = None, out: Out = None,
                device: Device = None, set_: Sets = None, launcher: Launcher = "local", address: Address = None,
                cpus_per_run: CpusPerRun = 1.0, gpus_per_run: GpusPerRun = 0.0, progress: Progress = False):
        from landscape.experiments import run_experiment

        launch = _launch(launcher, address, cpus_per_run, gpus_per_run, progress)
        summary = run_experiment(experiment, preset, seeds, out or f"results/{preset}", data_dir, device,
                                 list(set_ or []), launch)
        _print_claims(summary)

    command.__doc__ = EXPERIMENT_HELP[experiment] + " Skips finished runs and resumes interrupted ones."
    command.__name__ = experiment.replace("-", "_")
    return command


for _name in EXPERIMENT_HELP:
    app.command(_name)(_experiment_command(_name))


def _print_claims(summary: dict) -> None:
    for name, run in summary["runs"].items():
        if run["status"] != "done":
            typer.echo(f"  run {name}: {run['status_text']}")
    for c in summary["claims"]:
        mean = "n/a" if c["mean"] is None else f"{c['mean']:.4g}"
        ci = "" if not c.get("ci") else f" [95% CI {c['ci'][0]:.3g}, {c['ci'][1]:.3g}]"
        typer.echo(f"  {c['verdict']:>15}: {c['claim']} ({c['quantity']} = {mean}{ci})")


@app.command()
@user_errors
def reproduce(preset: Preset = "quick", seeds: Seeds = 1, data_dir: DataDir = None, out: Out = None,
              device: Device = None, set_: Sets = None,
              report: Annotated[Optional[str], typer.Option("--report", help="Report file (default: OUT/report.html).")
                                ] = None,
              launcher: Launcher = "local", address: Address = None, cpus_per_run: CpusPerRun = 1.0,
              gpus_per_run: GpusPerRun = 0.0, progress: Progress = False):
    """Every experiment (runs shared between them), then the claims table and the HTML report."""
    import time

    from landscape.experiments import EXPERIMENTS, run_experiment

    out = out or f"results/{preset}"
    launch = _launch(launcher, address, cpus_per_run, gpus_per_run, progress)
    t0 = time.perf_counter()
    if launcher == "ray":  # every experiment's runs as one batch of tasks, so the cluster stays busy
        from landscape.config import parse_override
        from landscape.experiments import execute, load_preset, plan

        overrides = [parse_override(o) for o in set_ or []]
        specs = [s for e in EXPERIMENTS for s in plan(e, load_preset(preset), list(range(seeds)), overrides)]
        execute(specs, Path(out), data_dir, device, launch)
    for experiment in EXPERIMENTS:  # with ray: every run is complete here, so this only summarises
        typer.echo(f"== {experiment}")
        summary = run_experiment(experiment, preset, seeds, out, data_dir, device, list(set_ or []), launch)
        _print_claims(summary)
    typer.echo(f"all experiments in {time.perf_counter() - t0:.0f} s -> {out}")
    _write_report([out], report or str(Path(out) / "report.html"))


def _write_report(paths: list[str], output: str) -> None:
    from landscape.report import build_report

    typer.echo(f"report -> {build_report(paths, output)}")


@app.command()
@user_errors
def report(
    paths: List[str] = typer.Argument(..., help="Run directories, experiment folders, or parents of either."),
    output: str = typer.Option("reports/index.html", "-o", "--output", help="The HTML file to write."),
):
    """Build one self-contained HTML report (figures, claims, configs, status) from records."""
    _write_report(paths, output)


def main() -> None:
    """Entry point: typer's own usage errors (bad option type, missing argument) also end in one line."""
    import sys

    try:  # recent typer vendors click; older releases use click itself
        from typer._click.exceptions import NoArgsIsHelpError, UsageError
    except ImportError:
        from click.exceptions import NoArgsIsHelpError, UsageError

    try:
        code = typer.main.get_command(app).main(prog_name="landscape", standalone_mode=False)
    except NoArgsIsHelpError as exc:  # `landscape` alone: the help text, as usual
        typer.echo(exc.ctx.get_help() if exc.ctx else str(exc))
        sys.exit(2)
    except UsageError as exc:
        where = f"; see `{exc.ctx.command_path} --help`" if exc.ctx else ""
        typer.echo(f"error: {' '.join(exc.format_message().split()).rstrip('.')}{where}", err=True)
        sys.exit(2)
    except typer.Abort:
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
