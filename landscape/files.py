"""Writing files so that a reader (or a kill) never sees half of one: write a temporary
sibling, then rename it over the target (``os.replace`` is atomic on one file system)."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from typing import Callable

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

    def acquire(self) -> "FolderLock":
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
            from landscape.errors import UserError

            raise UserError(f"{self.what} '{self.folder}' is being written by process {holder}; wait for it to "
                            "finish or stop it, or use another --out or name") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _inside(a: Path, b: Path) -> bool:
    """``a`` is ``b`` or lies inside it (both resolved)."""
    return a == b or b in a.parents


def check_output(out: str | Path, inputs, what: str, holding: bool = True) -> None:
    """Refuse an output path that is or lies inside one of ``inputs`` (symbolic links resolved), or,
    with ``holding``, that holds one of them: writing there would change what is being read."""
    from landscape.errors import UserError, quote

    target = Path(out).resolve()
    for source in inputs:
        src = Path(source).resolve()
        if _inside(target, src) or (holding and _inside(src, target)):
            raise UserError(f"{what} {quote(out)} {'is or lies inside' if _inside(target, src) else 'holds'} "
                            f"{quote(source)}, which it reads; pick a path outside the runs and results it reads")
