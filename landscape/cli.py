"""The ``landscape`` command line: parses options, calls the library, and ends bad input
(a ``UserError``, or a usage error of typer's) with one line on stderr and exit status 2.

One command per registered experiment (``landscape.experiments.REGISTRY``), plus ``train``,
``reproduce`` and ``report``.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from landscape.errors import UserError, one_line, quote

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Measure how smooth a network's loss landscape is while it trains, with and without "
    "normalisation (Santurkar et al., NeurIPS 2018).",
)

SET_HELP = "Override a config key, e.g. --set optim.lr=0.5 (repeatable; values are YAML scalars)."
DATA_HELP = (
    "CIFAR-10 folder: cifar-10-batches-py/ or train/<class>/*.jpg + test/<class>/. "
    "Without it, the official archive is downloaded into ~/.cache/landscape (LANDSCAPE_CACHE)."
)
PRESET_HELP = (
    "smoke (seconds, generated data) | quick (2-core CPU, 15-25 min for reproduce, 1 seed) | "
    "cpu (the quick protocol with 5 seeds, 57 min measured on 2 cores) | paper (the paper's protocol, GPU)."
)
LAUNCHER_HELP = "local (this process, one run after another) | ray (one Ray task per run)."
ADDRESS_HELP = "Ray cluster address (host:port), or auto to join a running one; none starts a local instance."


@app.callback()
def root() -> None:
    """Reproduce Santurkar et al. (2018): train VGG/DLN with and without normalisation and
    measure the loss landscape (smoothness, ICS) along the way. Run `landscape COMMAND --help`."""


def user_errors(fn):
    """Bad input (a UserError) and file-system failures end in one line on stderr and exit
    status 2; Ctrl-C or SIGTERM in one line and status 130, the run left resumable."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            typer.echo(f"error: {one_line(exc)}", err=True)
            raise typer.Exit(2) from None
        except OSError as exc:  # not writable, not a directory, no space left, a name too long...
            where = f" {quote(exc.filename)}" if exc.filename else ""
            typer.echo(
                one_line(
                    f"error: cannot use{where}: {exc.strerror or exc}; free space, fix the permissions or "
                    "pick another path (finished runs and results are kept)"
                ),
                err=True,
            )
            raise typer.Exit(2) from None
        except KeyboardInterrupt as exc:
            typer.echo(
                f"interrupted: {exc}" if str(exc) else "interrupted; run the same command again to resume", err=True
            )
            raise typer.Exit(130) from None

    return wrapper


@app.command()
@user_errors
def train(
    config: str = typer.Argument(..., help="YAML config, e.g. configs/vgg_bn.yaml (see configs/)."),
    set_: Optional[list[str]] = typer.Option(None, "--set", help=SET_HELP),
    data_dir: Optional[str] = typer.Option(None, "--data-dir", help=DATA_HELP),
    out: str = typer.Option("runs", "--out", help="Parent folder of run directories."),
    device: Optional[str] = typer.Option(None, "--device", help="auto (CUDA when present) | cpu | cuda | cuda:N."),
    name: Optional[str] = typer.Option(None, "--name", help="Run name (default: the config's name, else file name)."),
    resume: bool = typer.Option(
        False, "--resume", help="Continue the run from its last checkpoint (to more steps: --set steps=N)."
    ),
    force: bool = typer.Option(False, "--force", help="Delete an existing run of the same name and start again."),
    progress: Optional[bool] = typer.Option(
        None, "--progress/--no-progress", help="Show a progress bar (default: when the output is a terminal)."
    ),
    output: Optional[list[str]] = typer.Option(
        None,
        "--output",
        help="Also write scalars to tensorboard (OUT/NAME/tensorboard) or wandb (offline, OUT/NAME/wandb); repeatable.",
    ),
):
    """Train one run (VGG, ResNet, ViT, MLP or deep linear network) into OUT/NAME and print its final status."""
    from landscape.config import Config, build_config, load_config
    from landscape.train import describe
    from landscape.train import train as run_training

    if resume and force:
        raise UserError("--resume and --force contradict each other; pass one of them")
    overrides = list(set_ or [])
    if device:
        overrides.append(f"device={device}")
    if output:
        overrides.append(f"outputs=[{', '.join(output)}]")
    cfg = load_config(config, overrides, base=Config(name=Path(config).stem))
    if name is not None:  # taken as written (not as YAML, which would fold "a\nb" into "a b")
        cfg = build_config([{"name": name}], base=cfg)
    status = run_training(
        cfg, out=out, data_dir=data_dir, resume=resume, force=force, progress=_progress(progress), extend=resume
    )
    typer.echo(f"{describe(cfg.name, status)} -> {Path(out) / cfg.name}")


