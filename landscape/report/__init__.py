"""``landscape report``: one self-contained HTML file from run directories and experiment summaries.

The report reads records only (``metrics.jsonl``, ``status.json``, ``config.yaml``, ``env.json``,
``summary.json``); it never trains or probes. Figures are inline PNGs, CSS is inline, and the
page makes no network request. Every user-provided string goes through Jinja2's autoescape.
"""

from __future__ import annotations

import base64
import json
import time
from collections import defaultdict
from pathlib import Path

from jinja2 import Environment, PackageLoader, select_autoescape

from landscape.errors import UserError
from landscape.report import figures as F
from landscape.results import RunRecords, final_test, final_train, find_runs

EXPERIMENT_TITLES = {
    "train-compare": ("Figure 1: training with and without BatchNorm", "fig1"),
    "ics-distrib": ("Figure 2: noisy BatchNorm and ICS_distrib", "fig2"),
    "ics-opti": ("Figure 3: ICS from the optimisation view (ICS_opti)", "fig3"),
    "smoothness": ("Figure 4: the landscape along the gradient", "fig4"),
    "norms": ("Appendix: l_p normalisations", "appendix"),
}


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
    rows = [{"key": k, "values": [f.get(k, "-") for f in flat], "differs": len({f.get(k, "-") for f in flat}) > 1}
            for k in keys]
    return {"runs": [r.name for r in runs], "rows": rows, "differing": [r for r in rows if r["differs"]]}


def run_rows(runs: list[RunRecords]) -> list[dict]:
    rows = []
    for r in runs:
        probe_s = sum(rec.get("cost", {}).get("seconds", 0.0) or 0.0 for rec in r.kind("probe"))
        train_s = r.status.get("train_seconds")
        rows.append({"name": r.name, "path": str(r.path), "status": r.describe_status(), "state": r.state,
                     "train": final_train(r), "test": final_test(r), "train_seconds": train_s,
                     "probe_seconds": probe_s,
                     "probe_share": probe_s / train_s if train_s else None,
                     "probe_records": len(r.kind("probe")), "problems": r.problems})
    return rows


def environments(runs: list[RunRecords]) -> list[dict]:
    seen, out = set(), []
    for r in runs:
        env = r.env or {}
        key = tuple(env.get(k) for k in ("torch", "torchvision", "python", "device", "device_name", "git_commit"))
        if env and key not in seen:
            seen.add(key)
            out.append({"runs": [x.name for x in runs if (x.env or {}).get("git_commit") == env.get("git_commit")
                                 and (x.env or {}).get("device") == env.get("device")], **env})
    return out


def group(runs: list[RunRecords], arch: str | None = None, lr: float | None = None) -> dict[str, list[RunRecords]]:
    """Runs by network (standard, bn, ...) in the paper's order; several seeds share a group."""
    out = defaultdict(list)
    for r in runs:
        cfg = r.config or {}
        if arch and cfg.get("model", {}).get("arch") != arch:
            continue
        if lr is not None and cfg.get("optim", {}).get("lr") != lr:
            continue
        out[F.net_of(r)].append(r)
    order = {n: i for i, n in enumerate(F.NET_ORDER)}
    return dict(sorted(out.items(), key=lambda kv: order.get(kv[0], 99)))


def _figure(figs: list, title: str, fn, *args) -> None:
    """Draw one figure; a figure that cannot be drawn from what is recorded says so instead."""
    try:
        figs.append({"title": title, "src": _png(fn(*args)), "error": None})
    except Exception as exc:  # a partial or odd run must not take the report down
        figs.append({"title": title, "src": None, "error": f"{type(exc).__name__}: {exc}"})


def experiment_figures(name: str, runs: list[RunRecords], lrs: list[float]) -> list[dict]:
    figs: list[dict] = []
    if name == "train-compare":
        for lr in lrs:
            g = group(runs, "vgg", lr)
            _figure(figs, f"VGG, lr {lr:g}: train and test curves", F.training_curves, g, f"lr {lr:g}")
        g = group(runs, "vgg", lrs[0])
        layer = F.middle_layer([r for rs in g.values() for r in rs])
        if layer:
            _figure(figs, f"Activation distributions of {layer} over training (lr {lrs[0]:g})", F.activation_ridges,
                    g, layer, f"input of {layer}")
    elif name == "ics-distrib":
        g = group(runs, "vgg")
        _figure(figs, "Standard, BN and noisy BN: train and test curves", F.training_curves, g, "ICS_distrib")
        layer = F.middle_layer(runs)
        if layer:
            _figure(figs, f"Activation distributions of {layer} over training", F.activation_ridges, g, layer,
                    f"input of {layer}")
        _figure(figs, "ICS_distrib: shift between consecutive measurements on a fixed batch", F.shift_curves, g,
                "distribution shift")
    elif name == "ics-opti":
        for arch in ("vgg", "dln"):
            g = group(runs, arch)
            if g:
                _figure(figs, f"{arch.upper()}: ICS_opti per layer and step", F.ics_heatmaps, g, arch.upper())
                _figure(figs, f"{arch.upper()}: ICS_opti over training", F.ics_curves, g, arch.upper())
                curves = F.training_curves if arch == "vgg" else F.regression_curves
                _figure(figs, f"{arch.upper()}: training", curves, g, arch.upper())
    elif name == "smoothness":
        for arch in ("vgg", "dln"):
            g = group(runs, arch)
            if g:
                _figure(figs, f"{arch.upper()}: loss variation, gradient predictiveness, beta_eff and sharpness",
                        F.landscape_panels, g, arch.upper())
    elif name == "norms":
        g = group(runs, "vgg")
        _figure(figs, "Normalisations: train and test curves", F.training_curves, g, "l_p normalisations")
        _figure(figs, "Normalisations: smoothness along the gradient", F.landscape_panels, g, "l_p normalisations")
        _figure(figs, "Normalisations: median smoothness over training", F.summary_bars, g, "medians over probe steps")
        layer = F.middle_layer(runs)
        if layer:
            _figure(figs, f"Activation distributions of {layer}", F.activation_ridges, g, layer, f"input of {layer}")
    return figs


