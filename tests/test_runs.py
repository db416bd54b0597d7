"""Run directories (landscape.runs): what a run writes and how a half-made one is taken up again."""

import json

import pytest
import torch

from landscape.data import fingerprint
from landscape.reproduce import run_experiment
from landscape.runs import BITWISE_KEYS
from landscape.train import train
from tests.conftest import tiny_config


def test_env_json_records_what_a_bitwise_rerun_needs(tmp_path):
    from landscape.data import load_splits

    train(tiny_config(name="env", steps=2), out=tmp_path)
    env = json.loads((tmp_path / "env" / "env.json").read_text())
    assert set(BITWISE_KEYS) <= set(env) and env["bitwise_keys"] == list(BITWISE_KEYS)
    splits = load_splits("synthetic", None, synthetic_size=64)
    assert env["data_sha256"] == fingerprint(splits["train"], splits["test"])
    assert env["threads"] == torch.get_num_threads() and env["cpu_capability"]
    assert env["memory_format"] == "contiguous" and env["numpy"]


def test_half_made_run_folders_from_a_full_disk_are_taken_up_again(tmp_path):
    """A full disk can stop an experiment after it made a run folder holding only a temporary
    config: the rerun uses the folder instead of refusing it as "not a landscape run"."""
    out = tmp_path / "results"
    for name in ("vgg-standard-lr0.1-s0", "vgg-bn-lr0.1-s0"):
        (out / "runs" / name).mkdir(parents=True)
        (out / "runs" / name / f".config.yaml.tmp{12345}").write_text("name: half")
    summary = run_experiment("ics-distrib", "smoke", 1, out, log=lambda s: None)
    assert all(r["status"] == "done" for r in summary["runs"].values())
    assert not list((out / "runs").rglob("*.tmp*"))


def test_force_and_resume_remove_only_what_our_writers_made(tmp_path):
    from landscape.errors import UserError
    from landscape.runs import Run

    cfg = tiny_config(steps=2, log={"train_every": 1, "eval_every": 2, "checkpoint_every": 1})
    train(cfg, out=tmp_path)
    run = tmp_path / cfg.name
    (run / ".notes.tmp.txt").write_text("mine")  # a dot-name with .tmp in it is not our temporary file
    (run / ".config.yaml.tmp4242").write_text("a killed writer's")
    Run.open(run, cfg, resume=True).release()
    assert (run / ".notes.tmp.txt").exists() and not (run / ".config.yaml.tmp4242").exists()
    (run / ".notes.tmp.txt").unlink()
    (run / "tensorboard").mkdir()
    (run / "tensorboard" / "events.out.tfevents.1.host").write_text("")
    assert Run.check(run, cfg, force=True) == "replace"  # what TensorBoard writes may go
    (run / "tensorboard" / "thesis.tex").write_text("a user's")
    with pytest.raises(UserError, match="not one"):
        Run.check(run, cfg, force=True)
