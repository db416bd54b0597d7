"""`landscape slice` under kills, tampering, symbolic links and concurrent writers: data never mixed, lost or
deleted (the slice folder's guarantees in docs/faults.md), and every bad value in one line."""

import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from typer.testing import CliRunner

from landscape.cli import app
from landscape.files import FolderLock
from landscape.train import train
from tests.conftest import ROOT, tiny_config
from tests.test_bad_input import tree_hash

runner = CliRunner()
GRID = ["--grid", "3", "--subset", "24", "--batch-size", "8"]


@pytest.fixture
def run_dir(tmp_path):
    train(tiny_config(steps=4, model={"norm": "batch"}), out=tmp_path / "runs")
    return tmp_path / "runs" / "tiny"


def sliced(run_dir, *extra, name="s"):
    res = runner.invoke(app, ["slice", str(run_dir), "--name", name, *GRID, *extra])
    return res


def points_file(run_dir, name="s"):
    return run_dir / "slices" / name / "points-0-of-1.jsonl"


def finished(run_dir, name="s"):
    return json.loads((run_dir / "slices" / name / "slice.json").read_text())


def test_a_torn_last_line_is_cut_not_glued_to_the_next_point(run_dir):
    assert sliced(run_dir).exit_code == 0
    whole = finished(run_dir)
    lines = points_file(run_dir).read_text().splitlines()
    (run_dir / "slices" / "s" / "slice.json").unlink()
    points_file(run_dir).write_text("\n".join(lines[:4]) + "\n" + lines[4][:17])  # killed mid-line
    res = sliced(run_dir)
    assert res.exit_code == 0, res.output
    assert finished(run_dir)["loss"] == whole["loss"]
    again = points_file(run_dir).read_text().splitlines()
    assert len(again) == 9 and len({json.loads(x)["i"] for x in again}) == 9  # no point twice, none lost


def test_a_replaced_checkpoint_is_never_mixed_into_a_resumed_slice(run_dir):
    assert sliced(run_dir).exit_code == 0
    (run_dir / "slices" / "s" / "slice.json").unlink()
    points_file(run_dir).write_text("".join(points_file(run_dir).read_text().splitlines(True)[:3]))  # "killed"
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    ckpt["model"] = {k: v * 1.01 if v.is_floating_point() else v for k, v in ckpt["model"].items()}
    torch.save(ckpt, run_dir / "checkpoint.pt")  # the run trained on meanwhile
    before = tree_hash(run_dir)
    res = sliced(run_dir)
    assert res.exit_code == 2 and "changed since it began" in res.output and res.output.count("\n") == 1
    assert tree_hash(run_dir) == before


def test_a_second_writer_of_the_same_slice_is_refused(run_dir):
    assert sliced(run_dir).exit_code == 0
    (run_dir / "slices" / "s" / "slice.json").unlink()
    with FolderLock(run_dir / "slices" / "s", "slice"):
        res = sliced(run_dir)
    assert res.exit_code == 2 and "is being written by process" in res.output


def test_force_removes_only_the_slices_own_files_and_never_follows_a_link(run_dir, tmp_path):
    assert sliced(run_dir).exit_code == 0
    mine = run_dir / "slices" / "s" / "notes.txt"
    mine.write_text("mine")
    res = sliced(run_dir, "--force")
    assert res.exit_code == 2 and "notes.txt" in res.output and mine.read_text() == "mine"
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "keep").write_text("keep")
    other = tmp_path / "runs2"
    train(tiny_config(steps=2, model={"norm": "batch"}), out=other)
    (other / "tiny" / "slices").symlink_to(outside)
    res = runner.invoke(app, ["slice", str(other / "tiny"), "--name", "s", *GRID, "--force"])
    assert res.exit_code == 2 and "symbolic link" in res.output and (outside / "keep").exists()
    (other / "tiny" / "slices").unlink()
    (other / "tiny" / "slices").mkdir()
    (other / "tiny" / "slices" / "s").symlink_to(outside)
    res = runner.invoke(app, ["slice", str(other / "tiny"), "--name", "s", *GRID])
    assert res.exit_code == 2 and "symbolic link" in res.output and os.listdir(outside) == ["keep"]


def test_another_spelling_of_the_run_resumes_and_a_finished_slice_is_left_as_it_is(run_dir, monkeypatch):
    assert sliced(run_dir).exit_code == 0
    written = (run_dir / "slices" / "s" / "slice.json").read_bytes()
    stamp = (run_dir / "slices" / "s" / "slice.json").stat().st_mtime_ns
    monkeypatch.chdir(run_dir.parent)
    res = runner.invoke(app, ["slice", "tiny", "--name", "s", *GRID])  # relative, where it was absolute
    assert res.exit_code == 0, res.output
    assert (run_dir / "slices" / "s" / "slice.json").read_bytes() == written
    assert (run_dir / "slices" / "s" / "slice.json").stat().st_mtime_ns == stamp  # not rewritten


