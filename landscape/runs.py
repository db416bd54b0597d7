"""Run directories: everything a run produced, in plain files, readable without the code.

``runs/<name>/``
    ``config.yaml``      the resolved config (all fields, defaults included)
    ``env.json``         torch/python versions, device, git commit, host, start time
    ``metrics.jsonl``    append-only records, one JSON object per line, flushed per record
    ``status.json``      ``running`` | ``done`` | ``diverged`` | ``failed``, the last step, details
    ``checkpoint.pt``    the latest checkpoint: model, optimizer, RNG states, step, config
    ``code.diff``        only when the code's git tree had uncommitted changes: ``git diff HEAD``

A run is never overwritten without ``force``; ``resume`` continues from the checkpoint and
drops records written after it, so the records equal those of an uninterrupted run.
"""

from __future__ import annotations

import io
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from landscape.config import Config, dump_yaml, from_dict, to_dict
from landscape.errors import UserError
from landscape.files import LOCK_NAME, FolderLock, atomic_write, is_temporary, read_text
from landscape.probes.records import json_safe, problem

STATUSES = ("running", "done", "diverged", "failed", "interrupted")
RUN_FILES = {"config.yaml", "monitor.yaml", "env.json", "metrics.jsonl", "status.json", "checkpoint.pt", "code.diff",
             LOCK_NAME}
RUN_FOLDERS = {"tensorboard", "wandb"}  # what outputs (landscape.outputs) write inside a run


_OUTPUT_NAMES = {"tensorboard": re.compile(r"^events\.out\.tfevents\..+$"),  # what SummaryWriter names its files
                 "wandb": re.compile(r"^((offline-)?run-\d{8}_\d{6}-\w+|latest-run|debug(-internal|-core)?\.log)$")}


def output_folder(folder: Path) -> bool:
    """``folder`` holds only what our outputs (TensorBoard, W&B) write there: --force may remove it."""
    if not folder.is_dir() or folder.is_symlink():
        return False
    pattern = _OUTPUT_NAMES.get(folder.name)
    return pattern is not None and all(pattern.match(n) for n in os.listdir(folder))


def run_contents(path: Path) -> list[str]:
    """A run directory's entries, without its lock and the temporary files of killed writers."""
    if not path.is_dir():
        return []
    return sorted(n for n in os.listdir(path) if n != LOCK_NAME and not is_temporary(n))
FINISHED = ("done", "diverged")


def describe_status(status: dict, detail: bool = False) -> str:
    """A run's status record in words: ``done``, ``diverged at step N``, ``running (step N)``,
    ``failed at step N: why``; ``detail`` adds the last step of a finished run (the CLI's line)."""
    s = status.get("status", "unknown")
    s = s if isinstance(s, str) else "unknown"
    step = status.get("step", 0)
    if s == "diverged":
        text = f"diverged at step {step if detail else status.get('diverged_step')}"
        if detail and status.get("diverged_step") is not None:
            text += f" (first non-finite loss at step {status['diverged_step']})"
    elif s == "running":
        text = f"running (step {step})"
    elif s == "failed":
        text = f"failed at step {step}: {status.get('error', 'unknown error')}"
    else:
        text = f"{s} at step {step}" if detail else s
    if s == "done" and status.get("stuck_on_plateau"):
        text += ", never left the initial plateau"
    return text


