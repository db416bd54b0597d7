"""Launching runs: here, one after another (``local``), or one Ray task per run (``ray``).

Either way each run trains into ``OUT/runs/<name>`` with ``train(..., resume=True)``: a
finished run is skipped, an interrupted one resumed, and a run that crashes is recorded as
failed while the others go on. On Ray, tasks are not retried: a failed or killed task
becomes a ``failed`` run with its error, and re-running the command resumes it. Each Ray
task pins its torch thread count to ``cpus_per_run``, so records equal the local launcher's.

For Ray, every node needs ``landscape`` installed (``pip install -e .[ray]``) and must see
``--out`` and ``--data-dir`` at the same paths (a shared file system).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from landscape.config import Config, build_config, from_dict, to_dict
from landscape.errors import UserError
from landscape.planning import RunSpec
from landscape.results import read_run
from landscape.runs import FINISHED, Run

LAUNCHERS = ("local", "ray")
Log = Callable[[str], None]


def say(line: str) -> None:
    print(line, flush=True)


@dataclass(frozen=True)
class Launch:
    """Where runs execute: ``local`` (in this process) or ``ray`` (``address`` "auto" joins a
    running cluster, None starts a local instance)."""

    launcher: str = "local"
    address: str | None = None
    cpus_per_run: float = 1.0
    gpus_per_run: float = 0.0
    progress: bool = False

    def __post_init__(self):
        if self.launcher not in LAUNCHERS:
            raise UserError(f"--launcher must be one of {', '.join(LAUNCHERS)}; got '{self.launcher}'")
        if not (math.isfinite(self.cpus_per_run) and self.cpus_per_run > 0):
            raise UserError(f"--cpus-per-run must be a positive number; got {self.cpus_per_run}")
        if not (math.isfinite(self.gpus_per_run) and self.gpus_per_run >= 0):
            raise UserError(f"--gpus-per-run must be a number >= 0; got {self.gpus_per_run}")
        if self.launcher == "local" and self.address:
            raise UserError("--address needs --launcher ray")


def pending(specs: list[RunSpec], runs_dir: Path, device: str | None, log: Log) -> tuple[list[Config], dict[str, str]]:
    """Configs still to train, and the status of the runs already finished (skipped).

    A run directory made with another config is refused before any work starts, except a finished run made with
    the same config and more probes (:meth:`Run.serves`), which stands for the planned one."""
    todo, finished = [], {}
    unique = {s.name: s for s in specs}
    for i, spec in enumerate(unique.values(), 1):
        cfg = spec.cfg if device is None else build_config([{"device": device}], base=spec.cfg)
        path = runs_dir / spec.name
        more = Run(path).serves(cfg)  # finished, made with more probes than planned
        if more or Run.check(path, cfg, resume=True) == "resume":
            run = read_run(path)
            if run.state in FINISHED:
                finished[spec.name] = run.state
                made = ", made with more probes" if more else ""
                log(f"[{i}/{len(unique)}] {spec.name}: {run.describe_status()} (already complete{made}, skipped)")
                continue
        todo.append(cfg)
    return todo, finished


def execute(
    specs: list[RunSpec], out: Path, data_dir, device: str | None, launch: Launch | None = None, log: Log = say
) -> dict[str, str]:
    """Train every spec that is not finished into ``OUT/runs``; returns name -> status.

    A run that raises is recorded as failed and the others go on; bad input (a UserError)
    still stops everything, before any run starts where it can be checked up front."""
    launch = launch or Launch()
    runs_dir = Path(out) / "runs"
    todo, statuses = pending(specs, runs_dir, device, log)
    run = run_on_ray if launch.launcher == "ray" else run_locally
    statuses.update(run(todo, runs_dir, data_dir, launch, log))
    return statuses


def run_locally(todo: list[Config], runs_dir: Path, data_dir, launch: Launch, log: Log) -> dict[str, str]:
    """One run after another in this process; data sets are loaded once and shared."""
    from landscape.data import load_data
    from landscape.train import train

    cache: dict[tuple, dict] = {}
    statuses: dict[str, str] = {}
    pace: dict[str, float] = {}  # seconds per step, by kind of run (see _kind), as measured here
    for i, cfg in enumerate(todo, 1):
        left = len(todo) - i + 1
        ahead = eta(todo[i - 1 :], pace)
        log(f"[{i}/{len(todo)} to train] {cfg.name}: training ({left} of {len(todo)} runs left{ahead})")
        d = cfg.data
        key = (d.dataset, d.synthetic_size, d.gaussian_samples, d.gaussian_dim, d.gaussian_seed, d.image_size)
        if key not in cache:
            cache[key] = load_data(d, data_dir)
        start = _done_steps(runs_dir / cfg.name)
        t0 = time.perf_counter()
        try:
            statuses[cfg.name] = train(
                cfg, out=runs_dir, data_dir=data_dir, resume=True, progress=launch.progress, splits=cache[key]
            )["status"]
        except UserError:
            raise
        except Exception as exc:  # recorded in the run's status.json by the trainer
            statuses[cfg.name] = "failed"
            log(f"[{i}/{len(todo)} to train] {cfg.name}: failed ({type(exc).__name__}: {exc})")
            continue
        took = time.perf_counter() - t0
        steps = max(1, _done_steps(runs_dir / cfg.name) - start)
        pace[_kind(cfg)] = took / steps
        log(f"[{i}/{len(todo)} to train] {cfg.name}: {read_run(runs_dir / cfg.name).describe_status()} in {took:.0f} s")
    return statuses


def _kind(cfg: Config) -> str:
    """What decides a run's cost per step: the model, the batch, the data, the probes and their schedule, the
    threads. Runs of one kind (the seeds and learning rates of one network) share a measured pace."""
    m, p = cfg.model, cfg.probes
    arch_section = getattr(m, m.arch, None)
    return repr(
        (
            m.arch,
            m.norm,
            arch_section,
            cfg.data.batch_size,
            cfg.data.dataset,
            p.enabled,
            p.schedule,
            p.every,
            p.points,
            cfg.steps,
            cfg.threads,
        )
    )


def _done_steps(path: Path) -> int:
    """The step a run folder's status says it reached (0 for none)."""
    try:
        step = json.loads((path / "status.json").read_text()).get("step", 0)
    except (OSError, ValueError, AttributeError):
        return 0
    return step if isinstance(step, int) and step > 0 else 0


