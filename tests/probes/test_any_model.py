"""Probes on the models and loops researchers bring: tied weights, torch.compile, clipping, accumulation and loss
scaling before observe(), dict outputs, an optimizer that holds some parameters, Adam's two sharpnesses, deep
models' layers, averages over batches; and a Monitor that checks what it is given when it is made."""

import math
import warnings

import pytest
import torch
from torch import nn

from landscape.probes import (
    Monitor,
    curvature,
    every,
    explicit,
    gradient_sweep,
    preconditioned_sharpness,
    resolve_layers,
    sharpness,
)
from landscape.probes.functional import MAX_DEFAULT_LAYERS
from tests.probes.reference import CE, batch_for, mlp_bn

F64 = torch.float64


class TiedLM(nn.Module):
    """A language model's shape in miniature: the output layer shares the embedding's weight."""

    def __init__(self, vocab=11, dim=6):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.mix = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, vocab, bias=False)
        self.out.weight = self.emb.weight

    def forward(self, ids):
        return self.out(torch.tanh(self.mix(self.emb(ids)))).mean(1)


def _loop(model, opt, batch, monitor, steps=3, before=None):
    """A user's loop: forward, backward, ``before(model)`` (clipping, ...), observe, step."""
    records = []
    for step in range(1, steps + 1):
        monitor.before_forward(step)
        loss = CE(model(batch[0]), batch[1])
        opt.zero_grad()
        loss.backward()
        if before is not None:
            before(model)
        monitor.observe(step, batch, loss)
        opt.step()
    monitor.close()
    return records


def test_tied_weights_are_one_parameter_named_as_named_parameters_names_it():
    torch.manual_seed(0)
    model = TiedLM().double()
    assert [label for label, _ in resolve_layers(model)] == ["emb", "mix"]  # out's only weight is emb's
    assert resolve_layers(model, ["out"]) == [("out", ["emb.weight"])]
    ids, y = torch.randint(0, 11, (8, 5)), torch.randint(0, 11, (8,))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    records = []
    mon = Monitor(
        records.append,
        model,
        opt,
        CE,
        every(1),
        probes=["gradient_sweep", "ics_opti", "layer_sharpness"],
        options={"layer_sharpness": {"iters": 5}},
    )
    _loop(model, opt, (ids, y), mon, steps=2)
    assert {r["probe"] for r in records} == {"gradient_sweep", "ics_opti", "layer_sharpness"}
    assert all(r["values"].get("layers", ["emb", "mix"]) == ["emb", "mix"] for r in records)


