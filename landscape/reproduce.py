"""Running experiments: plan their runs, launch the missing ones, judge the claims, write
``OUT/<experiment>/summary.json``; ``reproduce`` does every registered experiment and the report.

A summary lists each run as the experiment sees it (arch, net, lr, seed, status, final
metrics) and each claim with its per-seed values, aggregate and verdict. The report reads
those descriptions; nothing here is re-derived from configs later.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from landscape.config import parse_override, to_dict
from landscape.errors import UserError
from landscape.experiments import REGISTRY, Experiment, get, preset_keys
from landscape.files import LOCK_NAME, FolderLock, atomic_write
from landscape.launch import Launch, Log, execute, say
from landscape.planning import RunSpec, check_overrides, load_preset
from landscape.probes import legacy
from landscape.probes.records import json_safe
from landscape.results import RunTable, final_test, final_train, read_run
from landscape.stats import adjust

MAX_SEEDS = 1000  # a sanity bound: --seeds 1000000000 is a typo, not a plan


# What every experiment's runs are named and compared by: a --set of them would mislabel every result.
LABELS = ("optim.lr", "optim.name", "model.norm", "model.arch")
IDENTITY = ("name", "seed", "data_seed", "noise_seed")  # refused by check_overrides, with their own message


def plan(experiment: Experiment, preset: dict, seeds: list[int], overrides: list[dict] = ()) -> list[RunSpec]:
    """The experiment's runs. A ``--set`` of what it varies between its runs (a width, a batch size, a learning
    rate, the normalisation; found by planning without the overrides) or names its runs by is refused: every run
    would take the same value while the results still say they differ."""
    check_overrides(list(overrides))
    specs = experiment.plan(preset, seeds, list(overrides))
    if overrides:
        fixed = set(LABELS) | varied_keys(experiment.plan(preset, seeds, []))
        touched = {k for o in overrides for k in leaf_keys(legacy.upgrade_config(o))}
        clash = sorted(
            k for k in touched if any(k == f or k.startswith(f + ".") or f.startswith(k + ".") for f in fixed)
        )
        if clash:
            raise UserError(
                f"--set {clash[0]}=... sets what {experiment.name} varies between its runs or names them "
                "by (each run would take that value while the results still tell them apart); run "
                "`landscape train` with it, or edit the preset"
            )
    return specs


def leaf_keys(d: dict, prefix: str = "") -> list[str]:
    out = []
    for k, v in d.items():
        out += leaf_keys(v, f"{prefix}{k}.") if isinstance(v, dict) and v else [f"{prefix}{k}"]
    return out


def varied_keys(specs: list[RunSpec]) -> set[str]:
    """Config keys whose values differ between runs of one architecture (seeds and names aside)."""
    out: set[str] = set()
    for arch in {s.arch for s in specs}:
        flats = [dict(zip(leaf_keys(to_dict(s.cfg)), leaf_values(to_dict(s.cfg)))) for s in specs if s.arch == arch]
        keys = set().union(*flats)
        out |= {k for k in keys if len({repr(f.get(k)) for f in flats}) > 1 and k.split(".")[0] not in IDENTITY}
    return out


def leaf_values(d: dict) -> list:
    out = []
    for v in d.values():
        out += leaf_values(v) if isinstance(v, dict) and v else [v]
    return out


def prepare(
    names: list[str],
    preset_name: str,
    seeds: int | None,
    overrides: list[str],
    data_dir=None,
    device: str | None = None,
    first_seed: int = 0,
) -> tuple[dict, list[int], dict[str, list[RunSpec]]]:
    """Validate everything and plan every experiment's runs, before any file is touched.
    ``seeds`` None takes the preset's own number of seeds; they are ``first_seed``,
    ``first_seed + 1``, ... (a confirmatory run on seeds a pilot never saw starts past them)."""
    from landscape.train import resolve_device

    if device is not None:
        resolve_device(device)
    if data_dir is not None and not Path(data_dir).expanduser().exists():
        raise UserError(f"--data-dir '{data_dir}' does not exist; pass the folder holding the data set")
    if seeds is not None and not 1 <= seeds <= MAX_SEEDS:
        raise UserError(f"--seeds must be between 1 and {MAX_SEEDS}; got {seeds}")
    preset = load_preset(preset_name, preset_keys())
    seeds = preset["seeds"] if seeds is None else seeds
    if not 1 <= seeds <= MAX_SEEDS:
        raise UserError(f"preset '{preset_name}' asks for {seeds} seeds; at most {MAX_SEEDS}")
    if not 0 <= first_seed <= MAX_SEEDS * 1000:
        raise UserError(f"--first-seed must be between 0 and {MAX_SEEDS * 1000}; got {first_seed}")
    parsed = [parse_override(o) for o in overrides]
    seed_list = list(range(first_seed, first_seed + seeds))
    return preset, seed_list, {name: plan(get(name), preset, seed_list, parsed) for name in names}


def summarise(experiment: Experiment, specs: list[RunSpec], out: Path, preset: dict, seeds: list[int]) -> dict:
    """Read the experiment's runs back, judge its claims, write ``OUT/<experiment>/summary.json``."""
    runs_dir = Path(out) / "runs"
    runs = {s.name: read_run(runs_dir / s.name) for s in specs if (runs_dir / s.name).exists()}
    rows = {}
    for s in specs:
        r = runs.get(s.name)
        rows[s.name] = {
            **s.describe(),
            "status": r.state if r else "missing",
            "status_text": r.describe_status() if r else "missing",
            "diverged_step": r.status.get("diverged_step") if r else None,
            "final_train": final_train(r) if r else None,
            "final_test": final_test(r) if r else None,
        }
    table = RunTable(rows, runs)
    summary = {
        "experiment": experiment.name,
        "preset": preset["name"],
        "seeds": seeds,
        "runs": rows,
        "claims": adjust([claim.judge(table) for claim in experiment.claims(preset)]),
    }
    target = Path(out) / experiment.name
    target.mkdir(parents=True, exist_ok=True)
    atomic_write(target / "summary.json", json.dumps(json_safe(summary), indent=2))
    return summary


