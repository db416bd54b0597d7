"""``landscape claims``: the claims of experiment summaries as Markdown tables (every docs table of
verdicts is this module's output)."""

from __future__ import annotations

from pathlib import Path

from landscape.errors import UserError, one_line
from landscape.report.holds import markdown, where
from landscape.report.summaries import find_summaries


def claims_markdown(
    paths: list[str | Path], diagnostics: bool = False, experiments: dict | None = None, grouped: bool = False
) -> str:
    """The claims of every experiment summary under ``paths`` as a Markdown table (the README's
    tables come from this): the value as tested (a ratio's geometric mean over seeds, a difference's mean), its 95%
    interval, the bound on the claimed side, the sign count, the verdict and why, and the verdict after Holm's
    correction over the experiment's headline claims. Diagnostics are left out unless asked for. ``experiments``:
    the registry, whose order the table follows."""
    paths = [Path(p) for p in paths]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise UserError(f"'{missing[0]}' does not exist; pass experiment folders or their parent")
    order = {name: i for i, name in enumerate(experiments or {})}  # experiments in the registry's order
    summaries = sorted(
        [(f, d) for f, d in find_summaries(paths) if d],
        key=lambda fd: (order.get(fd[1].get("experiment"), len(order)), str(fd[0])),
    )
    if not summaries:
        raise UserError(f"no experiment summaries under {', '.join(map(str, paths))}; pass the --out of an experiment")
    if grouped:  # by the published statement each claim tests (landscape.report.holds)
        groups = where([d for _, d in summaries], experiments)
        if not groups:
            raise UserError(
                "none of these summaries' claims tests a statement of landscape.report.holds; "
                "pass width, depth, smoothness, slices or eos-* folders"
            )
        return markdown(groups, number_text)
    rows = [
        "| experiment | claim | quantity | value | 95% CI | bound (97.5%) | seeds on the claimed side | verdict "
        "| verdict, Holm over the family |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for _, d in summaries:
        family = sum(c["headline"] for c in d["claims"])
        for c in d["claims"]:
            if not (c["headline"] or diagnostics):
                continue
            cell = lambda t: " ".join(one_line(t.replace("|", "\\|")).split())  # one table row, whatever the text
            ci = f"[{number_text(c['ci'][0], 3)}, {number_text(c['ci'][1], 3)}]" if c["ci"] else "-"
            bound = (
                f"{'>' if c['direction'] == 'above' else '<'} {number_text(c['bound'], 3)}"
                if c["bound"] is not None
                else "-"
            )
            signs = f"{c['signs']['k']} of {c['signs']['n']}" if c["signs"] else "-"
            verdict = c["verdict"] + (f" ({c['why']})" if c["why"] else "")
            adjusted = c["adjusted_verdict"] + (f" (of {family})" if c["headline"] else " (a diagnostic: not in it)")
            value = ("geometric mean " if c["transform"] == "log" else "") + number_text(c["mean"])
            rows.append(
                f"| {cell(str(d.get('experiment')))} | {cell(c['claim'])} | {cell(c['quantity'])} "
                f"({c['direction']} {number_text(c['threshold'])}) | {value} | {ci} | {bound} | {signs} | "
                f"{cell(verdict)} | {cell(adjusted)} |"
            )
    return "\n".join(rows) + "\n"


def number_text(x, digits: int = 4) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        if x != x:
            return "nan"
        return f"{x:.{digits}g}"
    return str(x)
