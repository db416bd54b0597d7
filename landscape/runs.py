"""Run directories: everything a run produced, in plain files, readable without the code.

``runs/<name>/``
    ``config.yaml``      the resolved config (all fields, defaults included)
    ``env.json``         torch/python versions, device, git commit, host, start time
    ``metrics.jsonl``    append-only records, one JSON object per line, flushed per record
    ``status.json``      ``running`` | ``done`` | ``diverged`` | ``failed``, the last step, details
    ``checkpoint.pt``    the latest checkpoint: model, optimizer, RNG states, step, config

A run is never overwritten without ``force``; ``resume`` continues from the checkpoint and
drops records written after it, so the records equal those of an uninterrupted run.
"""

from __future__ import annotations

import json
import math
import os
import platform
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

STATUSES = ("running", "done", "diverged", "failed")
FINISHED = ("done", "diverged")


def json_safe(x: Any) -> Any:
    """JSON has no NaN/inf: non-finite floats become null (the record keeps its other fields)."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    return x


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def git_commit() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def environment(device: torch.device) -> dict:
    import torchvision

    env = {
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "host": socket.gethostname(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "threads": torch.get_num_threads(),
        "pid": os.getpid(),
        "git_commit": git_commit(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    return env


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def read_metrics(path: Path) -> list[dict]:
    """All complete records of a metrics file (a torn last line, from a kill mid-write, is skipped)."""
    records = []
    try:
        with open(path) as f:
            for line in f:
                try:
                    records.append(json.loads(line))
                except ValueError:
                    continue
    except OSError:
        return []
    return records


class Run:
    """One run directory. Create with :meth:`open`."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._metrics = None

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
    def open(cls, path: str | Path, cfg: Config | None, resume: bool = False, force: bool = False,
             device: torch.device | None = None) -> "Run":
        """Create a fresh run, or reopen one to resume; refuse to clobber an existing one.

        ``cfg=None`` with ``resume`` reuses the run's saved config (``landscape train --resume``).
        """
        run = cls(path)
        if run.path.exists() and any(run.path.iterdir()):
            if force:
                shutil.rmtree(run.path)
            elif resume:
                saved = run.config()
                if saved is None:
                    raise UserError(f"'{run.path}' is not a landscape run (no readable config.yaml); "
                                    "pass another --out or name, or --force to overwrite it")
                if cfg is not None and _comparable(to_dict(saved)) != _comparable(to_dict(cfg)):
                    diff = _first_difference(to_dict(saved), to_dict(cfg))
                    raise UserError(f"run '{run.path}' was made with a different config ({diff}); "
                                    "use another name, or --force to start it again")
                return run
            else:
                raise UserError(f"run '{run.path}' already exists; pass --resume to continue it "
                                "or --force to overwrite it")
        if cfg is None:
            raise UserError(f"no run at '{run.path}' to resume; give a config to start one")
        run.path.mkdir(parents=True, exist_ok=True)
        _atomic_write(run.path / "config.yaml", dump_yaml(cfg))
        return run

    @classmethod
    def fresh(cls, path: str | Path, force: bool = False) -> "Run":
        """A new, empty run directory for records from any loop (see ``landscape.probes.Monitor``)."""
        run = cls(path)
        if run.path.exists() and any(run.path.iterdir()):
            if not force:
                raise UserError(f"run '{run.path}' already exists; pass force=True to overwrite it "
                                "or pick another path")
            shutil.rmtree(run.path)
        run.path.mkdir(parents=True, exist_ok=True)
        return run

    def write_settings(self, settings: dict) -> None:
        """Settings of a run not made by ``landscape train`` (``monitor.yaml``)."""
        _atomic_write(self.path / "monitor.yaml", yaml.safe_dump(json_safe(settings), sort_keys=False))

    def config(self) -> Config | None:
        try:
            return from_dict(yaml.safe_load((self.path / "config.yaml").read_text()) or {})
        except (OSError, yaml.YAMLError, UserError):
            return None

    def write_env(self, device: torch.device) -> None:
        _atomic_write(self.path / "env.json", json.dumps(environment(device), indent=2))

    def status(self) -> dict:
        return read_json(self.status_path) or {}

    def set_status(self, status: str, step: int, **info: Any) -> None:
        assert status in STATUSES, status
        record = {"status": status, "step": step, "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **info}
        _atomic_write(self.status_path, json.dumps(json_safe(record), indent=2))

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
        _atomic_write(self.metrics_path, "".join(json.dumps(r) + "\n" for r in kept))

    def close(self) -> None:
        if self._metrics is not None:
            self._metrics.close()
            self._metrics = None

    # -- checkpoints
    def save_checkpoint(self, state: dict) -> None:
        tmp = self.path / f".checkpoint.pt.tmp{os.getpid()}"
        torch.save(state, tmp)
        os.replace(tmp, self.checkpoint_path)

    def load_checkpoint(self, map_location: torch.device | str = "cpu") -> dict | None:
        if not self.checkpoint_path.exists():
            return None
        try:
            return torch.load(self.checkpoint_path, map_location=map_location, weights_only=True)
        except Exception as exc:
            reason = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
            raise UserError(f"checkpoint '{self.checkpoint_path}' is unreadable ({reason}); "
                            "delete it to restart the run from step 0, or --force to start over") from None


def _comparable(d: dict) -> dict:
    """Config fields that must match to resume: everything but where it runs."""
    return {k: v for k, v in d.items() if k != "device"}


def _first_difference(a: dict, b: dict, prefix: str = "") -> str:
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            found = _first_difference(va, vb, f"{prefix}{key}.")
            if found:
                return found
        elif va != vb and key != "device":
            return f"{prefix}{key}: {va!r} then, {vb!r} now"
    return ""
