"""Every results table in docs/ is its command's output: each `landscape claims docs/data/...` printed in a
docs page is run again on the committed inputs and must print the table below it to the last digit; a claims
table in docs/results.md without such a command fails (its data would be nowhere)."""

import re
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from landscape.cli import app

ROOT = Path(__file__).parent.parent
DOCS = ROOT / "docs"
COMMAND = re.compile(r"^    (landscape claims [^\n]*docs/data/[^\n]*)$", re.M)


def blocks(text: str):
    """(command, its output as the page shows it) for each committed-data command in a page: the Markdown table
    after it, or for ``--where`` (one table per published statement, each under its bold heading) every heading
    and table up to the first other line."""
    for m in COMMAND.finditer(text):
        rest = text[m.end() :].lstrip("\n")
        shown = []
        for line in rest.splitlines():
            if not (line.startswith("|") or ("--where" in m.group(1) and (not line or line.startswith("**")))):
                break
            shown.append(line)
        yield m.group(1), "\n".join(shown).strip()


RESULT_HEADERS = re.compile(r"^\| (experiment \| claim|claim \| quantity|experiment \| setting and claim) \|", re.M)


PAGES = sorted(DOCS.glob("*.md"))
CASES = [(page.name, cmd, table) for page in PAGES for cmd, table in blocks(page.read_text())]


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_every_claims_table_in_the_docs_is_printed_from_committed_data(page):
    """A claims table in any docs page lies under a `landscape claims docs/data/...` command that prints it (tables
    of lost records were removed, not kept under a banner)."""
    text = page.read_text()
    tables = len(RESULT_HEADERS.findall(text))
    checked = sum(len(RESULT_HEADERS.findall(table)) for name, _, table in CASES if name == page.name)
    assert tables == checked, f"{page.name}: {tables} claims tables, {checked} printed from docs/data/"
    if page.name == "results.md":
        assert tables >= 1


@pytest.mark.parametrize(("page", "command", "table"), CASES, ids=[f"{p}:{c}" for p, c, _ in CASES])
def test_a_docs_table_is_what_its_command_prints_from_the_committed_inputs(page, command, table, monkeypatch):
    monkeypatch.chdir(ROOT)
    args = shlex.split(command)[1:]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert table, f"{page}: no table after `{command}`"
    assert res.stdout.strip() == table.strip(), f"{page}: `{command}` prints another table than the page shows"


def test_every_test_file_the_docs_name_exists():
    """The docs point readers at tests as evidence: a moved test file leaves a dead pointer (four did, once)."""
    named = {
        path
        for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
        for path in re.findall(r"tests/[A-Za-z0-9_/]+\.py", page.read_text())
    }
    assert named and not [p for p in sorted(named) if not (ROOT / p).is_file()]


def test_the_language_model_table_is_its_commands_output_on_the_committed_records(tmp_path):
    """docs/scale.md's recipe table: what `python -m landscape.recipes.lm figure` prints from docs/data/lm-*."""
    from contextlib import redirect_stdout
    from io import StringIO

    from landscape.recipes.lm import main

    out = StringIO()
    with redirect_stdout(out):
        main(
            ["figure", str(DOCS / "data" / "lm-one"), str(DOCS / "data" / "lm-fsdp"), "--png", str(tmp_path / "f.png")]
        )
    table = out.getvalue().strip()
    assert table.count("\n") == 3 and table in (DOCS / "scale.md").read_text()
