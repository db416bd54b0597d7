import json
import re

import pytest
from typer.testing import CliRunner

import landscape.experiments as ex
from cli import app
from landscape.report import build_report
from landscape.train import train
from tests.conftest import tiny_config

EVIL = '<img src=x onerror=alert(1)>'


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """Every experiment at the smoke preset, plus odd runs: a hostile name, a diverged, a
    running, a failed and a damaged run."""
    out = tmp_path_factory.mktemp("results")
    for experiment in ex.EXPERIMENTS:
        ex.run_experiment(experiment, "smoke", 2 if experiment == "smoothness" else 1, out, log=lambda s: None)
    odd = out / "odd"
    train(tiny_config(name=EVIL, steps=4, probes={"enabled": ["gradient_sweep"], "every": 2}), out=odd)
    train(tiny_config(name="boom", steps=30, optim={"lr": 1e6}), out=odd)
    train(tiny_config(name="halfway", steps=4), out=odd)
    (odd / "halfway" / "status.json").write_text(json.dumps({"status": "running", "step": 2}))
    train(tiny_config(name="broken", steps=2), out=odd)
    (odd / "broken" / "status.json").write_text(json.dumps({"status": "failed", "step": 1, "error": "CUDA OOM"}))
    train(tiny_config(name="damaged", steps=2), out=odd)
    (odd / "damaged" / "env.json").write_text("{not json")
    (odd / "damaged" / "metrics.jsonl").unlink()
    return out


@pytest.fixture(scope="module")
def html(results, tmp_path_factory):
    path = build_report([results], tmp_path_factory.mktemp("report") / "index.html")
    return path.read_text()


def test_sections_and_tables(html):
    for anchor in ("claims", "fig1", "fig2", "fig3", "fig4", "appendix", "runs", "environment", "problems"):
        assert f'id="{anchor}"' in html, anchor
        assert f'href="#{anchor}"' in html, f"table of contents lacks {anchor}"
    assert "Configs side by side" in html and 'class="differs"' in html
    for verdict in ("reproduced", "inconclusive"):
        assert f'class="{verdict}"' in html or f'class="not-{verdict}"' in html
    assert "95% CI" in html and "probe share" in html


def test_every_expected_figure_is_present(html):
    captions = re.findall(r"<figcaption>(.*?)</figcaption>", html)
    expected = ["VGG, lr 0.1: train and test curves", "VGG, lr 0.5: train and test curves",
                "Activation distributions of", "Standard, BN and noisy BN: train and test curves",
                "ICS_distrib: shift between consecutive", "VGG: ICS_opti per layer and step",
                "DLN: ICS_opti per layer and step", "VGG: ICS_opti over training", "DLN: training",
                "VGG: loss variation, gradient predictiveness, beta_eff and sharpness",
                "DLN: loss variation, gradient predictiveness, beta_eff and sharpness",
                "Normalisations: train and test curves", "Normalisations: smoothness along the gradient",
                "Training curves", "Smoothness along the gradient"]
    for e in expected:
        assert any(c.startswith(e) for c in captions), e
    assert "Figure not drawn" not in html
    assert html.count('<img src="data:image/png;base64,') == len(captions)


def test_statuses_and_problems_are_named(html):
    assert "diverged at step" in html
    assert "running (step 2)" in html
    assert "failed at step 1: CUDA OOM" in html
    assert "env.json missing or unreadable" in html and "metrics.jsonl missing" in html


def test_user_strings_are_escaped(html):
    assert EVIL not in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html


def test_no_external_references(html):
    assert "http://" not in html and "https://" not in html
    for attr in re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', html):
        assert not attr.startswith("//") and (attr.startswith("data:") or attr.startswith("#")), attr


def test_a_single_run_and_a_monitor_run_make_a_report(tmp_path):
    train(tiny_config(name="solo", steps=4, probes={"enabled": ["sharpness", "ics_opti"], "every": 2,
                                                    "sharpness_iters": 3}), out=tmp_path)
    page = build_report([tmp_path / "solo"], tmp_path / "r.html").read_text()
    assert "solo" in page and 'id="runs"' in page and "Figure not drawn" not in page


def test_report_cli_and_bad_input(results, tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["report", str(results / "odd"), "-o", str(tmp_path / "x.html")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "x.html").exists()
    bad = runner.invoke(app, ["report", str(tmp_path / "nowhere"), "-o", str(tmp_path / "y.html")])
    assert bad.exit_code == 2 and bad.stderr.startswith("error: ") and bad.stderr.count("\n") == 1
    empty = tmp_path / "empty"
    empty.mkdir()
    assert runner.invoke(app, ["report", str(empty)]).exit_code == 2
