"""The paper's protocol where the paper states it, and what the verdicts rest on: probe
schedules, the DLN's regimes, presets, the environment a bitwise re-run needs, and how the
report says what one seed is worth."""

import json
import math
from pathlib import Path

import pytest
import torch

from landscape import planning
from landscape.claims import Claim, in_phase, median_probe, on_schedule, schedule_part, training_phase
from landscape.data import fingerprint, gaussian_regression
from landscape.experiments import get, smoothness, preset_keys
from landscape.models import build_model
from landscape.probes.schedules import build, every, log_spaced_steps, mixed
from landscape.report import build_report
from landscape.reproduce import plan
from landscape.results import RunRecords, RunTable, beta_eff
from landscape.runs import BITWISE_KEYS
from landscape.train import LOSSES, train
from tests.conftest import tiny_config


def test_the_mixed_schedule_is_the_union_of_log_spaced_and_every_n_steps():
    s = mixed(1000, 7, 100)
    steps = [t for t in range(1, 1001) if s(t)]
    assert steps == [1, 3, 10, 32, 100, 200, 300, 316, 400, 500, 600, 700, 800, 900, 1000]
    assert set(steps) == set(log_spaced_steps(1000, 7)) | {t for t in range(1, 1001) if every(100)(t)}
    assert [t for t in range(1, 50) if build("mixed", 1000, 100, 7)(t)] == [1, 3, 10, 32]
    with pytest.raises(ValueError, match="unknown schedule"):
        build("often", 10, 1, 1)


def _fake_run(name, config, betas):
    records = [{"kind": "probe", "probe": "gradient_sweep", "step": t, "values": {"beta_eff": b}}
               for t, b in betas.items()]
    return RunRecords(Path(name), name, config, {}, {"status": "done"}, records)


def test_a_claim_can_be_judged_on_either_part_of_a_mixed_schedule():
    cfg = {"steps": 1000, "probes": {"schedule": "mixed", "every": 100, "points": 7}}
    # Early (log-spaced) steps: standard looks smoother; every-100 steps: BN does.
    std = _fake_run("s", cfg, {1: 1.0, 3: 1.0, 10: 1.0, 32: 1.0, 100: 8.0, 200: 8.0, 300: 8.0})
    bn = _fake_run("b", cfg, {1: 4.0, 3: 4.0, 10: 4.0, 32: 4.0, 100: 2.0, 200: 2.0, 300: 2.0})
    table = RunTable({"s": {"arch": "vgg", "net": "standard", "seed": 0}, "b": {"arch": "vgg", "net": "bn", "seed": 0}},
                     {"s": std, "b": bn})
    ratio = smoothness.standard_over_bn("vgg", median_probe("gradient_sweep", beta_eff))
    assert on_schedule("every", ratio)(table) == {0: 4.0}  # steps 1, 100, 200, 300: medians 8 and 2
    assert on_schedule("log", ratio)(table) == {0: 0.25}  # steps 1, 3, 10, 32, 100 (log-spaced over 1,000)
    assert ratio(table) == {0: 0.25}  # every step: medians 1 and 4
    assert schedule_part({"steps": 10, "probes": {"schedule": "every", "every": 5, "points": 3}}, "log")(5) is False
    assert schedule_part(None, "every")(1) is False


