import json
import re

import pytest
from typer.testing import CliRunner

from landscape.cli import app
from landscape.experiments import REGISTRY
from landscape.report import build_report
from landscape.reproduce import run_experiment
from landscape.train import train
from tests.conftest import tiny_config

EVIL = '<img src=x onerror=alert(1)>'


@pytest.fixture(scope="module")
def results(tmp_path_factory, smoke_results):
    """Every experiment at the smoke preset, plus odd runs: a hostile name, a diverged, a
    running, a failed and a damaged run."""
    import shutil

    out = tmp_path_factory.mktemp("results") / "smoke"
    shutil.copytree(smoke_results[0], out)  # every experiment, one seed; smoothness gets a second
    run_experiment("smoothness", "smoke", 2, out, log=lambda s: None)
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
    path = build_report([results], tmp_path_factory.mktemp("report") / "index.html", REGISTRY)
    return path.read_text()


def test_sections_and_tables(html):
    for anchor in ("claims", "fig1", "fig2", "fig3", "fig4", "appendix", "runs", "environment", "problems"):
        assert f'id="{anchor}"' in html, anchor
        assert f'href="#{anchor}"' in html, f"table of contents lacks {anchor}"
    assert "Configs side by side" in html and 'class="differs"' in html
    assert "95% CI" in html and "probe share" in html


def test_each_claim_row_shows_its_summary_verdict(results, html):
    for experiment in REGISTRY:
        for c in json.loads((results / experiment / "summary.json").read_text())["claims"]:
            cls = c["verdict"].replace(" ", "-")
            assert f'<td class="{cls}">{c["verdict"]}</td>' in html, c["id"]


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
    assert "env.json missing, unreadable or not a JSON object" in html and "metrics.jsonl missing" in html


def test_user_strings_are_escaped(html):
    assert EVIL not in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html


def test_no_external_references(html):
    assert "http://" not in html and "https://" not in html
    for attr in re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', html):
        assert not attr.startswith("//") and (attr.startswith("data:") or attr.startswith("#")), attr


def test_a_single_run_and_a_monitor_run_make_a_report(tmp_path):
    import torch

    from landscape.probes import Monitor, every
    from tests.test_probes import CE, batch_for, mlp_bn

    train(tiny_config(name="solo", steps=4, probes={"enabled": ["sharpness", "ics_opti"], "every": 2,
                                                    "sharpness_iters": 3}), out=tmp_path)
    model = mlp_bn()
    batch = batch_for(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with Monitor(tmp_path / "mine", model, opt, CE, every(2), probes=["gradient_sweep", "ics_opti"]) as monitor:
        for step in range(1, 5):
            loss = CE(model(batch[0]), batch[1])
            opt.zero_grad()
            loss.backward()
            monitor.observe(step, batch, loss)
            opt.step()
            monitor.log_train(step, loss=loss.item())
    page = build_report([tmp_path / "solo", tmp_path / "mine"], tmp_path / "r.html", REGISTRY).read_text()
    assert 'id="runs"' in page and "Figure not drawn" not in page and "Problems reading records" not in page
    assert "<td>solo</td>" in page and "<td>mine</td>" in page
    for caption in ("Training curves", "Smoothness along the gradient", "ICS_opti"):
        assert f"<figcaption>{caption}</figcaption>" in page


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
