"""Reading what older releases wrote (landscape.probes.legacy): 0.2's settings, keywords, state and run
directories load, resume (bitwise where the kernels round as the fixture machine's did) and report."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from landscape.config import build_config
from landscape.experiments import REGISTRY
from landscape.probes import Monitor
from landscape.report import build_report
from landscape.results import read_run
from landscape.runs import Run
from landscape.train import train
from tests.conftest import ROOT

RELEASE = ROOT / "tests" / "data" / "release-0.2"  # made by tests/data/release-0.2/make.py with landscape 0.2


def test_legacy_flat_probe_settings_read_into_the_entries_options():
    cfg = build_config(
        [
            {
                "probes": {
                    "etas": [0.5, 1.0],
                    "sharpness_iters": 7,
                    "sharpness_tol": 0.002,
                    "trace_samples": 6,
                    "trace_method": "hutch++",
                    "activation_batch": 32,
                    "density_vectors": 3,
                    "density_steps": 9,
                    "warm_start": True,
                }
            }
        ]
    )
    p = cfg.probes
    assert p.gradient_sweep.etas == (0.5, 1.0) and p.activation_stats.batch == 32
    assert (p.sharpness.iters, p.sharpness.tol, p.sharpness.warm_start) == (7, 0.002, True)
    # 0.2 ran layer_sharpness with sharpness' budget and max(sharpness_tol, 1e-2): now said, not hidden
    assert (p.layer_sharpness.iters, p.layer_sharpness.tol) == (7, 0.01)
    assert (p.hessian_trace.samples, p.hessian_trace.method) == (6, "hutch++")
    assert (p.spectral_density.vectors, p.spectral_density.steps) == (3, 9)
    # the nested key given beside the flat one wins
    assert build_config([{"probes": {"sharpness_iters": 7, "sharpness": {"iters": 9}}}]).probes.sharpness.iters == 9
    # and 0.2's Monitor keywords
    model = torch.nn.Linear(2, 2)
    mon = Monitor(
        lambda r: None,
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        None,
        probes=["gradient_sweep", "sharpness"],
        etas=[0.01],
        sharpness_iters=3,
    )
    assert mon.options["gradient_sweep"].etas == (0.01,) and mon.options["gradient_sweep"].absolute
    assert mon.options["sharpness"].iters == 3
    with pytest.raises(TypeError, match="unexpected keyword"):
        Monitor(lambda r: None, model, torch.optim.SGD(model.parameters(), lr=0.1), None, sharpnes_iters=3)


def _weights_sha256(state: dict) -> str:
    """The fixture's own hash of a state dict (tests/data/release-0.2/make.py)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("release_fixture", RELEASE / "make.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.weights_sha256(state)


def _without_timing(records: list[dict]) -> list[dict]:
    out = []
    for r in records:
        r = {k: v for k, v in r.items() if k not in ("examples_per_s", "elapsed_s")}
        if "cost" in r:
            r["cost"] = {k: v for k, v in r["cost"].items() if k != "seconds"}
        out.append(r)
    return out


def _close(a, b, rel: float) -> bool:
    """The same structure, every number within ``rel`` of the other's (counts too: an activation crossing a
    histogram's bin edge moves one count to the next bin)."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_close(a[k], b[k], rel) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(_close(x, y, rel) for x, y in zip(a, b))
    number = (int, float)
    if isinstance(a, number) and isinstance(b, number) and not isinstance(a, bool) and not isinstance(b, bool):
        return abs(a - b) <= rel * max(abs(a), abs(b), 1e-12)
    return a == b


def test_a_run_directory_of_release_0_2_loads_resumes_and_reports(tmp_path):
    run_dir = tmp_path / "runs" / "run"
    shutil.copytree(RELEASE / "interrupted", run_dir)
    saved = Run(run_dir).config()  # 0.2's flat probe keys, read into the entries' options
    assert saved is not None and saved.probes.sharpness.iters == 5 and saved.probes.layer_sharpness.tol == 0.05
    assert saved.probes.gradient_sweep.etas == (0.5, 2.0) and saved.probes.sharpness.warm_start
    status = train(saved, out=tmp_path / "runs", resume=True)  # the same config: resume is allowed
    assert status["status"] == "done" and status["step"] == 12
    resumed = read_run(run_dir)
    assert not resumed.problems
    full = read_run(RELEASE / "full")
    env = json.loads((RELEASE / "full" / "env.json").read_text())
    here = {
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
    }
    weights = torch.load(run_dir / "checkpoint.pt", weights_only=True)["model"]
    # Bitwise needs this machine's kernels to round as the fixture's did (the same torch, capability and
    # threads are not enough: another CPU model differed by 6e-5). The canary: this release trained from
    # scratch here against 0.2's uninterrupted records. Where it differs, the resumed records must still
    # agree to float32 rounding carried over 6 steps: the losses to 1e-4, every other number to 5e-2 (a
    # BN layer's ICS_opti is the difference of two nearly equal gradients, which amplifies that rounding:
    # 1.7% on an AVX2 machine against the AVX-512 one that made the fixture).
    fresh = tmp_path / "fresh"
    train(saved, out=fresh)
    same_kernels = all(env.get(k) == v for k, v in here.items()) and _without_timing(
        read_run(fresh / saved.name).records
    ) == _without_timing(full.records)
    if same_kernels:  # records after the checkpoint were recomputed by this release: bitwise 0.2's
        assert _without_timing(resumed.records) == _without_timing(full.records)
        assert _weights_sha256(weights) == (RELEASE / "full" / "weights.sha256").read_text().strip()
    else:
        ours, theirs = _without_timing(resumed.records), _without_timing(full.records)
        assert _close(ours, theirs, rel=5e-2)
        losses = [(a.get("loss"), b.get("loss")) for a, b in zip(ours, theirs) if a["kind"] in ("train", "test")]
        assert losses and all(_close(a, b, rel=1e-4) for a, b in losses)
    html = build_report([tmp_path / "runs"], tmp_path / "report.html", REGISTRY).read_text()
    assert "Problems reading records" not in html and "Smoothness along the gradient" in html


def test_checkpoint_monitor_state_of_0_2_loads():
    state = torch.load(RELEASE / "interrupted" / "checkpoint.pt", weights_only=True)
    assert set(state["monitor"]) == {"previous_activations", "sharpness_vector"}
    model = torch.nn.Linear(2, 2)
    mon = Monitor(
        lambda r: None,
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        None,
        probes=["activation_stats", "sharpness"],
    )
    mon.load_state_dict(state["monitor"])
    assert mon.state["activation_stats"]["previous"] == state["monitor"]["previous_activations"]
    assert torch.equal(mon.state["sharpness"]["vector"], state["monitor"]["sharpness_vector"])
    assert set(mon.state_dict()["probes"]) == {"activation_stats", "sharpness"}
