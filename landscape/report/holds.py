"""Where each answer holds and where it breaks: the claims of every experiment, regrouped by the
published statement they test (the paper's, and its critiques'), each with the setting it was
measured in (network, width, depth, phase), its value and its verdict.

The grouping is declared here, by claim id, not by reading verdicts: a statement lists every claim
that tests it, whatever came out. The report draws it as its "Where it holds" section, and
``landscape claims PATH --where`` prints it as Markdown (docs/depth.md's table).
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Statement:
    text: str
    source: str
    claims: tuple[tuple[str, str], ...]  # (experiment, regex over claim ids)


STATEMENTS = (
    Statement("BatchNorm makes the landscape smoother along the gradient (Figure 4: loss band, gradient change, "
              "beta_eff, and their scale-free companions)", "Santurkar et al. 2018",
              (("smoothness", r"^fig4\.vgg\.[a-z_]+\.(early|later)$"),
               ("width", r"^width\.w[\d.]+\.[a-z_]+\.(early|later)$"),
               ("depth", r"^depth\.fig4\."))),
    Statement("BatchNorm's top Hessian eigenvalue (and trace) is lower", "Santurkar et al. 2018 (their Section 3's "
              "beta-smoothness; measured directly)",
              (("smoothness", r"^beyond\.vgg\.sharpness$"),
               ("depth", r"^depth\.(vgg|resnet)\d+\.(sharpness|trace)$"))),
    Statement("BatchNorm does not necessarily make the landscape smoother, especially in shallow networks; the "
              "smoother landscape shows in deep ones (top eigenvalue and trace of ResNets)", "Yao et al. 2020 "
              "(PyHessian)",
              (("depth", r"^depth\.pyhessian\."),)),
    Statement("At initialisation, gradients explode with depth in BatchNorm networks without skip connections",
              "Yang et al. 2019", (("depth", r"^depth\.yang\."),)),
    Statement("BatchNorm's trained weights sit in a wider basin", "Li et al. 2018's slices",
              (("slices", r"^slices\.vgg\.basin$"),)),
    Statement("Full-batch GD sharpens progressively, then hovers at 2/lr", "Cohen et al. 2021",
              (("eos-gd", r"^eos_gd\."),)),
    Statement("Full-batch Adam's preconditioned sharpness settles at 38/lr; the raw sharpness does not",
              "Cohen et al. 2022", (("eos-adam", r"^eos_adam\."),)),
    Statement("Minibatch SGD's batch sharpness settles at 2/lr while the full-batch sharpness stays below",
              "Andreyev and Beneventano", (("eos-sgd", r"^eos_sgd\."),)),
)


def where(summaries: list[dict]) -> list[dict]:
    """Per statement (in the order above), the claims of ``summaries`` that test it, and a tally:
    ``{"text", "source", "rows": [claim dicts with "experiment"], "held": k, "tested": n}``. Statements
    no summary tests are left out."""
    out = []
    for st in STATEMENTS:
        rows = []
        for d in summaries:
            name = d.get("experiment")
            for c in d.get("claims", []):
                if any(name == exp and re.search(rx, str(c.get("id", ""))) for exp, rx in st.claims):
                    rows.append(dict(c, experiment=name))
        if rows:
            out.append({"text": st.text, "source": st.source, "rows": rows, "tally": tally(rows),
                        "held": sum(r.get("verdict") == "reproduced" for r in rows), "tested": len(rows)})
    return out


def tally(rows: list[dict]) -> str:
    """"reproduced in k of n settings", split by phase of training where claims are judged per phase."""
    def count(rs):
        return f"{sum(r.get('verdict') == 'reproduced' for r in rs)} of {len(rs)}"
    phases = {p: [r for r in rows if str(r.get("id", "")).endswith("." + p)] for p in ("early", "later")}
    if not any(phases.values()):
        return f"reproduced in {count(rows)} settings"
    other = [r for r in rows if not any(r in v for v in phases.values())]
    parts = [f"early training (first 10% of steps): {count(phases['early'])}",
             f"later training: {count(phases['later'])}"] + ([f"other settings: {count(other)}"] if other else [])
    return "reproduced in " + "; ".join(parts)


def markdown(groups: list[dict], num) -> str:
    """The groups as Markdown: one table per statement."""
    cell = lambda t: " ".join(str(t).replace("|", "\\|").split())  # noqa: E731
    lines = []
    for g in groups:
        lines += [f"**{cell(g['text'])}** ({cell(g['source'])}): {g['tally']}.", "", "| experiment | setting and claim | value | seeds on the claimed side | verdict |",
                  "|---|---|---|---|---|"]
        for c in g["rows"]:
            signs = f"{c['signs']['k']} of {c['signs']['n']}" if c.get("signs") else "-"
            lines.append(f"| {cell(c['experiment'])} | {cell(c['claim'])} | {num(c.get('mean'))} "
                         f"({cell(c.get('direction', ''))} {num(c.get('threshold'))}) | {signs} | {cell(c['verdict'])} |")
        lines.append("")
    return "\n".join(lines)
