"""Planning (landscape.planning): presets and the runs an experiment needs, following the paper where it states a
value."""

import math

import pytest
import torch

from landscape import planning
from landscape.data import gaussian_regression
from landscape.experiments import get, preset_keys
from landscape.models import build_model
from landscape.reproduce import plan


def test_presets_extend_each_other_and_carry_their_seed_count():
    quick, cpu = planning.load_preset("quick", preset_keys()), planning.load_preset("cpu", preset_keys())
    assert (quick["seeds"], cpu["seeds"]) == (1, 5)
    assert {k: v for k, v in cpu.items() if k not in ("seeds", "name")} == {
        k: v for k, v in quick.items() if k not in ("seeds", "name")
    }
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
        (A.pow(2).sum() * 1.0).item(), rel=0.1
    )


def test_the_eta_weighs_each_remaining_run_by_its_steps_and_its_kinds_pace():
    """8 slow VGG runs then 8 fast DLN runs: the estimate after the first VGG run counts the VGG runs at their pace
    and says the DLN runs are not yet timed, instead of spreading one average over all of them."""
    from landscape.launch import _kind, eta
    from landscape.planning import dln_run, load_preset, vgg_run

    preset = load_preset("quick", __import__("landscape.experiments", fromlist=["preset_keys"]).preset_keys())
    vgg = [vgg_run(preset, net, 0.1, s) for net in ("standard", "bn") for s in range(4)]
    dln = [dln_run(preset, net, s) for net in ("standard", "bn") for s in range(4)]
    todo = [r.cfg for r in vgg + dln]
    assert eta(todo, {}) == ""
    pace = {_kind(todo[0]): 0.1}  # the standard VGG: 100 s per 1,000 steps
    assert eta(todo[1:], pace) == ", about 5 min left for 3 runs and 12 runs of kinds not yet timed"
    pace[_kind(todo[4])] = 0.12
    pace[_kind(todo[8])] = 0.002
    pace[_kind(todo[12])] = 0.003
    assert eta(todo[5:], pace) == f", about {(3 * 120 + 4 * 6 + 4 * 9) / 60:.0f} min left for 11 runs"


@pytest.mark.parametrize("name", ["quick", "cpu", "paper"])
def test_a_vgg_run_carries_the_probes_its_experiments_read(name):
    """Every probe of the preset on the runs Figures 1-4, width and the slices share; the second lr's runs (Figure 1's
    curves) none; noisy BN Figure 2's activation statistics; the l_p runs what Figure 5 draws. A --set decides."""
    p = planning.load_preset(name, preset_keys())
    every = tuple(p["vgg"]["probes"]["enabled"])
    experiments = ("train-compare", "ics-distrib", "norms")
    specs = {s.name: s.cfg.probes.enabled for e in experiments for s in plan(get(e), p, [0])}
    assert specs["vgg-standard-lr0.1-s0"] == specs["vgg-bn-lr0.1-s0"] == every
    assert specs["vgg-standard-lr0.5-s0"] == specs["vgg-bn-lr0.5-s0"] == ()
    assert specs["vgg-noisy_bn-lr0.1-s0"] == ("activation_stats",)
    assert set(specs["vgg-linf-lr0.1-s0"]) == {"gradient_sweep", "activation_stats", "sharpness"}
    for spec in plan(get("width"), p, [0]):
        assert "gradient_sweep" in spec.cfg.probes.enabled  # the width claims' probe, at every width
    chosen = planning.vgg_run(p, "noisy_bn", 0.1, 0, [{"probes": {"enabled": ["sharpness"]}}])
    assert chosen.cfg.probes.enabled == ("sharpness",)


def test_the_width_experiment_reuses_its_run_at_its_own_lr_with_every_probe():
    """A preset whose width lr is its second lr: that run is the width experiment's too, so it keeps its probes."""
    p = {**planning.load_preset("quick", preset_keys()), "width": {"widths": [0.25], "lr": 0.5}}
    (spec,) = [s for s in plan(get("width"), p, [0]) if s.net == "bn"]
    assert spec.name == "vgg-bn-lr0.5-s0" and spec.cfg.probes.enabled == tuple(p["vgg"]["probes"]["enabled"])
