import json

import pytest
import torch
from typer.testing import CliRunner

import landscape.experiments as ex
from cli import app
from landscape.data import Batches, load_splits
from landscape.errors import UserError
from landscape.results import read_run
from landscape.stats import mean_ci, verdict

runner = CliRunner()


def smoke():
    return ex.load_preset("smoke")


@pytest.mark.parametrize("experiment, expected", [
    ("train-compare", {f"vgg-{n}-lr{lr}-s{s}" for n in ("standard", "bn") for lr in ("0.1", "0.5") for s in (0, 1)}),
    ("ics-distrib", {f"vgg-{n}-lr0.1-s{s}" for n in ("standard", "bn", "noisy_bn") for s in (0, 1)}),
    ("ics-opti", {f"vgg-{n}-lr0.1-s{s}" for n in ("standard", "bn") for s in (0, 1)}
     | {f"dln-{n}-lr1e-06-s{s}" for n in ("standard", "bn") for s in (0, 1)}),
    ("smoothness", {f"vgg-{n}-lr0.1-s{s}" for n in ("standard", "bn") for s in (0, 1)}
     | {f"dln-{n}-lr1e-06-s{s}" for n in ("standard", "bn") for s in (0, 1)}),
    ("norms", {f"vgg-{n}-lr0.1-s{s}" for n in ("standard", "bn", "l1", "l2", "linf") for s in (0, 1)}),
])
def test_each_experiment_builds_its_documented_runs(experiment, expected):
    specs = ex.plan(experiment, smoke(), [0, 1])
    assert {s.name for s in specs} == expected
    for s in specs:
        assert s.cfg.name == s.name and s.cfg.optim.lr == s.lr
        assert s.cfg.model.norm == (ex.VGG_NORMS if s.arch == "vgg" else ex.DLN_NORMS)[s.net]


def test_compared_runs_are_paired():
    specs = ex.plan("norms", smoke(), [0, 1])
    splits = load_splits("synthetic", None, synthetic_size=64)
    for seed in (0, 1):
        group = [s for s in specs if s.seed == seed]
        orders = [[Batches(splits["train"], s.cfg.data.batch_size, s.cfg.data_seed).indices(t).tolist()
                   for t in range(6)] for s in group]
        assert all(o == orders[0] for o in orders)
        assert len({(s.cfg.seed, s.cfg.data_seed, s.cfg.noise_seed) for s in group}) == 1
    a = Batches(splits["train"], 16, specs[0].cfg.data_seed).indices(0)
    b = Batches(splits["train"], 16, [s for s in specs if s.seed == 1][0].cfg.data_seed).indices(0)
    assert not torch.equal(a, b)


def test_overrides_apply_to_every_run_and_bad_ones_stop_before_work(tmp_path):
    specs = ex.plan("ics-distrib", smoke(), [0], [{"optim": {"momentum": 0.9}}])
    assert all(s.cfg.optim.momentum == 0.9 for s in specs)
    with pytest.raises(UserError, match="unknown preset"):
        ex.run_experiment("norms", "huge", 1, tmp_path)
    with pytest.raises(UserError, match="valid keys"):
        ex.run_experiment("norms", "smoke", 1, tmp_path, overrides=["optim.nope=1"])
    with pytest.raises(UserError, match="at least 1"):
        ex.run_experiment("norms", "smoke", 0, tmp_path)
    assert not (tmp_path / "runs").exists()


def test_skip_and_resume(tmp_path, monkeypatch):
    from landscape.runs import Run

    logs = []
    ex.run_experiment("ics-distrib", "smoke", 1, tmp_path, log=logs.append)
    before = {p.name: (p / "metrics.jsonl").read_text() for p in (tmp_path / "runs").iterdir()}
    logs.clear()
    ex.run_experiment("ics-distrib", "smoke", 1, tmp_path, log=logs.append)
    assert all("skipped" in line for line in logs) and len(logs) == 3
    assert before == {p.name: (p / "metrics.jsonl").read_text() for p in (tmp_path / "runs").iterdir()}

    # interrupt one run of a new experiment mid-way, then re-run: only the missing work is done
    real_log = Run.log

    def dying(self, record):
        real_log(self, record)
        if self.path.name == "vgg-l1-lr0.1-s0" and record["kind"] == "train" and record["step"] == 4:
            raise KeyboardInterrupt

    monkeypatch.setattr(Run, "log", dying)
    with pytest.raises(KeyboardInterrupt):
        ex.run_experiment("norms", "smoke", 1, tmp_path, log=logs.append)
    monkeypatch.setattr(Run, "log", real_log)
    assert read_run(tmp_path / "runs" / "vgg-l1-lr0.1-s0").state == "failed"
    logs.clear()
    summary = ex.run_experiment("norms", "smoke", 1, tmp_path, log=logs.append)
    skipped = [line for line in logs if "skipped" in line]
    assert len(skipped) == 2  # standard and BN, shared with ics-distrib
    assert all(r["status"] == "done" for r in summary["runs"].values())
    steps = [r["step"] for r in read_run(tmp_path / "runs" / "vgg-l1-lr0.1-s0").kind("train")]
    assert steps == [2, 4, 6]  # resumed from the checkpoint at 3, no record lost or duplicated


