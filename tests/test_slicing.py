"""`landscape slice` on a real (tiny) run: the grid's points, the same over 2 workers, a killed
slice resumed without recomputing finished points, the interpolation from initialisation, and
bad input (one line, exit 2, nothing written)."""

import json

import pytest
import torch
from typer.testing import CliRunner

from landscape import slicing
from landscape.cli import app
from landscape.probes import slices as S
from landscape.train import train
from tests.conftest import tiny_config
from tests.test_bad_input import tree_hash

runner = CliRunner()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    train(tiny_config(steps=6, model={"norm": "batch"}), out=out)
    return out / "tiny"


def slice_args(run, *extra):
    return ["slice", str(run), "--grid", "3", "--subset", "24", "--batch-size", "8", *extra]


def test_a_2d_slice_is_written_beside_the_run(run_dir):
    res = runner.invoke(app, slice_args(run_dir, "--name", "one", "--bn", "recompute"))
    assert res.exit_code == 0, res.output
    out = json.loads((run_dir / "slices" / "one" / "slice.json").read_text())
    assert out["shape"] == [3, 3] and len(out["loss"]) == 9 and out["axis"] == [-1.0, 0.0, 1.0]
    assert out["spec"]["bn"] == "recompute" and out["spec"]["directions"] == "random"
    assert out["loss"][4] == pytest.approx(out["centre"]["loss"], rel=1e-6)  # the grid's middle is the run itself
    assert all(0 <= a <= 1 for a in out["acc"])


def test_two_workers_give_exactly_the_single_process_points(run_dir):
    assert runner.invoke(app, slice_args(run_dir, "--name", "single", "--bn", "train")).exit_code == 0
    res = runner.invoke(app, slice_args(run_dir, "--name", "split", "--bn", "train", "--workers", "2"))
    assert res.exit_code == 0, res.output
    a = json.loads((run_dir / "slices" / "single" / "slice.json").read_text())
    b = json.loads((run_dir / "slices" / "split" / "slice.json").read_text())
    assert a["loss"] == b["loss"] and a["acc"] == b["acc"]
    assert sorted(p.name for p in (run_dir / "slices" / "split").glob("points-*")) == [
        "points-0-of-2.jsonl",
        "points-1-of-2.jsonl",
    ]


