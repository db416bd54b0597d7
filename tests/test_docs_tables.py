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
    """(command, the Markdown table after it) for each committed-data command in a page."""
    for m in COMMAND.finditer(text):
        rest = text[m.end() :].lstrip("\n")
        table = []
        for line in rest.splitlines():
            if not line.startswith("|"):
                break
            table.append(line)
        yield m.group(1), "\n".join(table)


PAGES = sorted(DOCS.glob("*.md"))
CASES = [(page.name, cmd, table) for page in PAGES for cmd, table in blocks(page.read_text())]


def test_every_claims_table_of_the_results_page_names_committed_data():
    text = (DOCS / "results.md").read_text()
    tables = len(re.findall(r"^\| experiment \| claim \|", text, re.M))
    checked = sum(1 for page, _, table in CASES if page == "results.md" and table)
    assert tables >= 1 and tables == checked, f"{tables} claims tables, {checked} printed from docs/data/"


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