def generic_figures(runs: list[RunRecords]) -> list[dict]:
    """Runs outside any experiment summary (a single `landscape train`, a Monitor in a user's loop)."""
    figs: list[dict] = []
    groups = {r.name: [r] for r in runs}
    if any(r.kind("train") for r in runs):
        classify = any("acc" in rec for r in runs for rec in r.kind("train"))
        _figure(figs, "Training curves", F.training_curves if classify else F.regression_curves, groups, "runs")
    if any(r.probe("gradient_sweep") or r.probe("sharpness") for r in runs):
        _figure(figs, "Smoothness along the gradient", F.landscape_panels, groups, "runs")
    if any(r.probe("ics_opti") for r in runs):
        _figure(figs, "ICS_opti", F.ics_heatmaps, groups, "runs")
    layer = F.middle_layer(runs)
    if layer:
        _figure(figs, f"Activation distributions of {layer}", F.activation_ridges, groups, layer, layer)
    return figs


def find_summaries(paths: list[Path]) -> list[tuple[Path, dict | None]]:
    out = []
    for p in paths:
        if p.is_dir():
            files = sorted(p.rglob("summary.json"))
        else:
            files = [p] if p.name == "summary.json" else []
        for f in files:
            try:
                out.append((f, json.loads(f.read_text())))
            except (OSError, ValueError):
                out.append((f, None))
    return out


def build_report(paths: list[str | Path], output: str | Path) -> Path:
    paths = [Path(p) for p in paths]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise UserError(f"'{missing[0]}' does not exist; pass run directories, experiment folders or their parents")
    runs = find_runs([p for p in paths if p.is_dir()])
    summaries = find_summaries(paths)
    if not runs and not summaries:
        raise UserError(f"no runs or experiment summaries under {', '.join(map(str, paths))}; "
                        "pass the --out folder of `landscape train` or of an experiment")
    by_name = {r.name: r for r in runs}
    problems = [f"{s}: unreadable summary.json" for s, d in summaries if d is None]
    sections, used = [], set()
    order = {name: i for i, name in enumerate(EXPERIMENT_TITLES)}
    good = sorted([(f, d) for f, d in summaries if d], key=lambda fd: order.get(fd[1].get("experiment"), 99))
    for f, summary in good:
        name = summary.get("experiment", f.parent.name)
        names = list(summary.get("runs", {}))
        exp_runs = [by_name[n] for n in names if n in by_name]
        absent = [n for n in names if n not in by_name]
        used.update(n for n in names if n in by_name)
        lrs = sorted({v.get("lr") for v in summary.get("runs", {}).values() if v.get("arch") == "vgg"}) or [0.1]
        title, anchor = EXPERIMENT_TITLES.get(name, (name, name))
        sections.append({"anchor": anchor, "title": title, "experiment": name, "summary_path": str(f),
                         "preset": summary.get("preset"), "seeds": summary.get("seeds"),
                         "claims": summary.get("claims", []), "figures": experiment_figures(name, exp_runs, lrs),
                         "runs": run_rows(exp_runs), "absent": absent, "configs": config_table(exp_runs)})
    rest = [r for r in runs if r.name not in used]
    if rest:
        sections.append({"anchor": "runs", "title": "Runs", "experiment": None, "claims": [],
                         "figures": generic_figures(rest), "runs": run_rows(rest), "absent": [],
                         "configs": config_table(rest), "preset": None, "seeds": None, "summary_path": None})
    claims = [dict(c, experiment=s["experiment"]) for s in sections for c in s["claims"]]
    problems += [f"{r.path}: {p}" for r in runs for p in r.problems]
    env = Environment(loader=PackageLoader("landscape.report", "templates"), autoescape=select_autoescape(["html"]))
    env.filters["num"] = _num
    html = env.get_template("report.html").render(
        sections=sections, claims=claims, envs=environments(runs), problems=problems, n_runs=len(runs),
        sources=[str(p) for p in paths], generated=time.strftime("%Y-%m-%d %H:%M:%S %Z"))
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.tmp")
    tmp.write_text(html)
    tmp.replace(output)
    return output


def _num(x, digits: int = 4) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        if x != x:
            return "nan"
        return f"{x:.{digits}g}"
    return str(x)