# Options shared by every experiment command and reproduce (typer reads them from Annotated).
Preset = Annotated[str, typer.Option("--preset", help=PRESET_HELP)]
Seeds = Annotated[
    Optional[int],
    typer.Option("--seeds", help="Seeds per configuration (default: the preset's; 5 or more for a decisive test)."),
]
FirstSeed = Annotated[
    int,
    typer.Option(
        "--first-seed",
        help="The first seed (seeds FIRST, FIRST+1, ...): a confirmatory run on seeds an earlier one never saw.",
    ),
]
DataDir = Annotated[Optional[str], typer.Option("--data-dir", help=DATA_HELP)]
Out = Annotated[Optional[str], typer.Option("--out", help="Results folder (default: results/PRESET).")]
Device = Annotated[Optional[str], typer.Option("--device", help="auto | cpu | cuda | cuda:N (default: auto).")]
Sets = Annotated[Optional[list[str]], typer.Option("--set", help=SET_HELP + " Applied to every run.")]
Launcher = Annotated[str, typer.Option("--launcher", help=LAUNCHER_HELP)]
Address = Annotated[Optional[str], typer.Option("--address", help=ADDRESS_HELP)]
CpusPerRun = Annotated[float, typer.Option("--cpus-per-run", help="Ray CPUs (and torch threads) per run.")]
GpusPerRun = Annotated[float, typer.Option("--gpus-per-run", help="Ray GPUs per run.")]
Progress = Annotated[
    Optional[bool],
    typer.Option(
        "--progress/--no-progress", help="Progress bar per run (local); default: on when the output is a terminal."
    ),
]


def _progress(flag: bool | None) -> bool:
    """A progress bar unless asked not to, or the output is not a terminal (a log file, a pipe)."""
    return sys.stdout.isatty() if flag is None else flag


def _print_claims(summary: dict) -> None:
    typer.echo(f"== {summary['experiment']}")
    for name, run in summary["runs"].items():
        if run["status"] != "done":
            typer.echo(f"  run {name}: {run['status_text']}")
    for c in summary["claims"]:
        mean = "n/a" if c["mean"] is None else f"{c['mean']:.4g}"
        mean = f"geometric mean {mean}" if c.get("transform") == "log" and c["mean"] is not None else mean
        ci = "" if not c.get("ci") else f" [95% CI {c['ci'][0]:.3g}, {c['ci'][1]:.3g}]"
        signs = f", {c['signs']['k']} of {c['signs']['n']} seeds on the claimed side" if c.get("signs") else ""
        kind = "" if c.get("headline", True) else "[diagnostic] "
        adjusted = c.get("adjusted_verdict", c["verdict"])
        holm = f"; after Holm over the family: {adjusted}" if adjusted != c["verdict"] else ""
        typer.echo(
            f"  {c['verdict']:>15}: {kind}{c['claim']} ({c['quantity']} = {mean}{ci}{signs}; {c.get('why', '')}{holm})"
        )
        if c.get("note"):
            typer.echo(f"  {'':>15}  note: {c['note']}")


def _experiment_command(name: str, help_text: str):
    @user_errors
    def command(
        preset: Preset = "quick",
        seeds: Seeds = None,
        data_dir: DataDir = None,
        out: Out = None,
        device: Device = None,
        set_: Sets = None,
        launcher: Launcher = "local",
        address: Address = None,
        cpus_per_run: CpusPerRun = 1.0,
        gpus_per_run: GpusPerRun = 0.0,
        progress: Progress = None,
        first_seed: FirstSeed = 0,
    ):
        from landscape.launch import Launch
        from landscape.reproduce import run_experiment

        launch = Launch(launcher, address, cpus_per_run, gpus_per_run, _progress(progress))
        where = out or f"results/{preset}"
        _print_claims(
            run_experiment(
                name, preset, seeds, where, data_dir, device, list(set_ or []), launch, first_seed=first_seed
            )
        )
        typer.echo(
            f"summary -> {Path(where) / name / 'summary.json'}; the report: landscape report {where} -o "
            f"{Path(where) / 'report.html'}"
        )

    command.__doc__ = help_text + " Skips finished runs and resumes interrupted ones."
    command.__name__ = name.replace("-", "_")
    return command


def _register_experiment_commands() -> None:
    from landscape.experiments import REGISTRY

    for experiment in REGISTRY.values():
        app.command(experiment.name)(_experiment_command(experiment.name, experiment.help))


_register_experiment_commands()


