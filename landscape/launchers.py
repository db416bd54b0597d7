"""Running an experiment's runs on a Ray cluster: one Ray task per pending run.

Each task trains one run into the shared output folder with ``train(..., resume=True)``,
so the run directory format, skipping and resuming are exactly those of the local launcher.
Tasks are not retried: a failed or killed task becomes a ``failed`` run with its error, and
re-running the command resumes it. The number of CPU threads of each run is pinned to its
``cpus_per_run`` (Ray does the same for its workers), so records are reproducible.

Every node must have ``landscape`` installed (``pip install -e .[ray]``) and see ``--out``
and ``--data-dir`` at the same paths (a shared file system).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable

from landscape.config import Config, from_dict, to_dict
from landscape.errors import UserError
from landscape.runs import Run


def _require_ray():
    try:
        import ray
    except ImportError:
        raise UserError("--launcher ray needs Ray: pip install -e '.[ray]' (or pip install 'ray>=2.9')") from None
    return ray


def train_one(cfg_dict: dict, out: str, data_dir: str | None, threads: int) -> dict:
    """The body of one Ray task (a plain function, so it can be tested without Ray)."""
    import torch

    from landscape.train import train

    torch.set_num_threads(max(1, threads))
    return train(from_dict(cfg_dict), out=out, data_dir=data_dir, resume=True)


def mark_failed(out: Path, cfg: Config, error: str) -> None:
    """Record a task that died (killed worker, lost node) as a failed run, keeping its checkpoint."""
    run = Run.open(out / cfg.name, cfg, resume=True)
    run.set_status("failed", run.status().get("step", 0), error=error)


def run_on_ray(todo: list[Config], out: Path, data_dir, launch, log: Callable[[str], None]) -> dict[str, str]:
    ray = _require_ray()
    out = Path(out).resolve()
    data_dir = str(Path(data_dir).resolve()) if data_dir else None
    env = {k: v for k, v in os.environ.items() if k == "LANDSCAPE_CACHE"}
    if not ray.is_initialized():
        kwargs = {"runtime_env": {"env_vars": env}} if env else {}
        if launch.address:
            try:
                ray.init(address=launch.address, log_to_driver=False, **kwargs)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise UserError(f"cannot join the Ray cluster at '{launch.address}' ({str(exc).splitlines()[0]}); "
                                "start it with `ray start --head` or use --address auto") from None
        else:
            ray.init(log_to_driver=False, include_dashboard=False, **kwargs)
    if not todo:
        return {}
    threads = max(1, int(launch.cpus_per_run))
    task = ray.remote(train_one).options(num_cpus=launch.cpus_per_run, num_gpus=launch.gpus_per_run,
                                         max_retries=0, retry_exceptions=False)
    refs = {task.remote(to_dict(cfg), str(out), data_dir, threads): cfg for cfg in todo}
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
                mark_failed(out, cfg, f"ray task failed: {error}")
                statuses[cfg.name] = "failed"
            done = len(statuses)
            running = min(len(remaining), slots)
            eta = (time.perf_counter() - t0) / done * len(remaining)  # at the throughput so far
            log(f"ray: {cfg.name}: {statuses[cfg.name]} | done {done}, running {running}, "
                f"pending {len(remaining) - running} | ETA {eta:.0f} s")
    return statuses
