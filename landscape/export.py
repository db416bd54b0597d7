"""``landscape export``: existing run directories as TensorBoard event files, one folder per run.

Everything is checked before anything is written: the format, that every input exists, that the
output folder is not an input run or results folder, inside one, or holding one. Each run is
written into a temporary folder beside its target and renamed into place, so an export into an
existing folder gives exactly what a fresh one gives (one event file per run, one point per step),
a killed export leaves no half-written run folder, and two exports into one folder take turns
(the folder is locked while written).
"""

from __future__ import annotations

import errno
import os
import shutil
import threading
from collections.abc import Sequence
from pathlib import Path

from landscape.errors import UserError
from landscape.extras import require
from landscape.files import FolderLock, check_output, is_temporary
from landscape.probes.records import scalars_of
from landscape.results import find_runs, run_dirs

EXPORT_FORMATS = ("tensorboard",)
EVENT_PREFIX = "events.out.tfevents."  # what a TensorBoard writer names its files


def _is_previous_export(folder: Path) -> bool:
    """A run folder an earlier export wrote: event files only (or nothing)."""
    return (
        folder.is_dir()
        and not folder.is_symlink()
        and all(n.startswith(EVENT_PREFIX) and (folder / n).is_file() for n in os.listdir(folder))
    )


def export_runs(paths: Sequence[str | Path], to: str, out_dir: str | Path) -> list[Path]:
    """Every run at or below ``paths`` as TensorBoard event files under ``out_dir`` (a folder per
    run, named after it, numbered when two runs share a name); returns the folders written."""
    if to not in EXPORT_FORMATS:
        raise UserError(f"--to must be one of {', '.join(EXPORT_FORMATS)}; got {to!r}"[:200])
    paths = [Path(p) for p in paths]
    missing = [p for p in paths if not p.exists()]
    if missing:
        raise UserError(f"{str(missing[0])!r} does not exist; pass run directories or folders holding them")
    out_dir = Path(out_dir)
    check_output(out_dir, paths, "--out")
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out {str(out_dir)!r} is a file; pass a folder")
    dirs = run_dirs(paths)
    if not dirs:
        raise UserError(f"no runs found under {', '.join(map(str, paths))}")
    check_output(out_dir, dirs, "--out")  # before a record is read
    runs = find_runs(paths)
    require("tensorboard", "landscape export --to tensorboard")
    names: dict[str, int] = {}
    targets = []
    for run in runs:
        k = names[run.name] = names.get(run.name, 0) + 1
        targets.append(out_dir / (run.name if k == 1 else f"{run.name}-{k}"))
    blocked = [t for t in targets if (t.exists() or t.is_symlink()) and not _is_previous_export(t)]
    if blocked:
        raise UserError(
            f"{str(blocked[0])!r} exists and is not a folder an export wrote (it holds other files); pick another --out"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    with FolderLock(out_dir, "export folder"):
        for name in os.listdir(out_dir):  # what a killed export left
            if name.startswith(".") and is_temporary(name) and (out_dir / name).is_dir():
                shutil.rmtree(out_dir / name)
        for run, target in zip(runs, targets):
            _write_run(run, target)
    return targets


def _write_run(run, target: Path) -> None:
    from torch.utils.tensorboard import SummaryWriter

    tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    failures: list[BaseException] = []
    previous_hook = threading.excepthook
    # TensorBoard writes from a thread of its own; its failure (a full disk) would print a traceback
    # there and let the export seem to succeed: catch it and end in the one-line error instead.
    threading.excepthook = lambda args: failures.append(args.exc_value)
    try:
        writer = SummaryWriter(str(tmp))
        try:
            for record in run.records:
                for name, value in scalars_of(record).items():
                    writer.add_scalar(name, value, int(record["step"]))
        finally:
            writer.close()
        threading.excepthook = previous_hook
        if failures:
            exc = failures[0]
            raise OSError(
                getattr(exc, "errno", None) or errno.EIO, getattr(exc, "strerror", None) or str(exc), str(target)
            )
        old = target.with_name(f".{target.name}.tmp-old{os.getpid()}")
        if target.exists():
            os.replace(target, old)  # a previous export of this run: replaced whole, never merged
        os.replace(tmp, target)
        if old.exists():
            shutil.rmtree(old)
    finally:
        threading.excepthook = previous_hook
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
