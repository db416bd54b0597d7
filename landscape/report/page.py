"""The HTML page: sections (one per experiment summary, and one for the runs outside any), their figures,
claims, run and config tables, the environment, and the problems met while reading.

The report reads records only (``metrics.jsonl``, ``status.json``, ``config.yaml``, ``env.json``,
``summary.json``); it never trains or probes. Figures are inline PNGs, CSS is inline, and the
page makes no network request. Every user-provided string goes through Jinja2's autoescape.
"""

from __future__ import annotations

import base64
import json
import os
import re
import time
from pathlib import Path

from jinja2 import Environment, PackageLoader, select_autoescape

from landscape.errors import UserError, quote
from landscape.files import atomic_write, check_output, regular
from landscape.probes.provenance import BITWISE_KEYS
from landscape.report import figures as F
from landscape.report.figures import Figure
from landscape.report.holds import where
from landscape.report.markdown import number_text
from landscape.report.summaries import find_summaries, summary_files
from landscape.results import RunRecords, RunTable, final_test, final_train, find_runs, finite, run_dirs


def _png(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def _flatten(d, prefix=""):
    out = {}
    for k, v in (d or {}).items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = json.dumps(v) if isinstance(v, (list, bool)) or v is None else str(v)
    return out


def config_table(runs: list[RunRecords]) -> dict:
    """Configs side by side: the keys that differ between runs, and all keys (for a <details>)."""
    flat = [_flatten(r.config) for r in runs]
    keys = sorted(set().union(*flat)) if flat else []
    rows = [
        {"key": k, "values": [f.get(k, "-") for f in flat], "differs": len({f.get(k, "-") for f in flat}) > 1}
        for k in keys
    ]
    return {"runs": [r.name for r in runs], "rows": rows, "differing": [r for r in rows if r["differs"]]}


def run_rows(runs: list[RunRecords]) -> list[dict]:
    rows = []
    for r in runs:
        probe_s = sum(finite((rec.get("cost") or {}).get("seconds") for rec in r.kind("probe")))
        train_s = (finite([r.status.get("train_seconds")]) or [None])[0]
        rows.append(
            {
                "name": r.name,
                "path": str(r.path),
                "status": r.describe_status(),
                "state": r.state,
                "train": final_train(r),
                "test": final_test(r),
                "train_seconds": train_s,
                "probe_seconds": probe_s,
                "probe_share": probe_s / train_s if train_s else None,
                "probe_records": len(r.kind("probe")),
                "problems": r.problems,
            }
        )
    return rows


ENV_COLUMNS = (*BITWISE_KEYS, "torchvision", "cpu_model", "host")  # what decides the bits first, then context


def environments(runs: list[RunRecords]) -> list[dict]:
    """The runs grouped by the keys that decide their bits (docs/results.md: compare these to re-run a table bit for
    bit), one row per group: ``{"values": [...ENV_COLUMNS], "runs": [names]}``. A run written before a key existed
    shows it as absent."""
    groups: dict[tuple, dict] = {}
    for r in runs:
        env = r.env or {}
        if not env:
            continue
        values = [_env_text(env, k) for k in ENV_COLUMNS]
        key = tuple(values[: len(BITWISE_KEYS)])
        groups.setdefault(key, {"values": values, "runs": []})["runs"].append(r.name)
    return list(groups.values())


def _env_text(env: dict, key: str) -> str:
    if key not in env:
        return "(not recorded)"
    value = env[key]
    if key in ("data_sha256", "git_commit") and isinstance(value, str):
        return value[:12]
    if isinstance(value, dict):
        return ", ".join(f"{k} {v}" for k, v in value.items())
    return str(value)


def draw(figures: list, where: str, problems: list[str]) -> list[dict]:
    """Draw each figure. A figure function that raises is a bug: the report still completes,
    the figure shows its error, and the error is listed in "Problems reading records"."""
    out = []
    for fig in figures:
        try:
            data = fig.draw(*fig.args)
            if isinstance(data, str):  # inline SVG, built by our code with every name escaped
                out.append({"title": fig.title, "svg": data, "src": None, "error": None})
            else:
                out.append({"title": fig.title, "src": _png(data), "png": data, "error": None})
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            out.append({"title": fig.title, "src": None, "error": error})
            problems.append(f"{where}: figure '{fig.title}' not drawn ({error})")
    return out


def generic_figures(runs: list[RunRecords]) -> list[Figure]:
    """Runs outside any known experiment (a single `landscape train`, a Monitor in a user's loop): their training
    curves and every probe they recorded, titled with the runs' names and their layers' names."""
    figs: list[Figure] = []
    groups = {r.name: [r] for r in runs}
    names = ", ".join(r.name for r in runs[:3]) + (f" and {len(runs) - 3} more" if len(runs) > 3 else "")
    if any(r.kind("train") for r in runs):
        classify = any("acc" in rec for r in runs for rec in r.kind("train"))
        figs.append(
            Figure(f"Training curves: {names}", F.training_curves if classify else F.regression_curves, (groups, names))
        )
    if any(r.probe(p) for r in runs for p in ("gradient_sweep", "sharpness", "preconditioned_sharpness")):
        figs.append(
            Figure(f"Smoothness along the gradient and sharpness: {names}", F.landscape_panels, (groups, names))
        )
    if F.other_quantities(runs):
        figs.append(Figure(f"Curvature and the other probes over training: {names}", F.probe_panels, (groups, names)))
    if any(r.probe("ics_opti") for r in runs):
        figs.append(Figure(f"ICS_opti per layer: {names}", F.ics_heatmaps, (groups, names, True)))
    for probe, quantity, label in (
        ("layer_sharpness", "layer_sharpness", "per-layer sharpness"),
        ("layer_grad_norm", "layer_grad_norm", "gradient norm per layer"),
    ):
        if any(r.probe(probe) for r in runs):
            figs.append(
                Figure(
                    f"{label[0].upper()}{label[1:]}: {names}", F.layer_heatmaps, (groups, probe, quantity, label, names)
                )
            )
    if any(r.probe("spectral_density") for r in runs):
        figs.append(Figure(f"Hessian spectral density: {names}", F.density_panels, (groups, names)))
    layer = F.middle_layer(runs)
    if layer:
        figs.append(
            Figure(f"Activation distributions of {layer}: {names}", F.activation_ridges, (groups, layer, layer))
        )
    for r in runs:
        if F.run_slices(r):
            figs.append(Figure(f"Loss-landscape slices of {r.name} (landscape slice)", F.run_slice_panels, (r,)))
    return figs


def heading(sections: list[dict], runs: list[RunRecords]) -> dict:
    """The page's title: the paper's question where an experiment of it is reported, else the runs' own names."""
    if any(s["experiment"] for s in sections):
        return {"title": "landscape: how normalisation smooths the loss landscape", "paper": True}
    names = ", ".join(r.name for r in runs[:3]) + (f" and {len(runs) - 3} more" if len(runs) > 3 else "")
    return {"title": f"landscape report: {names}", "paper": False}


def seed_trust(claims: list[dict]) -> dict:
    """How far one seed can be trusted, from the claims themselves: how many rest on one seed,
    and, where there are several, how often a single seed fell on the other side of the threshold."""
    single = [c for c in claims if c.get("n") == 1]
    several = [c for c in claims if c.get("signs") and c["signs"]["n"] > 1]
    seeds = sum(c["signs"]["n"] for c in several)
    against = sum(c["signs"]["n"] - c["signs"]["k"] for c in several if c.get("verdict") == "reproduced") + sum(
        c["signs"]["k"] for c in several if c.get("verdict") == "not reproduced"
    )
    decided = sum(c["signs"]["n"] for c in several if c.get("verdict") in ("reproduced", "not reproduced"))
    return {"single": len(single), "several": len(several), "seeds": seeds, "against": against, "decided": decided}


def runs_beside(summaries: list, runs: list[RunRecords]) -> list[RunRecords]:
    """An experiment folder passed alone (``results/quick/train-compare``): its summary names its runs, which an
    experiment writes beside it (``results/quick/runs``); they are read from there. A summary none of whose runs can
    be found ends in one line, never in a report of empty panels."""
    have = {r.name for r in runs}
    extra: dict[str, RunRecords] = {}
    for f, summary in summaries:
        if not summary or not isinstance(summary.get("runs"), dict) or not summary["runs"]:
            continue
        wanted = [n for n in summary["runs"] if n not in have]
        if not wanted:
            continue
        beside = Path(f).parent.parent / "runs"
        if beside.is_dir():
            for r in find_runs([beside]):
                if r.name in wanted and r.name not in extra:
                    extra[r.name] = r
        if not any(n in have or n in extra for n in summary["runs"]):
            example = next(iter(summary["runs"]))
            raise UserError(
                f"none of the runs of {quote(str(f))} (e.g. {quote(example)}) is under the paths given or in "
                f"{quote(str(beside))}; pass the experiment's results folder (its --out), which holds runs/"
            )
    return list(extra.values())


VERDICTS = ("reproduced", "not reproduced", "inconclusive")


def section_tally(claims: list[dict]) -> str | None:
    """What the section's headline claims found, from their verdicts after Holm (what the figures' prose is read
    against): the paper's expectations in the section's words, its results in this line."""
    headline = [c for c in claims if c.get("headline")]
    if not headline:
        return None
    counts = {v: sum(c.get("adjusted_verdict", c.get("verdict")) == v for c in headline) for v in VERDICTS}
    said = ", ".join(f"{n} {v}" for v, n in counts.items() if n)
    return f"Found here, over its {len(headline)} headline claim{'s' * (len(headline) > 1)} (after Holm): {said}."


def build_report(
    paths: list[str | Path], output: str | Path, experiments: dict | None = None, figures_dir: str | Path | None = None
) -> Path:
    """The report of every run and experiment summary under ``paths``, written to ``output``.
    ``experiments``: the experiment registry (``landscape.experiments.REGISTRY``), whose figures and
    titles a summary's section gets; without it every section is drawn as plain runs. ``figures_dir``:
    also write every figure there as ``SECTION-N.png`` (for documentation pages)."""
    paths, output = [Path(p) for p in paths], Path(output)
    if figures_dir is not None:
        folder = Path(figures_dir)
        if folder.exists() and not folder.is_dir():
            raise UserError(f"--figures {quote(figures_dir)} is a file; pass a folder")
        nearest = next(p for p in [folder, *folder.absolute().parents] if p.exists())
        if not os.access(nearest, os.W_OK | os.X_OK):
            raise UserError(
                f"--figures {quote(figures_dir)} cannot be written ({quote(nearest)} is read-only); "
                "pass a writable folder"
            )
    if output.is_dir():
        raise UserError(f"report output '{output}' is a folder; pass a file name such as {output / 'report.html'}")
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise UserError(f"'{missing[0]}' does not exist; pass run directories, experiment folders or their parents")
    # The report may sit at the top of a results folder (reproduce writes OUT/report.html), never inside a
    # run or an experiment's folder, nor over a file it reads: checked before anything is read.
    inputs = [*run_dirs(paths), *(f.parent for f in summary_files(paths))]
    check_output(output, inputs, "report -o", holding=False)
    if figures_dir is not None:  # the figures go beside what is read, never into it, nor where -o is
        check_output(figures_dir, inputs, "--figures", holding=False)
        if Path(figures_dir).resolve() == output.resolve():
            raise UserError(f"--figures {quote(figures_dir)} is the report's own -o; pass another folder")
    if output.exists() and not regular(output):
        raise UserError(f"report output {quote(output)} exists and is not a regular file; pass another -o")
    runs = find_runs(paths)
    summaries = find_summaries(paths)
    runs += runs_beside(summaries, runs)
    if not runs and not summaries:
        raise UserError(
            f"no runs or experiment summaries under {', '.join(map(str, paths))}; "
            "pass the --out folder of `landscape train` or of an experiment"
        )
    REGISTRY = experiments or {}
    by_name = {r.name: r for r in runs}
    problems = [
        f"{s}: unreadable, or not a summary (a JSON object with a 'runs' object)" for s, d in summaries if d is None
    ]
    sections, used = [], set()
    order = {name: i for i, name in enumerate(REGISTRY)}
    good = sorted(
        [(f, d) for f, d in summaries if d], key=lambda fd: (order.get(fd[1].get("experiment"), len(order)), str(fd[0]))
    )
    for f, summary in good:
        name = str(summary.get("experiment", f.parent.name))
        rows = summary.get("runs", {}) if isinstance(summary.get("runs"), dict) else {}
        table = RunTable(rows, {n: by_name[n] for n in rows if n in by_name})
        used.update(table.records)
        experiment = REGISTRY.get(name)
        try:
            figures = experiment.figures(table) if experiment else generic_figures(list(table.records.values()))
        except Exception as exc:  # a bug in the experiment's figure list: say so, draw the rest
            problems.append(f"{f}: figures of '{name}' not listed ({type(exc).__name__}: {exc})")
            figures = []
        title, anchor = (experiment.title, experiment.anchor) if experiment else (name, f"exp-{name}")
        about = experiment.about if experiment else ""
        section_claims = summary.get("claims", [])
        exp_runs = list(table.records.values())
        sections.append(
            {
                "anchor": anchor,
                "title": title,
                "experiment": name,
                "summary_path": str(f),
                "about": about,
                "preset": summary.get("preset"),
                "seeds": summary.get("seeds"),
                "claims": section_claims,
                "tally": section_tally(section_claims),
                "figures": draw(figures, str(f), problems),
                "runs": run_rows(exp_runs),
                "absent": [n for n in rows if n not in by_name],
                "configs": config_table(exp_runs),
            }
        )
    rest = [r for r in runs if r.name not in used]
    if rest:
        try:
            figures = generic_figures(rest)
        except Exception as exc:  # a bug in choosing the figures: say so, list the runs
            problems.append(f"runs: figures not listed ({type(exc).__name__}: {exc})")
            figures = []
        sections.append(
            {
                "anchor": "runs",
                "title": "Runs",
                "experiment": None,
                "claims": [],
                "tally": None,
                "figures": draw(figures, "runs", problems),
                "runs": run_rows(rest),
                "absent": [],
                "configs": config_table(rest),
                "preset": None,
                "seeds": None,
                "about": "Runs outside any experiment (a landscape train, a Monitor in your own loop): their "
                "training curves and whatever probes they recorded.",
                "summary_path": None,
            }
        )
    if F.MISSING_GLYPHS:
        problems.append(
            f"figures: {len(F.MISSING_GLYPHS)} characters of names are not in the figure font and are "
            "drawn as boxes (install a font with them, e.g. Noto Sans CJK, for matplotlib to find)"
        )
        F.MISSING_GLYPHS.clear()
    claims = [dict(c, experiment=s["experiment"]) for s in sections for c in s["claims"] if c["headline"]]
    holds = where([dict(d, experiment=str(d.get("experiment", f.parent.name))) for f, d in good], REGISTRY)
    problems += [f"{r.path}: {p}" for r in runs for p in r.problems]
    env = Environment(loader=PackageLoader("landscape.report", "templates"), autoescape=select_autoescape(["html"]))
    env.filters["num"] = number_text
    verdicts = {v: sum(c.get("verdict") == v for c in claims) for v in VERDICTS}
    adjusted = {v: sum(c.get("adjusted_verdict", c.get("verdict")) == v for c in claims) for v in VERDICTS}
    html = env.get_template("report.html").render(
        sections=sections,
        heading=heading(sections, runs),
        claims=claims,
        holds=holds,
        trust=seed_trust(claims),
        envs=environments(runs),
        env_columns=ENV_COLUMNS,
        problems=problems,
        verdicts=verdicts,
        adjusted=adjusted,
        n_runs=len(runs),
        sources=[str(p) for p in paths],
        generated=time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    )
    output.parent.mkdir(parents=True, exist_ok=True)
    written = atomic_write(output, html)
    if figures_dir is not None:
        folder = Path(figures_dir)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            for section in sections:
                for i, fig in enumerate(f for f in section["figures"] if f.get("png") or f.get("svg")):
                    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", section["anchor"])  # a user's experiment name: no path
                    if fig.get("png"):
                        atomic_write(folder / f"{stem}-{i + 1}.png", fig["png"])
                    else:
                        atomic_write(folder / f"{stem}-{i + 1}.html", fig["svg"])
        except OSError as exc:
            raise UserError(
                f"cannot write figures to {quote(folder)} ({exc.strerror or exc}); pass a writable "
                "--figures folder (the report itself was written)"
            ) from None
    return written