def test_a_killed_slice_resumes_from_its_finished_points(run_dir, monkeypatch):
    args = slice_args(run_dir, "--name", "killed", "--dims", "1", "--grid", "5")
    calls = []
    real = S.evaluate_point

    def dies_after_two(*a, **k):
        calls.append(1)
        if len(calls) > 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(S, "evaluate_point", dies_after_two)
    assert runner.invoke(app, args).exit_code == 130
    folder = run_dir / "slices" / "killed"
    assert len(slicing.done_points(folder)) == 2 and not (folder / "slice.json").exists()
    calls.clear()
    monkeypatch.setattr(S, "evaluate_point", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    assert runner.invoke(app, args).exit_code == 0
    assert len(calls) == 4  # the 3 points left and the centre, not the 2 already done
    whole = runner.invoke(app, [*args[:-4], "--name", "whole", "--dims", "1", "--grid", "5"])
    assert whole.exit_code == 0
    a = json.loads((folder / "slice.json").read_text())["loss"]
    assert a == json.loads((run_dir / "slices" / "whole" / "slice.json").read_text())["loss"]


def test_interpolation_from_initialisation_ends_at_the_run(run_dir):
    res = runner.invoke(
        app,
        slice_args(
            run_dir,
            "--name",
            "interp",
            "--directions",
            "interpolate",
            "--dims",
            "1",
            "--range",
            "0:1",
            "--bn",
            "checkpoint",
        ),
    )
    assert res.exit_code == 0, res.output
    out = json.loads((run_dir / "slices" / "interp" / "slice.json").read_text())
    assert out["about"]["from"] == "initialisation" and out["centre"]["coords"] == [1.0]
    assert out["loss"][-1] == pytest.approx(out["centre"]["loss"], rel=1e-6)


def test_hessian_and_pca_slices(run_dir, tmp_path):
    res = runner.invoke(
        app, slice_args(run_dir, "--name", "hess", "--directions", "hessian", "--dims", "1", "--bn", "train")
    )
    assert res.exit_code == 0, res.output
    out = json.loads((run_dir / "slices" / "hess" / "slice.json").read_text())
    assert len(out["about"]["eigenvalues"]) == 1
    # a trajectory: two earlier checkpoints made by perturbing the run's weights
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    paths = []
    for k in (1, 2):
        c = dict(ckpt)
        c["model"] = {n: v * (1 + 0.1 * k) if v.is_floating_point() else v for n, v in ckpt["model"].items()}
        torch.save(c, tmp_path / f"c{k}.pt")
        paths += ["--trajectory", str(tmp_path / f"c{k}.pt")]
    res = runner.invoke(app, slice_args(run_dir, "--name", "pca", "--directions", "pca", *paths))
    assert res.exit_code == 0, res.output
    out = json.loads((run_dir / "slices" / "pca" / "slice.json").read_text())
    assert len(out["about"]["trajectory"]) == 3 and sum(out["about"]["explained"]) == pytest.approx(1.0, abs=1e-6)
    # the report draws every slice of the run, the trajectory on the PCA plane among them
    from landscape.experiments import REGISTRY
    from landscape.report import build_report

    html = build_report([run_dir], tmp_path / "r.html", REGISTRY).read_text()
    assert "Loss-landscape slices of tiny (landscape slice)" in html and "Figure not drawn" not in html


@pytest.mark.parametrize(
    "args, message",
    [
        (["--grid", "0"], "at least 2"),
        (["--grid", "1000000000", "--dims", "2"], "at most 40,000"),
        (["--range", "1:-1"], "a < b"),
        (["--range", "x"], "a:b"),
        (["--subset", "-1"], "--subset"),
        (["--subset", "100000"], "more than the train split"),
        (["--bn", "eval"], "--bn must be"),
        (["--directions", "interpolate", "--dims", "2"], "--dims 1"),
        (["--directions", "pca"], "--trajectory"),
        (["--directions", "interpolate", "--dims", "1", "--to", "nowhere.pt"], "does not exist"),
    ],
)
def test_bad_slices_end_in_one_line(run_dir, args, message):
    before = tree_hash(run_dir)
    res = runner.invoke(app, ["slice", str(run_dir), "--name", "bad", *args])
    assert res.exit_code == 2, res.output
    assert message in res.output and res.output.count("\n") == 1
    assert tree_hash(run_dir) == before


def test_a_checkpoint_of_another_model_is_refused(run_dir, tmp_path):
    train(tiny_config(name="other", steps=2, model={"vgg": {"width": 0.125}}), out=tmp_path)
    before = tree_hash(run_dir)
    res = runner.invoke(
        app,
        [
            "slice",
            str(run_dir),
            "--name",
            "bad",
            "--directions",
            "interpolate",
            "--dims",
            "1",
            "--to",
            str(tmp_path / "other" / "checkpoint.pt"),
            "--grid",
            "3",
            "--subset",
            "8",
        ],
    )
    assert res.exit_code == 2 and "another model" in res.output, res.output
    assert tree_hash(run_dir) == before
    res = runner.invoke(app, ["slice", str(tmp_path / "missing")])
    assert res.exit_code == 2 and "does not exist" in res.output


def test_the_slices_experiment_slices_its_runs_once_and_judges_its_claims(tmp_path):
    from landscape.reproduce import run_experiment

    logs = []
    summary = run_experiment("slices", "smoke", 1, tmp_path, log=logs.append)
    assert [c["id"] for c in summary["claims"]] == [
        "slices.vgg.basin",
        "slices.vgg.standard.monotone",
        "slices.vgg.bn.monotone",
    ]
    assert all(c["per_seed"]["0"] is not None for c in summary["claims"])
    for net in ("standard", "bn"):
        for name in ("random-2d", "from-init"):
            assert (tmp_path / "runs" / f"vgg-{net}-lr0.1-s0" / "slices" / name / "slice.json").exists()
    assert sum("points to compute" in line for line in logs) == 4
    logs.clear()
    again = run_experiment("slices", "smoke", 1, tmp_path, log=logs.append)
    assert not any("points to compute" in line for line in logs)  # finished slices are not recomputed
    assert again["claims"] == summary["claims"]


def test_a_slice_finds_the_data_its_run_was_trained_from(tmp_path):
    """No --data-dir: the run's env.json names the folder it was trained from; another data set under --data-dir is
    refused by its fingerprint (never sliced on data the run did not see)."""
    from tests.conftest import make_image_tree

    make_image_tree(tmp_path / "data", per_class=3)
    make_image_tree(tmp_path / "other", per_class=3, seed=1)
    cfg = tiny_config(steps=4, model={"norm": "batch"}, data={"dataset": "cifar10", "batch_size": 8})
    train(cfg, out=tmp_path / "runs", data_dir=tmp_path / "data")
    run = tmp_path / "runs" / "tiny"
    res = runner.invoke(app, ["slice", str(run), "--dims", "1", "--grid", "3", "--subset", "16", "--batch-size", "8"])
    assert res.exit_code == 0, res.output
    assert "the folder the run was trained from" in res.output
    res = runner.invoke(
        app,
        [
            "slice",
            str(run),
            "--dims",
            "1",
            "--grid",
            "3",
            "--subset",
            "16",
            "--batch-size",
            "8",
            "--name",
            "x",
            "--data-dir",
            str(tmp_path / "other"),
        ],
    )
    assert res.exit_code == 2 and "not those it was trained on" in res.output
    assert not (run / "slices" / "x").exists()