def test_the_vgg_figure4_claims_are_judged_early_and_later_in_training():
    cfg = {"steps": 1000, "probes": {"schedule": "mixed", "every": 100, "points": 7}}
    # Steps up to 100 (a tenth of 1,000) are early: the standard net looks smoother there, BN later.
    std = _fake_run("s", cfg, {1: 1.0, 3: 1.0, 10: 1.0, 100: 1.0, 200: 8.0, 300: 9.0, 316: 8.0})
    bn = _fake_run("b", cfg, {1: 4.0, 3: 4.0, 10: 4.0, 100: 4.0, 200: 2.0, 300: 2.0, 316: 2.0})
    for run, norms in ((std, 0.5), (bn, 3.0)):
        for r in run.records:
            r["values"]["grad_norm"] = norms if r["step"] <= 100 else 2 * norms
    table = RunTable({"s": {"arch": "vgg", "net": "standard", "seed": 0}, "b": {"arch": "vgg", "net": "bn", "seed": 0}},
                     {"s": std, "b": bn})
    ratio = smoothness.standard_over_bn("vgg", median_probe("gradient_sweep", beta_eff))
    assert in_phase("early", ratio)(table) == {0: 0.25}  # medians 1 and 4
    assert in_phase("later", ratio)(table) == {0: 4.0}  # medians 8 and 2
    assert training_phase({"steps": 1000}, "early")(100) and not training_phase({"steps": 1000}, "early")(101)
    assert training_phase({"steps": 1000}, "later")(101) and not training_phase(None, "later")(500)
    with pytest.raises(ValueError, match="phase"):
        in_phase("middle", ratio)
    claims = {c.id: c for c in smoothness.claims({})}
    headline = sorted(i for i, c in claims.items() if c.headline and i.startswith("fig4.vgg"))
    assert headline == sorted(f"fig4.vgg.{m}.{p}" for m in ("loss_band", "grad_predictiveness", "beta_eff")
                              for p in ("early", "later"))
    assert not claims["fig4.vgg.beta_eff"].headline and claims["fig4.dln.beta_eff"].headline  # all steps: a diagnostic
    judged = claims["fig4.vgg.beta_eff.early"].judge(table)
    assert judged["per_seed"] == {"0": 0.25} and judged["verdict"] == "not reproduced"
    assert judged["note"] == "median gradient norm at these steps: standard 0.5, BN 3"
    assert claims["fig4.vgg.beta_eff.later"].note(table) == "median gradient norm at these steps: standard 1, BN 6"
    # The report's Figure 4 marks where the early phase ends (on a log step axis); DLN figures do not.
    assert smoothness.early_phase_end(table, "vgg") == 100.0
    figs = smoothness.figures(table)
    assert figs[0].args[2] == 100.0 and figs[0].draw(*figs[0].args)[:4] == b"\x89PNG"
    assert smoothness.early_phase_end(table.map_runs(lambda r: _fake_run(r.name, {}, {1: 1.0})), "vgg") is None


def test_the_sharpness_claim_says_when_both_networks_sit_at_their_edge_of_stability():
    def run(name, share):
        recs = [{"kind": "probe", "probe": "sharpness", "step": t, "values": {"value": 20.0 * share, "threshold": 20.0}}
                for t in (1, 2, 3)]
        return RunRecords(Path(name), name, {}, {}, {"status": "done"}, recs)

    rows = {"s": {"arch": "vgg", "net": "standard", "seed": 0}, "b": {"arch": "vgg", "net": "bn", "seed": 0}}
    at_edge = RunTable(rows, {"s": run("s", 1.02), "b": run("b", 0.97)})
    assert "edge of stability" in smoothness.edge_note("vgg")(at_edge) and "standard 1.02, BN 0.97" in \
        smoothness.edge_note("vgg")(at_edge)
    below = RunTable(rows, {"s": run("s", 1.0), "b": run("b", 0.4)})
    assert smoothness.edge_note("vgg")(below) == "median sharpness / threshold: standard 1.00, BN 0.40"
    # The ViT's smoothness claims carry the same note, per optimizer and lr (runs of other settings ignored).
    from landscape.experiments import transformer_norms
    vit = {"s": {"arch": "vit", "net": "standard", "seed": 0, "lr": 0.1, "variant": "sgd"},
           "l": {"arch": "vit", "net": "ln", "seed": 0, "lr": 0.1, "variant": "sgd"},
           "a": {"arch": "vit", "net": "ln", "seed": 0, "lr": 0.001, "variant": "adamw"}}
    table = RunTable(vit, {"s": run("s", 1.06), "l": run("l", 1.11), "a": run("a", 0.1)})
    claim = next(c for c in transformer_norms.claims({"transformer": {"sgd_lrs": [0.1]}})
                 if c.id == "vit.sgd0.1.ln.beta_eff")
    assert "standard 1.06, LayerNorm 1.11" in claim.note(table) and "edge of stability" in claim.note(table)


def test_presets_extend_each_other_and_carry_their_seed_count():
    quick, cpu = planning.load_preset("quick", preset_keys()), planning.load_preset("cpu", preset_keys())
    assert (quick["seeds"], cpu["seeds"]) == (1, 5)
    assert {k: v for k, v in cpu.items() if k not in ("seeds", "name")} == \
        {k: v for k, v in quick.items() if k not in ("seeds", "name")}
    # seed 0 of the cpu preset is the quick preset's run: the same names and configs
    for experiment in ("smoothness", "ics-distrib", "dln-regimes"):
        a, b = plan(get(experiment), quick, [0]), plan(get(experiment), cpu, [0])
        assert [(s.name, s.cfg) for s in a] == [(s.name, s.cfg) for s in b]


