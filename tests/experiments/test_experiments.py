import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from landscape import planning
from landscape.cli import app
from landscape.data import Batches, load_splits
from landscape.errors import UserError
from landscape.experiments import REGISTRY, get, preset_keys
from landscape.reproduce import plan, run_experiment
from landscape.results import read_run
from landscape.stats import judge, mean_ci, seeds_needed

runner = CliRunner()


def smoke():
    return planning.load_preset("smoke", preset_keys())


@pytest.mark.parametrize(
    "experiment, expected",
    [
        (
            "train-compare",
            {f"vgg-{n}-lr{lr}-s{s}" for n in ("standard", "bn") for lr in ("0.1", "0.5") for s in (0, 1)},
        ),
        ("ics-distrib", {f"vgg-{n}-lr0.1-s{s}" for n in ("standard", "bn", "noisy_bn") for s in (0, 1)}),
        (
            "ics-opti",
            {f"vgg-{n}-lr0.1-s{s}" for n in ("standard", "bn") for s in (0, 1)}
            | {f"dln-{n}-lr1e-06-s{s}" for n in ("standard", "bn") for s in (0, 1)},
        ),
        (
            "smoothness",
            {f"vgg-{n}-lr0.1-s{s}" for n in ("standard", "bn") for s in (0, 1)}
            | {f"dln-{n}-lr1e-06-s{s}" for n in ("standard", "bn") for s in (0, 1)},
        ),
        ("norms", {f"vgg-{n}-lr0.1-s{s}" for n in ("standard", "bn", "l1", "l2", "linf") for s in (0, 1)}),
        (
            "dln-regimes",
            {
                f"dln-{n}{r}-lr1e-06-s{s}"
                for n in ("standard", "bn")
                for s in (0, 1)
                for r in ("", "-n32-mean", "-n8-sum", "-n8-mean")
            },
        ),  # the preset's own regime is the main run
        (
            "stability",
            {
                f"stability-vgg-{n}-{o}-lr{lr}-s{s}"
                for n in ("standard", "bn")
                for s in (0, 1)
                for o, lr in (("sgd", "0.1"), ("sgd", "0.2"), ("adam", "0.001"))
            },
        ),
        (
            "transformer-norms",
            {
                f"vit-{n}-{o}-lr{lr}-s{s}"
                for n in ("standard", "ln", "rms", "bn", "dyt")
                for s in (0, 1)
                for o, lr in (("adamw", "0.001"), ("sgd", "0.1"))
            },
        ),
    ],
)
def test_each_experiment_builds_its_documented_runs(experiment, expected):
    specs = plan(get(experiment), smoke(), [0, 1])
    assert {s.name for s in specs} == expected
    for s in specs:
        assert s.cfg.name == s.name and s.cfg.optim.lr == s.lr
        assert s.cfg.model.norm == planning.NETS[s.net]
        assert s.cfg.optim.name == (s.variant if experiment in ("stability", "transformer-norms") else "sgd")


def test_compared_runs_are_paired():
    specs = plan(get("norms"), smoke(), [0, 1])
    splits = load_splits("synthetic", None, synthetic_size=64)
    for seed in (0, 1):
        group = [s for s in specs if s.seed == seed]
        orders = [
            [Batches(splits["train"], s.cfg.data.batch_size, s.cfg.data_seed).indices(t).tolist() for t in range(6)]
            for s in group
        ]
        assert all(o == orders[0] for o in orders)
        assert len({(s.cfg.seed, s.cfg.data_seed, s.cfg.noise_seed) for s in group}) == 1
    a = Batches(splits["train"], 16, specs[0].cfg.data_seed).indices(0)
    b = Batches(splits["train"], 16, [s for s in specs if s.seed == 1][0].cfg.data_seed).indices(0)
    assert not torch.equal(a, b)


