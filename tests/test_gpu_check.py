"""benchmarks/gpu_check.py is ready the day a GPU is lent: its dry run (the CPU, tiny sizes) goes through every
section and writes the JSON and the Markdown tables it promises."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parent.parent / "benchmarks" / "gpu_check.py"


@pytest.mark.slow
def test_the_gpu_check_dry_run_goes_through_every_section(tmp_path):
    res = subprocess.run(
        [sys.executable, str(SCRIPT), "--dry-run", "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert not [k for k, v in report.items() if isinstance(v, dict) and "error" in v]
    probes = report["probes on the device"]["result"]
    assert len(probes) >= 18 and all(p["ran"] and p["numbers"] > 0 for p in probes.values()), probes
    paper = report["paper preset"]["result"]
    assert {"vgg-none", "vgg-batch", "dln-none"} <= set(paper["kinds"]) and paper["projected_seconds"] > 0
    for kind in paper["kinds"].values():  # each kind's projection covers its full schedule, not the slice timed
        assert kind["probe_events_full"] >= kind["probe_events_timed"] >= 1
        assert kind["projected_seconds_per_run"] > kind["seconds_per_step"] * kind["steps_timed"]
    timings = report["timings"]["result"]
    assert timings["trainer_over_bare_loop"]["median"] > 0 and timings["hvp_over_gradient"]["ratio"] > 0
    assert report["host syncs"]["result"]["applies"] is False  # CUDA's sync debug mode: not on a CPU
    md = (tmp_path / "out" / "gpu_check.md").read_text()
    assert "| probe |" in md and "Projected reproduce wall time" in md and "trainer / bare loop" in md


def test_each_kind_is_timed_on_its_most_probed_run_and_a_run_without_probes_projects_none(monkeypatch):
    """A kind (architecture and norm) mixes runs with every probe (lr 0.1) and none (lr 0.5, Figure 1's curves): the
    probed run is the one timed, and the projection counts no probe events for the other."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    kinds = gpu_check.paper_kinds("paper")
    for kind in ("vgg-none", "vgg-batch"):
        first, second = kinds[kind]
        assert first.lr == 0.1 and first.cfg.probes.enabled and second.lr == 0.5 and not second.cfg.probes.enabled
    times = {"setup": 1.0, "training steps": 2.0, "probe: sharpness": 5.0, "evaluation": 0.0}
    monkeypatch.setattr(gpu_check, "paper_kinds", lambda name: {"vgg-none": kinds["vgg-none"]})
    monkeypatch.setattr(gpu_check, "load_data", lambda data, data_dir: None)
    monkeypatch.setattr(gpu_check, "time_run", lambda spec, data_dir, splits: times)
    out = gpu_check.paper_preset("cpu", None, 100, "paper")["kinds"]["vgg-none"]
    total = kinds["vgg-none"][0].cfg.steps
    events = len(gpu_check.scheduled(kinds["vgg-none"][0].cfg, total))
    timed_events = out["probe_events_timed"]
    expected = [1.0 + total * 2.0 / 100 + events * 5.0 / timed_events, 1.0 + total * 2.0 / 100]
    assert out["projected_seconds"] == pytest.approx(sum(expected), rel=1e-9)
