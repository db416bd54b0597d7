"""Probes in a data-parallel run: the ranks, the probes' own process group, and the agreement check.

Each rank holds its own share of the global batch, as DistributedDataParallel trains. A probe evaluates
its objective on the unwrapped module and averages every loss, gradient and Hessian-vector product over
the ranks (``landscape.probes.functional.evaluation(group=...)``), so its value is the one a single
process holding the global batch records. BatchNorm in train mode therefore normalises by each rank's
own statistics, as DDP training does; a model with ``SyncBatchNorm`` gathers them over the ranks in its
forward (CUDA only: not run here).
"""

from __future__ import annotations

import hashlib
import json
from datetime import timedelta
from typing import Any

from torch import nn

SCHEDULE_HORIZON = 100_000  # steps over which the ranks' schedules must agree


class ProbeFailure(RuntimeError):
    """A probe's collective failed: another rank failed, left, or timed out (one line)."""


def _dist():
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


def ranks() -> int:
    """The world size of an initialised default process group (1 without one)."""
    dist = _dist()
    return dist.get_world_size() if dist else 1


def rank() -> int:
    dist = _dist()
    return dist.get_rank() if dist else 0


def unwrap(model: nn.Module) -> nn.Module:
    """The module probes evaluate: what a ``DistributedDataParallel`` (or ``DataParallel``) wraps, and the
    original module of a ``torch.compile``d one (the same parameters; probes need double backward, which a
    compiled graph does not give, and its names have no ``_orig_mod.`` prefix); any other model as it is."""
    from torch.nn.parallel import DataParallel, DistributedDataParallel

    while True:
        if isinstance(model, (DistributedDataParallel, DataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):  # torch.compile's OptimizedModule
            model = model._orig_mod
        else:
            return model


def probe_group(timeout: float) -> Any:
    """A process group over every rank, for the probes' collectives, with its own timeout (a collective
    call: every rank must make it)."""
    dist = _dist()
    if dist is None:
        raise ValueError("distributed=True needs torch.distributed initialised (init_process_group) first")
    return dist.new_group(timeout=timedelta(seconds=timeout))


def schedule_fingerprint(schedule) -> str:
    """The steps a schedule fires at within the horizon, hashed."""
    due = [s for s in range(1, SCHEDULE_HORIZON + 1) if schedule(s)]
    return hashlib.sha256(json.dumps(due).encode()).hexdigest()


def agree(group: Any, settings: dict, schedule) -> None:
    """Refuse, on every rank, ranks whose probes, options or schedule differ (before the first probe)."""
    dist = _dist()
    mine = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()
    fingerprints = [None] * dist.get_world_size()
    dist.all_gather_object(fingerprints, (mine, schedule_fingerprint(schedule)), group=group)
    differ = [r for r, f in enumerate(fingerprints) if f != fingerprints[0]]
    if differ:
        what = (
            "schedule"
            if any(f[0] == fingerprints[0][0] for f in (fingerprints[r] for r in differ))
            else "probes or options"
        )
        raise ValueError(
            f"the ranks disagree on the Monitor's {what} (rank {differ[0]} differs from rank 0); "
            "construct the Monitor with the same probes, options and schedule on every rank"
        )


def collective_failure(exc: BaseException) -> bool:
    """An error raised by a collective whose peers failed, left or timed out."""
    text = str(exc).lower()
    return any(
        k in text
        for k in (
            "timed out",
            "timeout",
            "connection closed",
            "connection reset",
            "broken pipe",
            "gloo",
            "nccl",
            "peer",
        )
    )