def test_overrides_apply_to_every_run_and_bad_ones_stop_before_work(tmp_path):
    specs = plan(get("ics-distrib"), smoke(), [0], [{"optim": {"momentum": 0.9}}])
    assert all(s.cfg.optim.momentum == 0.9 for s in specs)
    with pytest.raises(UserError, match="unknown preset"):
        run_experiment("norms", "huge", 1, tmp_path)
    with pytest.raises(UserError, match="unknown config key .optim.nope.; valid keys"):
        run_experiment("norms", "smoke", 1, tmp_path, overrides=["optim.nope=1"])
    with pytest.raises(UserError, match="between 1 and"):
        run_experiment("norms", "smoke", 0, tmp_path)
    with pytest.raises(UserError, match="--set name=... cannot be used with an experiment"):
        run_experiment("norms", "smoke", 1, tmp_path, overrides=["name=x"])
    assert not (tmp_path / "runs").exists()


def test_skip_and_resume(tmp_path, monkeypatch):
    from landscape.runs import Run

    logs = []
    run_experiment("ics-distrib", "smoke", 1, tmp_path, log=logs.append)
    before = {p.name: (p / "metrics.jsonl").read_text() for p in (tmp_path / "runs").iterdir()}
    logs.clear()
    run_experiment("ics-distrib", "smoke", 1, tmp_path, log=logs.append)
    note, *logs = logs  # the smoke preset first says what it is
    assert note.startswith("note: preset smoke: ") and "verdicts mean nothing" in note
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
        run_experiment("norms", "smoke", 1, tmp_path, log=logs.append)
    monkeypatch.setattr(Run, "log", real_log)
    assert read_run(tmp_path / "runs" / "vgg-l1-lr0.1-s0").state == "interrupted"
    logs.clear()
    summary = run_experiment("norms", "smoke", 1, tmp_path, log=logs.append)
    skipped = [line for line in logs if "skipped" in line]
    assert len(skipped) == 2  # standard and BN, shared with ics-distrib
    assert all(r["status"] == "done" for r in summary["runs"].values())
    steps = [r["step"] for r in read_run(tmp_path / "runs" / "vgg-l1-lr0.1-s0").kind("train")]
    assert steps == [2, 4, 6]  # resumed from the checkpoint at 3, no record lost or duplicated


def test_a_different_preset_or_override_never_reuses_or_clobbers_runs(tmp_path):
    run_experiment("ics-distrib", "smoke", 1, tmp_path, log=lambda s: None)
    with pytest.raises(UserError, match="different config"):
        run_experiment("ics-distrib", "smoke", 1, tmp_path, overrides=["optim.momentum=0.5"], log=lambda s: None)


def test_seed_aggregation_matches_a_hand_computation():
    agg = mean_ci([1.0, 2.0, 3.0, 4.0])
    # mean 2.5, sample sd sqrt(5/3), t_{0.975, 3} = 3.182446305284263
    half = 3.182446305284263 * (5 / 3) ** 0.5 / 2
    assert agg["mean"] == 2.5 and agg["n"] == 4
    assert agg["ci"] == pytest.approx([2.5 - half, 2.5 + half], rel=1e-12)
    assert mean_ci([3.0])["ci"] is None and mean_ci([None, float("nan")])["mean"] is None


