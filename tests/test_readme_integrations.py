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
    # sharpness is the raw Hessian's whatever the optimizer: recorded from step 1 (only preconditioned_sharpness
    # waits for Adam's first step)
    assert [e.step for e in acc.Scalars("landscape/sharpness")] == [1, 5, 10, 15, 20]
    assert [e.step for e in acc.Scalars("landscape/preconditioned_sharpness")] == [5, 10, 15, 20]
    assert "landscape/preconditioned_threshold" in acc.Tags()["scalars"]  # Adam's threshold bounds P^-1 H


def test_the_docs_probe_entry_example_runs(tmp_path, monkeypatch, capsys):
    from landscape.probes import registry

    try:
        run_block("from dataclasses import dataclass", tmp_path, monkeypatch)
        assert "weight_norm" in registry.REGISTRY
    finally:
        registry.unregister("weight_norm")
    printed = capsys.readouterr().out
    assert printed.startswith("[(1, ") and "(5, " in printed and "(10, " in printed


def test_the_your_model_language_model_recipe_runs(tmp_path, monkeypatch):
    pytest.importorskip("transformers")
    run_block("# a causal language model from Hugging Face", tmp_path, monkeypatch)
    from landscape.results import read_run

    run = read_run(tmp_path / "runs" / "gpt2")
    assert not run.problems and run.state == "done"
    assert {p for p, _ in probes_in(tmp_path / "runs" / "gpt2")} == {
        "gradient_sweep",
        "ics_opti",
        "sharpness",
        "preconditioned_sharpness",
    }
    assert run.probe("ics_opti")[0]["values"]["layers"][0] == "transformer.wte"


def test_the_your_model_compile_recipe_runs(tmp_path, monkeypatch):
    run_block("# torch.compile: train the compiled model", tmp_path, monkeypatch)
    assert probes_in(tmp_path / "runs" / "compiled") == {
        (p, s) for p in ("gradient_sweep", "sharpness") for s in (1, 5, 10)
    }


def test_the_your_model_accumulation_recipe_gives_the_whole_batchs_numbers(tmp_path, monkeypatch):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no loss passed: nothing to check, nothing to say
        run_block("# gradient accumulation and clipping", tmp_path, monkeypatch)
    assert probes_in(tmp_path / "runs" / "accumulate") == {("gradient_sweep", s) for s in (1, 5, 10)}


def test_the_your_model_lightning_recipe_runs(tmp_path, monkeypatch):
    pytest.importorskip("lightning")
    run_block("# Lightning: the callback attaches", tmp_path, monkeypatch)
    assert probes_in(tmp_path / "runs" / "lightning") == {
        (p, s) for p in ("gradient_sweep", "ics_opti") for s in (1, 5, 10)
    }


def test_the_scale_page_example_runs_as_written(tmp_path, monkeypatch):
    run_block("# the Monitor's keywords for scale", tmp_path, monkeypatch)
    assert probes_in(tmp_path / "runs" / "scale") == {
        (p, s) for p in ("sharpness", "gradient_sweep") for s in (1, 5, 10)
    }
