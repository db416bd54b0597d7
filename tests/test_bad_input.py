"""Bad input and faults, table-driven, across every command: each case ends with exit status
2 (130 for an interruption), exactly one line on stderr and no traceback, and leaves a
pre-existing run directory and results folder byte-for-byte unchanged."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from landscape.cli import app
from landscape.files import FolderLock
from tests.conftest import ROOT, make_batches_dir, make_image_tree

runner = CliRunner()
RAY = importlib.util.find_spec("ray") is not None  # the ray extra: pip install -e ".[ray]"

TINY = {
    "name": "existing",
    "steps": 4,
    "device": "cpu",
    "data": {"dataset": "synthetic", "batch_size": 8, "synthetic_size": 32},
    "model": {"vgg": {"width": 0.0625}},
    "log": {"train_every": 2, "eval_every": 2, "checkpoint_every": 2},
}


def tree_hash(root: Path) -> dict[str, str]:
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_symlink():
            out[str(p.relative_to(root))] = "link:" + os.readlink(p)
        elif p.is_file() and p.name != ".lock":
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


class Evil:
    """A pickle that would create a file if it were ever unpickled by a permissive loader."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    w = tmp_path_factory.mktemp("world")
    os.environ.setdefault("LANDSCAPE_CACHE", str(w / "cache"))
    (w / "c.yaml").write_text("# landscape train c.yaml\n" + yaml.safe_dump(TINY))
    res = runner.invoke(app, ["train", str(w / "c.yaml"), "--out", str(w / "runs"), "--no-progress"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["ics-distrib", "--preset", "smoke", "--out", str(w / "results")])
    assert res.exit_code == 0, res.output
    (w / "a_file").write_text("not a folder")
    (w / "mine").mkdir()
    (w / "mine" / "thesis.tex").write_text("a user's own file")
    (w / "mine" / "config.yaml").write_text("name: mine\n")
    os.symlink(w / "runs" / "existing", w / "linked")
    (w / "empty").mkdir()
    # data sets: crafted, truncated and one-class ones
    crafted = w / "crafted" / "cifar-10-batches-py"
    make_batches_dir(w / "crafted")
    with open(crafted / "data_batch_1", "wb") as f:
        pickle.dump({"data": Evil(str(w / "PWNED")), "labels": [0]}, f)
    make_batches_dir(w / "truncated")
    p = w / "truncated" / "cifar-10-batches-py" / "data_batch_2"
    p.write_bytes(p.read_bytes()[:100])
    make_image_tree(w / "oneclass", per_class=3, classes=("cat",))
    # checkpoints: corrupt, malicious, another width
    for name, content in (("corrupt", b"not a checkpoint"), ("malicious", pickle.dumps(Evil(str(w / "PWNED2"))))):
        shutil.copytree(w / "runs" / "existing", w / "ckpt" / name)
        (w / "ckpt" / name / "checkpoint.pt").write_bytes(content)
    shutil.copytree(w / "runs" / "existing", w / "ckpt" / "wide")
    wide = torch.load(w / "runs" / "existing" / "checkpoint.pt", weights_only=True)
    wide["model"] = {k: torch.cat([v, v]) if v.dim() else v for k, v in wide["model"].items()}
    torch.save(wide, w / "ckpt" / "wide" / "checkpoint.pt")
    shutil.copytree(w / "runs" / "existing", w / "ckpt" / "paused")
    mutations = {
        "meter_empty": lambda c: c.update(meter={}),
        "step_string": lambda c: c.update(step="2"),
        "step_negative": lambda c: c.update(step=-100),
        "step_beyond": lambda c: c.update(step=10**6),
        "rng_garbage": lambda c: c.update(rng={"cpu": torch.zeros(7, dtype=torch.uint8)}),
        "no_rng": lambda c: c.pop("rng"),
        "lr_override": lambda c: c["optimizer"]["param_groups"][0].update(lr=1e6),
        "plateau_later": lambda c: c.update(left_plateau_step=99),
    }
    for name, mutate in mutations.items():
        shutil.copytree(w / "runs" / "existing", w / "ckpt" / name)
        ckpt = torch.load(w / "runs" / "existing" / "checkpoint.pt", weights_only=True)
        mutate(ckpt)
        torch.save(ckpt, w / "ckpt" / name / "checkpoint.pt")
    for name in ("corrupt", "malicious", "wide", "paused", *mutations):
        (w / "ckpt" / name / "status.json").write_text('{"status": "running", "step": 2}')
        config = w / "ckpt" / name / "config.yaml"
        config.write_text(config.read_text().replace("name: existing", f"name: {name}"))
    levels = ["&a [x, x, x, x, x, x, x, x, x]"] + [
        f"&{c} [{', '.join([f'*{p}'] * 9)}]" for p, c in zip("abcdefgh", "bcdefghi")
    ]
    (w / "bomb.yaml").write_text("model:\n  norm: [" + ", ".join(levels) + "]\n")  # 9^9 leaves if expanded
    (w / "list.yaml").write_text("- 1\n- 2\n")
    for name, config in (
        ("depth-list", "- 1\n"),
        ("depth-nolr", "model: {arch: vgg, vgg: {depth: 11}, norm: none}\n"),
        ("depth-abc", "model: {arch: vgg, vgg: {depth: 11}, norm: none}\noptim: {lr: abc}\n"),
        ("depth-string", "model: vgg\noptim: {lr: 0.1}\n"),
    ):
        (w / "depthcal" / name).mkdir(parents=True)
        (w / "depthcal" / name / "config.yaml").write_text(config)
        (w / "depthcal" / name / "status.json").write_text('{"status": "done", "step": 3}')
    (w / "bad.yaml").write_text("model: {norm: [batch\n")
    return w


C = "{w}/c.yaml"
R = ["--out", "{w}/runs"]
E = ["--out", "{w}/results"]
CASES = {
    # train: files and config values
    "missing config": (["train", "{w}/nope.yaml", *R], "not found"),
    "config not YAML": (["train", "{w}/bad.yaml", *R], "not valid YAML"),
    "config a list": (["train", "{w}/list.yaml", *R], "must hold a mapping"),
    "YAML alias bomb": (["train", "{w}/bomb.yaml", *R], "model.norm"),
    "unknown key": (["train", C, *R, "--set", "optim.lrr=1"], "did you mean 'optim.lr'"),
    "set without =": (["train", C, *R, "--set", "optim.lr"], "key=value"),
    "wrong type": (["train", C, *R, "--set", "optim.lr=abc"], "expects a number"),
    "lr NaN": (["train", C, *R, "--set", "optim.lr=.nan"], "finite"),
    "lr inf": (["train", C, *R, "--set", "optim.lr=.inf"], "finite"),
    "lr 1e308": (["train", C, *R, "--set", "optim.lr=1e308"], "'optim.lr' must be at most 1e+09"),
    "lr negative": (["train", C, *R, "--set", "optim.lr=-0.1"], "'optim.lr' must be positive"),
    "momentum NaN": (["train", C, *R, "--set", "optim.momentum=.nan"], "finite"),
    "momentum 1.5": (["train", C, *R, "--set", "optim.momentum=1.5"], "momentum"),
    "noise range NaN": (["train", C, *R, "--set", "model.noise.mean_range=[.nan, 1]"], "finite"),
    "noise range reversed": (["train", C, *R, "--set", "model.noise.scale_range=[2, 1]"], "low <= high"),
    "negative sharpness_tol (0.2's key)": (
        ["train", C, *R, "--set", "probes.sharpness_tol=-1"],
        "probes.sharpness: tol must be in (0, 1)",
    ),
    "negative sharpness tol": (["train", C, *R, "--set", "probes.sharpness.tol=-1"], "probes.sharpness: tol"),
    "trace samples too few": (["train", C, *R, "--set", "probes.hessian_trace.samples=1"], "probes.hessian_trace"),
    "unknown probe option": (["train", C, *R, "--set", "probes.sharpness.nope=1"], "probes.sharpness.iters"),
    "probe steps [0, -5]": (["train", C, *R, "--set", "probes.steps=[0,-5]"], "probes.steps"),
    "negative steps": (["train", C, *R, "--set", "steps=-3"], "must be positive"),
    "negative batch": (["train", C, *R, "--set", "data.batch_size=-1"], ">= 0"),
    "zero width": (["train", C, *R, "--set", "model.vgg.width=0"], "model.vgg.width"),
    "vgg depth 12": (["train", C, *R, "--set", "model.vgg.depth=12"], "model.vgg.depth"),
    "unknown norm": (["train", C, *R, "--set", "model.norm=group"], "model.norm"),
    "unknown probe": (["train", C, *R, "--set", "probes.enabled=[nope]"], "unknown probe"),
    "list schedule without steps": (
        ["train", C, *R, "--set", "probes.enabled=[sharpness]", "--set", "probes.schedule=list"],
        "probes.steps",
    ),
    "dln on images": (["train", C, *R, "--name", "x", "--set", "model.arch=dln"], "does not fit"),
    "regression loss on a classifier": (["train", C, *R, "--name", "x", "--set", "loss=mse"], "does not fit"),
    "name with a slash": (["train", C, *R, "--name", "a/b"], "directory name of at most 200 bytes"),
    "name too long": (["train", C, *R, "--name", "n" * 300], "directory name of at most 200 bytes"),
    "unknown device": (["train", C, *R, "--device", "quantum"], "unknown device"),
    # train: data
    "data dir missing": (
        ["train", C, *R, "--name", "x", "--set", "data.dataset=cifar10", "--data-dir", "{w}/nope"],
        "does not exist",
    ),
    "data dir empty": (
        ["train", C, *R, "--name", "x", "--set", "data.dataset=cifar10", "--data-dir", "{w}/empty"],
        "no CIFAR-10 found",
    ),
    "crafted pickle": (
        ["train", C, *R, "--name", "x", "--set", "data.dataset=cifar10", "--data-dir", "{w}/crafted"],
        "refused to load",
    ),
    "truncated batch": (
        ["train", C, *R, "--name", "x", "--set", "data.dataset=cifar10", "--data-dir", "{w}/truncated"],
        "unreadable",
    ),
    "one class": (
        ["train", C, *R, "--name", "x", "--set", "data.dataset=cifar10", "--data-dir", "{w}/oneclass"],
        "at least 2",
    ),
    "folder without data dir": (["train", C, *R, "--name", "x", "--set", "data.dataset=folder"], "needs --data-dir"),
    "folder without splits": (
        ["train", C, *R, "--name", "x", "--set", "data.dataset=folder", "--data-dir", "{w}/empty"],
        "no train/ and test/",
    ),
    "image size 8": (["train", C, *R, "--name", "x", "--set", "data.image_size=8"], "data.image_size"),
    "unknown dataset": (["train", C, *R, "--name", "x", "--set", "data.dataset=imagenet"], "data.dataset"),
    "unknown output": (
        ["train", C, *R, "--name", "x", "--output", "csv"],
        "'outputs' must be one of tensorboard, wandb",
    ),
    # train: existing runs
    "resume and force": (["train", C, *R, "--resume", "--force"], "contradict"),
    "run exists": (["train", C, *R], "already exists"),
    "resume another config": (["train", C, *R, "--resume", "--set", "optim.lr=0.3"], "different config"),
    "force on a user's folder": (["train", C, "--out", "{w}", "--name", "mine", "--force"], "not one"),
    "force with unknown layer": (["train", C, *R, "--force", "--set", "probes.layers=[nope]"], "probes.layers"),
    "force with a regression loss": (["train", C, *R, "--force", "--set", "loss=mse"], "does not fit"),
    "force on a symlinked run": (["train", C, "--out", "{w}", "--name", "linked", "--force"], "symbolic link"),
    "force with missing data": (
        ["train", C, *R, "--force", "--set", "data.dataset=cifar10", "--data-dir", "{w}/nope"],
        "does not exist",
    ),
    "corrupt checkpoint": (["train", C, "--out", "{w}/ckpt", "--name", "corrupt", "--resume"], "unreadable"),
    "malicious checkpoint": (["train", C, "--out", "{w}/ckpt", "--name", "malicious", "--resume"], "unreadable"),
    "checkpoint of another width": (
        ["train", C, "--out", "{w}/ckpt", "--name", "wide", "--resume"],
        "does not fit its config",
    ),
    **{
        f"checkpoint {name}": (["train", C, "--out", "{w}/ckpt", "--name", name, "--resume"], why)
        for name, why in (
            ("meter_empty", "train meter"),
            ("step_string", "is not a step"),
            ("step_negative", "is not a step"),
            ("step_beyond", "is not a step"),
            ("rng_garbage", "random-number state"),
            ("no_rng", "lacks rng"),
            ("lr_override", "optimizer's lr is 1000000.0, the config's is 0.1"),
            ("plateau_later", "left_plateau_step"),
        )
    },
    "out is a file": (["train", C, "--out", "{w}/a_file"], "a_file"),
    "out under a file": (["train", C, "--out", "{w}/a_file/sub"], "a_file"),
    "run is being written": (
        ["train", C, "--out", "{w}/ckpt", "--name", "paused", "--resume"],
        "being written by process",
    ),
    # experiments and reproduce
    "unknown preset": (["norms", "--preset", "gigantic", *E], "unknown preset"),
    "zero seeds": (["norms", "--preset", "smoke", "--seeds", "0", *E], "--seeds"),
    "a billion seeds": (["reproduce", "--preset", "smoke", "--seeds", "1000000000", *E], "--seeds"),
    "negative first seed": (["smoothness", "--preset", "smoke", "--first-seed", "-3", *E], "--first-seed"),
    "set name on an experiment": (["ics-distrib", "--preset", "smoke", *E, "--set", "name=x"], "--set name"),
    "set seed on an experiment": (["ics-distrib", "--preset", "smoke", *E, "--set", "seed=3"], "--set seed"),
    "experiment unknown key": (["smoothness", "--preset", "smoke", *E, "--set", "optim.nope=1"], "valid keys: optim"),
    "experiment NaN lr": (["ics-distrib", "--preset", "smoke", *E, "--set", "optim.lr=.nan"], "finite"),
    "experiment another config": (
        ["ics-distrib", "--preset", "smoke", *E, "--set", "optim.momentum=0.5"],
        "different config",
    ),
    "reproduce bad device": (["reproduce", "--preset", "smoke", *E, "--device", "foo"], "unknown device"),
    # an experiment's --set of what it varies would mislabel every result (issue 39)
    "eos-gd set the lr it varies": (["eos-gd", "--preset", "smoke", *E, "--set", "optim.lr=0.3"], "varies"),
    "width set the width it varies": (["width", "--preset", "smoke", *E, "--set", "model.vgg.width=0.5"], "varies"),
    "width set 0.3's flat width": (["width", "--preset", "smoke", *E, "--set", "model.width=0.5"], "varies"),
    "eos-sgd set its batch size": (["eos-sgd", "--preset", "smoke", *E, "--set", "data.batch_size=64"], "varies"),
    "eos-adam set another optimizer": (["eos-adam", "--preset", "smoke", *E, "--set", "optim.name=sgd"], "varies"),
    "smoothness set the norm": (["smoothness", "--preset", "smoke", *E, "--set", "model.norm=batch"], "varies"),
    # probe options that would allocate terabytes or loop for hours
    "slice probe of a million points": (["train", C, *R, "--set", "probes.loss_slice.points=1000000"], "points"),
    "slice probe radius 1e300": (["train", C, *R, "--set", "probes.loss_slice.radius=1e300"], "radius"),
    "a billion trace samples": (["train", C, *R, "--set", "probes.hessian_trace.samples=1000000000"], "samples"),
    "a billion edge products": (
        ["train", C, *R, "--set", "probes.edge_eigenvalues.max_products=1000000000"],
        "max_products",
    ),
    "edge min above max": (
        [
            "train",
            C,
            *R,
            "--set",
            "probes.edge_eigenvalues.min_products=300",
            "--set",
            "probes.edge_eigenvalues.max_products=200",
        ],
        "min_products",
    ),
    "sharpness raw of 0.3": (["train", C, *R, "--set", "probes.sharpness.raw=true"], "preconditioned_sharpness"),
    # depth calibration on runs that are not the depth experiment's
    "calibration of runs without a depth": (["depth-calibration", "{w}/depthcal"], "not a depth calibration run"),
    # report figures
    "report figures into a run it reads": (
        ["report", "{w}/runs", "-o", "{w}/r.html", "--figures", "{w}/runs/existing/figs"],
        "which it reads",
    ),
    "report figures where -o is": (["report", "{w}/runs", "-o", "{w}/same", "--figures", "{w}/same"], "own -o"),
    # Ray addresses: one line within a bounded wait, never a hang or a traceback (without Ray installed, the one
    # line says to install it: the address is read by Ray)
    "ray address of a closed port": (
        ["norms", "--preset", "smoke", *E, "--launcher", "ray", "--address", "127.0.0.1:9"],
        "nothing answers there" if RAY else "needs Ray: pip install",
    ),
    "ray address malformed": (
        ["norms", "--preset", "smoke", *E, "--launcher", "ray", "--address", "not an address"],
        "is not a Ray address" if RAY else "needs Ray: pip install",
    ),
    "reproduce missing data dir": (
        ["reproduce", "--preset", "smoke", *E, "--data-dir", "/nonexistent"],
        "does not exist",
    ),
    "unknown launcher": (["norms", "--preset", "smoke", *E, "--launcher", "slurm"], "--launcher"),
    "address without ray": (["norms", "--preset", "smoke", *E, "--address", "auto"], "--address needs"),
    "zero cpus per run": (["norms", "--preset", "smoke", *E, "--cpus-per-run", "0"], "--cpus-per-run"),
    "NaN cpus per run": (["norms", "--preset", "smoke", *E, "--cpus-per-run", "nan"], "--cpus-per-run"),
    "negative gpus": (["norms", "--preset", "smoke", *E, "--gpus-per-run", "-1"], "--gpus-per-run"),
    "experiment out is a file": (["norms", "--preset", "smoke", "--out", "{w}/a_file"], "a_file"),
    "results are being written": (["ics-distrib", "--preset", "smoke", *E], "being written by process"),
    # report
    "report missing path": (["report", "{w}/nowhere", "-o", "{w}/r.html"], "does not exist"),
    "report empty folder": (["report", "{w}/empty", "-o", "{w}/r.html"], "no runs"),
    "report output is a folder": (["report", "{w}/runs", "-o", "{w}/empty"], "empty"),
    "report output under a file": (["report", "{w}/runs", "-o", "{w}/a_file/r.html"], "a_file"),
    "report over a run's records": (["report", "{w}/runs", "-o", "{w}/runs/existing/metrics.jsonl"], "which it reads"),
    "report over a summary": (
        ["report", "{w}/results", "-o", "{w}/results/ics-distrib/summary.json"],
        "which it reads",
    ),
    "report inside a results run": (
        ["report", "{w}/results", "-o", "{w}/results/runs/vgg-bn-lr0.1-s0/r.html"],
        "which it reads",
    ),
    # export
    "export unknown format": (["export", "{w}/runs", "--to", "csv", "--out", "{w}/tb"], "--to must be"),
    "export missing path": (["export", "{w}/nowhere", "--to", "tensorboard", "--out", "{w}/tb"], "does not exist"),
    "export out is a file": (["export", "{w}/runs", "--to", "tensorboard", "--out", "{w}/a_file"], "a_file"),
    "export into the run": (
        ["export", "{w}/runs/existing", "--to", "tensorboard", "--out", "{w}/runs/existing"],
        "which it reads",
    ),
    "export into the runs folder": (
        ["export", "{w}/runs/existing", "--to", "tensorboard", "--out", "{w}/runs"],
        "which it reads",
    ),
    "export inside a results run": (
        ["export", "{w}/results", "--to", "tensorboard", "--out", "{w}/results/runs/vgg-bn-lr0.1-s0/tb"],
        "which it reads",
    ),
    "export over a user's folder": (["export", "{w}/runs", "--to", "tensorboard", "--out", "{w}"], "which it reads"),
    "name with a newline": (["train", C, *R, "--name", "a\nb"], "printable"),
}
LOCKED = {"run is being written": "ckpt/paused", "results are being written": "results"}


@pytest.mark.parametrize("case", CASES)
def test_bad_input_ends_in_one_line_and_changes_nothing(world, case):
    args, message = CASES[case]
    args = [a.format(w=world) for a in args]
    before = tree_hash(world)
    lock = FolderLock(world / LOCKED[case]).acquire() if case in LOCKED else None
    try:
        res = runner.invoke(app, args)
    finally:
        if lock:
            lock.release()
    assert res.exit_code == 2, (res.output, res.exception)
    assert isinstance(res.exception, SystemExit) or res.exception is None, res.exception
    err = res.stderr
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "Traceback" not in res.output and len(err) < 2000, err
    assert message in err, err
    assert tree_hash(world) == before
    assert not (world / "PWNED").exists() and not (world / "PWNED2").exists()


USAGE = {
    "unknown option": (["train", "x.yaml", "--bogus"], "No such option: --bogus"),
    "seeds not a number": (["norms", "--seeds", "abc"], "Invalid value for '--seeds'"),
    "unknown command": (["nonsense"], "No such command 'nonsense'"),
    "missing argument": (["report"], "Missing argument 'paths'"),
}


@pytest.mark.parametrize("case", USAGE)
def test_usage_errors_of_the_installed_command_are_one_line(case):
    args, message = USAGE[case]
    res = subprocess.run(
        [sys.executable, "-m", "landscape", *args], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert res.returncode == 2
    assert res.stderr.startswith("error: ") and message in res.stderr and res.stderr.count("\n") == 1
    assert "--help" in res.stderr


def test_depth_calibration_refuses_a_missing_folder_or_one_without_depth_runs(tmp_path):
    for args, says in (
        (["depth-calibration", str(tmp_path / "missing")], "is not a folder"),
        (["depth-calibration", str(tmp_path)], "no depth runs"),
    ):
        result = runner.invoke(app, args)
        assert result.exit_code == 2 and says in result.output and len(result.output.strip().splitlines()) == 1