def test_train_force_replaces_a_run_that_has_slices(run_dir):
    assert sliced(run_dir).exit_code == 0
    train(tiny_config(steps=4, model={"norm": "batch"}), out=run_dir.parent, force=True)
    assert not (run_dir / "slices").exists()


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda f: (f / "spec.json").write_text("[1, 2]"), "damaged spec.json"),
        (lambda f: (f / "directions.pt").write_bytes(b"not a checkpoint"), "damaged directions.pt"),
        (
            lambda f: torch.save({"directions": [{"w": torch.ones(3)}], "origin": {}}, f / "directions.pt"),
            "another model's",
        ),
    ],
)
def test_a_damaged_slice_folder_is_refused_in_one_line(run_dir, damage, message):
    assert sliced(run_dir).exit_code == 0
    folder = run_dir / "slices" / "s"
    (folder / "slice.json").unlink()
    points_file(run_dir).write_text("")
    damage(folder)
    before = tree_hash(run_dir)
    res = sliced(run_dir)
    assert res.exit_code == 2 and message in res.output and res.output.count("\n") == 1
    assert tree_hash(run_dir) == before


def test_tampered_points_are_left_out_and_computed_again(run_dir):
    assert sliced(run_dir).exit_code == 0
    whole = finished(run_dir)["loss"]
    (run_dir / "slices" / "s" / "slice.json").unlink()
    lines = points_file(run_dir).read_text().splitlines()
    bad = [json.loads(x) for x in lines[:4]]
    bad[0]["loss"] = "low"
    bad[1]["coords"] = [0.123, 0.5]
    bad[2]["loss"] = -1e300
    tampered = [json.dumps(b) for b in bad[:3]] + ['{"i": 1e400, "loss": 1.0}', *lines[4:]]
    points_file(run_dir).write_text("\n".join(tampered) + "\n")
    os.mkfifo(run_dir / "slices" / "s" / "points-9-of-10.jsonl")  # a FIFO named like a shard: never opened
    res = sliced(run_dir)
    assert res.exit_code == 0, res.output
    assert "left out" in res.output
    assert finished(run_dir)["loss"] == whole


@pytest.mark.parametrize(
    "args, message",
    [
        (["--seed", "1" * 25], "--seed must be between 0 and 2^63 - 1"),
        (["--name", "n" * 300], "at most 200 bytes"),
        (["--name", "a\nb"], "printable folder name"),
        (["--batch-size", "1", "--bn", "recompute"], "--batch-size 2 or more"),
    ],
)
def test_bad_values_end_in_one_line_with_nothing_written(run_dir, args, message):
    before = tree_hash(run_dir)
    res = runner.invoke(app, ["slice", str(run_dir), *GRID, *args])
    assert res.exit_code == 2 and message in res.output and res.output.count("\n") == 1, res.output
    assert tree_hash(run_dir) == before


def test_a_pca_of_a_trajectory_that_does_not_move_and_a_diverged_checkpoint_are_refused(run_dir, tmp_path):
    ckpt = run_dir / "checkpoint.pt"
    res = runner.invoke(
        app, ["slice", str(run_dir), *GRID, "--directions", "pca", "--trajectory", str(ckpt), "--trajectory", str(ckpt)]
    )
    assert res.exit_code == 2 and "does not move" in res.output, res.output
    nan = torch.load(ckpt, weights_only=True)
    nan["model"] = {k: v * math.nan if v.is_floating_point() else v for k, v in nan["model"].items()}
    torch.save(nan, tmp_path / "nan.pt")
    (tmp_path / "nan").mkdir()
    for f in ("config.yaml", "env.json", "status.json", "metrics.jsonl"):
        (tmp_path / "nan" / f).write_bytes((run_dir / f).read_bytes())
    torch.save(nan, tmp_path / "nan" / "checkpoint.pt")
    res = runner.invoke(app, ["slice", str(tmp_path / "nan"), *GRID, "--directions", "hessian"])
    assert res.exit_code == 2 and "not finite" in res.output, res.output