def test_the_dln_regimes_reuse_the_main_run_for_the_presets_own_regime():
    p = planning.load_preset("quick", preset_keys())
    specs = plan(get("dln-regimes"), p, [0])
    main = {s.name: s.cfg for s in plan(get("ics-opti"), p, [0]) if s.arch == "dln"}
    regimes = {(s.cfg.data.gaussian_samples, s.cfg.loss) for s in specs}
    assert regimes == {(1000, "sum_squares"), (1000, "mean_squares"), (100, "sum_squares"), (100, "mean_squares")}
    own = [s for s in specs if s.variant == "n1000-sum"]
    assert {s.name: s.cfg for s in own} == main
    assert {s.variant for s in specs} == {"n1000-sum", "n1000-mean", "n100-sum", "n100-mean"}
    claims = get("dln-regimes").claims(p)
    assert claims and not any(c.headline for c in claims)
    assert {c.id.split(".")[1] for c in claims} == {"n1000-sum", "n1000-mean", "n100-sum", "n100-mean"}


def test_the_mean_loss_is_the_summed_loss_over_the_number_of_samples():
    out, y = torch.randn(7, 10, dtype=torch.float64), torch.randn(7, 10, dtype=torch.float64)
    assert LOSSES["mean_squares"](out, y).item() == pytest.approx(LOSSES["sum_squares"](out, y).item() / 7, rel=1e-12)


def test_the_paper_dln_has_the_appendix_init_and_data_scale():
    """Glorot (Xavier) uniform 10x10 layers: U(-a, a) with a = sqrt(6 / 20), variance 0.1; x ~ N(0, I)
    and A a standard Gaussian matrix, so E||A x||^2 = 100 per sample."""
    cfg = plan(get("ics-opti"), planning.load_preset("paper", preset_keys()), [0])[-1].cfg
    model = build_model(cfg.model, cfg.seed, in_dim=10, out_dim=10)
    w = torch.cat([m.weight.reshape(-1) for m in model.modules() if isinstance(m, torch.nn.Linear)])
    assert len(w) == 25 * 100 and w.abs().max() <= math.sqrt(6 / 20)
    assert w.var().item() == pytest.approx(0.1, rel=0.05)
    data = gaussian_regression(cfg.data.gaussian_samples, 10, cfg.data.gaussian_seed, 0)
    x, y = data.inputs, data.targets
    assert x.shape == (1000, 10) and x.mean().abs() < 0.05 and x.var().item() == pytest.approx(1.0, rel=0.05)
    A = torch.linalg.lstsq(x, y).solution.T  # y = A x exactly
    assert A.var().item() == pytest.approx(1.0, rel=0.35) and y.pow(2).sum(1).mean().item() == pytest.approx(
        (A.pow(2).sum() * 1.0).item(), rel=0.1)


def test_env_json_records_what_a_bitwise_rerun_needs(tmp_path):
    from landscape.data import load_splits

    train(tiny_config(name="env", steps=2), out=tmp_path)
    env = json.loads((tmp_path / "env" / "env.json").read_text())
    assert set(BITWISE_KEYS) <= set(env) and env["bitwise_keys"] == list(BITWISE_KEYS)
    splits = load_splits("synthetic", None, synthetic_size=64)
    assert env["data_sha256"] == fingerprint(splits["train"], splits["test"])
    assert env["threads"] == torch.get_num_threads() and env["cpu_capability"]
    assert env["memory_format"] == "contiguous" and env["numpy"]


def test_the_report_keeps_diagnostics_in_their_section_and_says_what_one_seed_is_worth(smoke_results):
    _, summaries, html = smoke_results
    top = html[html.index('<section id="claims">'):html.index("</section>")]
    assert "diagnostic" not in top and "n32-mean" not in top and "every-N probe steps only" not in top
    regimes = html[html.index('<section id="dln-regimes">'):]
    assert "<em>diagnostic:</em> n8-sum: Figure 3" in regimes
    assert "How far one seed can be trusted" in top and "indicative only" in top
    sharp = next(c for c in summaries["smoothness"]["claims"] if c["id"] == "beyond.vgg.sharpness")
    assert sharp["note"].startswith(("median sharpness / threshold", "both networks sit"))


def test_the_claims_command_prints_the_readme_tables(smoke_results):
    from typer.testing import CliRunner

    from landscape.cli import app

    out, summaries, _ = smoke_results
    runner = CliRunner()
    res = runner.invoke(app, ["claims", str(out)])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    headline = [c for s in summaries.values() for c in s["claims"] if c["headline"]]
    assert lines[0].startswith("| experiment | claim |") and len(lines) == 2 + len(headline)
    assert "diagnostic" not in res.output and "n8-sum" not in res.output
    every = runner.invoke(app, ["claims", str(out), "--diagnostics"])
    assert len(every.output.splitlines()) == 2 + sum(len(s["claims"]) for s in summaries.values())
    bad = runner.invoke(app, ["claims", str(out / "nowhere")])
    assert bad.exit_code == 2 and "does not exist" in bad.stderr
