import json
import os
import re
import subprocess
import sys

import pytest
import torch
from markupsafe import escape  # what the page template escapes with
from typer.testing import CliRunner

from landscape.cli import app
from landscape.experiments import REGISTRY
from landscape.report import build_report
from landscape.report import figures as F
from landscape.reproduce import run_experiment
from landscape.train import train
from tests.conftest import tiny_config

EVIL = "<img src=x onerror=alert(1)>"


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
    expected = [
        "VGG, lr 0.1: train and test curves",
        "VGG, lr 0.5: train and test curves",
        "Activation distributions of",
        "Standard, BN and noisy BN: train and test curves",
        "ICS_distrib: shift between consecutive",
        "VGG: ICS_opti per layer and step",
        "DLN: ICS_opti per layer and step",
        "VGG: ICS_opti over training",
        "DLN: training",
        "VGG: loss variation, gradient predictiveness, beta_eff and sharpness",
        "DLN: loss variation, gradient predictiveness, beta_eff and sharpness",
        "Normalisations: train and test curves",
        "Normalisations: smoothness along the gradient",
        "Training curves",
        "Smoothness along the gradient",
    ]
    for e in expected:
        assert any(c.startswith(e) for c in captions), e
    assert "Figure not drawn" not in html
    inline = html.count('<div class="hover-slices">') + html.count("<p>No 2D slice to show.</p>")
    assert html.count('<img src="data:image/png;base64,') + inline == len(captions)


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

    from landscape.probes import Monitor, every
    from tests.probes.reference import CE, batch_for, mlp_bn

    train(
        tiny_config(
            name="solo", steps=4, probes={"enabled": ["sharpness", "ics_opti"], "every": 2, "sharpness_iters": 3}
        ),
        out=tmp_path,
    )
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
    for caption in ("Training curves", "Smoothness along the gradient and sharpness", "ICS_opti per layer"):
        assert f"<figcaption>{caption}: solo, mine</figcaption>" in page  # titled with the runs they draw


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


def test_the_report_keeps_diagnostics_in_their_section_and_says_what_one_seed_is_worth(smoke_results):
    _, summaries, html = smoke_results
    top = html[html.index('<section id="claims">') : html.index("</section>")]
    assert "diagnostic" not in top and "n32-mean" not in top and "every-N probe steps only" not in top
    regimes = html[html.index('<section id="dln-regimes">') :]
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


runner = CliRunner()


def test_records_of_the_wrong_shape_are_listed_with_file_and_line_and_the_rest_is_drawn(tmp_path):
    runs = tmp_path / "runs"
    for name in ("good", "lists", "types"):
        train(tiny_config(name=name, steps=4, probes={"enabled": ["gradient_sweep"], "every": 2}), out=runs)
    with open(runs / "lists" / "metrics.jsonl", "a") as f:
        f.write("[1, 2, 3]\n")  # a JSON list, not an object
        f.write(json.dumps({"kind": "probe", "probe": "gradient_sweep", "step": 5, "values": {}, "cost": None}) + "\n")
        f.write(json.dumps({"kind": "probe", "probe": "gradient_sweep", "step": 6, "values": {}, "cost": [1]}) + "\n")
        f.write(json.dumps({"kind": "train", "step": "seven", "loss": 1.0}) + "\n")
    (runs / "lists" / "status.json").write_text("[1, 2]")
    with open(runs / "types" / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"kind": "train", "step": 8, "loss": "low", "acc": None}) + "\n")
        f.write(
            json.dumps(
                {
                    "kind": "probe",
                    "probe": "gradient_sweep",
                    "step": 8,
                    "values": {"losses": ["a", None], "grad_change": "x", "beta_eff": "big"},
                }
            )
            + "\n"
        )
    summary = tmp_path / "exp" / "summary.json"
    summary.parent.mkdir()
    summary.write_text(json.dumps({"experiment": "smoothness", "runs": ["not", "an", "object"]}))
    res = runner.invoke(app, ["report", str(tmp_path), "-o", str(tmp_path / "r.html")])
    assert res.exit_code == 0, res.output
    html = (tmp_path / "r.html").read_text()
    assert "Problems reading records" in html
    for line in (
        "metrics.jsonl line 7: a JSON list, not an object",
        "line 9: &#39;cost&#39; is not an object",
        "line 10: &#39;step&#39; is not an integer",
        "status.json missing, unreadable or not a JSON object",
        "summary.json: unreadable, or not a summary",
    ):
        assert line in html, line
    assert "<figcaption>Smoothness along the gradient and sharpness: good, lists, types</figcaption>" in html
    assert "Figure not drawn" not in html


