"""Issue-by-issue checks of cases the bad-input table does not cover by exit status: values a
user means, a diverged run's summary line, half-made run folders, and records of the wrong
shape in the report."""

import json

from typer.testing import CliRunner

from landscape.cli import app
from landscape.config import load_config
from landscape.report import build_report
from landscape.reproduce import run_experiment
from landscape.train import train
from tests.conftest import tiny_config

runner = CliRunner()


def test_an_exponent_without_a_dot_is_the_number_a_user_means():
    assert load_config(None, ["optim.lr=1e-3"]).optim.lr == 0.001  # YAML alone reads "1e-3" as a string
    assert load_config(None, ["model.noise.mean_range=[-1e-1, 1e-1]"]).model.noise.mean_range == (-0.1, 0.1)


def test_a_diverged_run_prints_its_summary_line_and_exits_0(tmp_path):
    (tmp_path / "c.yaml").write_text(json.dumps({"name": "boom", "steps": 30, "device": "cpu", "optim": {"lr": 1e6},
                                                 "data": {"dataset": "synthetic", "batch_size": 16,
                                                          "synthetic_size": 64}, "model": {"width": 0.0625},
                                                 "log": {"train_every": 2, "eval_every": 10, "checkpoint_every": 10}}))
    res = runner.invoke(app, ["train", str(tmp_path / "c.yaml"), "--out", str(tmp_path), "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "boom: diverged at step" in res.output and "first non-finite loss at step" in res.output


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


def test_records_of_the_wrong_shape_are_listed_with_file_and_line_and_the_rest_is_drawn(tmp_path):
    runs = tmp_path / "runs"
    for name in ("good", "lists", "types"):
        train(tiny_config(name=name, steps=4, probes={"enabled": ["gradient_sweep"], "every": 2}), out=runs)
    with open(runs / "lists" / "metrics.jsonl", "a") as f:
        f.write("[1, 2, 3]\n")  # a JSON list, not an object
        f.write(json.dumps({"kind": "probe", "probe": "gradient_sweep", "step": 5, "values": {}, "cost": None}) + "\n")
        f.write(json.dumps({"kind": "probe", "probe": "gradient_sweep", "step": 6, "values": {}, "cost": [1]}) + "\n")
        f.write(json.dumps({"kind": "train", "step": "seven", "loss": 1.0}) + "\n")
    (runs / "lists" / "status.json").write_text("[1, 2]")
    with open(runs / "types" / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"kind": "train", "step": 8, "loss": "low", "acc": None}) + "\n")
        f.write(json.dumps({"kind": "probe", "probe": "gradient_sweep", "step": 8,
                            "values": {"losses": ["a", None], "grad_change": "x", "beta_eff": "big"}}) + "\n")
    summary = tmp_path / "exp" / "summary.json"
    summary.parent.mkdir()
    summary.write_text(json.dumps({"experiment": "smoothness", "runs": ["not", "an", "object"]}))
    res = runner.invoke(app, ["report", str(tmp_path), "-o", str(tmp_path / "r.html")])
    assert res.exit_code == 0, res.output
    html = (tmp_path / "r.html").read_text()
    assert "Problems reading records" in html
    for line in ("metrics.jsonl line 7: a JSON list, not an object", "line 9: &#39;cost&#39; is not an object",
                 "line 10: &#39;step&#39; is not an integer", "status.json missing, unreadable or not a JSON object",
                 "summary.json: unreadable, or not a summary"):
        assert line in html, line
    assert "<figcaption>Smoothness along the gradient</figcaption>" in html and "Figure not drawn" not in html