def test_the_test_and_sign_count_match_a_hand_computation():
    # d = values - 1 = [0.5, 1.0, 2.0, -0.5]: mean 0.75, sd = sqrt(((-.25)^2+.25^2+1.25^2+1.25^2)/3)
    values = [1.5, 2.0, 3.0, 0.5]
    sd = ((0.0625 + 0.0625 + 1.5625 + 1.5625) / 3) ** 0.5
    t = 0.75 / (sd / 2)
    r = judge(values, 1.0, "above")
    from scipy import stats

    assert r["p_value"] == pytest.approx(stats.t.sf(t, 3), rel=1e-12)
    assert r["p_two"] == pytest.approx(2 * stats.t.sf(t, 3), rel=1e-12)
    assert r["signs"] == {"k": 3, "n": 4}
    half = stats.t.ppf(0.975, 3) * sd / 2
    assert r["ci"] == pytest.approx([1.75 - half, 1.75 + half], rel=1e-12)
    assert r["bound"] == pytest.approx(1.75 - half, rel=1e-12)  # the interval's end: the test is the interval
    assert r["effect"]["d_z"] == pytest.approx(0.75 / sd, rel=1e-12)
    assert r["verdict"] == "inconclusive" and "seeds would decide it" in r["why"]  # t = 1.10, p = 0.18
    # "below" claims mirror "above" ones; log-ratio claims are tested on log(values)
    assert judge([0.5, 0.4, 0.6], 1.0, "below")["verdict"] == "reproduced"
    logged = judge([2.0, 4.0, 8.0], 1.0, "above", "log")
    assert logged["p_value"] == pytest.approx(
        stats.ttest_1samp(np.log([2.0, 4.0, 8.0]), 0.0, alternative="greater").pvalue, rel=1e-12
    )
    assert judge([0.2, 0.3, 0.25], 1.0, "above", "log")["verdict"] == "not reproduced"
    one = judge([1.2], 1.0)
    assert one["verdict"] == "reproduced" and "indicative" in one["why"] and one["p_value"] is None
    assert judge([None, float("nan")], 1.0)["verdict"] == "inconclusive"


def test_a_ratio_prints_its_geometric_mean_and_log_scale_interval_never_a_negative_one():
    from scipy import stats

    values = [0.3, 0.4, 0.35, 0.3, 5.0]  # an arithmetic mean of 1.27 "above 1"; the geometric mean is 0.58
    r = judge(values, 1.0, "above", "log")
    logs = np.log(values)
    half = stats.t.ppf(0.975, 4) * logs.std(ddof=1) / np.sqrt(5)
    assert r["mean"] == pytest.approx(np.exp(logs.mean()), rel=1e-12)
    assert r["ci"] == pytest.approx([np.exp(logs.mean() - half), np.exp(logs.mean() + half)], rel=1e-12)
    assert r["ci"][0] > 0 and r["verdict"] == "inconclusive" and r["ci"][0] < 1 < r["ci"][1]
    # a long-tailed ratio like the cpu DLN loss band (once 1.871e4 [-6.4e3, 4.38e4]): a positive interval
    band = judge([1.2e4, 2.9e4, 3.1e3, 4.6e4, 1.1e4], 1.0, "above", "log")
    assert band["ci"][0] > 1 and band["verdict"] == "reproduced"
    # reproduced exactly where the 95% interval excludes the threshold: never one that holds it
    for sample in ([1.5, 1.3, 0.9, 1.4, 1.05], [1.223, 1.4, 1.0, 1.3, 1.2], [1.2, 1.25, 1.22, 1.3, 1.15]):
        edge = judge(sample, 1.0, "above", "log")
        assert (edge["ci"][0] > 1) == (edge["verdict"] == "reproduced")


def test_a_diverged_seed_is_counted_on_its_side_not_dropped():
    r = judge([float("inf"), 3.0, 2.5], 1.0, "above", "log")  # was "reproduced with 2 seeds, p = 0.029"
    assert r["n"] == 3 and r["diverged"] == 1 and r["signs"] == {"k": 3, "n": 3}
    assert r["verdict"] == "inconclusive" and "sign test" in r["why"] and r["p_value"] == pytest.approx(1 / 8)
    against = judge([0.0, 3.0, 2.5, 2.0, 4.0], 1.0, "above", "log")  # a diverged BN run: standard / BN = 0
    assert against["diverged"] == 1 and against["signs"] == {"k": 4, "n": 5} and against["verdict"] == "inconclusive"
    six = judge([float("inf")] * 3 + [2.0, 3.0, 4.0], 1.0, "above", "log")
    assert six["verdict"] == "reproduced" and six["p_value"] == pytest.approx(1 / 64)