def test_every_figure_of_every_experiment_draws_on_the_smoke_preset(smoke):
    out, summaries, html = smoke
    assert set(summaries) == set(REGISTRY)
    assert "Problems reading records" not in html and "Figure not drawn" not in html
    for experiment in REGISTRY.values():
        assert f'id="{experiment.anchor}"' in html and str(escape(experiment.title)) in html


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
    assert (
        "figure &#39;VGG: loss variation, gradient predictiveness, beta_eff and sharpness&#39; not drawn "
        "(RuntimeError: a bug in a figure)" in html
    )
    assert "<figcaption>VGG: ICS_opti per layer and step</figcaption>" in html  # the others are drawn


def test_colours_are_fixed_per_network_in_every_process():
    code = "from landscape.report.figures import color_of; print([color_of(n) for n in ('bn', 'standard', 'my-run')])"
    seen = {
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": str(seed)},
        ).stdout
        for seed in (1, 2)
    }
    assert len(seen) == 1
    assert F.color_of("bn") != F.color_of("standard") and F.color_of("bn") == F._palette()[1]  # bn is the second kind


@pytest.fixture(scope="module")
def smoke(smoke_results):
    return smoke_results


def test_the_report_opens_with_a_summary_and_says_what_each_section_shows(html):
    assert "In short:</strong> of " in html and " reproduced, " in html and " inconclusive" in html
    assert html.count('<p class="about">What to look for:') == len(REGISTRY)


def test_report_figures_folder_writes_each_figure_and_refuses_a_file(results, tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["report", str(results), "-o", str(tmp_path / "r.html"), "--figures", str(tmp_path / "f")])
    assert res.exit_code == 0, res.output
    pngs = sorted((tmp_path / "f").glob("*.png"))
    assert pngs and all(p.read_bytes().startswith(b"\x89PNG") for p in pngs)
    (tmp_path / "file").write_text("keep")
    bad = runner.invoke(
        app, ["report", str(results), "-o", str(tmp_path / "s.html"), "--figures", str(tmp_path / "file")]
    )
    assert bad.exit_code == 2 and bad.stderr.count("\n") == 1 and "is a file" in bad.stderr
    assert (tmp_path / "file").read_text() == "keep" and not (tmp_path / "s.html").exists()


def test_where_groups_claims_by_the_statement_they_test_whatever_their_verdict(tmp_path):
    from landscape.report.holds import where

    def claim(cid, verdict, statement=None):
        return {
            "statement": statement,
            "id": cid,
            "claim": cid,
            "verdict": verdict,
            "mean": 2.0,
            "direction": "above",
            "threshold": 1.0,
            "signs": {"k": 1, "n": 1},
            "headline": False,
        }

    summaries = [
        {
            "experiment": "width",
            "claims": [
                claim("width.w1.beta_eff.early", "not reproduced", "smoother"),
                claim("width.w1.beta_eff.later", "reproduced", "smoother"),
            ],
        },
        {
            "experiment": "depth",
            "claims": [
                claim("depth.yang.vgg_bn_grows", "inconclusive", "yang"),
                claim("depth.pyhessian.resnet20.trace", "reproduced", "pyhessian"),
            ],
        },
        {"experiment": "norms", "claims": [claim("norms.l1", "reproduced")]},
    ]
    groups = {g["source"]: g for g in where(summaries)}
    fig4 = groups["Santurkar et al. 2018"]
    assert [r["id"] for r in fig4["rows"]] == ["width.w1.beta_eff.early", "width.w1.beta_eff.later"]
    assert fig4["tally"] == "reproduced in early training (first 10% of steps): 0 of 1; later training: 1 of 1"
    assert [r["id"] for r in groups["Yang et al. 2019"]["rows"]] == ["depth.yang.vgg_bn_grows"]
    assert groups["Yao et al. 2020 (PyHessian)"]["tally"] == "reproduced in 1 of 1 settings"
    assert not any("norms.l1" == r["id"] for g in groups.values() for r in g["rows"])


def test_claims_where_prints_the_grouped_tables_and_refuses_folders_without_such_claims(smoke_results):
    runner = CliRunner()
    out, _, html = smoke_results
    res = runner.invoke(app, ["claims", str(out), "--where"])
    assert res.exit_code == 0, res.output
    assert "(Santurkar et al. 2018): reproduced in" in res.output and "| experiment | setting and claim |" in res.output
    assert 'id="holds"' in html and "Where each answer holds" in html
    empty = out.parent / "no-such-claims"
    (empty / "x").mkdir(parents=True, exist_ok=True)
    (empty / "x" / "summary.json").write_text('{"experiment": "norms", "runs": {}, "claims": []}')
    bad = runner.invoke(app, ["claims", str(empty), "--where"])
    assert bad.exit_code == 2 and bad.stderr.count("\n") == 1