def _git(*args: str) -> subprocess.CompletedProcess | None:
    here = Path(__file__).resolve().parent
    try:
        return subprocess.run(["git", "-C", str(here), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None


def git_commit() -> str | None:
    """The commit of the code that runs, with ``-dirty`` when tracked files have changes
    (None outside a git checkout, e.g. an installed wheel)."""
    out = _git("rev-parse", "HEAD")
    if out is None or out.returncode != 0:
        return None
    dirty = _git("status", "--porcelain", "--untracked-files=no")
    return out.stdout.strip() + ("-dirty" if dirty is not None and dirty.stdout.strip() else "")


def git_diff() -> str | None:
    """``git diff HEAD`` of the tracked files: with the commit, what reproduces a result from uncommitted code."""
    out = _git("diff", "HEAD")
    return out.stdout if out is not None and out.returncode == 0 and out.stdout.strip() else None


# What a run needs to be re-run bit for bit on the CPU: the same code (git_commit and code.diff),
# the same input bits (data_sha256), the same kernels (torch, cpu_capability: the vector
# instructions torch dispatches to) and the same reduction order (threads). Training at the
# paper's learning rates is chaotic: any of these changed moves a run onto another trajectory.
BITWISE_KEYS = ("git_commit", "data_sha256", "torch", "cpu_capability", "threads", "device", "device_name",
                "deterministic", "cudnn")


def _version(module: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(module)
    except Exception:
        return None


def environment(device: torch.device, **extra) -> dict:
    """Versions, hardware, threads and numerics settings; ``extra`` adds run facts (the data's hash)."""
    import torchvision

    cuda = device.type == "cuda"
    env = {
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": _version("numpy"),
        "pillow": _version("pillow"),  # decodes image-tree data sets (JPEG decoders differ between releases)
        "python": platform.python_version(),
        "platform": platform.platform(),
        "host": socket.gethostname(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if cuda else platform.processor() or "cpu",
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "deterministic": torch.are_deterministic_algorithms_enabled(),
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "cudnn": {"version": torch.backends.cudnn.version(), "benchmark": torch.backends.cudnn.benchmark,
                  "deterministic": torch.backends.cudnn.deterministic} if cuda else None,
        "pid": os.getpid(),
        "git_commit": git_commit(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "bitwise_keys": list(BITWISE_KEYS),
        **extra,
    }
    return env


def read_json(path: Path) -> dict | None:
    """A JSON object from a file; None when the file is missing, unreadable or not an object."""
    try:
        value = json.loads(read_text(path))
    except (OSError, ValueError, RecursionError):  # missing, not a regular file, not JSON, nested too deep
        return None
    return value if isinstance(value, dict) else None


def read_metrics(path: Path, problems: list[str] | None = None) -> list[dict]:
    """All usable records of a metrics file. A torn last line (a kill mid-write) is skipped
    silently; other lines that do not parse or have the wrong shape are skipped and, when
    ``problems`` is given, described there with their line number."""
    records = []
    try:
        lines = read_text(path).splitlines(keepends=True)
    except OSError:
        if problems is not None and Path(path).exists():
            problems.append(f"{Path(path).name} is not a regular file; it was not read")
        return []
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):
            if problems is not None and number < len(lines):
                problems.append(f"metrics.jsonl line {number}: not JSON")
            continue
        why = problem(record)
        if why is None:
            records.append(record)
        elif problems is not None:
            problems.append(f"metrics.jsonl line {number}: {why}")
    return records


class Run:
    """One run directory. Create with :meth:`open`."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._metrics = None
        self._lock: FolderLock | None = None
        self.removed: list[str] = []  # what open(force=True) deleted

    # -- paths
    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def checkpoint_path(self) -> Path:
        return self.path / "checkpoint.pt"

    @property
    def status_path(self) -> Path:
        return self.path / "status.json"

    # -- lifecycle
    @classmethod
    def check(cls, path: str | Path, cfg: Config | None, resume: bool = False, force: bool = False) -> str:
        """What opening ``path`` would do, without touching it: ``"new"``, ``"resume"`` or
        ``"replace"`` (``force`` on an existing run); anything else is refused here.

        ``cfg=None`` checks a run written by ``Monitor`` (``monitor.yaml`` instead of ``config.yaml``)."""
        path = Path(path)
        if path.is_symlink():
            raise UserError(f"'{path}' is a symbolic link; landscape writes runs only into real directories")
        if path.exists() and not path.is_dir():
            raise UserError(f"'{path}' is a file, not a run directory; pick another --out or name")
        names = run_contents(path)
        if all(n in RUN_FOLDERS and (path / n).is_dir() for n in names):
            # absent, empty, only what a killed writer left (temporary files), or only the folders of
            # outputs made just before the run (Monitor(..., outputs=[TensorBoard(run/tensorboard)]))
            return "new"
        marker = "config.yaml" if cfg is not None else "monitor.yaml"
        if force:
            foreign = [n for n in names if not ((n in RUN_FILES and not (path / n).is_dir())
                                                or (n in RUN_FOLDERS and output_folder(path / n)))]
            if foreign or marker not in names:
                why = f"it holds '{foreign[0]}'" if foreign else f"it has no {marker}"
                raise UserError(f"--force removes only landscape runs and '{path}' is not one ({why}); "
                                "pick another --out or name")
            return "replace"
        if resume and cfg is not None:
            saved = cls(path).config()
            if saved is None:
                raise UserError(f"'{path}' is not a landscape run (no readable config.yaml); "
                                "pass another --out or name, or --force to overwrite it")
            if _comparable(to_dict(saved)) != _comparable(to_dict(cfg)):
                diff = _first_difference(to_dict(saved), to_dict(cfg))
                raise UserError(f"run '{path}' was made with a different config ({diff}); "
                                "use another name, or --force to start it again")
            return "resume"
        again = "pass --resume to continue it or --force to overwrite it" if cfg is not None else \
            "pass force=True to overwrite it or pick another path"
        raise UserError(f"run '{path}' already exists; {again}")

    @classmethod
    def open(cls, path: str | Path, cfg: Config | None, resume: bool = False, force: bool = False) -> "Run":
        """Create a fresh run, reopen one to resume, or (``force``) replace one; refuse anything
        else. The run is locked against other writers until :meth:`release` or the process ends."""
        cls.check(path, cfg, resume, force)  # refuse before creating anything
        run = cls(path)
        run.path.mkdir(parents=True, exist_ok=True)
        run._lock = FolderLock(run.path, "run").acquire()
        mode = cls.check(path, cfg, resume, force)  # again, now that no one else can write it
        for name in os.listdir(run.path):
            if is_temporary(name):
                (run.path / name).unlink()  # left by a killed writer
            elif mode == "replace" and name != LOCK_NAME:
                target = run.path / name
                if name in RUN_FOLDERS and target.is_dir() and not target.is_symlink():
                    shutil.rmtree(target)
                else:
                    target.unlink()
                run.removed.append(name)
        if mode != "resume" and cfg is not None:
            atomic_write(run.path / "config.yaml", dump_yaml(cfg))
        return run

    @classmethod
    def fresh(cls, path: str | Path, force: bool = False) -> "Run":
        """A new, empty run directory for records from any loop (see ``landscape.probes.Monitor``)."""
        return cls.open(path, None, force=force)

    @classmethod
    def reopen(cls, path: str | Path, step: int) -> "Run":
        """Continue a run written by ``Monitor`` (e.g. a Lightning fit resumed from its checkpoint):
        records after ``step`` are dropped, so the continued records have no gap and no duplicate."""
        path = Path(path)
        if path.is_symlink() or not (path / "monitor.yaml").is_file():
            raise UserError(f"cannot resume the probe records in '{path}': it is not a run made by landscape's "
                            "Monitor or callbacks (no monitor.yaml); pass the run directory the fit wrote")
        run = cls(path)
        run._lock = FolderLock(run.path, "run").acquire()
        for name in os.listdir(run.path):
            if is_temporary(name):
                (run.path / name).unlink()
        run.truncate(step)
        return run

    def release(self) -> None:
        """Close the records and let other processes write this run."""
        self.close()
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def write_settings(self, settings: dict) -> None:
        """Settings of a run not made by ``landscape train`` (``monitor.yaml``)."""
        atomic_write(self.path / "monitor.yaml", yaml.safe_dump(json_safe(settings), sort_keys=False))

    def config(self) -> Config | None:
        try:
            return from_dict(yaml.safe_load(read_text(self.path / "config.yaml")) or {})
        except (OSError, yaml.YAMLError, UserError, RecursionError, ValueError, TypeError):
            return None

    def write_env(self, device: torch.device, **extra) -> None:
        """``env.json`` (with ``extra`` facts of the run), and ``code.diff`` (the uncommitted changes)
        when the code's git tree is dirty."""
        env = environment(device, **extra)
        if env["git_commit"] and env["git_commit"].endswith("-dirty"):
            diff = git_diff()
            if diff:
                atomic_write(self.path / "code.diff", diff)
                env["code_diff"] = "code.diff"
        atomic_write(self.path / "env.json", json.dumps(env, indent=2))

    def status(self) -> dict:
        return read_json(self.status_path) or {}

    def set_status(self, status: str, step: int, **info: Any) -> None:
        assert status in STATUSES, status
        record = {"status": status, "step": step, "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **info}
        atomic_write(self.status_path, json.dumps(json_safe(record), indent=2))

    # -- records
    def log(self, record: dict) -> None:
        if self._metrics is None:
            self._metrics = open(self.metrics_path, "a")
        self._metrics.write(json.dumps(json_safe(record)) + "\n")
        self._metrics.flush()

    def records(self) -> list[dict]:
        return read_metrics(self.metrics_path)

    def truncate(self, step: int) -> None:
        """Keep only records up to ``step`` (the checkpoint a resume starts from)."""
        self.close()
        if not self.metrics_path.exists():
            return
        kept = [r for r in self.records() if r.get("step", 0) <= step]
        atomic_write(self.metrics_path, "".join(json.dumps(r) + "\n" for r in kept))

    def close(self) -> None:
        if self._metrics is not None:
            self._metrics.close()
            self._metrics = None

    # -- checkpoints
    def save_checkpoint(self, state: dict) -> None:
        # Serialised in memory first: on a full disk torch.save's zip writer raises a RuntimeError
        # without errno, while a plain write raises OSError(ENOSPC) naming the file.
        buffer = io.BytesIO()
        torch.save(state, buffer)
        atomic_write(self.checkpoint_path, buffer.getvalue())

    def load_checkpoint(self, map_location: torch.device | str = "cpu") -> dict | None:
        if not self.checkpoint_path.exists():
            return None
        try:
            return torch.load(self.checkpoint_path, map_location=map_location, weights_only=True)
        except Exception as exc:
            reason = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
            raise UserError(f"checkpoint '{self.checkpoint_path}' is unreadable ({reason}); "
                            "delete it to restart the run from step 0, or --force to start over") from None


def monitor_run(path: str | Path, settings: dict, device: torch.device, force: bool = False,
                resume_step: int | None = None) -> Run:
    """The run directory a ``Monitor`` (or a callback) writes: new (``force`` replaces one), or
    continued from ``resume_step``; its ``monitor.yaml`` holds ``settings``."""
    run = Run.fresh(path, force=force) if resume_step is None else Run.reopen(path, resume_step)
    run.write_settings(settings)
    run.write_env(device)
    run.set_status("running", resume_step or 0)
    return run


def _comparable(d: dict) -> dict:
    """Config fields that must match to resume: everything but where it runs and where else it writes."""
    return {k: v for k, v in d.items() if k not in ("device", "outputs")}


def _first_difference(a: dict, b: dict, prefix: str = "") -> str:
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            found = _first_difference(va, vb, f"{prefix}{key}.")
            if found:
                return found
        elif va != vb and key not in ("device", "outputs"):
            return f"{prefix}{key}: {va!r} then, {vb!r} now"
    return ""
