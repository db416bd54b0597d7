"""Claims (landscape.claims): judged on parts of the records (schedule parts, phases of training), with notes read
off the records."""

from pathlib import Path

import pytest

from landscape.claims import in_phase, median_probe, on_schedule, schedule_part, training_phase
from landscape.experiments import smoothness
from landscape.results import RunRecords, RunTable, beta_eff


def _fake_run(name, config, betas):
    records = [
        {"kind": "probe", "probe": "gradient_sweep", "step": t, "values": {"beta_eff": b}} for t, b in betas.items()
    ]
    return RunRecords(Path(name), name, config, {}, {"status": "done"}, records)


def test_a_claim_can_be_judged_on_either_part_of_a_mixed_schedule():
    cfg = {"steps": 1000, "probes": {"schedule": "mixed", "every": 100, "points": 7}}
    # Early (log-spaced) steps: standard looks smoother; every-100 steps: BN does.
    std = _fake_run("s", cfg, {1: 1.0, 3: 1.0, 10: 1.0, 32: 1.0, 100: 8.0, 200: 8.0, 300: 8.0})
    bn = _fake_run("b", cfg, {1: 4.0, 3: 4.0, 10: 4.0, 32: 4.0, 100: 2.0, 200: 2.0, 300: 2.0})
    table = RunTable(
        {"s": {"arch": "vgg", "net": "standard", "seed": 0}, "b": {"arch": "vgg", "net": "bn", "seed": 0}},
        {"s": std, "b": bn},
    )
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
    table = RunTable(
        {"s": {"arch": "vgg", "net": "standard", "seed": 0}, "b": {"arch": "vgg", "net": "bn", "seed": 0}},
        {"s": std, "b": bn},
    )
    ratio = smoothness.standard_over_bn("vgg", median_probe("gradient_sweep", beta_eff))
    assert in_phase("early", ratio)(table) == {0: 0.25}  # medians 1 and 4
    assert in_phase("later", ratio)(table) == {0: 4.0}  # medians 8 and 2
    assert training_phase({"steps": 1000}, "early")(100) and not training_phase({"steps": 1000}, "early")(101)
    assert training_phase({"steps": 1000}, "later")(101) and not training_phase(None, "later")(500)
    with pytest.raises(ValueError, match="phase"):
        in_phase("middle", ratio)
    claims = {c.id: c for c in smoothness.claims({})}
    headline = sorted(i for i, c in claims.items() if c.headline and i.startswith("fig4.vgg"))
    assert headline == sorted(
        f"fig4.vgg.{m}.{p}"
        for m in ("loss_band", "grad_predictiveness", "beta_eff", "rel_loss_departure", "rel_grad_change")
        for p in ("early", "later")
    )
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
        recs = [
            {"kind": "probe", "probe": "sharpness", "step": t, "values": {"value": 20.0 * share, "threshold": 20.0}}
            for t in (1, 2, 3)
        ]
        return RunRecords(Path(name), name, {}, {}, {"status": "done"}, recs)

    rows = {"s": {"arch": "vgg", "net": "standard", "seed": 0}, "b": {"arch": "vgg", "net": "bn", "seed": 0}}
    at_edge = RunTable(rows, {"s": run("s", 1.02), "b": run("b", 0.97)})
    assert "edge of stability" in smoothness.edge_note("vgg")(
        at_edge
    ) and "standard 1.02, BN 0.97" in smoothness.edge_note("vgg")(at_edge)
    below = RunTable(rows, {"s": run("s", 1.0), "b": run("b", 0.4)})
    assert smoothness.edge_note("vgg")(below) == "median sharpness / threshold: standard 1.00, BN 0.40"
    # The ViT's smoothness claims carry the same note, per optimizer and lr (runs of other settings ignored).
    from landscape.experiments import transformer_norms

    vit = {
        "s": {"arch": "vit", "net": "standard", "seed": 0, "lr": 0.1, "variant": "sgd"},
        "l": {"arch": "vit", "net": "ln", "seed": 0, "lr": 0.1, "variant": "sgd"},
        "a": {"arch": "vit", "net": "ln", "seed": 0, "lr": 0.001, "variant": "adamw"},
    }
    table = RunTable(vit, {"s": run("s", 1.06), "l": run("l", 1.11), "a": run("a", 0.1)})
    claim = next(
        c for c in transformer_norms.claims({"transformer": {"sgd_lrs": [0.1]}}) if c.id == "vit.sgd0.1.ln.beta_eff"
    )
    assert "standard 1.06, LayerNorm 1.11" in claim.note(table) and "edge of stability" in claim.note(table)
