"""Training runs: a run directory (:mod:`landscape.probes.rundir`) plus what ``landscape train`` adds.

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
from pathlib import Path

import torch
import yaml

from landscape.config import Config, dump_yaml, from_dict, to_dict
from landscape.errors import UserError
from landscape.files import atomic_write, read_text
from landscape.probes.provenance import BITWISE_KEYS, environment, git_commit, git_diff  # noqa: F401 (their home before 0.4)
from landscape.probes.rundir import (  # noqa: F401 (the same)
    FINISHED,
    RUN_FILES,
    RUN_FOLDERS,
    STATUSES,
    RunDir,
    describe_status,
    monitor_run,
    output_folder,
    read_json,
    read_metrics,
    run_contents,
)


def read_env(run_dir: Path) -> dict:
    """A run's ``env.json`` as a mapping; empty where it is missing or unreadable (an older or damaged run)."""
    try:
        env = json.loads((Path(run_dir) / "env.json").read_text())
    except (OSError, ValueError):
        return {}
    return env if isinstance(env, dict) else {}


class Run(RunDir):
    """One training run's directory. Create with :meth:`open`."""

    marker = "config.yaml"

    @property
    def checkpoint_path(self) -> Path:
        return self.path / "checkpoint.pt"

    # -- lifecycle
    @classmethod
    def check(
        cls,
        path: str | Path,
        cfg: Config | None = None,
        resume: bool = False,
        force: bool = False,
        extend: bool = False,
    ) -> str:
        """What opening ``path`` would do, without touching it: ``"new"``, ``"resume"``, ``"extend"`` (``extend``:
        a run resumed to more steps than it was made with, nothing else changed) or ``"replace"`` (``force`` on an
        existing run); anything else is refused here.

        ``cfg=None`` checks a run written by ``Monitor`` (``monitor.yaml`` instead of ``config.yaml``)."""
        if cfg is None:
            return RunDir.check(path, force)
        mode = cls.check_new(path, force)
        if mode != "exists":
            return mode
        path = Path(path)
        if resume:
            saved = cls(path).config()
            if saved is None:
                raise UserError(
                    f"'{path}' is not a landscape run (no readable config.yaml); "
                    "pass another --out or name, or --force to overwrite it"
                )
            if _comparable(to_dict(saved)) != _comparable(to_dict(cfg)):
                if extend and _comparable({**to_dict(saved), "steps": cfg.steps}) == _comparable(to_dict(cfg)):
                    return cls(path)._extension(saved, cfg)
                diff = _first_difference(to_dict(saved), to_dict(cfg))
                raise UserError(
                    f"run '{path}' was made with a different config ({diff}); "
                    "use another name, or --force to start it again"
                )
            return "resume"
        raise UserError(f"run '{path}' already exists; pass --resume to continue it or --force to overwrite it")

    def serves(self, cfg: Config) -> bool:
        """Whether this run, finished, stands for a run of ``cfg``: made with the same config and strictly more probes
        (as runs of earlier releases were, which probed every run with every probe of its preset). Its records hold
        every probe ``cfg`` asks for, at the same steps of the same training."""
        saved = self.config() if self.path.is_dir() else None
        if saved is None or self.status().get("status") not in FINISHED:
            return False
        mine, theirs = to_dict(saved), to_dict(cfg)
        wanted = theirs["probes"]["enabled"]
        if not set(wanted) < set(mine["probes"]["enabled"]):
            return False
        mine["probes"] = {**mine["probes"], "enabled": wanted}
        return _comparable(mine) == _comparable(theirs)

    def _extension(self, saved: Config, cfg: Config) -> str:
        """``"extend"`` when a run may continue to ``cfg.steps`` (more than it was made with), else one line why not:
        what it recorded so far must stay what a run of the new length records there."""
        if cfg.steps < saved.steps:
            raise UserError(
                f"run '{self.path}' was made for {saved.steps} steps; --resume continues it to more steps, not fewer"
            )
        state = self.status().get("status")
        if state == "diverged":
            raise UserError(f"run '{self.path}' diverged: it cannot continue to {cfg.steps} steps")
        p = saved.probes
        if p.enabled and p.schedule in ("log", "mixed"):
            raise UserError(
                f"run '{self.path}' probes on log-spaced steps placed over its {saved.steps} steps "
                f"(probes.schedule={p.schedule}); {cfg.steps} steps would place them elsewhere: train a new run"
            )
        return "extend"

    @classmethod
    def open(
        cls, path: str | Path, cfg: Config, resume: bool = False, force: bool = False, extend: bool = False
    ) -> Run:
        """Create a fresh run, reopen one to resume (``extend``: to more steps), or (``force``) replace one; refuse
        anything else. The run is locked against other writers until :meth:`release` or the process ends."""
        cls.check(path, cfg, resume, force, extend)  # refuse before creating anything
        run = cls(path)
        run._lock_folder()
        mode = cls.check(path, cfg, resume, force, extend)  # again, now that no one else can write it
        run._clean(mode)
        if mode != "resume":
            atomic_write(run.path / "config.yaml", dump_yaml(cfg))
        return run

    def config(self) -> Config | None:
        try:
            return from_dict(yaml.safe_load(read_text(self.path / "config.yaml")) or {})
        except (OSError, yaml.YAMLError, UserError, RecursionError, ValueError, TypeError):
            return None

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
            raise UserError(
                f"checkpoint '{self.checkpoint_path}' is unreadable ({reason}); "
                "delete it to restart the run from step 0, or --force to start over"
            ) from None


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
