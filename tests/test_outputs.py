"""Outputs besides the run directory: TensorBoard event files and offline W&B runs carry the
documented scalars, never change training, and `landscape export` writes old runs as events."""

import json
import sys

import pytest
import torch
import yaml
from typer.testing import CliRunner

from landscape.cli import app
from landscape.errors import UserError
from landscape.outputs import require, scalars_of
from tests.wandb_reader import history

runner = CliRunner()
PROBES = ["gradient_sweep", "sharpness", "ics_opti", "activation_stats"]


def config(tmp_path, name="tb"):
    cfg = {
        "name": name,
        "steps": 6,
        "device": "cpu",
        "data": {"dataset": "synthetic", "batch_size": 8, "synthetic_size": 32},
        "model": {"vgg": {"width": 0.0625}, "norm": "batch"},
        "probes": {"enabled": PROBES, "schedule": "every", "every": 3, "sharpness_iters": 5},
        "log": {"train_every": 2, "eval_every": 3, "checkpoint_every": 3},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def tensorboard_scalars(logdir) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_scalar_names_of_each_record_kind():
    sweep = {
        "kind": "probe",
        "probe": "gradient_sweep",
        "step": 3,
        "values": {"loss": 2.0, "losses": [1.5, 2.5], "grad_change": [0.1, 0.4], "beta_eff": 3.0, "grad_norm": 1.0},
    }
    assert scalars_of(sweep) == {
        "landscape/loss": 2.0,
        "landscape/loss_band": 1.0,
        "landscape/grad_change": 0.4,
        "landscape/beta_eff": 3.0,
        "landscape/grad_norm": 1.0,
        "landscape/rel_grad_change": 0.4,
    }  # rel_loss_departure needs the etas
    ics = {"kind": "probe", "probe": "ics_opti", "step": 1, "values": {"l2": {"a": 0.5}, "cosine": {"a": 0.9}}}
    assert scalars_of(ics) == {"landscape/ics_l2/a": 0.5, "landscape/ics_cos/a": 0.9}
    sharp = {"kind": "probe", "probe": "sharpness", "step": 1, "values": {"value": 7.0, "threshold": 20.0}}
    assert scalars_of(sharp) == {"landscape/sharpness": 7.0, "landscape/sharpness_threshold": 20.0}
    assert scalars_of({"kind": "train", "step": 2, "loss": float("nan"), "acc": 0.5}) == {"landscape/train_acc": 0.5}
    assert scalars_of({"kind": "probe", "probe": "gradient_sweep", "values": {"losses": [1.0, None]}}) == {}


def test_train_writes_documented_scalars_to_tensorboard_and_wandb_without_changing_training(tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "runs"
    plain = runner.invoke(app, ["train", str(config(tmp_path, "plain")), "--out", str(out), "--no-progress"])
    both = runner.invoke(
        app,
        [
            "train",
            str(config(tmp_path, "both")),
            "--out",
            str(out),
            "--no-progress",
            "--output",
            "tensorboard",
            "--output",
            "wandb",
        ],
    )
    assert plain.exit_code == 0 and both.exit_code == 0, both.output
    a = torch.load(out / "plain" / "checkpoint.pt", weights_only=True)["model"]
    b = torch.load(out / "both" / "checkpoint.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)

    tb = tensorboard_scalars(out / "both" / "tensorboard")
    for tag in (
        "landscape/beta_eff",
        "landscape/loss_band",
        "landscape/sharpness",
        "landscape/sharpness_threshold",
        "landscape/train_loss",
        "landscape/test_acc",
    ):
        assert tag in tb, (tag, sorted(tb))
    assert any(t.startswith("landscape/ics_cos/") for t in tb) and any(t.startswith("landscape/shift/") for t in tb)
    records = [json.loads(x) for x in (out / "both" / "metrics.jsonl").read_text().splitlines()]
    sweep = [r for r in records if r.get("probe") == "gradient_sweep"]
    assert [s for s, _ in tb["landscape/beta_eff"]] == [r["step"] for r in sweep]
    assert tb["landscape/beta_eff"][0][1] == pytest.approx(sweep[0]["values"]["beta_eff"], rel=1e-6)
    assert tb["landscape/sharpness_threshold"][0][1] == pytest.approx(2 / 0.1, rel=1e-6)

    rows = history(out / "both" / "wandb")
    logged = {k for row in rows for k in row}
    assert {"landscape/beta_eff", "landscape/sharpness", "landscape/sharpness_threshold", "landscape/step"} <= logged
    beta = [(row["landscape/step"], row["landscape/beta_eff"]) for row in rows if "landscape/beta_eff" in row]
    assert beta == [(s, pytest.approx(v, rel=1e-6)) for s, v in tb["landscape/beta_eff"]]

    again = runner.invoke(app, ["train", str(config(tmp_path, "both")), "--out", str(out), "--no-progress", "--force"])
    assert again.exit_code == 0, again.output  # --force replaces a run that holds tensorboard/ and wandb/
    assert not (out / "both" / "tensorboard").exists()


def test_export_writes_existing_runs_as_tensorboard_events(tmp_path):
    pytest.importorskip("tensorboard")
    out = tmp_path / "runs"
    assert runner.invoke(app, ["train", str(config(tmp_path)), "--out", str(out), "--no-progress"]).exit_code == 0
    result = runner.invoke(app, ["export", str(out), "--to", "tensorboard", "--out", str(tmp_path / "tb")])
    assert result.exit_code == 0, result.output
    tb = tensorboard_scalars(tmp_path / "tb" / "tb")
    records = [json.loads(x) for x in (out / "tb" / "metrics.jsonl").read_text().splitlines()]
    expected = sum(1 for r in records if r.get("probe") == "gradient_sweep")
    assert len(tb["landscape/beta_eff"]) == expected and "landscape/ics_cos/features.0" in tb

    bad = runner.invoke(app, ["export", str(out), "--to", "csv", "--out", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "--to must be one of tensorboard" in bad.output
    missing = runner.invoke(
        app, ["export", str(tmp_path / "nope"), "--to", "tensorboard", "--out", str(tmp_path / "x")]
    )
    assert missing.exit_code == 2 and "does not exist" in missing.output
    assert not (tmp_path / "x").exists()


def test_an_output_without_its_extra_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # as if not installed
    with pytest.raises(UserError, match=r"pip install 'bn-landscape\[tensorboard\]'"):
        require("tensorboard", "--output tensorboard")
    result = runner.invoke(
        app,
        ["train", str(config(tmp_path)), "--out", str(tmp_path / "runs"), "--no-progress", "--output", "tensorboard"],
    )
    assert result.exit_code == 2 and "bn-landscape[tensorboard]" in result.output
    assert not (tmp_path / "runs").exists()  # refused before any file was made
    unknown = runner.invoke(app, ["train", str(config(tmp_path)), "--out", str(tmp_path / "runs"), "--output", "csv"])
    assert unknown.exit_code == 2 and "'outputs' must be one of tensorboard, wandb; got 'csv'" in unknown.output