def test_holm_over_a_family_matches_a_literal_step_down():
    from landscape.stats import adjust, holm

    p = [0.001, 0.04, 0.012, 0.03, None, 0.2]
    # sorted: 0.001 (<= .05/5), 0.012 (<= .05/4 = .0125), 0.03 (> .05/3): stop
    assert holm(p) == [True, False, True, False, None, False]
    claims = [{"verdict": "reproduced", "p_two": x, "headline": True} for x in (0.001, 0.04, 0.045)] + [
        {"verdict": "reproduced", "p_two": 0.03, "headline": False}
    ]
    out = adjust(claims)  # 0.04 > 0.05 / 2: the step-down stops; the diagnostic is not in the family
    assert [c["adjusted_verdict"] for c in out] == ["reproduced", "inconclusive", "inconclusive", "reproduced"]


def test_the_seed_estimate_matches_a_known_power_table():
    # paired t, two-sided alpha 0.05, power 0.8: d_z = 1 needs 10 pairs, d_z = 0.5 needs 34 (Cohen 1988)
    assert seeds_needed(1.0, 1.0) == 10 and seeds_needed(0.5, 1.0) == 34
    assert seeds_needed(0.0, 1.0) is None
    from landscape.stats import seeds_range

    assert seeds_range([0.5, 1.0], 1.0) == [10, 34] and seeds_range([-0.2, 1.0], 1.0) == [10, None]


def test_diverged_and_failed_runs_are_results_not_crashes(tmp_path, monkeypatch):
    presets = tmp_path / "configs" / "presets"
    presets.mkdir(parents=True)
    shipped = planning.configs_dir()
    text = (shipped / "presets" / "smoke.yaml").read_text().replace("lrs: [0.1, 0.5]", "lrs: [0.1, 100000.0]")
    (presets / "smoke.yaml").write_text(text)
    (tmp_path / "configs" / "dln.yaml").write_text((shipped / "dln.yaml").read_text())
    monkeypatch.setattr(planning, "configs_dir", lambda: tmp_path / "configs")

    import landscape.train as train_mod

    real_train = train_mod.train

    def flaky(cfg, **kw):
        if cfg.name == "vgg-bn-lr0.1-s0":
            raise RuntimeError("simulated out-of-memory")
        return real_train(cfg, **kw)

    monkeypatch.setattr(train_mod, "train", flaky)
    summary = run_experiment("train-compare", "smoke", 1, tmp_path / "out", log=lambda s: None)
    runs = summary["runs"]
    assert runs["vgg-standard-lr100000-s0"]["status"] == "diverged"
    assert runs["vgg-standard-lr100000-s0"]["diverged_step"] >= 1
    assert runs["vgg-bn-lr0.1-s0"]["status"] == "missing"  # raised before creating its directory
    assert runs["vgg-standard-lr0.1-s0"]["status"] == "done"
    saved = json.loads((tmp_path / "out" / "train-compare" / "summary.json").read_text())
    assert saved["runs"]["vgg-standard-lr100000-s0"]["status_text"].startswith("diverged at step")
    claim = next(c for c in saved["claims"] if c["id"] == "fig1.bn_trains_better.lr100000")
    bn_acc = read_run(tmp_path / "out" / "runs" / "vgg-bn-lr100000-s0").kind("test")[-1]["acc"]
    assert claim["values"] == [pytest.approx(bn_acc)]  # the diverged standard run counts as accuracy 0


