"""The report in real headless Chromium (Debian's package), driven by Playwright; no downloads."""

import os
import shutil
from pathlib import Path

import pytest

from landscape.experiments import REGISTRY
from landscape.report import build_report
from landscape.train import train
from tests.conftest import tiny_config

pytestmark = pytest.mark.slow
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _need_browser():
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        reason = "playwright is not installed (pip install -e .[dev])"
    else:
        if Path(CHROMIUM).exists():
            return
        reason = "chromium is not installed (apt-get install chromium)"
    if os.environ.get("CI"):
        pytest.fail(reason)  # CI installs both: a skip there would hide a broken browser test
    pytest.skip(reason)


def test_report_renders_in_chromium(tmp_path):
    _need_browser()
    from playwright.sync_api import sync_playwright

    train(
        tiny_config(
            name="browser",
            steps=6,
            model={"norm": "batch"},
            probes={
                "enabled": ["gradient_sweep", "ics_opti", "activation_stats", "sharpness"],
                "every": 3,
                "sharpness_iters": 3,
                "activation_batch": 16,
            },
        ),
        out=tmp_path / "runs",
    )
    page_path = build_report([tmp_path / "runs"], tmp_path / "report.html", REGISTRY)
    errors, requests = [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("request", lambda r: requests.append(r.url))
        response = page.goto(page_path.as_uri(), wait_until="load")
        assert response is None or response.ok
        assert page.title() == "landscape report: browser"  # a page of runs outside the paper is titled by them
        sizes = page.eval_on_selector_all(
            "figure img",
            "els => els.map(e => [e.naturalWidth, e.getBoundingClientRect().width, e.getBoundingClientRect().height])",
        )
        assert len(sizes) >= 4 and all(nw > 0 and w > 0 and h > 0 for nw, w, h in sizes), sizes
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 1280, "the page must fit a 1280 px window"
        page.screenshot(path=str(tmp_path / "shot.png"), full_page=True)
        browser.close()
    assert errors == []
    assert all(u.startswith(("file:", "data:")) for u in requests), requests
    assert (tmp_path / "shot.png").stat().st_size > 10_000