def eta(remaining: list[Config], pace: dict[str, float]) -> str:
    """ ", about T left" from each remaining run's steps and the measured pace of its kind; runs of a kind not yet
    measured are counted, not guessed (nothing is said before any run was timed)."""
    if not pace:
        return ""
    known = [cfg.steps * pace[_kind(cfg)] for cfg in remaining if _kind(cfg) in pace]
    unknown = len(remaining) - len(known)
    if not known:
        return f", {unknown} runs of kinds not yet timed"
    more = f" and {unknown} runs of kinds not yet timed" if unknown else ""
    return f", about {_duration(sum(known))} left for {len(known)} runs{more}"


def _duration(s: float) -> str:
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.0f} min"


# ------------------------------------------------------------------ Ray


def _require_ray():
    try:
        import ray
    except ImportError:
        raise UserError("--launcher ray needs Ray: pip install -e '.[ray]' (or pip install 'ray>=2.9')") from None
    return ray


RAY_WAIT = 10.0  # seconds a cluster address may take to answer before the command ends in one line


def check_ray_address(address: str) -> None:
    """A cluster address that answers, checked with a bounded wait before ``ray.init`` (which would retry for
    minutes): ``auto`` needs a cluster started on this machine (``ray start --head``); ``host:port`` (or
    ``ray://host:port``) a port that accepts a connection within RAY_WAIT seconds."""
    import socket
    import tempfile

    if address == "auto":
        if os.environ.get("RAY_ADDRESS"):
            return check_ray_address(os.environ["RAY_ADDRESS"])
        if not (Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster").exists():
            raise UserError(
                "--address auto: no Ray cluster runs on this machine; start one with `ray start --head`, "
                "or leave --address out for a private local instance"
            )
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UserError(f"--address {address!r} is not a Ray address: pass host:port (e.g. 127.0.0.1:6379) or auto")
    try:
        with socket.create_connection((host, int(port)), timeout=RAY_WAIT):
            pass
    except OSError as exc:
        raise UserError(
            f"--address {address}: nothing answers there within {RAY_WAIT:g} s ({exc.strerror or exc}); "
            "start the cluster with `ray start --head`, or leave --address out"
        ) from None


def connect_ray(address: str | None, cpus: int | None = None, env: dict | None = None):
    """Ray, joined to the cluster at ``address`` (checked first, see :func:`check_ray_address`) or a private local
    instance with ``cpus`` CPUs."""
    ray = _require_ray()
    if ray.is_initialized():
        return ray
    kwargs = {"runtime_env": {"env_vars": env}} if env else {}
    if address:
        check_ray_address(address)
        try:
            ray.init(address=address, log_to_driver=False, **kwargs)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise UserError(
                f"cannot join the Ray cluster at '{address}' ({str(exc).splitlines()[0]}); "
                "start it with `ray start --head` or use --address auto"
            ) from None
    else:  # a private local instance, as documented, even when a cluster already runs on this machine
        extra = {"num_cpus": cpus} if cpus else {}
        ray.init(address="local", log_to_driver=False, include_dashboard=False, **extra, **kwargs)
    return ray


def train_one(cfg_dict: dict, runs_dir: str, data_dir: str | None, threads: int) -> dict:
    """The body of one Ray task (a plain function, so it can be tested without Ray)."""
    import torch

    from landscape.train import train

    torch.set_num_threads(max(1, threads))
    return train(from_dict(cfg_dict), out=runs_dir, data_dir=data_dir, resume=True)


def mark_failed(runs_dir: Path, cfg: Config, error: str) -> None:
    """Record a task that died (killed worker, lost node) as a failed run, keeping its checkpoint."""
    run = Run.open(runs_dir / cfg.name, cfg, resume=True)
    try:
        run.set_status("failed", run.status().get("step", 0), error=error)
    finally:
        run.release()


def run_on_ray(todo: list[Config], runs_dir: Path, data_dir, launch: Launch, log: Log) -> dict[str, str]:
    runs_dir = Path(runs_dir).resolve()
    data_dir = str(Path(data_dir).resolve()) if data_dir else None
    env = {k: v for k, v in os.environ.items() if k == "LANDSCAPE_CACHE"}
    ray = connect_ray(launch.address, env=env)
    if not todo:
        return {}
    threads = max(1, int(launch.cpus_per_run))
    task = ray.remote(train_one).options(
        num_cpus=launch.cpus_per_run, num_gpus=launch.gpus_per_run, max_retries=0, retry_exceptions=False
    )
    refs = {task.remote(to_dict(cfg), str(runs_dir), data_dir, threads): cfg for cfg in todo}
    slots = max(1, int(ray.cluster_resources().get("CPU", 1) // max(launch.cpus_per_run, 1e-9)))
    if launch.gpus_per_run:
        slots = min(slots, max(1, int(ray.cluster_resources().get("GPU", 0) // launch.gpus_per_run)))
    statuses, t0 = {}, time.perf_counter()
    remaining = list(refs)
    log(f"ray: {len(todo)} runs on {ray.cluster_resources().get('CPU', 0):g} CPUs, up to {slots} at once")
    while remaining:
        ready, remaining = ray.wait(remaining, num_returns=1, timeout=30.0)
        for ref in ready:
            cfg = refs[ref]
            try:
                statuses[cfg.name] = ray.get(ref)["status"]
            except Exception as exc:  # a task that raised or whose worker died
                error = str(exc).strip().splitlines()[-1][:300] if str(exc).strip() else type(exc).__name__
                mark_failed(runs_dir, cfg, f"ray task failed: {error}")
                statuses[cfg.name] = "failed"
            done = len(statuses)
            running = min(len(remaining), slots)
            eta = (time.perf_counter() - t0) / done * len(remaining)  # at the throughput so far
            log(
                f"ray: {cfg.name}: {statuses[cfg.name]} | done {done}, running {running}, "
                f"pending {len(remaining) - running} | ETA {eta:.0f} s"
            )
    return statuses