def test_the_slices_section_has_a_hoverable_svg_with_one_titled_cell_per_point(smoke_results):
    _, _, html = smoke_results
    block = re.search(r'<div class="hover-slices">(.*?)</div>', html, re.S)
    assert block, "no hoverable slice"
    cells = re.findall(r"<rect [^>]*><title>\(([-\d.e]+), ([-\d.e]+)\): (loss [\d.e+-]+|not finite)", block.group(1))
    assert cells and len(cells) % 9 == 0  # the smoke preset's 3 x 3 grid, per network
    assert "<script" not in block.group(1)


def test_the_environment_table_groups_runs_by_the_keys_that_decide_their_bits():
    """docs/results.md tells users to compare the bitwise keys: the report shows exactly those (cpu_capability,
    onednn_isa and data_sha256 among them), one row per combination."""
    from landscape.probes.provenance import BITWISE_KEYS
    from landscape.report.page import ENV_COLUMNS, environments
    from landscape.results import RunRecords

    def run(name, isa):
        env = {k: f"{k}-value" for k in BITWISE_KEYS} | {"onednn_isa": isa, "data_sha256": "ab" * 32}
        return RunRecords(name=name, path=None, config={}, status={}, records=[], env=env)

    rows = environments([run("a", "Intel AVX2"), run("b", "Intel AVX2"), run("c", "Intel AVX-512")])
    assert [r["runs"] for r in rows] == [["a", "b"], ["c"]]
    assert {"cpu_capability", "onednn_isa", "data_sha256"} <= set(ENV_COLUMNS)
    assert rows[0]["values"][ENV_COLUMNS.index("data_sha256")] == "ab" * 6
    assert rows[0]["values"][ENV_COLUMNS.index("host")] == "(not recorded)"


def test_runs_outside_the_papers_kinds_get_distinct_bright_colours():
    """Two of a user's runs in one report: two different, clearly coloured lines (not navy and dark grey)."""
    import colorsys

    a, b = F.color_of("user-run-a"), F.color_of("user-run-b")
    assert a != b and F.color_of("user-run-a") == a
    assert all(colorsys.rgb_to_hls(*c)[1] > 0.25 and colorsys.rgb_to_hls(*c)[2] > 0.5 for c in (a, b))


def test_an_experiment_folder_alone_is_reported_with_the_runs_beside_it(smoke_results, tmp_path):
    """`landscape report results/quick/train-compare`: the summary names its runs, read from results/quick/runs;
    a summary none of whose runs can be found ends in one line (exit 2), never in a page of empty panels."""
    import shutil

    out, summaries, _ = smoke_results
    runner = CliRunner()
    res = runner.invoke(app, ["report", str(out / "train-compare"), "-o", str(tmp_path / "r.html")])
    assert res.exit_code == 0, res.output
    page = (tmp_path / "r.html").read_text()
    assert all(f"<td>{name}</td>" in page for name in summaries["train-compare"]["runs"])
    alone = tmp_path / "alone" / "train-compare"
    shutil.copytree(out / "train-compare", alone)
    bad = runner.invoke(app, ["report", str(alone), "-o", str(tmp_path / "s.html")])
    assert bad.exit_code == 2 and bad.stderr.count("\n") == 1 and "holds runs/" in bad.stderr
    assert not (tmp_path / "s.html").exists()


def test_each_section_says_what_its_headline_claims_found_after_holm(results, html):
    """The sections' prose gives the paper's expectations; what was found here is one line counted from the
    summary's adjusted verdicts, so a section's words cannot contradict its claim rows."""
    for name, experiment in REGISTRY.items():
        claims = json.loads((results / name / "summary.json").read_text())["claims"]
        headline = [c for c in claims if c["headline"]]
        section = html[html.index(f'<section id="{experiment.anchor}">') :]
        section = section[: section.index("</section>")]
        if not headline:
            assert 'class="summary tally"' not in section, name
            continue
        counts = {}
        for c in headline:
            v = c.get("adjusted_verdict", c["verdict"])
            counts[v] = counts.get(v, 0) + 1
        said = ", ".join(f"{counts[v]} {v}" for v in ("reproduced", "not reproduced", "inconclusive") if v in counts)
        assert f"over its {len(headline)} headline claim" in section and f"(after Holm): {said}." in section, name
        assert section.count("<th>after Holm</th>") == 1, name
