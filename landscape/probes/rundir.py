"""Run directories for any training loop: what ``Monitor`` writes, in plain files, readable without the code.

``<run>/``
    ``monitor.yaml``     the Monitor's settings (probes, options); a training run has ``config.yaml`` instead
    ``env.json``         versions, hardware, threads, git commit, start time (:mod:`landscape.probes.provenance`)
    ``metrics.jsonl``    append-only records, one JSON object per line, flushed per record
    ``status.json``      ``running`` | ``done`` | ``diverged`` | ``failed`` | ``interrupted``, the last step, details

Files are written so that a reader (or a kill) never sees half of one: a temporary sibling, then
a rename over the target (``os.replace`` is atomic on one file system). A run is locked against
other writers while a process writes it (an OS lock, released however the process ends). A run is
never overwritten without ``force``. ``landscape.runs`` adds what training runs hold (the config,
checkpoints, resuming).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from landscape.probes.errors import UserError
from landscape.probes.provenance import environment, git_diff
from landscape.probes.records import json_safe, problem

TMP_MARK = ".tmp"  # temporary files are ``.<name>.tmp<pid>``; a killed writer can leave one behind


def atomic_write(path: str | Path, content: str | bytes | Callable[[Path], None]) -> Path:
    """Write ``content`` (text, bytes, or a function that writes a given path, e.g.
    ``lambda p: torch.save(obj, p)``) to ``path`` atomically; returns ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}")
    try:
        if callable(content):
            content(tmp)
        elif isinstance(content, bytes):
            tmp.write_bytes(content)
        else:  # a lone surrogate (a name read from a file system in another encoding) is written as "?"
            tmp.write_bytes(content.encode("utf-8", errors="replace"))
        os.replace(tmp, path)
    except OSError as exc:  # name the file the user asked for, not our temporary sibling
        raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from None
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


_TEMPORARY = re.compile(r"^\..+\.tmp(-old)?\d+$")  # .<name>.tmp<pid>, and export's .<name>.tmp-old<pid>


def is_temporary(name: str) -> bool:
    """A file our writers (:func:`atomic_write`, ``landscape export``) left behind when killed mid-write:
    exactly ``.<name>.tmp<pid>`` (a user's ``.notes.tmp.txt`` is not one)."""
    return bool(_TEMPORARY.match(name))


def regular(path: str | Path) -> bool:
    """``path`` is a regular file (following symbolic links): never a FIFO, socket or device a read would block on."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def read_text(path: str | Path) -> str:
    """A regular file's text (invalid UTF-8 replaced); OSError for anything else, FIFOs included, without blocking."""
    if not regular(path):
        raise OSError(f"'{path}' is not a regular file")
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read()


LOCK_NAME = ".lock"


