"""The language-model recipe (landscape.recipes.lm): one process and FSDP2 over two (gloo) train on the same
batches and record the same probes; bad arguments end in one line."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytest.importorskip("torch.distributed.fsdp")

TINY = [
    "--steps",
    "4",
    "--every",
    "2",
    "--batch",
    "4",
    "--context",
    "16",
    "--dim",
    "16",
    "--heads",
    "2",
    "--iters",
    "6",
    "--log-every",
    "2",
    "--lr",
    "0.05",
]


def _lm(*args):
    return subprocess.run(
        [sys.executable, "-m", "landscape.recipes.lm", *args], cwd=ROOT, capture_output=True, text=True, timeout=600
    )


def _records(folder):
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_one_process_and_fsdp2_train_alike_and_the_figure_reads_both(tmp_path):
    one, fsdp = tmp_path / "one", tmp_path / "fsdp"
    a, b = _lm("train", "--out", str(one), *TINY), _lm("train", "--out", str(fsdp), "--procs", "2", *TINY)
    assert a.returncode == 0 and b.returncode == 0, (a.stderr[-2000:], b.stderr[-2000:])
    ra, rb = _records(one), _records(fsdp)
    train_a = [r["loss"] for r in ra if r["kind"] == "train"]
    train_b = [r["loss"] for r in rb if r["kind"] == "train"]
    assert len(train_a) == 2 and train_b == pytest.approx(train_a, rel=1e-4)  # float32: reduction order only
    crit = [
        [r["values"]["critical_sharpness"] for r in rs if r.get("probe") == "critical_sharpness"] for rs in (ra, rb)
    ]
    assert len(crit[0]) == 3 and None not in crit[0] and crit[1] == pytest.approx(crit[0], rel=1e-3)
    about = json.loads((fsdp / "recipe.json").read_text())
    assert about["fsdp"] and about["processes"] == 2 and len(about["text_sha256"]) == 64
    shown = _lm("figure", str(one), str(fsdp), "--png", str(tmp_path / "lm.png"))
    assert shown.returncode == 0 and (tmp_path / "lm.png").read_bytes()[:4] == b"\x89PNG"
    assert "| 1 process |" in shown.stdout and "| FSDP2 x 2 |" in shown.stdout


def test_bad_arguments_end_in_one_line(tmp_path):
    for args in (
        ["train", "--out", str(tmp_path / "x"), "--procs", "2", "--batch", "3"],
        ["train", "--out", str(tmp_path / "x"), "--lr", "0"],
        ["figure", str(tmp_path), "--png", str(tmp_path / "f.png")],
    ):
        res = _lm(*args)
        assert res.returncode == 2 and res.stderr.strip().splitlines()[-1].startswith("python -m landscape.recipes.lm")
        assert not (tmp_path / "x").exists()