@app.command()
@user_errors
def reproduce(
    preset: Preset = "quick",
    seeds: Seeds = None,
    data_dir: DataDir = None,
    out: Out = None,
    device: Device = None,
    set_: Sets = None,
    report: Annotated[Optional[str], typer.Option("--report", help="Report file (default: OUT/report.html).")] = None,
    launcher: Launcher = "local",
    address: Address = None,
    cpus_per_run: CpusPerRun = 1.0,
    gpus_per_run: GpusPerRun = 0.0,
    progress: Progress = None,
    first_seed: FirstSeed = 0,
    beyond: Annotated[
        bool,
        typer.Option(
            "--beyond/--paper-only",
            help=("Also run the experiments beyond the paper (stability, ...); by default only the paper's."),
        ),
    ] = False,
):
    """The paper's experiments (runs shared between them), then the claims table and the HTML report."""
    from landscape.launch import Launch
    from landscape.reproduce import reproduce as run_all

    launch = Launch(launcher, address, cpus_per_run, gpus_per_run, _progress(progress))
    _, path = run_all(
        preset,
        seeds,
        out or f"results/{preset}",
        data_dir,
        device,
        list(set_ or []),
        launch,
        report,
        on_summary=_print_claims,
        beyond=beyond,
        first_seed=first_seed,
    )
    typer.echo(f"report -> {path}")


@app.command()
@user_errors
def report(
    paths: list[str] = typer.Argument(..., help="Run directories, experiment folders, or parents of either."),
    output: str = typer.Option("reports/index.html", "-o", "--output", help="The HTML file to write."),
    figures: Optional[str] = typer.Option(
        None,
        "--figures",
        help="Also write every figure as a PNG into this folder (SECTION-N.png), e.g. for documentation pages.",
    ),
):
    """Build one self-contained HTML report (figures, claims, configs, status) from records."""
    from landscape.experiments import REGISTRY
    from landscape.report import build_report

    typer.echo(f"report -> {build_report(paths, output, REGISTRY, figures)}")


@app.command()
@user_errors
def claims(
    paths: list[str] = typer.Argument(..., help="Experiment folders (the --out of an experiment), or their parent."),
    diagnostics: bool = typer.Option(False, "--diagnostics", help="Also the diagnostic claims (regimes, schedules)."),
    where: bool = typer.Option(
        False,
        "--where",
        help="Grouped by the published statement each claim tests (the paper's "
        "and its critiques'): where each holds and where it breaks, diagnostics included.",
    ),
):
    """Print the claims of experiment summaries as a Markdown table (value, interval, bound, signs, verdict)."""
    from landscape.experiments import REGISTRY
    from landscape.report import claims_markdown

    typer.echo(claims_markdown(paths, diagnostics, REGISTRY, grouped=where), nl=False)


@app.command()
@user_errors
def keys(
    prefix: str = typer.Argument("", help="Only the keys starting with this, e.g. optim or probes.sharpness."),
):
    """List every config key (what --set and config files take), its type and its default."""
    from landscape.config import Config, field_paths

    default = Config()
    found = {k: t for k, t in field_paths(default).items() if k.startswith(prefix)}
    if not found:
        raise UserError(f"no config key starts with {quote(prefix)}; run landscape keys to list them all")
    for key, tp in found.items():
        value = default
        for part in key.split("."):
            value = getattr(value, part)
        typer.echo(f"{key}  {_type_name(tp)}  (default {value!r})")


def _type_name(tp) -> str:
    import typing

    if typing.get_origin(tp) is typing.Annotated:
        tp = typing.get_args(tp)[0]
    if typing.get_origin(tp) is typing.Literal:
        return " | ".join(map(str, typing.get_args(tp)))
    return getattr(tp, "__name__", str(tp))


@app.command("depth-calibration")
@user_errors
def depth_calibration(
    runs: list[str] = typer.Argument(..., help="Folders holding the depth experiment's calibration runs."),
):
    """Print the depth preset's calibration rule applied to calibration runs: per network, its rate and why."""
    from landscape.experiments.depth import calibrate
    from landscape.results import find_runs

    if missing := [r for r in runs if not Path(r).is_dir()]:
        raise UserError(f"{quote(missing[0])} is not a folder; pass the folders holding the calibration runs")
    found = [r for r in find_runs(runs) if r.name.startswith("depth-")]
    if not found:
        raise UserError(
            f"no depth runs (depth-*) under {', '.join(quote(r) for r in runs)}; pass the --out/runs "
            "folder of the calibration runs"
        )
    typer.echo("| network | lr | why |\n|---|---|---|")
    for name, (lr, why) in calibrate(found).items():
        typer.echo(f"| {name} | {'undecided' if lr is None else f'{lr:g}'} | {why} |")


