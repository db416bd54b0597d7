"""Provenance: what a run's ``env.json`` records so a result can be traced to the code, data and machine
that made it, and re-run bit for bit where that is possible."""

from __future__ import annotations

import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch


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
BITWISE_KEYS = (
    "git_commit",
    "data_sha256",
    "torch",
    "cpu_capability",
    "threads",
    "device",
    "device_name",
    "deterministic",
    "cudnn",
)


def _version(module: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(module)
    except Exception:
        return None


def _torchvision() -> str | None:
    """torchvision's version (not a dependency of the probes): as it reports itself when the process loaded it, else
    as installed."""
    module = sys.modules.get("torchvision")
    return getattr(module, "__version__", None) if module is not None else _version("torchvision")


def environment(device: torch.device, **extra) -> dict:
    """Versions, hardware, threads and numerics settings; ``extra`` adds run facts (the data's hash)."""
    cuda = device.type == "cuda"
    env = {
        "torch": torch.__version__,
        "torchvision": _torchvision(),
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
        "cudnn": {
            "version": torch.backends.cudnn.version(),
            "benchmark": torch.backends.cudnn.benchmark,
            "deterministic": torch.backends.cudnn.deterministic,
        }
        if cuda
        else None,
        "pid": os.getpid(),
        "git_commit": git_commit(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "bitwise_keys": list(BITWISE_KEYS),
        **extra,
    }
    return env