def test_a_different_preset_or_override_never_reuses_or_clobbers_runs(tmp_path):
    ex.run_experiment("ics-distrib", "smoke", 1, tmp_path, log=lambda s: None)
    with pytest.raises(UserError, match="different config"):
        ex.run_experiment("ics-distrib", "smoke", 1, tmp_path, overrides=["optim.momentum=0.5"], log=lambda s: None)


def test_seed_aggregation_matches_a_hand_computation():
    agg = mean_ci([1.0, 2.0, 3.0, 4.0])
    # mean 2.5, sample sd sqrt(5/3), t_{0.975, 3} = 3.182446305284263
    half = 3.182446305284263 * (5 / 3) ** 0.5 / 2
    assert agg["mean"] == 2.5 and agg["n"] == 4
    assert agg["ci"] == pytest.approx([2.5 - half, 2.5 + half], rel=1e-12)
    assert mean_ci([3.0])["ci"] is None and mean_ci([None, float("nan")])["mean"] is None
    assert verdict({"mean": 2.5, "ci": [0.5, 4.5]}, 0.0) == "reproduced"
    assert verdict({"mean": 2.5, "ci": [-0.5, 4.5]}, 0.0) == "inconclusive"
    assert verdict({"mean": -2.0, "ci": [-3.0, -1.0]}, 0.0) == "not reproduced"
    assert verdict({"mean": -2.0, "ci": None}, 0.0, above=False) == "reproduced"


def test_diverged_and_failed_runs_are_results_not_crashes(tmp_path, monkeypatch):
    presets = tmp_path / "configs" / "presets"
    presets.mkdir(parents=True)
    text = (ex.CONFIGS / "presets" / "smoke.yaml").read_text().replace("lrs: [0.1, 0.5]", "lrs: [0.1, 100000.0]")
    (presets / "smoke.yaml").write_text(text)
    (tmp_path / "configs" / "dln.yaml").write_text((ex.CONFIGS / "dln.yaml").read_text())
    monkeypatch.setattr(ex, "CONFIGS", tmp_path / "configs")

    import landscape.train as train_mod

    real_train = train_mod.train

    def flaky(cfg, **kw):
        if cfg.name == "vgg-bn-lr0.1-s0":
            raise RuntimeError("simulated out-of-memory")
        return real_train(cfg, **kw)

    monkeypatch.setattr(train_mod, "train", flaky)
    summary = ex.run_experiment("train-compare", "smoke", 1, tmp_path / "out", log=lambda s: None)
    runs = summary["runs"]
    assert runs["vgg-standard-lr100000-s0"]["status"] == "diverged"
    assert runs["vgg-standard-lr100000-s0"]["diverged_step"] >= 1
    assert runs["vgg-bn-lr0.1-s0"]["status"] == "missing"  # raised before creating its directory
    assert runs["vgg-standard-lr0.1-s0"]["status"] == "done"
    saved = json.loads((tmp_path / "out" / "train-compare" / "summary.json").read_text())
    assert saved["runs"]["vgg-standard-lr100000-s0"]["status_text"].startswith("diverged at step")
    claim = next(c for c in saved["claims"] if c["id"] == "fig1.bn_trains_better.lr100000")
    assert claim["verdict"] in ("reproduced", "not reproduced", "inconclusive")


@pytest.mark.parametrize("command", ["train-compare", "ics-distrib", "ics-opti", "smoothness", "norms"])
def test_experiment_commands_through_the_cli(tmp_path, command):
    res = runner.invoke(app, [command, "--preset", "smoke", "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / command / "summary.json").read_text())
    assert summary["claims"] and all(c["verdict"] in ("reproduced", "not reproduced", "inconclusive")
                                     for c in summary["claims"])
    assert all(c["claim"] in res.output for c in summary["claims"])


def test_experiment_bad_input_is_one_line(tmp_path):
    res = runner.invoke(app, ["norms", "--preset", "gigantic", "--out", str(tmp_path)])
    assert res.exit_code == 2 and res.stderr.startswith("error: unknown preset")
    res = runner.invoke(app, ["norms", "--preset", "smoke", "--seeds", "0", "--out", str(tmp_path)])
    assert res.exit_code == 2 and "--seeds" in res.stderr


@pytest.mark.parametrize("preset", ex.PRESETS)
def test_every_shipped_preset_builds_every_experiment(preset):
    path = ex.CONFIGS / "presets" / f"{preset}.yaml"
    assert path.read_text().startswith("# landscape reproduce --preset " + preset)
    p = ex.load_preset(preset)
    for experiment in ex.EXPERIMENTS:
        specs = ex.plan(experiment, p, [0, 1])
        assert specs and all(s.cfg.probes.enabled for s in specs)
    if preset == "paper":  # PAPER.md's protocol
        vgg = ex.plan("train-compare", p, [0])[0].cfg
        dln = ex.plan("ics-opti", p, [0])[-1].cfg
        assert (vgg.steps, vgg.data.batch_size, vgg.optim.momentum, vgg.model.init, vgg.data.augment) == \
            (15000, 128, 0.0, "xavier", False)
        assert [e * 0.1 for e in (vgg.probes.etas[0], vgg.probes.etas[-1])] == pytest.approx([0.05, 0.4])
        assert (dln.steps, dln.optim.lr, dln.model.dln_depth, dln.data.batch_size) == (10000, 1e-6, 25, 0)
        assert (dln.probes.etas[0], dln.probes.etas[-1]) == (0.01, 30.0)
