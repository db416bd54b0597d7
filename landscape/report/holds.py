"""Where each answer holds and where it breaks: the claims of every experiment, regrouped by the
published statement they test (the paper's, and its critiques'), each with the setting it was
measured in (network, width, depth, phase), its value and its verdict.

Each claim names the statement it tests where it is declared (``Claim(..., statement=KEY)``, a key
of :data:`STATEMENTS`), not by reading verdicts: a statement lists every claim that tests it,
whatever came out. The report draws it as its "Where it holds" section, and ``landscape claims PATH
--where`` prints it as Markdown (docs/depth.md's table).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Statement:
    text: str
    source: str


STATEMENTS = {
    "smoother": Statement(
        "BatchNorm makes the landscape smoother along the gradient (Figure 4: loss band, gradient "
        "change, beta_eff, and their scale-free companions)",
        "Santurkar et al. 2018",
    ),
    "sharpness": Statement(
        "BatchNorm's top Hessian eigenvalue (and trace) is lower",
        "Santurkar et al. 2018 (their Section 3's beta-smoothness; measured directly)",
    ),
    "pyhessian": Statement(
        "BatchNorm does not necessarily make the landscape smoother, especially in shallow "
        "networks; the smoother landscape shows in deep ones (top eigenvalue and trace of ResNets)",
        "Yao et al. 2020 (PyHessian)",
    ),
    "yang": Statement(
        "At initialisation, gradients explode with depth in BatchNorm networks without skip connections",
        "Yang et al. 2019",
    ),
    "basin": Statement("BatchNorm's trained weights sit in a wider basin", "Li et al. 2018's slices"),
    "eos_gd": Statement("Full-batch GD sharpens progressively, then hovers at 2/lr", "Cohen et al. 2021"),
    "eos_adam": Statement(
        "Full-batch Adam's preconditioned sharpness settles at 38/lr; the raw sharpness does not", "Cohen et al. 2022"
    ),
    "eos_sgd": Statement(
        "Minibatch SGD's batch sharpness settles at 2/lr while the full-batch sharpness stays below",
        "Andreyev and Beneventano",
    ),
}


def declared_statements(summary: dict, experiments: dict | None) -> dict[str, str]:
    """``{claim id: statement key}`` as the experiment declares its claims now (for a summary written before
    claims carried their statement: landscape 0.3 and earlier)."""
    experiment = (experiments or {}).get(summary.get("experiment"))
    if experiment is None:
        return {}
    from landscape.planning import load_preset

    try:
        preset = load_preset(
            str(summary.get("preset")), tuple(e.preset_key for e in experiments.values() if e.preset_key)
        )
    except Exception:  # noqa: BLE001 (a preset this release no longer has: its claims cannot be looked up)
        return {}
    return {c.id: c.statement for c in experiment.claims(preset) if c.statement}


def where(summaries: list[dict], experiments: dict | None = None) -> list[dict]:
    """Per statement (in the order above), the claims of ``summaries`` that test it, and a tally:
    ``{"text", "source", "rows": [claim dicts with "experiment"], "held": k, "tested": n}``. Statements
    no summary tests are left out. ``experiments`` (the registry) names the statements of claims in
    summaries written before claims carried them."""
    rows: dict[str, list[dict]] = {key: [] for key in STATEMENTS}
    for d in summaries:
        name = d.get("experiment")
        older = None
        for c in d.get("claims", []):
            key = c.get("statement")
            if "statement" not in c:
                older = declared_statements(d, experiments) if older is None else older
                key = older.get(str(c.get("id")))
            if key in rows:
                rows[key].append(dict(c, experiment=name))
    out = []
    for key, st in STATEMENTS.items():
        if rows[key]:
            out.append(
                {
                    "text": st.text,
                    "source": st.source,
                    "rows": rows[key],
                    "tally": tally(rows[key]),
                    "held": sum(verdict_of(r) == "reproduced" for r in rows[key]),
                    "tested": len(rows[key]),
                }
            )
    return out


def verdict_of(c: dict) -> str:
    """A claim's verdict as the tallies count it: after Holm's correction over its experiment's family (a
    diagnostic keeps its own); a summary of an earlier release has only the raw one."""
    return str(c.get("adjusted_verdict") or c.get("verdict") or "")


def tally(rows: list[dict]) -> str:
    """ "reproduced in k of n settings", split by phase of training where claims are judged per phase."""

    def count(rs):
        return f"{sum(verdict_of(r) == 'reproduced' for r in rs)} of {len(rs)}"

    phases = {p: [r for r in rows if str(r.get("id", "")).endswith("." + p)] for p in ("early", "later")}
    if not any(phases.values()):
        return f"reproduced in {count(rows)} settings"
    other = [r for r in rows if not any(r in v for v in phases.values())]
    parts = [
        f"early training (first 10% of steps): {count(phases['early'])}",
        f"later training: {count(phases['later'])}",
    ] + ([f"other settings: {count(other)}"] if other else [])
    return "reproduced in " + "; ".join(parts)


def markdown(groups: list[dict], num) -> str:
    """The groups as Markdown: one table per statement."""
    cell = lambda t: " ".join(str(t).replace("|", "\\|").split())  # noqa: E731
    lines = []
    for g in groups:
        lines += [
            f"**{cell(g['text'])}** ({cell(g['source'])}): {g['tally']}.",
            "",
            "| experiment | setting and claim | value | seeds on the claimed side | verdict |",
            "|---|---|---|---|---|",
        ]
        for c in g["rows"]:
            signs = f"{c['signs']['k']} of {c['signs']['n']}" if c.get("signs") else "-"
            lines.append(
                f"| {cell(c['experiment'])} | {cell(c['claim'])} | {num(c.get('mean'))} "
                f"({cell(c.get('direction', ''))} {num(c.get('threshold'))}) | {signs} | {cell(verdict_of(c))} |"
            )
        lines.append("")
    return "\n".join(lines)
