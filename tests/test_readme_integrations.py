"""The docs' Lightning, Hugging Face, TensorBoard and probe-entry examples, executed as written."""

import pytest

from landscape.runs import read_metrics
from tests.conftest import doc_block


def run_block(first_line, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "offline")
    code, page = doc_block(first_line)
    exec(compile(code, page, "exec"), {})


def probes_in(path):
    return {(r["probe"], r["step"]) for r in read_metrics(path / "metrics.jsonl") if r["kind"] == "probe"}


def test_the_readme_lightning_example_runs(tmp_path, monkeypatch):
    pytest.importorskip("lightning")
    run_block("import lightning as L", tmp_path, monkeypatch)
    assert probes_in(tmp_path / "runs" / "small_cnn") == {
        (p, s) for p in ("gradient_sweep", "ics_opti", "sharpness") for s in (1, 10, 20, 30)
    }
    assert list((tmp_path / "tb_logs").rglob("events.out.tfevents.*"))


def test_the_readme_hf_example_runs(tmp_path, monkeypatch):
    pytest.importorskip("transformers")
    run_block("import torch, transformers", tmp_path, monkeypatch)
    assert probes_in(tmp_path / "runs" / "tiny_bert") == {
        (p, s) for p in ("gradient_sweep", "ics_opti") for s in (1, 5, 10, 15, 20)
    }
    assert list((tmp_path / "hf_out" / "runs" / "landscape").glob("events.out.tfevents.*"))


def test_the_readme_tensorboard_example_runs(tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_block("import torch\nfrom landscape.outputs import TensorBoard", tmp_path, monkeypatch)
    acc = EventAccumulator(str(tmp_path / "runs" / "mlp" / "tensorboard"))
    acc.Reload()
    # Adam has no preconditioner before its first step: step 1's sharpness is recorded as null, not drawn
    assert [e.step for e in acc.Scalars("landscape/sharpness")] == [5, 10, 15, 20]
    assert "landscape/sharpness_threshold" in acc.Tags()["scalars"]


def test_the_docs_probe_entry_example_runs(tmp_path, monkeypatch, capsys):
    from landscape.probes import registry

    try:
        run_block("from dataclasses import dataclass", tmp_path, monkeypatch)
        assert "weight_norm" in registry.REGISTRY
    finally:
        registry.unregister("weight_norm")
    printed = capsys.readouterr().out
    assert printed.startswith("[(1, ") and "(5, " in printed and "(10, " in printed
