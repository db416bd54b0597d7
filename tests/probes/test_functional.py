"""The model as a function (landscape.probes.functional): probes change nothing, run on any model and in any mode,
select layers, take either Hessian-vector product route, under autocast too, and never raise on diverged weights."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from landscape.probes import (
    Monitor,
    activation_stats,
    every,
    gradient_sweep,
    ics_opti,
    resolve_layers,
    sharpness,
)
from landscape.probes.functional import Objective, current_params, evaluation
from tests.probes.reference import ANY_MODELS, CE, PROBE_CALLS, assert_same, batch_for, full_state, mlp_bn, small_cnn


def test_layers_argument_selects_and_groups():
    model = mlp_bn()
    assert [label for label, _ in resolve_layers(model)] == ["0", "1", "3", "5"]
    grouped = resolve_layers(model, {"block": ["0", "1"], "head": ["5"]})
    assert grouped == [("block", ["0.weight", "0.bias", "1.weight", "1.bias"]), ("head", ["5.weight", "5.bias"])]
    batch = batch_for(model)
    w = {n: p.detach() + 0.01 for n, p in model.named_parameters()}
    r = ics_opti(model, CE, batch, w, layers={"block": ["0", "1"], "head": ["5"]})
    assert r.layers == ["block", "head"] and r.l2["block"] == 0.0 and r.l2["head"] > 0
    with pytest.raises(KeyError, match="no module named 'nope'"):
        resolve_layers(model, ["nope"])


@pytest.mark.parametrize("probe", PROBE_CALLS)
def test_a_probe_leaves_everything_as_it_found_it(probe):
    model = mlp_bn(dropout=0.3)
    batch = batch_for(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for _ in range(2):  # real optimizer state, running stats and gradients
        opt.zero_grad()
        CE(model(batch[0]), batch[1]).backward()
        opt.step()
    before = full_state(model, opt)
    PROBE_CALLS[probe](model, batch, opt)
    assert_same(before, full_state(model, opt))


def test_eval_mode_flag_uses_running_statistics_and_restores_the_mode():
    model = mlp_bn()
    batch = batch_for(model)
    for _ in range(3):
        model(batch[0])  # move the running statistics away from their initial values
    r = gradient_sweep(model, CE, batch, [0.1], eval_mode=True)
    assert model.training
    model.eval()
    with torch.no_grad():
        assert r.loss == pytest.approx(CE(model(batch[0]), batch[1]).item(), rel=1e-12)
    model.train()
    assert gradient_sweep(model, CE, batch, [0.1]).loss != pytest.approx(r.loss)


def test_dropout_draws_the_same_mask_for_every_evaluation():
    model = mlp_bn(dropout=0.5)
    batch = batch_for(model)
    a = gradient_sweep(model, CE, batch, [1e-12])
    assert a.losses[0] == pytest.approx(a.loss, rel=1e-9)  # a tiny step: same mask, same loss
    assert a.grad_change[0] < 1e-8


@pytest.mark.parametrize("kind", ANY_MODELS)
def test_probes_run_on_any_model(kind):
    make_model, make_batch = ANY_MODELS[kind]
    torch.manual_seed(0)
    model, batch = make_model(), make_batch()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = full_state(model, opt)
    sweep = gradient_sweep(model, CE, batch, [0.05, 0.1])
    assert all(math.isfinite(v) for v in sweep.losses + sweep.grad_change + [sweep.beta_eff])
    s = sharpness(model, CE, batch, iters=8)
    assert math.isfinite(s.value)
    ics = ics_opti(model, CE, batch, {n: p.detach() - 0.01 for n, p in model.named_parameters()})
    assert len(ics.layers) >= 3 and all(math.isfinite(v) for v in ics.l2.values())
    acts = activation_stats(model, batch)
    assert all(math.isfinite(v["mean"]) for v in acts.stats.values())
    assert_same(before, full_state(model, opt))


def test_both_hessian_vector_product_routes_agree():
    from landscape.probes.functional import Objective, current_params

    model = small_cnn()
    f = Objective.of(model, CE, batch_for(model))
    w = current_params(model)
    v = {n: torch.randn_like(t) for n, t in w.items()}
    _, _, hvp = f.hessian_operator(w)
    a, b = hvp(v), f.hvp(w, v)
    for n in w:
        torch.testing.assert_close(a[n], b[n], rtol=1e-10, atol=1e-12)
    assert f.cost.hvp == 2


def test_probes_on_diverged_weights_return_nan_instead_of_raising():
    model = mlp_bn()
    with torch.no_grad():
        model[0].weight[0, 0] = float("nan")
    batch = batch_for(model)
    assert math.isnan(sharpness(model, CE, batch, iters=5).value)
    assert math.isnan(gradient_sweep(model, CE, batch, [0.1]).loss)
    ics = ics_opti(model, CE, batch, {n: p.detach() for n, p in model.named_parameters()})
    assert any(math.isnan(v) for v in ics.l2.values())
    acts = activation_stats(model, batch)
    assert math.isnan(acts.stats["5"]["mean"])


def _rel(a: dict, b: dict) -> float:
    num = sum(float(((a[n] - b[n]).double() ** 2).sum()) for n in a) ** 0.5
    return num / sum(float((a[n].double() ** 2).sum()) for n in a) ** 0.5


@pytest.mark.parametrize("dtype,bound", [(torch.float64, 1e-9), (torch.float32, 1e-3)])
def test_the_finite_difference_hvp_against_the_exact_one(dtype, bound):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 20), nn.Tanh(), nn.Linear(20, 3)).to(dtype)
    x, y = torch.randn(32, 10, dtype=dtype), torch.randint(0, 3, (32,))
    w = current_params(model)
    g = torch.Generator().manual_seed(1)
    v = {n: torch.randn(p.shape, generator=g).to(dtype) for n, p in w.items()}
    f = Objective.of(model, nn.functional.cross_entropy, (x, y))
    with evaluation(hvp="exact"):
        exact = f.hessian_operator(w)[2](v)
    with evaluation(hvp="finite_difference"):
        fd = f.hessian_operator(w)[2](v)
    assert f.cost.fd_hvp == 1 and _rel(exact, fd) < bound


def _records(model, x, y, probes, **kw):
    out = []
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor = Monitor(
        out.append,
        model,
        opt,
        nn.functional.cross_entropy,
        every(1),
        probes=probes,
        step_hook=False,
        options={"sharpness": {"iters": 20, "tol": 1e-10}, "hessian_trace": {"samples": 8}},
        **kw,
    )
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    monitor.observe(1, (x, y), loss)
    monitor.close()
    return {r["probe"]: r for r in out}


def _vits():
    from landscape.models.vit import ViT

    torch.manual_seed(0)
    explicit = ViT(dim=16, depth=1, heads=2).double()
    sdpa = ViT(dim=16, depth=1, heads=2, attention="sdpa").double()
    sdpa.load_state_dict(explicit.state_dict())
    return explicit, sdpa


def test_an_sdpa_vit_is_probed_by_finite_differences_and_agrees_with_written_out_attention():
    explicit, sdpa = _vits()
    x, y = torch.randn(8, 3, 32, 32, dtype=torch.float64), torch.randint(0, 10, (8,))
    a, b = (
        _records(explicit, x, y, ["sharpness", "hessian_trace"]),
        _records(sdpa, x, y, ["sharpness", "hessian_trace"]),
    )
    for probe in ("sharpness", "hessian_trace"):
        assert "fd_hvp" not in a[probe]["cost"] and b[probe]["cost"]["fd_hvp"] == b[probe]["cost"]["hvp"] > 0
        va, vb = a[probe]["values"]["value"], b[probe]["values"]["value"]
        assert abs(va - vb) <= 1e-5 * abs(va)


def test_exact_hvps_asked_of_a_model_without_double_backward_raise():
    _, sdpa = _vits()
    x, y = torch.randn(4, 3, 32, 32, dtype=torch.float64), torch.randint(0, 10, (4,))
    with pytest.raises(RuntimeError, match="not implemented"):
        _records(sdpa, x, y, ["sharpness"], hvp="exact")
    with pytest.raises(ValueError, match="hvp must be one of"):
        _records(sdpa, x, y, ["sharpness"], hvp="fd")


def test_probes_under_bf16_autocast_are_within_two_percent_of_float32():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 14 * 14, 10))
    x, y = torch.randn(16, 3, 16, 16), torch.randint(0, 10, (16,))
    probes = ["gradient_sweep", "sharpness", "hessian_trace", "loss_slice"]
    full = _records(model, x, y, probes)
    half = _records(model, x, y, probes, autocast={"device_type": "cpu", "dtype": torch.bfloat16})
    pairs = [(full["gradient_sweep"]["values"][k], half["gradient_sweep"]["values"][k]) for k in ("loss", "grad_norm")]
    pairs += [(full[p]["values"]["value"], half[p]["values"]["value"]) for p in ("sharpness", "hessian_trace")]
    pairs += list(zip(full["loss_slice"]["values"]["losses"], half["loss_slice"]["values"]["losses"]))
    assert all(abs(a - b) <= 0.02 * abs(a) for a, b in pairs), pairs
    assert any(a != b for a, b in pairs)  # autocast really ran: bf16 rounding shows somewhere


def tiny_gpt():
    """A one-block GPT (float32) and a batch of 8 random 16-token sequences with their next tokens."""
    from landscape.models.gpt import GPT

    torch.manual_seed(0)
    model = GPT(context=16, dim=32, depth=1, heads=2)
    tokens = torch.randint(0, 256, (8, 17), generator=torch.Generator().manual_seed(0))
    return model, (tokens[:, :-1], tokens[:, 1:])


def test_finite_differences_calibrate_their_step_where_the_whole_weights_step_is_far_too_large(monkeypatch):
    """A small GPT in float32: its top eigenvector lives in the embeddings (std 0.02), where a step sized for the
    whole ||w|| sees a loss far from quadratic. With the step checked against a quarter of itself the
    finite-difference sharpness equals the exact one to 1e-3 and says its error; the one unchecked difference at
    the starting step (FD_SHRINKS = 0) is more than 5% off."""
    import landscape.probes.functional as functional
    from landscape.models.gpt import next_token_loss
    from landscape.probes import sharpness

    model, batch = tiny_gpt()
    with evaluation(hvp="exact"):
        exact = sharpness(model, next_token_loss, batch, iters=60, tol=1e-8)
    with evaluation(hvp="finite_difference"):
        fd = sharpness(model, next_token_loss, batch, iters=60, tol=1e-8)
    assert fd.value == pytest.approx(exact.value, rel=1e-3)
    assert fd.cost["fd_error"] <= functional.FD_TOLERANCE and fd.cost["fd_shrink"] < 1
    monkeypatch.setattr(functional, "FD_SHRINKS", 0)
    with evaluation(hvp="finite_difference"):
        unchecked = sharpness(model, next_token_loss, batch, iters=60, tol=1e-8)
    assert abs(unchecked.value - exact.value) > 0.05 * exact.value


def test_finite_differences_that_do_not_converge_are_refused_not_returned(monkeypatch):
    """Allowed one shrink only, the tiny GPT's differences disagree by more than FD_REFUSE: the function raises in
    one line, and under a Monitor the probe records its refusal (a note, no value) while training goes on."""
    import landscape.probes.functional as functional
    from landscape.models.gpt import next_token_loss
    from landscape.probes import sharpness

    model, batch = tiny_gpt()
    monkeypatch.setattr(functional, "FD_SHRINKS", 1)
    with evaluation(hvp="finite_difference"), pytest.raises(functional.InaccurateProducts) as exc:
        sharpness(model, next_token_loss, batch, iters=10)
    assert "\n" not in str(exc.value) and "float64" in str(exc.value)
    out = []
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor = Monitor(
        out.append,
        model,
        opt,
        next_token_loss,
        every(1),
        probes=["sharpness"],
        hvp="finite_difference",
        step_hook=False,
    )
    loss = next_token_loss(model(batch[0]), batch[1])
    loss.backward()
    monitor.observe(1, batch, loss)
    monitor.close()
    (record,) = out
    assert record["values"]["refused"] and "do not converge" in record["values"]["note"]