def run_experiments(
    names: list[str],
    preset_name: str,
    seeds: int | None,
    out: str | Path,
    data_dir=None,
    device: str | None = None,
    overrides: list[str] = (),
    launch: Launch | None = None,
    log: Log = say,
    on_summary=None,
    first_seed: int = 0,
) -> dict[str, dict]:
    """Run the named experiments: every run they need (shared runs once), then one summary each.

    All runs are planned and checked first, then launched as one batch (so a Ray cluster
    stays busy), then each experiment is summarised; ``on_summary(summary)`` is called as
    each summary is written."""
    preset, seed_list, plans = prepare(names, preset_name, seeds, list(overrides), data_dir, device, first_seed)
    if preset.get("note"):
        log(f"note: preset {preset_name}: {preset['note']}")
    launch = launch or Launch()
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out '{out}' is a file; pass a folder")
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        with FolderLock(out, "results folder"):  # one writer per results folder
            execute([s for specs in plans.values() for s in specs], out, data_dir, device, launch, log)
            for name, specs in plans.items():
                if get(name).after is not None:
                    get(name).after(preset, specs, out / "runs", data_dir, device, log)
            summaries = {}
            for name, specs in plans.items():
                summaries[name] = summarise(get(name), specs, out, preset, seed_list)
                if on_summary:
                    on_summary(summaries[name])
    except BaseException:
        if created:
            remove_if_unused(out)
        raise
    return summaries


def remove_if_unused(folder: Path) -> None:
    """A results folder this command made and that holds nothing but its lock and empty folders (a first command
    that stopped before any run, e.g. without data) is removed, so a failed first try leaves nothing behind."""
    entries = [p for p in folder.rglob("*")]
    if any(p.is_file() and p.name != LOCK_NAME or p.is_symlink() for p in entries):
        return
    for p in sorted(entries, key=lambda p: len(p.parts), reverse=True):
        p.unlink() if p.is_file() else p.rmdir()
    folder.rmdir()


def run_experiment(
    name: str,
    preset_name: str,
    seeds: int | None,
    out: str | Path,
    data_dir=None,
    device: str | None = None,
    overrides: list[str] = (),
    launch: Launch | None = None,
    log: Log = say,
    first_seed: int = 0,
) -> dict:
    """One experiment: its runs, then its summary."""
    return run_experiments(
        [name], preset_name, seeds, out, data_dir, device, overrides, launch, log, first_seed=first_seed
    )[name]


def reproduce(
    preset_name: str,
    seeds: int | None,
    out: str | Path,
    data_dir=None,
    device: str | None = None,
    overrides: list[str] = (),
    launch: Launch | None = None,
    report: str | Path | None = None,
    log: Log = say,
    on_summary=None,
    beyond: bool = False,
    first_seed: int = 0,
) -> tuple[dict[str, dict], Path]:
    """The paper's experiments (and, with ``beyond``, every registered one), then the HTML report
    (default ``OUT/report.html``, which also shows any other experiment already in ``out``)."""
    from landscape.report import build_report

    t0 = time.perf_counter()
    names = [name for name, e in REGISTRY.items() if e.paper or beyond]
    summaries = run_experiments(
        names, preset_name, seeds, out, data_dir, device, overrides, launch, log, on_summary, first_seed
    )
    log(f"all experiments in {time.perf_counter() - t0:.0f} s -> {out}")
    return summaries, build_report([out], report or Path(out) / "report.html", REGISTRY)
