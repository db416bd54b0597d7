"""The probe table (landscape.probes.registry): a new probe is one module (docs/probes.md's example, loaded as
one); quantities never raise; register refuses what would break a config."""

from __future__ import annotations

import dataclasses
import importlib
import sys
from dataclasses import dataclass

import pytest
import torch

from landscape.config import field_paths, to_dict
from landscape.errors import UserError
from landscape.probes import Monitor, Probe, explicit, register, registry, unregister
from landscape.probes.records import scalars_of
from landscape.results import median_probe, read_run
from landscape.train import train
from tests.conftest import doc_block, tiny_config


@pytest.fixture
def weight_norm_probe(tmp_path, monkeypatch):
    """docs/probes.md's example probe, as the module it says a probe is (the example up to its register call)."""
    code, _ = doc_block("from dataclasses import dataclass")
    module = tmp_path / "weight_norm_probe.py"
    module.write_text(code[: code.index("\nmodel = ")])
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.import_module("weight_norm_probe")
    yield
    unregister("weight_norm")
    sys.modules.pop("weight_norm_probe", None)


def test_a_new_probe_needs_only_its_entry(tmp_path, weight_norm_probe):
    # validated from a config: its section is probes.weight_norm, its own check runs
    assert "probes.weight_norm.scale" in field_paths()
    with pytest.raises(UserError, match="probes.weight_norm: scale must be positive"):
        tiny_config(probes={"weight_norm": {"scale": -1.0}})
    with pytest.raises(UserError, match="valid keys: probes.weight_norm.scale"):
        tiny_config(probes={"weight_norm": {"nope": 1}})
    cfg = tiny_config(
        probes={"enabled": ["weight_norm"], "schedule": "list", "steps": [2, 5], "weight_norm": {"scale": 2.0}}
    )
    assert to_dict(cfg)["probes"]["weight_norm"] == {"scale": 2.0}
    # scheduled by Monitor inside the trainer, written to records
    train(cfg, out=tmp_path)
    run = read_run(tmp_path / cfg.name)
    recs = run.probe("weight_norm")
    assert [r["step"] for r in recs] == [2, 5] and not run.problems
    assert all(r["values"]["value"] > 0 for r in recs)
    # exported as scalars under landscape/<quantity> (and /<layer> for per-layer quantities)
    scalars = scalars_of(recs[0])
    assert scalars["landscape/weight_norm"] == recs[0]["values"]["value"]
    assert any(k.startswith("landscape/layer_norm/") for k in scalars)
    # reduced per run through the results module
    assert median_probe("weight_norm", "weight_norm")(run) == pytest.approx(
        sorted(r["values"]["value"] for r in recs)[1] / 2 + sorted(r["values"]["value"] for r in recs)[0] / 2
    )
    # and a Monitor in any loop schedules it too
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    records = []
    mon = Monitor(
        records.append,
        model,
        opt,
        torch.nn.functional.cross_entropy,
        explicit([1]),
        probes=["weight_norm"],
        options={"weight_norm": {"scale": 3.0}},
    )
    x, y = torch.randn(4, 3), torch.tensor([0, 1, 0, 1])
    torch.nn.functional.cross_entropy(model(x), y).backward()
    mon.observe(1, (x, y))
    mon.close()
    assert records[0]["values"]["value"] == pytest.approx(
        3 * float(torch.cat([p.detach().reshape(-1) for p in model.parameters()]).norm())
    )


def test_quantities_of_a_record_of_the_wrong_shape_are_none():
    for values in ({}, {"losses": "x"}, {"losses": [1, None]}, {"losses": 3}, [], None, {"grad_change": {"a": 1}}):
        assert registry.quantity("gradient_sweep", values, "loss_band") is None
        assert registry.quantity("gradient_sweep", values, "grad_change") is None
    assert registry.quantity("gradient_sweep", {"losses": [1.0, 3.5, 2.0]}, "loss_band") == 2.5
    assert registry.quantity("ics_opti", {"l2": {"a": 1.0, "b": "x", "c": None}}, "ics_l2") == {"a": 1.0}
    assert registry.quantity("nope", {"value": 1}, "value") is None


def _probe(name="mine", options=None, **kw):
    return Probe(name, "a test probe", lambda ctx, o: {"value": 1.0}, options or registry.NoOptions, **kw)


@pytest.mark.parametrize("name", ["sharpness", "a.b", "with space", "new\nline", "class", "3d", "", "naïve"])
def test_register_refuses_a_taken_name_or_one_that_is_not_a_config_key(name):
    before = dict(registry.REGISTRY)
    with pytest.raises(ValueError, match="already registered|config key"):
        register(_probe(name))
    assert registry.REGISTRY == before  # the built-in is still there, nothing else was added


def test_register_refuses_options_no_config_could_hold_and_exports_that_are_not_quantities():
    @dataclass(frozen=True)
    class ListOption:
        sizes: list = (1, 2)

    with pytest.raises(ValueError, match="option 'sizes' has type"):
        register(_probe(options=ListOption))
    with pytest.raises(ValueError, match="exported names"):
        register(_probe(exported=("nope",)))
    assert "mine" not in registry.REGISTRY


def test_replace_puts_a_probe_in_a_built_ins_place_on_purpose():
    builtin = registry.REGISTRY["curvature"]
    try:
        register(_probe("curvature"), replace=True)
        assert registry.get("curvature").doc == "a test probe"
    finally:
        register(builtin, replace=True)
    assert registry.get("curvature") is builtin


def test_a_probe_that_returns_no_dict_is_said_in_one_line():
    register(_probe("floaty"), replace=True)
    registry.REGISTRY["floaty"] = dataclasses.replace(registry.REGISTRY["floaty"], measure=lambda ctx, o: 1.0)
    try:
        model = torch.nn.Linear(3, 2)
        mon = Monitor(
            lambda r: None,
            model,
            torch.optim.SGD(model.parameters(), lr=0.1),
            torch.nn.functional.cross_entropy,
            explicit([1]),
            probes=["floaty"],
        )
        with pytest.raises(TypeError, match="probe floaty returned a float"):
            mon.observe(1, (torch.randn(4, 3), torch.tensor([0, 1, 0, 1])))
    finally:
        unregister("floaty")
