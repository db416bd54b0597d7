import json

import pytest
import yaml
from typer.testing import CliRunner

from landscape.cli import app
from tests.conftest import make_image_tree

runner = CliRunner()


def write_config(tmp_path, **extra):
    cfg = {
        "name": "clirun",
        "steps": 4,
        "device": "cpu",
        "data": {"dataset": "synthetic", "batch_size": 8, "synthetic_size": 32},
        "model": {"vgg": {"width": 0.0625}},
        "log": {"train_every": 2, "eval_every": 2, "checkpoint_every": 2},
    }
    cfg.update(extra)
    path = tmp_path / "c.yaml"
    path.write_text("# landscape train c.yaml\n" + yaml.safe_dump(cfg))
    return path


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_help_is_complete():
    top = invoke("--help")
    assert top.exit_code == 0 and "train" in top.output
    sub = invoke("train", "--help")
    for option in ["--set", "--data-dir", "--out", "--device", "--resume", "--force"]:
        assert option in sub.output


def test_train_then_refuse_then_resume_then_force(tmp_path):
    cfg = write_config(tmp_path)
    out = tmp_path / "runs"
    first = invoke("train", cfg, "--out", out, "--no-progress")
    assert first.exit_code == 0, first.output
    assert "clirun: done at step 4" in first.output
    again = invoke("train", cfg, "--out", out)
    assert again.exit_code == 2
    assert again.stderr.strip().count("\n") == 0 and "already exists" in again.stderr
    assert invoke("train", cfg, "--out", out, "--resume").exit_code == 0
    forced = invoke("train", cfg, "--out", out, "--force", "--set", "steps=2", "--no-progress")
    assert forced.exit_code == 0 and "done at step 2" in forced.output


def test_train_on_an_image_tree_with_overrides(tmp_path):
    make_image_tree(tmp_path / "data", per_class=2)
    cfg = write_config(tmp_path, data={"dataset": "cifar10", "batch_size": 10})
    res = invoke(
        "train",
        cfg,
        "--data-dir",
        tmp_path / "data",
        "--out",
        tmp_path / "runs",
        "--set",
        "optim.lr=0.01",
        "--name",
        "tree",
        "--no-progress",
    )
    assert res.exit_code == 0, res.output
    saved = yaml.safe_load((tmp_path / "runs" / "tree" / "config.yaml").read_text())
    assert saved["optim"]["lr"] == 0.01 and saved["name"] == "tree"
    status = json.loads((tmp_path / "runs" / "tree" / "status.json").read_text())
    assert status["status"] == "done"


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "missing.yaml"], "not found"),
        (["train", "{cfg}", "--set", "optim.lr=abc"], "expects a number"),
        (["train", "{cfg}", "--set", "optim.nope=1"], "unknown config key 'optim.nope'; valid keys"),
        (["train", "{cfg}", "--set", "steps=-3"], "must be positive"),
        (["train", "{cfg}", "--device", "quantum"], "unknown device"),
        (["train", "{cfg}", "--set", "data.dataset=cifar10", "--data-dir", "{tmp}/nope"], "does not exist"),
        (["train", "{cfg}", "--resume", "--force"], "contradict"),
        (["train", "{bad}"], "not valid YAML"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, message):
    cfg = write_config(tmp_path)
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {norm: [batch\n")
    args = [a.format(cfg=cfg, tmp=tmp_path, bad=bad) for a in args]
    res = invoke(*args, "--out", tmp_path / "runs")
    assert res.exit_code == 2, res.output
    assert message in res.stderr
    assert res.stderr.startswith("error: ") and res.stderr.strip().count("\n") == 0


def test_bad_input_before_any_work_leaves_no_run_behind(tmp_path):
    cfg = write_config(tmp_path, data={"dataset": "cifar10"})
    res = invoke("train", cfg, "--out", tmp_path / "runs", "--data-dir", tmp_path / "empty_dir_missing")
    assert res.exit_code == 2
    (tmp_path / "empty").mkdir()
    res = invoke("train", cfg, "--out", tmp_path / "runs", "--data-dir", tmp_path / "empty")
    assert res.exit_code == 2 and "no CIFAR-10 found" in res.stderr
    assert not (tmp_path / "runs" / "clirun").exists()


def test_force_with_a_bad_data_path_keeps_the_existing_run(tmp_path):
    cfg = write_config(tmp_path)
    assert invoke("train", cfg, "--out", tmp_path / "runs").exit_code == 0
    before = (tmp_path / "runs" / "clirun" / "metrics.jsonl").read_text()
    res = invoke(
        "train",
        cfg,
        "--out",
        tmp_path / "runs",
        "--force",
        "--set",
        "data.dataset=cifar10",
        "--data-dir",
        tmp_path / "missing",
    )
    assert res.exit_code == 2 and "does not exist" in res.stderr
    assert (tmp_path / "runs" / "clirun" / "metrics.jsonl").read_text() == before


runner = CliRunner()


def test_a_diverged_run_prints_its_summary_line_and_exits_0(tmp_path):
    (tmp_path / "c.yaml").write_text(
        json.dumps(
            {
                "name": "boom",
                "steps": 30,
                "device": "cpu",
                "optim": {"lr": 1e6},
                "data": {"dataset": "synthetic", "batch_size": 16, "synthetic_size": 64},
                "model": {"vgg": {"width": 0.0625}},
                "log": {"train_every": 2, "eval_every": 10, "checkpoint_every": 10},
            }
        )
    )
    res = runner.invoke(app, ["train", str(tmp_path / "c.yaml"), "--out", str(tmp_path), "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "boom: diverged at step" in res.output and "first non-finite loss at step" in res.output


def test_a_first_command_that_fails_before_any_run_leaves_no_folder(tmp_path, monkeypatch):
    """No data and no internet: the experiment ends in one line and its --out does not stay behind holding only a
    lock; a folder that existed before, or holds anything, is left as it was."""
    import landscape.data
    from landscape.errors import UserError

    def no_data(*args, **kwargs):
        raise UserError("CIFAR-10 not found and the download failed; pass --data-dir")

    monkeypatch.setattr(landscape.data, "load_data", no_data)
    out = tmp_path / "first"
    r = invoke("train-compare", "--preset", "smoke", "--out", out)
    assert r.exit_code == 2 and "download failed" in r.output
    assert not out.exists()
    kept = tmp_path / "kept"
    (kept / "notes").mkdir(parents=True)
    r = invoke("train-compare", "--preset", "smoke", "--out", kept)
    assert r.exit_code == 2 and (kept / "notes").is_dir()
