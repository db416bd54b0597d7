"""Files: atomic writes, the folder lock and safe reads (their home is the probe library's
:mod:`landscape.probes.rundir`, which writes run directories for any loop), and the check that an
output never lands inside what a command reads."""

from __future__ import annotations

from pathlib import Path

from landscape.errors import UserError, quote
from landscape.probes.rundir import LOCK_NAME, TMP_MARK, FolderLock, atomic_write, is_temporary, read_text, regular  # noqa: F401


def _inside(a: Path, b: Path) -> bool:
    """``a`` is ``b`` or lies inside it (both resolved)."""
    return a == b or b in a.parents


def check_output(out: str | Path, inputs, what: str, holding: bool = True) -> None:
    """Refuse an output path that is or lies inside one of ``inputs`` (symbolic links resolved), or,
    with ``holding``, that holds one of them: writing there would change what is being read."""
    target = Path(out).resolve()
    for source in inputs:
        src = Path(source).resolve()
        if _inside(target, src) or (holding and _inside(src, target)):
            raise UserError(
                f"{what} {quote(out)} {'is or lies inside' if _inside(target, src) else 'holds'} "
                f"{quote(source)}, which it reads; pick a path outside the runs and results it reads"
            )
