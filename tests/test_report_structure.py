"""The report reads experiment summaries' own run descriptions, draws every figure of every
registered experiment, and lists a figure that fails instead of crashing."""

import json
import os
import subprocess
import sys

import pytest

from landscape.experiments import REGISTRY
from landscape.report import build_report
from landscape.report import figures as F


@pytest.fixture(scope="module")
def smoke(smoke_results):
    return smoke_results


def test_every_figure_of_every_experiment_draws_on_the_smoke_preset(smoke):
    out, summaries, html = smoke
    assert set(summaries) == set(REGISTRY)
    assert "Problems reading records" not in html and "Figure not drawn" not in html
    for experiment in REGISTRY.values():
        assert f'id="{experiment.anchor}"' in html and experiment.title in html


def test_the_report_groups_runs_by_the_summary_not_by_configs(smoke, tmp_path):
    out, summaries, _ = smoke
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    path = copy / "smoothness" / "summary.json"
    summary = json.loads(path.read_text())
    for row in summary["runs"].values():  # relabel: the report must follow the summary's net names
        row["net"] = {"standard": "plain", "bn": "normalised"}[row["net"]]
    path.write_text(json.dumps(summary))
    for name in ("train-compare", "ics-distrib", "ics-opti", "norms"):
        shutil.rmtree(copy / name)
    html = build_report([copy], tmp_path / "r.html", REGISTRY).read_text()
    assert "Problems reading records" not in html
    assert html.count("<figcaption>VGG: loss variation") == 1


def test_a_figure_that_raises_is_listed_as_a_problem_and_the_report_completes(smoke, tmp_path, monkeypatch):
    out, _, _ = smoke

    def broken(*args):
        raise RuntimeError("a bug in a figure")

    monkeypatch.setattr(F, "landscape_panels", broken)
    html = build_report([out], tmp_path / "r.html", REGISTRY).read_text()
    assert "Problems reading records" in html
    assert "figure &#39;VGG: loss variation, gradient predictiveness, beta_eff and sharpness&#39; not drawn " \
           "(RuntimeError: a bug in a figure)" in html
    assert "<figcaption>VGG: ICS_opti per layer and step</figcaption>" in html  # the others are drawn


def test_colours_are_fixed_per_network_in_every_process():
    code = "from landscape.report.figures import color_of; print([color_of(n) for n in ('bn', 'standard', 'my-run')])"
    seen = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": str(seed)}).stdout for seed in (1, 2)}
    assert len(seen) == 1
    assert F.color_of("bn") != F.color_of("standard") and F.color_of("bn") == F._palette()[1]  # bn is the second kind