@app.command()
@user_errors
def export(
    runs: list[str] = typer.Argument(..., help="Run directories, or folders holding them (e.g. results/quick)."),
    to: str = typer.Option(..., "--to", help="Format: tensorboard."),
    out: str = typer.Option(..., "--out", "-o", help="Folder for the exported files (one subfolder per run)."),
):
    """Write existing runs' records as TensorBoard event files (scalar names: see README)."""
    from landscape.export import export_runs

    for path in export_runs(runs, to, out):
        typer.echo(f"wrote {path}")


@app.command("slice")
@user_errors
def slice_(
    target: str = typer.Argument(..., help="A run directory, or a checkpoint file inside one."),
    directions: str = typer.Option(
        "random",
        "--directions",
        help="random (filter-normalised, Li et al.) | hessian "
        "(top eigenvectors) | interpolate (from the initialisation, or --to) | pca "
        "(of --trajectory).",
    ),
    dims: int = typer.Option(2, "--dims", help="1 (a line) or 2 (a grid)."),
    grid: int = typer.Option(21, "--grid", help="Points per side."),
    range_: str = typer.Option(
        "-1:1", "--range", help="Coordinates a:b along each direction (interpolate: 0 is the start, 1 the end)."
    ),
    bn: str = typer.Option(
        "recompute",
        "--bn",
        help="BatchNorm: train (batch statistics) | recompute (running "
        "statistics recomputed at each point) | checkpoint (the stored ones).",
    ),
    bn_batches: int = typer.Option(4, "--bn-batches", help="Batches recompute averages statistics over."),
    split: str = typer.Option("train", "--split", help="train | test."),
    subset: int = typer.Option(
        0, "--subset", help="Examples the loss is measured on (a seeded subset; default 1024, or all if fewer)."
    ),
    batch_size: int = typer.Option(256, "--batch-size", help="Examples per forward pass."),
    seed: int = typer.Option(0, "--seed", help="Seeds the random directions and the subset."),
    ignore: str = typer.Option(
        "biasbn", "--ignore", help="biasbn (leave biases and normalisation parameters out) | none."
    ),
    to: Optional[str] = typer.Option(
        None,
        "--to",
        help="interpolate: the end point's checkpoint (default: from the run's initialisation to its weights).",
    ),
    trajectory: Optional[list[str]] = typer.Option(
        None,
        "--trajectory",
        help="pca: a checkpoint of the trajectory (repeat, in training order; the run's own is the last point).",
    ),
    name: Optional[str] = typer.Option(None, "--name", help="Folder under RUN/slices/ (default: KIND-Nd-BN)."),
    workers: int = typer.Option(
        1, "--workers", help="Shards the grid is split over: local worker processes, or Ray tasks with --launcher ray."
    ),
    progress: Progress = None,
    launcher: str = typer.Option(
        "local", "--launcher", help="local | ray (one task per shard; every node must see the run's folder)."
    ),
    address: Optional[str] = typer.Option(
        None,
        "--address",
        help="With --launcher ray: the cluster (auto: the running one); default a private local instance.",
    ),
    data_dir: Optional[str] = typer.Option(None, "--data-dir", help=DATA_HELP),
    device: Optional[str] = typer.Option(None, "--device", help="auto | cpu | cuda | cuda:N (default: the run's)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing slice of the same name."),
):
    """A 1D or 2D loss-landscape slice of a run, written to RUN/slices/NAME (resumes a killed one)."""
    from landscape.slicing import SliceSpec, parse_range, slice_run

    lo, hi = parse_range(range_)
    spec = SliceSpec(
        directions,
        dims,
        grid,
        lo,
        hi,
        bn,
        bn_batches,
        split,
        subset,
        batch_size,
        seed,
        ignore,
        to,
        tuple(trajectory or ()),
    )
    path = slice_run(
        target,
        spec,
        name,
        data_dir,
        device,
        workers,
        force,
        log=typer.echo,
        launcher=launcher,
        address=address,
        progress=_progress(progress),
    )
    typer.echo(f"slice -> {path}")


def main() -> None:
    """Entry point: typer's own usage errors (bad option type, missing argument, unknown
    command) also end in one line and exit status 2; `landscape` alone prints the help."""
    command = typer.main.get_command(app)
    if len(sys.argv) == 1:
        command.main(["--help"], prog_name="landscape")  # prints the help and exits 0
    try:
        code = command.main(prog_name="landscape", standalone_mode=False)
    except typer.TyperException as exc:  # typer's usage errors (public base class)
        ctx = getattr(exc, "ctx", None)
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        where = f"; see `{ctx.command_path} --help`" if ctx is not None else ""
        typer.echo(f"error: {' '.join(message.split()).rstrip('.')}{where}", err=True)
        sys.exit(2)
    except typer.Abort:
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
