"""The record readers (report, claims, export) under hostile records: random mutations of a real
run's metrics.jsonl, status.json, config.yaml and of a real summary.json (types swapped, fields
dropped, values enormous, nesting deep, bytes corrupted) never raise out of them; what they cannot
use is listed, the rest is drawn. Also: export is idempotent, and special files never block."""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import pytest

from landscape.errors import UserError
from landscape.experiments import REGISTRY
from landscape.report import build_report, claims_markdown

SWAPS = [None, True, 0, -1, 10**30, 1e308, -1e308, "x", "\ud800", [], [1, "a", None], {}, {"a": [1]}]


def mutate_value(rng: random.Random, value):
    """One value replaced, dropped or nested deep somewhere inside ``value`` (a parsed JSON/YAML document)."""
    if isinstance(value, dict) and value and rng.random() < 0.7:
        key = rng.choice(list(value))
        if rng.random() < 0.2:
            value.pop(key)
        else:
            value[key] = mutate_value(rng, value[key])
        return value
    if isinstance(value, list) and value and rng.random() < 0.7:
        i = rng.randrange(len(value))
        value[i] = mutate_value(rng, value[i])
        return value
    if rng.random() < 0.1:  # written out as text by deepen(): no encoder could write it
        return f"__DEEP_{rng.choice([50, 150, 1200, 5000])}__"
    return rng.choice(SWAPS)


def deepen(text: str) -> str:
    """The placeholders of mutate_value as lists nested that deep (valid JSON and YAML flow style)."""
    import re

    return re.sub(r"""["']?__DEEP_(\d+)__["']?""", lambda m: "[" * int(m.group(1)) + "1" + "]" * int(m.group(1)), text)


def mutate_file(rng: random.Random, path: Path) -> None:
    raw = path.read_bytes()
    choice = rng.random()
    if choice < 0.15 and raw:  # corrupt bytes
        data = bytearray(raw)
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        path.write_bytes(bytes(data))
        return
    if choice < 0.2:  # nesting far deeper than any parser's recursion limit
        path.write_text("[" * 100_000 + "]" * 100_000 + "\n")
        return
    try:  # a file an earlier mutation already made unparseable gets its bytes corrupted instead
        if path.suffix == ".jsonl":
            lines = raw.decode().splitlines()
            i = rng.randrange(len(lines))
            lines[i] = deepen(json.dumps(mutate_value(rng, json.loads(lines[i]))))
            path.write_text("\n".join(lines) + "\n")
        elif path.suffix == ".json":
            path.write_text(deepen(json.dumps(mutate_value(rng, json.loads(raw)))))
        else:
            import yaml

            path.write_text(
                deepen(yaml.safe_dump(mutate_value(rng, yaml.safe_load(raw)), allow_unicode=True))
                if rng.random() < 0.8
                else "a: &x [1, 2]\nb: [*x, *x, !!python/object:os.system x]\n"
            )
    except Exception:  # noqa: BLE001 (the test's own parsers: any failure means "corrupt the bytes")
        path.write_bytes(raw[: len(raw) // 2] + b"\xff\xfe" + raw[len(raw) // 2 :])


@pytest.fixture(scope="module")
def one_experiment(smoke_results, tmp_path_factory):
    out, _, _ = smoke_results
    base = tmp_path_factory.mktemp("readers")
    summary = json.loads((out / "ics-opti" / "summary.json").read_text())
    for name in summary["runs"]:
        shutil.copytree(out / "runs" / name, base / "runs" / name)
    shutil.copytree(out / "ics-opti", base / "ics-opti")
    return base


@pytest.mark.slow
def test_random_mutations_of_real_records_never_raise_out_of_the_readers(one_experiment, tmp_path):
    rng = random.Random(0)
    from landscape.export import export_runs

    for case in range(36):
        work = tmp_path / f"case{case}"
        shutil.copytree(one_experiment, work)
        files = [
            p for p in work.rglob("*") if p.name in ("metrics.jsonl", "status.json", "config.yaml", "summary.json")
        ]
        for _ in range(rng.randint(1, 3)):
            mutate_file(rng, rng.choice(files))
        for read in (
            lambda: build_report([work], tmp_path / f"r{case}.html", REGISTRY),
            lambda: claims_markdown([work], True, REGISTRY),
            lambda: export_runs([work], "tensorboard", tmp_path / f"tb{case}"),
        ):
            try:
                read()
            except UserError:
                pass  # one line, exit 2: also a clean end


def test_a_fifo_is_named_never_read(tmp_path):
    run = tmp_path / "runs" / "r"
    run.mkdir(parents=True)
    (run / "status.json").write_text('{"status": "done", "step": 1}')
    os.mkfifo(run / "metrics.jsonl")
    html = build_report([tmp_path / "runs"], tmp_path / "r.html", REGISTRY).read_text()  # returns: no blocking read
    assert "not a regular file" in html


def test_export_into_the_same_folder_twice_gives_one_point_per_step(smoke_results, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from landscape.export import export_runs

    out, _, _ = smoke_results
    run = out / "runs" / "vgg-bn-lr0.1-s0"
    first = export_runs([run], "tensorboard", tmp_path / "tb")
    (tmp_path / "tb" / ".vgg-bn-lr0.1-s0.tmp12345").mkdir()  # what a killed export leaves
    second = export_runs([run], "tensorboard", tmp_path / "tb")
    assert first == second and sorted(os.listdir(tmp_path / "tb")) == [".lock", "vgg-bn-lr0.1-s0"]
    (target,) = second
    assert len(list(target.glob("events.out.tfevents.*"))) == 1
    acc = EventAccumulator(str(target))
    acc.Reload()
    for tag in acc.Tags()["scalars"]:
        steps = [e.step for e in acc.Scalars(tag)]
        assert len(steps) == len(set(steps)), tag
    (target / "notes.txt").write_text("mine")  # a folder that holds a user's file is never replaced
    with pytest.raises(UserError, match="not a folder an export wrote"):
        export_runs([run], "tensorboard", tmp_path / "tb")
