"""Experiment summaries as the report and ``landscape claims`` read them: every ``summary.json`` under
the paths given, each claim row with every field in the type the readers expect."""

from __future__ import annotations

from pathlib import Path

from landscape.runs import read_json


def summary_files(paths: list[Path]) -> list[Path]:
    out = []
    for p in paths:
        if p.is_dir():
            out += sorted(p.rglob("summary.json"))
        elif p.name == "summary.json":
            out.append(p)
    return out


def find_summaries(paths: list[Path]) -> list[tuple[Path, dict | None]]:
    return [(f, _summary(f)) for f in summary_files(paths)]


def _summary(path: Path) -> dict | None:
    """A summary.json in the shape the report uses, or None (listed as a problem) if it has none."""
    d = read_json(path)
    if d is None or not isinstance(d.get("runs", {}), dict):
        return None
    claims = d.get("claims", [])
    d["claims"] = [_claim(c) for c in claims if isinstance(c, dict)] if isinstance(claims, list) else []
    d["seeds"] = (
        [x for x in d["seeds"] if isinstance(x, int) and not isinstance(x, bool)]
        if isinstance(d.get("seeds"), list)
        else []
    )
    for key in ("experiment", "preset"):  # names, or absent: a list or an object here is not a summary's
        if not isinstance(d.get(key), str):
            d.pop(key, None)
    d["experiment"] = d.get("experiment") or path.parent.name
    return d


def _claim(c: dict) -> dict:
    """A claim row with every field the template reads, in the type it expects."""

    def number(x):
        return x if isinstance(x, (int, float)) and not isinstance(x, bool) else None

    ci = c.get("ci")
    ok_ci = isinstance(ci, list) and len(ci) == 2 and all(number(v) is not None for v in ci)
    text = {
        k: str(c.get(k) or "")
        for k in ("id", "claim", "quantity", "direction", "layers", "verdict", "why", "transform", "note")
    }
    signs = c.get("signs")
    ok_signs = isinstance(signs, dict) and all(isinstance(signs.get(k), int) for k in ("k", "n"))
    return {
        **c,
        **text,
        "mean": number(c.get("mean")),
        "ci": ci if ok_ci else None,
        "n": number(c.get("n")),
        "threshold": number(c.get("threshold")),
        "bound": number(c.get("bound")),
        "signs": signs if ok_signs else None,
        "seeds_needed": number(c.get("seeds_needed")),
        "headline": c.get("headline") is not False,
    }
