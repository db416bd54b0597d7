"""Provenance: what a run's ``env.json`` records so a result can be traced to the code, data and machine
that made it, and re-run bit for bit where that is possible."""

from __future__ import annotations

import ctypes
import functools
import os
import platform
import re
import socket
import subprocess
import sys
import tempfile
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
# the same input bits (data_sha256), the same kernels (torch; cpu_capability: the vector
# instructions ATen dispatches to; onednn_isa: those oneDNN's convolutions dispatch to, which
# ONEDNN_MAX_CPU_ISA can cap below cpu_capability, and AMX changes) and the same reduction order
# (threads). Training at the paper's learning rates is chaotic: any of these changed moves a run
# onto another trajectory.
BITWISE_KEYS = (
    "git_commit",
    "data_sha256",
    "torch",
    "cpu_capability",
    "onednn_isa",
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


ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_tile", "amx_bf16", "amx_int8")
ENV_VARS = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def cpu_model() -> str | None:
    """The CPU's model name (Linux's /proc/cpuinfo; elsewhere what platform says)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def cpu_flags() -> list[str] | None:
    """The vector-instruction flags of the CPU that decide which kernels run (None where /proc/cpuinfo is absent)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                return [f for f in ISA_FLAGS if f in flags]
    except OSError:
        pass
    return None


@functools.cache
def onednn_isa() -> str | None:
    """The instruction set oneDNN dispatches its CPU primitives to in this process (e.g. ``Intel AVX2``,
    ``Intel AVX-512 with Intel AMX``), as its verbose mode reports it for one tiny convolution; None where torch has
    no oneDNN or it says nothing. Read once per process (oneDNN prints it once)."""
    if not torch.backends.mkldnn.is_available():
        return None
    try:
        sys.stdout.flush()
        saved = os.dup(1)
    except (OSError, ValueError):
        return None
    try:
        with tempfile.TemporaryFile() as capture:
            os.dup2(capture.fileno(), 1)
            try:
                # a batch of 2: PyTorch sends a batch of 1 to another kernel than oneDNN's
                with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON), torch.no_grad():
                    torch.nn.functional.conv2d(torch.ones(2, 3, 8, 8), torch.ones(4, 3, 3, 3))
                ctypes.CDLL(None).fflush(None)  # oneDNN writes through C's buffered stdout
            finally:
                os.dup2(saved, 1)
            capture.seek(0)
            text = capture.read(1 << 16).decode(errors="replace")
    except Exception:  # noqa: BLE001 (provenance never stops a run)
        return None
    finally:
        os.close(saved)
    found = re.search(r"cpu,isa:([^\n,]+)", text)
    return found.group(1).strip() if found else None


def library_versions() -> dict:
    """The versions of the math libraries inside torch (oneDNN, MKL), from its build configuration."""
    text = torch.__config__.show()
    out = {}
    for key, pattern in (("onednn", r"(?:oneDNN|MKL-DNN) v([\w.]+)"), ("mkl", r"Math Kernel Library Version ([\w.]+)")):
        found = re.search(pattern, text)
        out[key] = found.group(1) if found else None
    return out


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
        "onednn_isa": onednn_isa() if device.type == "cpu" else None,
        "cpu_model": cpu_model(),
        "cpu_flags": cpu_flags(),
        "libraries": library_versions(),
        "env_vars": {k: os.environ[k] for k in ENV_VARS if k in os.environ},
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
