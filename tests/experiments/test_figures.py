"""The experiments' own figures (landscape.experiments.*): each network's own layers, what the claims count, no
empty panels."""

from __future__ import annotations

from landscape.experiments import depth, eos, ics_opti, transformer_norms
from landscape.report import figures as F
from tests.report.test_figures import ics, run


def test_the_papers_layer_k_is_found_in_each_runs_own_records():
    # a BN DLN has BatchNorm modules between its linear layers: its 3rd weight layer is layers.4, not layers.2
    std = run("std", [ics(1, ["layers.0", "layers.1", "layers.2"], [1.0, 0.9, 0.8])])
    bn = run("bn", [ics(1, ["layers.0", "layers.2", "layers.4"], [1.0, 0.5, 0.25])])
    assert F.layer_name(std, "ics_opti", 3) == "layers.2" and F.layer_name(bn, "ics_opti", 3) == "layers.4"
    present, absent = F.numbered([std, bn], "ics_opti", (3, 9))
    assert present == [3] and absent == [9]
    drawn = {}
    real = F.plot_lines

    def spy(ax, groups, series_fn, logy=False):
        drawn[ax.get_ylabel() or len(drawn)] = {net: series_fn(runs[0]) for net, runs in groups.items()}
        return real(ax, groups, series_fn, logy)

    F.plot_lines = spy
    try:
        ics_opti.ics_layer_curves({"standard": [std], "bn": [bn]}, "DLN", [3])
    finally:
        F.plot_lines = real
    cosines = list(drawn.values())[1]
    assert cosines == {"standard": [(1, 0.8)], "bn": [(1, 0.25)]}  # the BN DLN's real layer 3, not layers.2


def test_a_diverged_run_counts_as_0_in_the_accuracy_bars_once_as_in_the_claims():
    diverged = run(
        "d", [{"kind": "test", "step": 10, "loss": 1.0, "acc": 0.5}], {"status": "diverged", "diverged_step": 12}
    )
    done = run("ok", [{"kind": "test", "step": 20, "loss": 1.0, "acc": 0.7}])
    assert transformer_norms.final_accuracies({"standard": [diverged], "bn": [done]}) == {
        "standard": [0.0],
        "bn": [0.7],
    }
    assert transformer_norms.accuracy_bars([("sgd", {"standard": [diverged], "bn": [done]})], "t")[:4] == b"\x89PNG"


def test_an_edge_panel_no_run_has_values_for_is_left_out_not_drawn_empty(monkeypatch):
    # eos-sgd's quick preset records no edge_eigenvalues: its figure has three columns, not an empty fourth
    from landscape.results import series

    rec = [
        {"kind": "probe", "probe": "sharpness", "step": s, "values": {"value": 90.0 + s, "threshold": 100.0}}
        for s in (1, 100)
    ] + [{"kind": "train", "step": 100, "loss": 0.3, "acc": 0.5}]
    panels = (
        ("sharpness / (2/lr)", series("sharpness", "over_threshold"), True),
        ("eigenvalues above 0.75 x 2/lr", series("edge_eigenvalues", "edge_count"), False),
        ("train loss", eos.train_metric("loss"), True),
    )
    seen = []
    real = F.row_panels
    monkeypatch.setattr(
        F, "row_panels", lambda rows, ps, title, ones=(): seen.append((ps, ones)) or real(rows, ps, title, ones)
    )
    assert eos.edge_panels([("lr 0.02", {"standard": [run("a", rec)]})], panels, "t")[:4] == b"\x89PNG"
    names = [p[0] for p in seen[0][0]]
    assert names == ["sharpness / (2/lr)", "train loss"] and seen[0][1] == (0,)


def test_a_negative_hessian_trace_is_drawn_not_dropped_by_a_log_axis(monkeypatch):
    # BN networks at initialisation have a large negative trace (depth quick preset: -1.4e5 at VGG-19)
    rec = [
        {"kind": "probe", "probe": "hessian_trace", "step": 1, "values": {"value": -1.4e5, "stderr": 3e3}},
        {"kind": "probe", "probe": "hessian_trace", "step": 300, "values": {"value": 885.0, "stderr": 85.0}},
    ]
    figs = []
    real = F.subplots
    monkeypatch.setattr(F, "subplots", lambda *a, **k: figs.append(real(*a, **k)) or figs[-1])
    assert depth.depth_panels([("vgg19", {"bn": [run("b", rec)]})], "t")[:4] == b"\x89PNG"
    ax = figs[0][1][0][1]
    assert ax.get_yscale() == "symlog" and list(ax.get_lines()[0].get_ydata()) == [-1.4e5, 885.0]