def test_a_compiled_model_is_probed_through_its_original_module_with_clean_names():
    torch.manual_seed(0)
    model = mlp_bn()
    compiled = torch.compile(model, backend="aot_eager")  # donated buffers: no double backward through it
    batch = batch_for(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    records = []
    mon = Monitor(
        records.append,
        compiled,
        opt,
        CE,
        every(1),
        probes=["sharpness", "ics_opti"],
        layers=["_orig_mod.0", "_orig_mod.3"],
        options={"sharpness": {"iters": 10, "tol": 1e-8}},
    )
    loss = CE(compiled(batch[0]), batch[1])
    loss.backward()
    plain = sharpness(model, CE, batch, iters=10, tol=1e-8).value  # the same weights, the uncompiled module
    mon.observe(1, batch, loss)
    opt.step()
    mon.close()
    ics = next(r for r in records if r["probe"] == "ics_opti")
    assert ics["values"]["layers"] == ["0", "3"]
    sharp = next(r for r in records if r["probe"] == "sharpness")["values"]["value"]
    assert sharp == pytest.approx(plain, rel=1e-6)


@pytest.mark.parametrize(
    "what, edit",
    [
        ("clipping", lambda m: nn.utils.clip_grad_norm_(m.parameters(), 0.05)),
        ("loss scaling", lambda m: [p.grad.mul_(1024.0) for p in m.parameters()]),
        ("accumulation", "accumulate"),
    ],
)
def test_a_gradient_that_is_not_the_batchs_is_never_reused(what, edit):
    """The recorded sweep equals a literal recomputation on the batch's own gradient, and the loop is told once."""
    torch.manual_seed(0)
    model = mlp_bn()
    batch = batch_for(model)
    expected = gradient_sweep(model, CE, batch, [0.05, 0.2])  # before any step: the weights the probe sees
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    records = []
    mon = Monitor(
        records.append,
        model,
        opt,
        CE,
        explicit([1]),
        probes=["gradient_sweep"],
        options={"gradient_sweep": {"etas": (0.05, 0.2), "absolute": True}},
    )
    mon.before_forward(1)
    opt.zero_grad()
    if edit == "accumulate":  # three earlier micro-batches' gradients summed into .grad before the batch passed
        for seed in (5, 6, 7):
            other = batch_for(model, seed=seed)
            CE(model(other[0]), other[1]).backward()
    loss = CE(model(batch[0]), batch[1])
    loss.backward()
    if callable(edit):
        edit(model)
    with pytest.warns(UserWarning, match="compute their own gradient"):
        mon.observe(1, batch, loss)
    assert records[0]["values"]["beta_eff"] == pytest.approx(expected.beta_eff, rel=1e-9)
    assert records[0]["values"]["grad_norm"] == pytest.approx(expected.grad_norm, rel=1e-9)


def test_the_steps_own_gradient_is_reused_when_it_is_exactly_the_batchs():
    torch.manual_seed(0)
    model = mlp_bn()
    batch = batch_for(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    records = []
    mon = Monitor(
        records.append,
        model,
        opt,
        CE,
        every(1),
        probes=["gradient_sweep"],
        options={"gradient_sweep": {"etas": (0.5, 1.0)}},
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to say
        _loop(model, opt, batch, mon, steps=3)
    assert mon._trust_grad is True
    assert [r["cost"]["forward"] for r in records] == [2, 2, 2]  # K points, the step's own gradient reused


def test_a_dict_output_is_never_guessed():
    class Scores(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 3)

        def forward(self, x):
            z = self.lin(x)
            return {"probs": z.softmax(-1), "scores": z}

    torch.manual_seed(0)
    model = Scores().double()
    x, y = torch.randn(8, 4, dtype=F64), torch.randint(0, 3, (8,))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mon = Monitor(lambda r: None, model, opt, lambda out, t: CE(out, t), every(1), probes=["sharpness"])
    with pytest.raises(TypeError, match="no 'logits': pass output_fn="):
        mon.observe(1, (x, y))
    records = []
    mon = Monitor(
        records.append,
        model,
        opt,
        CE,
        every(1),
        probes=["sharpness"],
        output_fn=lambda out: out["scores"],
        options={"sharpness": {"tol": 1e-10, "iters": 30}},
    )
    mon.observe(1, (x, y))
    literal = sharpness(nn.Sequential(model.lin), CE, (x, y), tol=1e-10, iters=30).value
    assert records[0]["values"]["value"] == pytest.approx(literal, rel=1e-8)


def test_the_probes_step_only_along_what_the_optimizer_trains():
    torch.manual_seed(0)
    model = mlp_bn()
    batch = batch_for(model)
    head = list(model.children())[-1]
    opt = torch.optim.SGD(head.parameters(), lr=0.1)  # a frozen backbone in all but name
    records = []
    mon = Monitor(
        records.append,
        model,
        opt,
        CE,
        every(1),
        probes=["gradient_sweep"],
        options={"gradient_sweep": {"etas": (0.5,)}},
    )
    mon.observe(1, batch)
    head_names = {n for n, p in model.named_parameters() if any(p is q for q in head.parameters())}
    w = {n: p.detach() for n, p in model.named_parameters() if n in head_names}
    literal = gradient_sweep(model, CE, batch, [0.05], params={**w})  # only the head's weights move
    full = gradient_sweep(model, CE, batch, [0.05])
    assert records[0]["values"]["losses"] == pytest.approx(literal.losses, rel=1e-10)
    assert records[0]["values"]["losses"] != pytest.approx(full.losses, rel=1e-6)


def test_raw_and_preconditioned_sharpness_are_two_probes_under_adam():
    torch.manual_seed(0)
    model = mlp_bn()
    batch = batch_for(model)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    records = []
    mon = Monitor(
        records.append,
        model,
        opt,
        CE,
        every(1),
        probes=["sharpness", "preconditioned_sharpness"],
        options={"sharpness": {"iters": 40, "tol": 1e-9}, "preconditioned_sharpness": {"iters": 40, "tol": 1e-9}},
    )
    for step in (1, 2):
        loss = CE(model(batch[0]), batch[1])
        opt.zero_grad()
        loss.backward()
        if step == 2:
            raw = sharpness(model, CE, batch, iters=40, tol=1e-9).value
            pre = preconditioned_sharpness(model, opt, CE, batch, iters=40, tol=1e-9).value
        mon.observe(step, batch, loss)
        opt.step()
    by = {(r["probe"], r["step"]): r["values"] for r in records}
    assert by[("preconditioned_sharpness", 1)]["value"] is None  # Adam has no preconditioner before its first step
    assert by[("sharpness", 1)]["value"] > 0 and by[("sharpness", 1)]["threshold"] is None
    assert by[("sharpness", 2)]["value"] == pytest.approx(raw, rel=1e-7)
    assert by[("preconditioned_sharpness", 2)]["value"] == pytest.approx(pre, rel=1e-7)
    assert by[("preconditioned_sharpness", 2)]["threshold"] == pytest.approx(38 / 0.01)
    assert by[("sharpness", 2)]["preconditioned_threshold"] == pytest.approx(38 / 0.01)
    assert abs(math.log(raw / pre)) > 1  # they are different quantities, not two names for one


def test_curvature_over_several_batches_is_their_mean_with_its_standard_error():
    torch.manual_seed(0)
    model = mlp_bn()
    x, y = batch_for(model, n=24)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    records = []
    mon = Monitor(
        records.append,
        model,
        opt,
        CE,
        every(1),
        probes=["curvature", "sharpness"],
        options={"curvature": {"batches": 3}, "sharpness": {"batches": 3, "iters": 30, "tol": 1e-9}},
    )
    mon.observe(1, (x, y))
    for probe, fn in (
        ("curvature", lambda b: curvature(model, CE, b).value),
        ("sharpness", lambda b: sharpness(model, CE, b, iters=30, tol=1e-9).value),
    ):
        values = next(r["values"] for r in records if r["probe"] == probe)
        parts = [fn((x[i * 8 : (i + 1) * 8], y[i * 8 : (i + 1) * 8])) for i in range(3)]
        mean = sum(parts) / 3
        se = math.sqrt(sum((v - mean) ** 2 for v in parts) / 2) / math.sqrt(3)
        assert values["per_batch"] == pytest.approx(parts, rel=1e-7)
        assert (values["value"], values["stderr"]) == pytest.approx((mean, se), rel=1e-7)


def test_a_deep_models_default_layers_are_grouped_into_named_blocks():
    blocks = [nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4), nn.Linear(4, 4)) for _ in range(20)]
    model = nn.Sequential(nn.Linear(3, 4), *blocks, nn.Linear(4, 2))  # 62 modules with parameters
    groups = resolve_layers(model)
    assert len(groups) == 22 <= MAX_DEFAULT_LAYERS and [g for g, _ in groups[:3]] == ["0", "1", "2"]
    every_param = [n for n, p in model.named_parameters()]
    assert [n for _, names in groups for n in names] == every_param  # each parameter once, in order
    flat = nn.Sequential(*[nn.Linear(4, 4) for _ in range(70)])
    groups = resolve_layers(flat)
    assert len(groups) <= MAX_DEFAULT_LAYERS and groups[0][0] == "0..2"


@pytest.mark.parametrize(
    "kw, error, match",
    [
        ({"layers": ["fc9"]}, ValueError, "layers: no module named 'fc9'"),
        ({"schedule": 10}, TypeError, "schedule must be a function step -> bool"),
        ({"options": {"sharpness": {"iters": 0}}}, ValueError, "iters must be between 1"),
        ({"options": {"sharpness": {"iters": "20"}}}, ValueError, "expects an integer"),
        ({"options": {"sharpness": {"tol": -1}}}, ValueError, "tol must be in"),
        ({"options": {"gradient_sweep": {"etas": [-1.0]}}}, ValueError, "etas must be positive"),
        ({"options": {"gradient_sweep": {"etas": []}}}, ValueError, "etas must be positive"),
        ({"options": {"loss_slice": {"points": 1}}}, ValueError, "points must be between 3"),
        ({"options": {"hessian_trace": {"method": "bogus"}}}, ValueError, "one of hutchinson, hutch\\+\\+"),
        ({"options": {"sharpnes": {"iters": 3}}}, ValueError, "which is no probe"),
        ({"options": {"sharpness": {"nope": 3}}}, ValueError, "has no option 'nope'"),
        ({"autocast": {"dtype": torch.bfloat16}}, ValueError, "needs device_type"),
        ({"autocast": {"device_type": "tpu9"}}, ValueError, "needs device_type"),
        ({"autocast": {"device_type": "cpu", "fast": True}}, ValueError, "no argument 'fast'"),
        ({"hvp": "fd"}, ValueError, "hvp must be one of"),
        ({"probes": ["sharpnes"]}, ValueError, "unknown probes"),
        ({"timeout": -1}, ValueError, "timeout must be a positive"),
    ],
)
def test_monitor_checks_what_it_is_given_when_it_is_made(tmp_path, kw, error, match):
    model = mlp_bn()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    args = {"schedule": every(1), **kw}
    schedule = args.pop("schedule")
    with pytest.raises(error, match=match) as caught:
        Monitor(tmp_path / "run", model, opt, CE, schedule, **args)
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "run").exists()  # refused before the run directory exists


