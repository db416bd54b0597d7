"""The report's shared figures (landscape.report.figures): what they draw is what the records say, and drawing
leaves the user's matplotlib alone."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from landscape.report import figures as F
from landscape.results import RunRecords
from tests.conftest import ROOT


def run(name: str, records: list[dict], status: dict | None = None) -> RunRecords:
    return RunRecords(Path(name), name, {}, {}, status or {"status": "done"}, records)


def ics(step: int, layers: list[str], cos: list[float]) -> dict:
    return {
        "kind": "probe",
        "probe": "ics_opti",
        "step": step,
        "values": {"layers": layers, "l2": {n: 1.0 for n in layers}, "cosine": dict(zip(layers, cos))},
    }


def test_a_series_of_one_point_is_drawn():
    one = run(
        "one",
        [
            {"kind": "train", "step": 50, "loss": 2.0, "acc": 0.2},
            {"kind": "test", "step": 50, "loss": 2.1, "acc": 0.25},
        ],
    )
    fig, ax = F.subplots()
    F.plot_lines(ax, {"bn": [one]}, F.metric_series("test", "acc"))
    (line,) = ax.get_lines()
    assert list(line.get_xdata()) == [50] and line.get_marker() == "o"


def test_the_divergence_label_only_when_a_run_diverged():
    ok = {"bn": [run("ok", [{"kind": "train", "step": 1, "loss": 2.0, "acc": 0.1}])]}
    bad = {
        "standard": [
            run(
                "d", [{"kind": "train", "step": 1, "loss": 2.0, "acc": 0.1}], {"status": "diverged", "diverged_step": 3}
            )
        ]
    }
    assert not F.diverged(ok) and F.diverged(bad)


def test_user_names_are_not_read_as_mathtext():
    weird = run("$\\frac$ run", [{"kind": "train", "step": s, "loss": 2.0 - s / 10, "acc": 0.1} for s in (1, 2)])
    assert F.training_curves({"$\\frac$": [weird]}, "$\\frac{")[:4] == b"\x89PNG"


def test_importing_the_figures_module_loads_no_plotting_library_and_drawing_leaves_matplotlib_alone():
    code = (
        "import sys, matplotlib; backend = matplotlib.get_backend(); style = dict(matplotlib.rcParams)\n"
        "import landscape.report.figures as F\n"
        "assert 'seaborn' not in sys.modules\n"
        "from pathlib import Path; from landscape.results import RunRecords\n"
        "r = RunRecords(Path('a'), 'a', {}, {}, {'status': 'done'}, [{'kind': 'train', 'step': 1, 'loss': 1.0}])\n"
        "F.regression_curves({'a': [r]}, 't')\n"
        "assert matplotlib.get_backend() == backend and dict(matplotlib.rcParams) == style\n"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]


@pytest.mark.parametrize("command", [["--help"], ["train", "--help"]])
def test_the_help_imports_no_plotting_library(command):
    code = (
        f"import sys; from landscape.cli import main; sys.argv = ['landscape', *{command!r}]\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "bad = [m for m in ('matplotlib', 'seaborn', 'scipy') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]


def test_characters_the_font_lacks_are_said_once_not_warned_per_glyph(recwarn):
    F.MISSING_GLYPHS.clear()
    cjk = run("学习率", [{"kind": "train", "step": s, "loss": 2.0 - s / 10, "acc": 0.1} for s in (1, 2)])
    F.training_curves({"学习率": [cjk]}, "学习率")
    assert not [w for w in recwarn if "missing from font" in str(w.message)]
    from matplotlib import font_manager

    cjk_font = any("CJK" in f.name for f in font_manager.fontManager.ttflist)
    assert F.MISSING_GLYPHS or cjk_font  # collected, unless this machine has a font that draws them
    F.MISSING_GLYPHS.clear()


TO_PNG = F.to_png


def displayed_sizes(fig) -> tuple[int, float]:
    """The PNG's width in pixels and its smallest text's height in pixels as the report's page shows it (a figure
    wider than the page is shrunk to its width, its text with it)."""
    import io

    import matplotlib.text
    from PIL import Image

    png = TO_PNG(fig)
    width = Image.open(io.BytesIO(png)).size[0]
    shown = min(1.0, F.REPORT_WIDTH_IN * F.DPI / width)
    sizes = [t.get_fontsize() for t in fig.findobj(matplotlib.text.Text) if t.get_visible() and t.get_text()]
    return width, min(sizes) * F.DPI / 72 * shown


def test_the_dln_regime_grid_fits_the_page_so_its_tick_labels_are_read_at_their_size():
    from landscape.experiments.dln_regimes import series

    records = [{"kind": "train", "step": s, "loss": 2.0 / s, "acc": None} for s in (1, 10, 100, 1000)] + [
        {"kind": "probe", "probe": "gradient_sweep", "step": s, "values": {"beta_eff": 3.0 + s}} for s in (1, 10)
    ]
    rows = [
        (f"{n} samples, {loss}", {"standard": [run("s", records)], "bn": [run("b", records)]})
        for n in (100, 1000)
        for loss in ("sum", "mean")
    ]
    panels = (
        ("sharpness / threshold", series("sharpness", "over_threshold"), True),
        ("cos(G, G')", series("ics_opti", "mean_cos"), False),
        ("beta_eff", series("gradient_sweep", "beta_eff"), True),
        ("train loss", F.metric_series("train", "loss"), True),
    )
    fig = F.drawing(F.row_panels)(rows, panels, "regimes")
    width, smallest = displayed_sizes(fig)
    assert width <= F.REPORT_WIDTH_IN * F.DPI and smallest >= 10, (width, smallest)


def test_figure_4_fits_the_page_and_says_its_thresholds_above_the_axes_not_on_the_curves(monkeypatch):
    def probe(name, step, values):
        return {"kind": "probe", "probe": name, "step": step, "values": values}

    records = []
    for s in (1, 10, 100):
        records += [
            probe("gradient_sweep", s, {"losses": [2.0, 2.1], "grad_changes": [0.1, 0.3], "beta_eff": 4.0}),
            probe("sharpness", s, {"value": 3.0 * s, "threshold": 20.0}),
            probe("preconditioned_sharpness", s, {"value": 5.0 * s, "threshold": 38.0}),
        ]
    drawn = []
    monkeypatch.setattr(F, "to_png", lambda fig: drawn.append(fig) or b"")
    F.landscape_panels({"standard": [run("s", records)], "bn": [run("b", records)]}, "Figure 4")
    (fig,) = drawn
    width, smallest = displayed_sizes(fig)
    assert width <= F.REPORT_WIDTH_IN * F.DPI and smallest >= 10, (width, smallest)
    shown = [ax for ax in fig.axes if ax.get_visible()]
    assert len(shown) == 5
    said = [ax.get_title(loc="right") for ax in shown]
    assert said[3:] == ["dashed: threshold 20", "dashed: threshold 38"] and not any(said[:3])
    inside = [t.get_text() for ax in shown for t in ax.texts]
    assert not any("dashed" in t or "threshold" in t for t in inside)