@pytest.mark.parametrize("command", list(REGISTRY))
def test_experiment_commands_through_the_cli(tmp_path, command):
    res = runner.invoke(app, [command, "--preset", "smoke", "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / command / "summary.json").read_text())
    assert [c["id"] for c in summary["claims"]] == [c.id for c in get(command).claims(smoke())]
    for c in summary["claims"]:  # the verdict follows from the numbers and the declared threshold
        assert c["verdict"] == judge(c["values"], c["threshold"], c["direction"], c["transform"])["verdict"]
        assert c["claim"] in res.output
    assert {r["net"] for r in summary["runs"].values()} <= set(planning.NETS)


def test_experiment_bad_input_is_one_line(tmp_path):
    res = runner.invoke(app, ["norms", "--preset", "gigantic", "--out", str(tmp_path)])
    assert res.exit_code == 2 and res.stderr.startswith("error: unknown preset")
    res = runner.invoke(app, ["norms", "--preset", "smoke", "--seeds", "0", "--out", str(tmp_path)])
    assert res.exit_code == 2 and "--seeds" in res.stderr


def test_first_seed_plans_fresh_seeds_and_keeps_them_paired():
    from landscape.reproduce import prepare

    _, seeds, plans = prepare(["smoothness"], "smoke", 2, [], first_seed=5)
    assert seeds == [5, 6]
    specs = plans["smoothness"]
    assert {s.seed for s in specs} == {5, 6} and all(s.name.endswith(("-s5", "-s6")) for s in specs)
    assert all((s.cfg.seed, s.cfg.data_seed, s.cfg.noise_seed) == (s.seed,) * 3 for s in specs)
    _, default, _ = prepare(["smoothness"], "smoke", 2, [])
    assert default == [0, 1]


@pytest.mark.parametrize("preset", planning.preset_names())
def test_every_shipped_preset_builds_every_experiment(preset):
    path = planning.configs_dir() / "presets" / f"{preset}.yaml"
    assert path.read_text().startswith("# landscape reproduce --preset " + preset)
    p = planning.load_preset(preset, preset_keys())
    for experiment in REGISTRY.values():
        specs = plan(experiment, p, [0, 1])
        assert specs and all(s.cfg.probes.enabled for s in specs if s.lr == p["lrs"][0] or s.arch != "vgg")
        assert experiment.claims(p)
    if preset == "paper":  # the paper's protocol
        vgg = plan(get("train-compare"), p, [0])[0].cfg
        dln = plan(get("ics-opti"), p, [0])[-1].cfg
        assert (vgg.steps, vgg.data.batch_size, vgg.optim.momentum, vgg.model.init, vgg.data.augment) == (
            15000,
            128,
            0.0,
            "xavier",
            False,
        )
        assert [
            e * 0.1 for e in (vgg.probes.gradient_sweep.etas[0], vgg.probes.gradient_sweep.etas[-1])
        ] == pytest.approx([0.05, 0.4])
        assert (dln.steps, dln.optim.lr, dln.model.dln.depth, dln.data.batch_size) == (10000, 1e-6, 25, 0)
        assert (dln.data.gaussian_samples, dln.loss, dln.model.init, dln.model.dln.width) == (
            1000,
            "sum_squares",
            "xavier",
            10,
        )  # the appendix: 1,000 samples as one batch, summed l2 loss
        assert (dln.probes.gradient_sweep.etas[0], dln.probes.gradient_sweep.etas[-1]) == (0.01, 30.0)
        noisy = plan(get("ics-distrib"), p, [0])[-1].cfg
        assert noisy.model.norm == "noisy_batch" and noisy.model.noise.form == "per_unit"  # Algorithm 1


def test_a_sixth_experiment_is_one_module_and_its_test(tmp_path):
    """An experiment registered from here (two smoke runs, one claim, one figure) appears in
    reproduce's summaries, in the report, and nowhere else needed editing."""
    from landscape.claims import Claim, diff, final_train_loss
    from landscape.experiments import Experiment, register, unregister
    from landscape.planning import vgg_runs
    from landscape.report import figures as F
    from landscape.reproduce import reproduce

    def toy_plan(preset, seeds, overrides):
        return vgg_runs(preset, ("standard", "bn"), [0.05], seeds, overrides)

    def loss_gap(t):
        return diff(t.per_seed(final_train_loss, "vgg", "standard"), t.per_seed(final_train_loss, "vgg", "bn"))

    def toy_figures(t):
        return [F.Figure("Toy: training curves", F.training_curves, (t.groups("vgg"), "toy"))]

    register(
        Experiment(
            name="toy",
            title="Toy: a sixth experiment",
            anchor="toy",
            help="A toy experiment.",
            plan=toy_plan,
            claims=lambda preset: [Claim("toy.loss_gap", "the toy claim", "train loss standard - BN", loss_gap, 0.0)],
            figures=toy_figures,
        )
    )
    try:
        summaries, report = reproduce("smoke", 1, tmp_path, log=lambda s: None)
    finally:
        unregister("toy")
    toy = summaries["toy"]
    assert set(toy["runs"]) == {"vgg-standard-lr0.05-s0", "vgg-bn-lr0.05-s0"}
    assert [c["id"] for c in toy["claims"]] == ["toy.loss_gap"] and toy["claims"][0]["n"] == 1
    assert json.loads((tmp_path / "toy" / "summary.json").read_text())["claims"][0]["mean"] == toy["claims"][0]["mean"]
    html = report.read_text()
    assert 'id="toy"' in html and "Toy: a sixth experiment" in html and "the toy claim" in html
    assert "<figcaption>Toy: training curves</figcaption>" in html and "Problems reading records" not in html


def test_a_diverged_run_counts_as_zero_accuracy_not_as_missing():
    from pathlib import Path

    from landscape.claims import final_test_acc, final_train_acc
    from landscape.results import RunRecords

    diverged = RunRecords(Path("x"), "x", {}, {}, {"status": "diverged", "diverged_step": 4}, [])
    assert final_train_acc(diverged) == 0.0 and final_test_acc(diverged) == 0.0


def test_depth_calibration_rule_picks_the_first_rate_at_which_both_networks_leave_the_plateau():
    from pathlib import Path

    from landscape.experiments.depth import calibrate
    from landscape.results import RunRecords

    def run(arch, depth, norm, lr, left, state="done"):
        norm = {"none": "none", "bn": "batch"}[norm]
        return RunRecords(
            Path("r"),
            "r",
            {"model": {"arch": arch, arch: {"depth": depth}, "norm": norm}, "optim": {"lr": lr}},
            {},
            {"status": state, "left_plateau_step": left},
            [],
        )

    runs = [
        run("vgg", 11, "none", 0.1, 100),
        run("vgg", 11, "bn", 0.1, 50),  # passes at once
        run("vgg", 19, "none", 0.1, None),
        run("vgg", 19, "bn", 0.1, 50),  # standard stuck at 0.1
        run("vgg", 19, "none", 0.05, 250),
        run("vgg", 19, "bn", 0.05, 50),  # ... both leave at 0.05
        run("vgg", 16, "none", 0.1, None),
        run("vgg", 16, "bn", 0.1, 50),  # 0.05 not run yet: undecided
        run("vgg", 13, "none", 0.1, 50),
        run("vgg", 13, "bn", 0.1, None, "running"),  # unfinished: undecided
        run("resnet", 20, "none", 0.1, 50, "diverged"),
        run("resnet", 20, "bn", 0.1, 50),
        run("resnet", 20, "none", 0.05, None),
        run("resnet", 20, "bn", 0.05, 50),
        run("resnet", 20, "none", 0.02, None),
        run("resnet", 20, "bn", 0.02, None),
    ]  # never: keeps 0.1
    got = calibrate(runs)
    assert got["vgg11"][0] == 0.1 and got["vgg19"][0] == 0.05 and got["vgg16"][0] is None and got["vgg13"][0] is None
    assert got["resnet20"][0] == 0.1 and "no candidate passed" in got["resnet20"][1]
    assert "standard stuck" in got["vgg19"][1]


def _literal_holm(p_values: list[float], alpha: float) -> list[bool]:
    """Holm (1979) as adjusted p-values: p_adj(i) = max over j <= i of min(1, (m - j) p(j)), 0-indexed, sorted."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    m, running, out = len(p_values), 0.0, [False] * len(p_values)
    for j, i in enumerate(order):
        running = max(running, min(1.0, (m - j) * p_values[i]))
        out[i] = running <= alpha
    return out


def test_holm_on_the_committed_cpu_p_values_equals_a_literal_computation():
    """The cpu preset's five-seed table (seeds 17-21) as committed before its records were lost: its printed
    one-sided p-values, 27 headline claims. An inconclusive row printed no p; under that release's rule its
    one-sided p exceeded 0.05 both ways, so it sorts after every decisive one and its value cannot change a
    rejection (checked with two stand-ins)."""
    from landscape.stats import LEVEL, adjust, holm

    rows = json.loads((Path(__file__).parents[1] / "data" / "cpu-table-a5772ae.json").read_text())["rows"]
    assert len(rows) == 27 and sum(r["p_one_sided"] is not None for r in rows) == 23
    dropped_by_holm = {
        ("smoothness", "DLN: the loss-variation band is narrower with BN"),
        ("smoothness", "DLN: the gradient changes less along the gradient with BN"),
        ("smoothness", "DLN: effective beta-smoothness is lower with BN"),
        ("norms", "l1 normalisation trains as well as BN (within 3 points) or better"),
        ("norms", "l2 normalisation trains as well as BN (within 3 points) or better"),
        ("norms", "linf normalisation smooths the landscape (beta_eff lower than standard)"),
    }
    for stand_in in (0.051, 1.0):
        # as the audit read the table: one family of 27, the one-sided p at 5%
        p = [r["p_one_sided"] if r["p_one_sided"] is not None else stand_in for r in rows]
        kept = holm(p, LEVEL)
        assert kept == _literal_holm(p, LEVEL)
        decisive = [r for r in rows if r["p_one_sided"] is not None]
        assert sum(kept) == 17 and len(decisive) == 23
        assert {(r["experiment"], r["claim"]) for r, k in zip(rows, kept) if r in decisive and not k} == dropped_by_holm
        # as this release declares it: each experiment's headline claims one family, two-sided p, a decisive raw
        # verdict where the one-sided p is below 2.5%
        survived = set()
        for experiment in {r["experiment"] for r in rows}:
            family = [r for r in rows if r["experiment"] == experiment]
            claims = [
                {
                    "verdict": r["verdict"] if (r["p_one_sided"] or 1.0) < LEVEL / 2 else "inconclusive",
                    "p_two": min(1.0, 2 * (r["p_one_sided"] if r["p_one_sided"] is not None else stand_in)),
                }
                for r in family
            ]
            literal = _literal_holm([c["p_two"] for c in claims], LEVEL)
            adjusted = [c["adjusted_verdict"] for c in adjust(claims)]
            assert adjusted == [c["verdict"] if keep else "inconclusive" for c, keep in zip(claims, literal)]
            survived |= {(r["experiment"], r["claim"]) for r, a in zip(family, adjusted) if a != "inconclusive"}
        assert len(survived) == 17 and not survived & dropped_by_holm


def test_runs_carry_only_the_probes_an_experiment_reads_and_nothing_else_changes(tmp_path, monkeypatch):
    """planning.vgg_reads drops the probes no claim or figure reads (at lr 0.5, on the noisy and l_p networks).
    Checked against the same reproduce with every probe on every run: the same summaries (claims, verdicts, runs),
    the same report figures, the same final weights, and every record of a kept probe the same but its timing."""
    import re

    from landscape.reproduce import reproduce

    trimmed = tmp_path / "trimmed"
    reproduce("smoke", 1, trimmed, log=lambda s: None)
    monkeypatch.setattr(planning, "vgg_reads", lambda preset, net, lr: None)
    full = tmp_path / "full"
    reproduce("smoke", 1, full, log=lambda s: None)

    names = sorted(p.name for p in (full / "runs").iterdir())
    assert names == sorted(p.name for p in (trimmed / "runs").iterdir())
    enabled = {n: tuple(read_run(trimmed / "runs" / n).config["probes"]["enabled"]) for n in names}
    every = ("gradient_sweep", "ics_opti", "activation_stats", "sharpness")
    assert enabled["vgg-standard-lr0.5-s0"] == enabled["vgg-bn-lr0.5-s0"] == ()
    assert enabled["vgg-noisy_bn-lr0.1-s0"] == ("activation_stats",)
    assert enabled["vgg-l2-lr0.1-s0"] == ("gradient_sweep", "activation_stats", "sharpness")
    assert enabled["vgg-standard-lr0.1-s0"] == enabled["vgg-bn-lr0.1-s0"] == every
    for experiment in [p.parent.name for p in full.glob("*/summary.json")]:
        assert (trimmed / experiment / "summary.json").read_bytes() == (full / experiment / "summary.json").read_bytes()

    def images(out):
        return re.findall(r"data:image/png;base64,[A-Za-z0-9+/=]+", (out / "report.html").read_text())

    assert images(trimmed) == images(full) and len(images(full)) > 10

    def untimed(run):  # the records of the kept probes and the rest, without their timings
        kept = [r for r in run.records if r.get("kind") != "probe" or r.get("probe") in enabled[run.name]]
        return [{k: v for k, v in r.items() if k not in ("cost", "examples_per_s", "elapsed_s")} for r in kept]

    for n in names:
        a, b = read_run(trimmed / "runs" / n), read_run(full / "runs" / n)
        assert untimed(a) == untimed(b) and len(a.records) <= len(b.records)
        wa = torch.load(trimmed / "runs" / n / "checkpoint.pt", weights_only=True)["model"]
        wb = torch.load(full / "runs" / n / "checkpoint.pt", weights_only=True)["model"]
        assert all(torch.equal(wa[k], wb[k]) for k in wb)


def test_a_finished_run_with_more_probes_stands_for_the_planned_one(tmp_path):
    """Runs of releases that probed every run with every probe are reused, not refused; an unfinished one, or one
    with other settings, is still refused (it would mix two configs' records)."""
    from landscape.launch import pending
    from landscape.train import train

    p = smoke()
    spec = planning.vgg_run(p, "noisy_bn", 0.1, 0)
    every = planning.build_config([{"probes": {"enabled": ["gradient_sweep", "activation_stats"]}}], base=spec.cfg)
    runs = tmp_path / "runs"
    train(every, out=runs)
    logs = []
    todo, finished = pending([spec], runs, None, logs.append)
    assert todo == [] and finished == {spec.name: "done"} and "made with more probes" in logs[0]

    more = planning.build_config([{"probes": {"enabled": ["activation_stats", "sharpness"]}}], base=spec.cfg)
    with pytest.raises(UserError, match="different config"):
        pending([planning.RunSpec(spec.name, "vgg", "noisy_bn", 0.1, 0, more)], runs, None, logs.append)
    other = planning.build_config([{"probes": {"activation_stats": {"batch": 16}}}], base=spec.cfg)
    with pytest.raises(UserError, match="different config"):
        pending([planning.RunSpec(spec.name, "vgg", "noisy_bn", 0.1, 0, other)], runs, None, logs.append)
    status = json.loads((runs / spec.name / "status.json").read_text())
    (runs / spec.name / "status.json").write_text(json.dumps({**status, "status": "running"}))
    with pytest.raises(UserError, match="different config"):
        pending([spec], runs, None, logs.append)
