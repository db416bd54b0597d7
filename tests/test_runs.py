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
    assert env["memory_format"] == "channels_last" and env["numpy"]  # a VGG: auto takes channels-last on the CPU
    assert env["cpu_model"] and env["libraries"]["onednn"] and isinstance(env["env_vars"], dict)
    if torch.backends.mkldnn.is_available():
        assert env["onednn_isa"]  # e.g. "Intel AVX2", "Intel AVX-512 with Intel AMX"


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch without oneDNN")
def test_the_isa_onednn_dispatches_to_is_read_not_assumed():
    """Capping oneDNN's instruction set changes a run's bits while ATen's cpu_capability stays the same: env.json
    records what oneDNN itself reports."""
    import subprocess
    import sys

    code = "from landscape.probes.provenance import onednn_isa; print(onednn_isa())"
    capped = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**__import__("os").environ, "ONEDNN_MAX_CPU_ISA": "SSE41"},
        timeout=120,
    )
    assert capped.stdout.strip() == "Intel SSE4.1"


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