def test_checkpoints_of_the_wrong_types_or_shapes_are_refused(run_dir, tmp_path):
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    stats = next(k for k in ckpt["model"] if k.endswith("running_mean"))
    for name, edit in (
        ("lists", lambda m: {k: v.tolist() for k, v in m.items()}),
        ("shape", lambda m: {**m, stats: torch.zeros(3)}),
    ):
        other = tmp_path / name
        other.mkdir()
        for f in ("config.yaml", "env.json", "status.json", "metrics.jsonl"):
            (other / f).write_bytes((run_dir / f).read_bytes())
        torch.save({**ckpt, "model": edit(dict(ckpt["model"]))}, other / "checkpoint.pt")
        res = runner.invoke(app, ["slice", str(other), *GRID])
        assert res.exit_code == 2 and "another shape or type" in res.output, res.output


def test_the_default_subset_fits_a_small_training_split(tmp_path):
    train(tiny_config(name="small", steps=2, data={"synthetic_size": 64}), out=tmp_path)
    res = runner.invoke(app, ["slice", str(tmp_path / "small"), "--grid", "2", "--dims", "1", "--name", "s"])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "small" / "slices" / "s" / "slice.json").read_text())["spec"]["subset"] == 64


def test_a_bn_dln_slice_whose_last_batch_would_hold_one_example(tmp_path):
    cfg = tiny_config(
        name="dln",
        steps=2,
        loss="sum_squares",
        data={"dataset": "gaussian", "gaussian_samples": 25, "batch_size": 0},
        model={"arch": "dln", "norm": "batch", "dln": {"depth": 3}},
        optim={"lr": 1e-4},
    )
    train(cfg, out=tmp_path)
    res = runner.invoke(
        app, ["slice", str(tmp_path / "dln"), "--grid", "3", "--dims", "1", "--batch-size", "8", "--bn", "train"]
    )
    assert res.exit_code == 0, res.output


def _alive(pids):
    out = []
    for pid in pids:
        try:
            os.kill(pid, 0)
            out.append(pid)
        except ProcessLookupError:
            pass
    return out


def _children(pid):
    try:
        return [
            int(p) for p in subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
        ]
    except FileNotFoundError:
        pytest.skip("pgrep is not installed")


@pytest.mark.slow
def test_killing_a_two_worker_slice_leaves_no_worker_writing_and_the_resume_writes_each_point_once(run_dir):
    cmd = [
        sys.executable,
        "-m",
        "landscape",
        "slice",
        str(run_dir),
        "--name",
        "w",
        "--grid",
        "7",
        "--subset",
        "24",
        "--batch-size",
        "8",
        "--workers",
        "2",
    ]
    parent = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    folder = run_dir / "slices" / "w"
    deadline = time.time() + 120
    while time.time() < deadline and sum(len(f.read_text().splitlines()) for f in folder.glob("points-*")) < 6:
        time.sleep(0.2)
    workers = _children(parent.pid)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.time() + 60
    while _alive(workers) and time.time() < deadline:
        time.sleep(0.5)
    assert not _alive(workers), "a worker of the killed slice is still running"
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    lines = [json.loads(x) for f in folder.glob("points-*") for x in f.read_text().splitlines()]
    assert len(lines) == 49 and len({p["i"] for p in lines}) == 49  # each point once


@pytest.mark.slow
def test_ctrl_c_ends_a_two_worker_slice_with_its_workers(run_dir):
    cmd = [
        sys.executable,
        "-m",
        "landscape",
        "slice",
        str(run_dir),
        "--name",
        "c",
        "--grid",
        "7",
        "--subset",
        "24",
        "--batch-size",
        "8",
        "--workers",
        "2",
    ]
    parent = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    folder = run_dir / "slices" / "c"
    deadline = time.time() + 120
    while time.time() < deadline and not list(folder.glob("points-*")):
        time.sleep(0.2)
    time.sleep(2)
    workers = _children(parent.pid)
    parent.send_signal(signal.SIGINT)
    parent.wait(timeout=60)
    deadline = time.time() + 30
    while _alive(workers) and time.time() < deadline:
        time.sleep(0.5)
    assert not _alive(workers)


def test_a_run_trained_with_a_registered_probe_is_sliced_from_a_fresh_process(tmp_path):
    from landscape.probes import Probe, register, unregister
    from landscape.probes.registry import NoOptions

    register(Probe("weights_seen", "a probe only this process knows", lambda ctx, o: {"value": 1.0}, NoOptions))
    try:
        train(tiny_config(name="custom", steps=2, probes={"enabled": ["weights_seen"], "every": 1}), out=tmp_path)
    finally:
        unregister("weights_seen")
    res = subprocess.run(
        [sys.executable, "-m", "landscape", "slice", str(tmp_path / "custom"), *GRID, "--dims", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr
