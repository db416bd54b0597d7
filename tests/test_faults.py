"""Faults: kill -9 at many points (a checkpoint write and a torn record line among them),
SIGTERM, a full disk, and two processes writing one run or one results folder."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from landscape.config import build_config
from landscape.runs import read_metrics
from landscape.train import train
from tests.conftest import ROOT

CFG = {
    "name": "victim",
    "steps": 12,
    "device": "cpu",
    "data_seed": 3,
    "data": {"dataset": "synthetic", "batch_size": 8, "synthetic_size": 64, "augment": True},
    "model": {"vgg": {"width": 0.0625}, "norm": "noisy_batch"},
    "optim": {"lr": 0.05, "momentum": 0.9},
    "log": {"train_every": 2, "eval_every": 4, "checkpoint_every": 3},
    "probes": {
        "enabled": ["gradient_sweep", "activation_stats"],
        "schedule": "list",
        "steps": [2, 7, 11],
        "activation_batch": 16,
    },
}
TIMING = {"examples_per_s", "elapsed_s", "seconds"}

# Runs train() in a child process and SIGKILLs it at one point: POINT ARG OUT
KILLER = r"""
import os, signal, sys
import landscape.files as files, landscape.runs as runs
from landscape.config import build_config
from landscape.train import train
import yaml
point, arg, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
cfg = build_config([yaml.safe_load(sys.stdin.read())])
die = lambda: os.kill(os.getpid(), signal.SIGKILL)
real_log, real_write, real_status = runs.Run.log, files.atomic_write, runs.Run.set_status
calls = {"n": 0}
def log(self, record):
    if point == "torn_line" and record.get("step") == arg:
        self._metrics.write('{"kind": "train", "st'); self._metrics.flush(); die()
    real_log(self, record)
    if point == "after_record" and record.get("kind") == "train" and record.get("step") == arg:
        die()