class FolderLock:
    """An exclusive, OS-level lock on a folder (``flock`` on ``<folder>/.lock``), held while a
    process writes the folder and released when it ends in any way, kill -9 included.
    Readers do not take it."""

    def __init__(self, folder: str | Path, what: str = "folder"):
        self.folder, self.what, self._fd = Path(folder), what, None

    def acquire(self) -> FolderLock:
        try:
            import fcntl
        except ImportError:  # no flock (Windows): writers are not excluded there
            return self
        path = self.folder / LOCK_NAME
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise UserError(
                f"{self.what} '{self.folder}' is being written by process {holder}; wait for it to "
                "finish or stop it, or use another --out or name"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


STATUSES = ("running", "done", "diverged", "failed", "interrupted")
RUN_FILES = {
    "config.yaml",
    "monitor.yaml",
    "env.json",
    "metrics.jsonl",
    "status.json",
    "checkpoint.pt",
    "code.diff",
    LOCK_NAME,
}
RUN_FOLDERS = {"tensorboard", "wandb", "slices"}  # what outputs (landscape.outputs) and landscape slice write in a run


_OUTPUT_NAMES = {
    "tensorboard": re.compile(r"^events\.out\.tfevents\..+$"),  # what SummaryWriter names its files
    "wandb": re.compile(r"^((offline-)?run-\d{8}_\d{6}-\w+|latest-run|debug(-internal|-core)?\.log)$"),
}


SLICE_NAMES = re.compile(r"^(spec\.json|directions\.pt|slice\.json|points-\d+-of-\d+\.jsonl|\.lock)$")


def output_folder(folder: Path) -> bool:
    """``folder`` holds only what landscape writes there (TensorBoard's and W&B's files, the slices of
    ``landscape slice``): --force may remove it."""
    if not folder.is_dir() or folder.is_symlink():
        return False
    if folder.name == "slices":  # RUN/slices/NAME/: slices of the run's weights, gone with them
        return all(
            (folder / n).is_dir()
            and not (folder / n).is_symlink()
            and all(SLICE_NAMES.match(f) or is_temporary(f) for f in os.listdir(folder / n))
            for n in os.listdir(folder)
        )
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


class RunDir:
    """One run directory. Create with :meth:`create`, :meth:`reopen` (or ``landscape.runs.Run.open``)."""

    marker = "monitor.yaml"  # the file that makes a folder this kind of run

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._metrics = None
        self._lock: FolderLock | None = None
        self.removed: list[str] = []  # what opening with force deleted

    # -- paths
    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def status_path(self) -> Path:
        return self.path / "status.json"

    # -- lifecycle
    @classmethod
    def check_new(cls, path: str | Path, force: bool) -> str:
        """``"new"`` or ``"replace"`` (``force`` on an existing run of this kind), or ``"exists"``; anything
        that is not a run of this kind is refused here."""
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
        if force:
            foreign = [
                n
                for n in names
                if not ((n in RUN_FILES and not (path / n).is_dir()) or (n in RUN_FOLDERS and output_folder(path / n)))
            ]
            if foreign or cls.marker not in names:
                why = f"it holds '{foreign[0]}'" if foreign else f"it has no {cls.marker}"
                raise UserError(
                    f"--force removes only landscape runs and '{path}' is not one ({why}); pick another --out or name"
                )
            return "replace"
        return "exists"

    @classmethod
    def check(cls, path: str | Path, force: bool = False) -> str:
        """What :meth:`create` would do, without touching ``path``: ``"new"`` or ``"replace"``."""
        mode = cls.check_new(path, force)
        if mode == "exists":
            raise UserError(f"run '{path}' already exists; pass force=True to overwrite it or pick another path")
        return mode

    def _lock_folder(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock = FolderLock(self.path, "run").acquire()

    def _clean(self, mode: str) -> None:
        """Remove what killed writers left (and, replacing a run, the old run); call holding the lock."""
        for name in os.listdir(self.path):
            if is_temporary(name):
                (self.path / name).unlink()  # left by a killed writer
            elif mode == "replace" and name != LOCK_NAME:
                target = self.path / name
                if name in RUN_FOLDERS and target.is_dir() and not target.is_symlink():
                    shutil.rmtree(target)
                else:
                    target.unlink()
                self.removed.append(name)

    @classmethod
    def create(cls, path: str | Path, force: bool = False) -> RunDir:
        """A new, empty run directory for records from any loop (``force`` replaces a run of this kind)."""
        cls.check(path, force)  # refuse before creating anything
        run = cls(path)
        run._lock_folder()
        run._clean(cls.check(path, force))  # checked again, now that no one else can write it
        return run

    @classmethod
    def reopen(cls, path: str | Path, step: int) -> RunDir:
        """Continue a run written by ``Monitor`` (e.g. a Lightning fit resumed from its checkpoint):
        records after ``step`` are dropped, so the continued records have no gap and no duplicate."""
        path = Path(path)
        if path.is_symlink() or not (path / cls.marker).is_file():
            raise UserError(
                f"cannot resume the probe records in '{path}': it is not a run made by landscape's "
                f"Monitor or callbacks (no {cls.marker}); pass the run directory the fit wrote"
            )
        run = cls(path)
        run._lock_folder()
        run._clean("resume")
        run.truncate(step)
        return run

    def release(self) -> None:
        """Close the records and let other processes write this run."""
        self.close()
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def write_settings(self, settings: dict) -> None:
        """Settings of a run not made by ``landscape train`` (``monitor.yaml``: written as JSON, which is YAML)."""
        atomic_write(self.path / "monitor.yaml", json.dumps(json_safe(settings), indent=2) + "\n")

    def write_env(self, device, **extra) -> None:
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


def monitor_run(
    path: str | Path, settings: dict, device, force: bool = False, resume_step: int | None = None
) -> RunDir:
    """The run directory a ``Monitor`` (or a callback) writes: new (``force`` replaces one), or
    continued from ``resume_step``; its ``monitor.yaml`` holds ``settings``."""
    run = RunDir.create(path, force=force) if resume_step is None else RunDir.reopen(path, resume_step)
    run.write_settings(settings)
    run.write_env(device)
    run.set_status("running", resume_step or 0)
    return run
