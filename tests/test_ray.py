"""The Ray launcher: same records as the local launcher, a real `ray start --head` cluster, and a
worker killed mid-run. CI installs Ray (`pip install -e .[dev,ray]`); elsewhere these skip
without it."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

from landscape import planning
from landscape.experiments import REGISTRY, get, preset_keys
from landscape.launch import Launch, execute
from landscape.reproduce import plan, run_experiment
from landscape.results import read_run

ray = pytest.importorskip("ray") if not os.environ.get("CI") else __import__("ray")
pytestmark = [pytest.mark.ray, pytest.mark.slow]

ROOT = planning.configs_dir().parent
TIMING = {"examples_per_s", "elapsed_s", "seconds", "train_seconds", "updated"}


def strip(x):
    if isinstance(x, dict):
        return {k: strip(v) for k, v in x.items() if k not in TIMING}
    if isinstance(x, list):
        return [strip(v) for v in x]
    return x


def records(out):
    return {p.name: strip(read_run(p).records) for p in sorted((out / "runs").iterdir())}


@pytest.fixture
def local_ray():
    # a private local instance, even when a cluster is already running on this machine
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_reproduce_smoke_on_ray_matches_the_local_launcher(tmp_path, local_ray):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the Ray tasks pin one thread per CPU they are granted
    try:
        for e in REGISTRY:
            run_experiment(e, "smoke", 1, tmp_path / "local", log=lambda s: None)
    finally:
        torch.set_num_threads(threads)
    launch = Launch("ray", cpus_per_run=1)
    specs = [s for e in REGISTRY for s in plan(get(e), planning.load_preset("smoke", preset_keys()), [0])]
    statuses = execute(specs, tmp_path / "ray", None, None, launch, log=lambda s: None)
    assert set(statuses) == {s.name for s in specs} and set(statuses.values()) <= {"done", "diverged"}
    for e in REGISTRY:
        a = run_experiment(e, "smoke", 1, tmp_path / "ray", launch=launch, log=lambda s: None)
        b = json.loads((tmp_path / "local" / e / "summary.json").read_text())
        assert strip(a["claims"]) == strip(b["claims"])
    assert records(tmp_path / "ray") == records(tmp_path / "local")  # bitwise: same numbers, same threads


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_experiment_on_a_real_cluster_head(tmp_path):
    port = free_port()
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    start = subprocess.run(
        [
            "ray",
            "start",
            "--head",
            "--node-ip-address=127.0.0.1",
            f"--port={port}",
            "--num-cpus=2",
            "--include-dashboard=false",
            "--disable-usage-stats",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert start.returncode == 0, start.stderr[-2000:]
    try:
        res = subprocess.run(
            [
                sys.executable,
                "-m",
                "landscape",
                "ics-distrib",
                "--preset",
                "smoke",
                "--out",
                str(tmp_path),
                "--launcher",
                "ray",
                "--address",
                f"127.0.0.1:{port}",
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
            cwd=ROOT,
        )
        assert res.returncode == 0, res.stderr[-3000:]
        assert "ray: 3 runs on 2 CPUs" in res.stdout
        summary = json.loads((tmp_path / "ics-distrib" / "summary.json").read_text())
        assert all(r["status"] == "done" for r in summary["runs"].values())
    finally:
        subprocess.run(["ray", "stop", "--force"], capture_output=True, timeout=120)


def test_a_killed_worker_becomes_a_failed_run_and_the_rerun_completes_only_it(tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "landscape",
        "ics-distrib",
        "--preset",
        "smoke",
        "--out",
        str(tmp_path),
        "--launcher",
        "ray",
        "--set",
        "steps=400",
        "--set",
        "probes.steps=[1]",
    ]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    driver = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    victim = tmp_path / "runs" / "vgg-bn-lr0.1-s0"
    deadline = time.time() + 180
    pid = None
    while time.time() < deadline and pid is None:  # wait for the run to be under way, then kill its worker
        env_file = victim / "env.json"
        status = victim / "status.json"
        if env_file.exists() and status.exists():
            try:
                if json.loads(status.read_text())["step"] >= 3:
                    pid = json.loads(env_file.read_text())["pid"]
            except (ValueError, KeyError):
                pass
        time.sleep(0.05)
    assert pid is not None, "the run never started"
    os.kill(pid, signal.SIGKILL)
    out, err = driver.communicate(timeout=300)
    assert driver.returncode == 0, err[-3000:]
    killed = read_run(victim)
    assert killed.state == "failed" and "ray task failed" in killed.status["error"]
    others = [read_run(p) for p in (tmp_path / "runs").iterdir() if p.name != victim.name]
    assert all(r.state == "done" for r in others)
    before = {r.name: (r.path / "metrics.jsonl").read_text() for r in others}

    rerun = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert rerun.stdout.count("already complete, skipped") == 2
    assert "ray: 1 runs" in rerun.stdout
    assert read_run(victim).state == "done"
    assert before == {r.name: (r.path / "metrics.jsonl").read_text() for r in others}
    steps = [r["step"] for r in read_run(victim).kind("train")]
    assert steps == sorted(set(steps)) and steps[-1] == 400  # resumed: no record lost or repeated


def test_a_slice_split_over_ray_tasks_gives_exactly_the_single_process_points(tmp_path, local_ray):
    from typer.testing import CliRunner

    from landscape.cli import app
    from landscape.train import train
    from tests.conftest import tiny_config

    train(tiny_config(steps=4, model={"norm": "batch"}), out=tmp_path)
    run = tmp_path / "tiny"
    args = ["slice", str(run), "--grid", "3", "--subset", "24", "--batch-size", "8", "--bn", "train"]
    runner = CliRunner()
    assert runner.invoke(app, [*args, "--name", "single"]).exit_code == 0
    res = runner.invoke(app, [*args, "--name", "ray", "--workers", "2", "--launcher", "ray"])
    assert res.exit_code == 0, res.output
    a = json.loads((run / "slices" / "single" / "slice.json").read_text())
    b = json.loads((run / "slices" / "ray" / "slice.json").read_text())
    assert a["loss"] == b["loss"] and a["acc"] == b["acc"]
    assert sorted(p.name for p in (run / "slices" / "ray").glob("points-*")) == [
        "points-0-of-2.jsonl",
        "points-1-of-2.jsonl",
    ]