def write(path, content):
    if point == "mid_checkpoint" and str(path).endswith("checkpoint.pt"):
        calls["n"] += 1
        if calls["n"] == arg:
            tmp = path.with_name(".checkpoint.pt.tmp" + str(os.getpid()))
            tmp.write_bytes(content[: len(content) // 2])  # half the temp file, then death
            die()
    return real_write(path, content)
def set_status(self, status, step, **info):
    if point == "before_final_status" and status == "done":
        die()
    return real_status(self, status, step, **info)
runs.Run.log, runs.atomic_write, runs.Run.set_status = log, write, set_status
train(cfg, out=out)
"""


def strip(records):
    out = []
    for r in records:
        r = {k: v for k, v in r.items() if k not in TIMING}
        if "cost" in r:
            r["cost"] = {k: v for k, v in r["cost"].items() if k not in TIMING}
        out.append(r)
    return out


def weights(run: Path) -> dict:
    return torch.load(run / "checkpoint.pt", weights_only=True)["model"]


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    out = tmp_path_factory.mktemp("whole")
    train(build_config([CFG]), out=out)
    return out / "victim"


@pytest.mark.slow
@pytest.mark.parametrize(
    "point, arg",
    [
        ("after_record", 2),
        ("after_record", 8),
        ("torn_line", 10),
        ("mid_checkpoint", 1),
        ("mid_checkpoint", 3),
        ("before_final_status", 0),
    ],
)
def test_kill_9_anywhere_then_resume_is_bitwise_an_uninterrupted_run(tmp_path, whole, point, arg):
    child = subprocess.run(
        [sys.executable, "-c", KILLER, point, str(arg), str(tmp_path)],
        input=yaml.safe_dump(CFG),
        text=True,
        capture_output=True,
        cwd=ROOT,
        timeout=300,
    )
    assert child.returncode == -signal.SIGKILL, child.stderr[-2000:]
    run = tmp_path / "victim"
    assert json.loads((run / "status.json").read_text())["status"] == "running"
    status = train(build_config([CFG]), out=tmp_path, resume=True)
    assert status["status"] == "done" and status["test"] == json.loads((whole / "status.json").read_text())["test"]
    assert strip(read_metrics(run / "metrics.jsonl")) == strip(read_metrics(whole / "metrics.jsonl"))
    a, b = weights(run), weights(whole)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not [p for p in run.iterdir() if ".tmp" in p.name]  # a killed writer's temp file is cleaned up


def _default_signals() -> None:
    """In the child: SIGINT and SIGTERM as a terminal would deliver them. A shell starts background jobs
    (nohup, &) with SIGINT ignored, and a child inherits that, so Ctrl-C could not be tested there."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def cli(*args, **kw):
    return subprocess.Popen(
        [sys.executable, "-m", "landscape", *map(str, args)],
        cwd=ROOT,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=_default_signals,
        **kw,
    )


def wait_for(predicate, timeout=120.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def running_past(run: Path, step: int) -> bool:
    try:
        return json.loads((run / "status.json").read_text())["step"] >= step
    except (OSError, ValueError, KeyError):
        return False


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_sigint_leave_an_interrupted_run_that_resumes_bitwise(tmp_path, sig):
    cfg = dict(CFG, steps=150)
    train(build_config([cfg]), out=tmp_path / "whole")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    first = cli("train", tmp_path / "c.yaml", "--out", tmp_path, "--no-progress")
    assert wait_for(lambda: running_past(tmp_path / "victim", 6)), first.communicate()
    first.send_signal(sig)
    out, err = first.communicate(timeout=120)
    assert first.returncode == 130 and err.startswith("interrupted: run ") and err.count("\n") == 1, err
    status = json.loads((tmp_path / "victim" / "status.json").read_text())
    assert status["status"] == "interrupted" and status["step"] % 3 == 0 and status["step"] < 150
    train(build_config([cfg]), out=tmp_path, resume=True)
    assert strip(read_metrics(tmp_path / "victim" / "metrics.jsonl")) == strip(
        read_metrics(tmp_path / "whole" / "victim" / "metrics.jsonl")
    )
    a, b = weights(tmp_path / "victim"), weights(tmp_path / "whole" / "victim")
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_two_trains_into_one_run_the_second_stops_at_once(tmp_path):
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(dict(CFG, steps=3000, probes={})))
    first = cli("train", tmp_path / "c.yaml", "--out", tmp_path, "--no-progress")
    assert wait_for(lambda: running_past(tmp_path / "victim", 1))
    second = cli("train", tmp_path / "c.yaml", "--out", tmp_path, "--resume", "--no-progress")
    out, err = second.communicate(timeout=120)
    first.send_signal(signal.SIGTERM)
    first.communicate(timeout=120)
    assert second.returncode == 2 and f"being written by process {first.pid}" in err and err.count("\n") == 1, err
    steps = [r["step"] for r in read_metrics(tmp_path / "victim" / "metrics.jsonl") if r["kind"] == "train"]
    assert steps == sorted(set(steps))  # one writer: no interleaved or doubled records


@pytest.mark.slow
def test_two_reproduce_into_one_results_folder_the_second_stops_at_once(tmp_path):
    first = cli("ics-distrib", "--preset", "smoke", "--out", tmp_path, "--set", "steps=400")
    assert wait_for(lambda: (tmp_path / ".lock").exists() and (tmp_path / ".lock").read_text().strip())
    second = cli("ics-distrib", "--preset", "smoke", "--out", tmp_path, "--set", "steps=400")
    out, err = second.communicate(timeout=120)
    first.send_signal(signal.SIGINT)
    first.communicate(timeout=120)
    assert second.returncode == 2 and f"being written by process {first.pid}" in err and err.count("\n") == 1, err


@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "disk"
    mount.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({res.stderr.decode().strip()[:100]})")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


@pytest.mark.slow
def test_a_full_disk_ends_in_one_line_and_the_run_resumes_once_space_is_freed(small_disk, tmp_path, whole):
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(CFG))
    first = subprocess.run(
        [sys.executable, "-m", "landscape", "train", tmp_path / "c.yaml", "--out", small_disk, "--no-progress"],
        cwd=ROOT,
        text=True,
        capture_output=True,
        timeout=300,
    )
    assert first.returncode == 0, first.stderr  # it fits; now fill the disk and do it again
    used = sum(p.stat().st_size for p in (small_disk / "victim").iterdir())
    filler = small_disk / "filler"
    free = os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize
    filler.write_bytes(b"\0" * max(0, free - used // 3))
    full = subprocess.run(
        [
            sys.executable,
            "-m",
            "landscape",
            "train",
            tmp_path / "c.yaml",
            "--out",
            small_disk,
            "--name",
            "again",
            "--no-progress",
        ],
        cwd=ROOT,
        text=True,
        capture_output=True,
        timeout=300,
    )
    assert full.returncode == 2 and full.stderr.startswith("error: ") and full.stderr.count("\n") == 1, full.stderr
    assert "No space left" in full.stderr
    filler.unlink()
    cfg = build_config([CFG, {"name": "again"}])
    status = train(cfg, out=small_disk, resume=True)
    assert status["status"] == "done"
    assert strip(read_metrics(small_disk / "again" / "metrics.jsonl")) == strip(read_metrics(whole / "metrics.jsonl"))
