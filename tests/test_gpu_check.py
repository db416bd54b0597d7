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