@pytest.mark.parametrize(
    "model, optimizer, match",
    [
        (nn.ReLU(), lambda m: torch.optim.SGD([nn.Parameter(torch.ones(1))], lr=0.1), "has no parameters"),
        (nn.Linear(2, 2).requires_grad_(False), lambda m: torch.optim.SGD(m.parameters(), lr=0.1), "frozen"),
        (nn.Linear(2, 2, device="meta"), lambda m: torch.optim.SGD(m.parameters(), lr=0.1), "meta device"),
        (nn.Linear(2, 2), lambda m: torch.optim.SGD([nn.Parameter(torch.ones(1))], lr=0.1), "holds none"),
    ],
)
def test_monitor_refuses_a_model_it_cannot_probe(tmp_path, model, optimizer, match):
    with pytest.raises(ValueError, match=match):
        Monitor(tmp_path / "run", model, optimizer(model), CE, every(1))
    assert not (tmp_path / "run").exists()


def test_a_batch_of_the_wrong_shape_is_one_line_before_any_probe():
    model = mlp_bn()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mon = Monitor(lambda r: None, model, opt, CE, every(1))
    x, y = batch_for(model)
    with pytest.raises(TypeError, match=r"a batch is \(inputs, targets\) or a mapping"):
        mon.observe(1, (x, y, y))
