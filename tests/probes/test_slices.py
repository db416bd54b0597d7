"""Loss slices against their definitions on tiny float64 models: a quadratic whose slice is known
in closed form, filter normalisation against a per-filter loop, biases and BN left out exactly
when asked, interpolation endpoints, the PCA plane, each BatchNorm mode against the obvious
computation, and purity."""

import copy
import math

import pytest
import torch
from torch import nn

from landscape.probes import Monitor, explicit
from landscape.probes import slices as S
from tests.probes.reference import CE, F64, assert_same, batch_for, full_state, mlp_bn, small_cnn


class Quadratic(nn.Module):
    """Output = the weights themselves; the loss is 0.5 (w - y)' Q (w - y)."""

    def __init__(self, w):
        super().__init__()
        self.w = nn.Parameter(w.clone())

    def forward(self, x):
        return self.w.reshape(1, -1).expand(len(x), -1)


def quadratic_loss(Q):
    return lambda out, y: 0.5 * torch.einsum("bi,ij,bj->b", out - y, Q, out - y).mean()


def test_a_quadratic_slice_is_exact_in_one_and_two_dimensions():
    g = torch.Generator().manual_seed(0)
    A = torch.randn(6, 6, generator=g, dtype=F64)
    Q = A @ A.T
    w0 = torch.randn(2, 3, generator=g, dtype=F64)
    model = Quadratic(w0)
    y = torch.randn(1, 6, generator=g, dtype=F64)
    batch = (torch.zeros(4, 1, dtype=F64), y.expand(4, -1))
    d1 = {"w": torch.randn(2, 3, generator=g, dtype=F64)}
    d2 = {"w": torch.randn(2, 3, generator=g, dtype=F64)}
    coords = S.grid_coords(2, 5, -1.5, 2.0)
    got = S.evaluate_slice(model, quadratic_loss(Q), [d1, d2], coords, [batch], bn="checkpoint")
    r = (w0 - y.reshape(2, 3)).reshape(-1)
    u, v = d1["w"].reshape(-1), d2["w"].reshape(-1)
    for i, (a, b) in enumerate(coords):
        z = r + a * u + b * v
        assert got[i].loss == pytest.approx(float(0.5 * z @ Q @ z), rel=1e-12)
        assert got[i].acc is None  # not class labels
    # 1D: the fitted curvature of a quadratic is exactly d'Qd / |d|^2, through the probe entry too
    line = S.grid_coords(1, 7, -1.0, 1.0)
    vals = S.evaluate_slice(model, quadratic_loss(Q), [d1], line, [batch], bn="checkpoint")
    c = S.quadratic_fit([a for (a,) in line], [vals[i].loss for i in range(7)])
    assert 2 * c[2] == pytest.approx(float(u @ Q @ u), rel=1e-9)
    assert c[0] == pytest.approx(float(0.5 * r @ Q @ r), rel=1e-9)


def test_filter_normalisation_matches_a_literal_per_filter_loop():
    model = small_cnn()
    w = {n: p.detach() for n, p in model.named_parameters()}
    g = torch.Generator().manual_seed(3)
    raw = {n: torch.randn(p.shape, generator=g, dtype=F64) for n, p in w.items()}
    got = S.filter_normalise(raw, w, ignore="biasbn")
    for n, d in raw.items():
        if d.dim() <= 1:
            assert torch.equal(got[n], torch.zeros_like(d)), n  # biases and BN scale/shift left out exactly
            continue
        for i in range(d.shape[0]):  # Li et al.: d[i] * ||w[i]|| / ||d[i]||
            expect = d[i] * (w[n][i].norm() / (d[i].norm() + 1e-10))
            assert torch.allclose(got[n][i], expect, rtol=1e-13, atol=0), (n, i)
            assert float(got[n][i].norm()) == pytest.approx(float(w[n][i].norm()), rel=1e-9)
    kept = S.filter_normalise(raw, w, ignore="none")
    for n, d in raw.items():
        if d.dim() <= 1:
            assert torch.equal(kept[n], w[n])  # Li et al.'s ignore=none: the weights themselves
    with pytest.raises(ValueError, match="ignore"):
        S.filter_normalise(raw, w, ignore="bn")


def test_random_directions_are_seeded_and_device_independent():
    model = small_cnn()
    w = {n: p.detach() for n, p in model.named_parameters()}
    a, b = S.random_direction(w, 5), S.random_direction(w, 5)
    assert all(torch.equal(a[n], b[n]) for n in a)
    before = torch.get_rng_state()
    c = S.random_direction(w, 6)
    assert torch.equal(before, torch.get_rng_state())  # never the global RNG
    assert any(not torch.equal(a[n], c[n]) for n in a if a[n].dim() > 1)


def test_interpolation_endpoints_are_the_two_points():
    a, b = mlp_bn(seed=0).eval(), mlp_bn(seed=1).eval()
    batch = batch_for(a)
    wa = {n: p.detach() for n, p in a.named_parameters()}
    wb = {n: p.detach() for n, p in b.named_parameters()}
    d = S.interpolation(wa, wb)
    got = S.evaluate_slice(
        a, CE, [d], [(0.0,), (1.0,)], [batch], bn="checkpoint", origin=wa, buffers=dict(a.named_buffers())
    )
    with torch.no_grad():
        la = CE(a(batch[0]), batch[1]).item()
        b_with_a_stats = copy.deepcopy(a)
        b_with_a_stats.load_state_dict({**a.state_dict(), **{n: p for n, p in b.state_dict().items() if n in wb}})
        lb = CE(b_with_a_stats(batch[0]), batch[1]).item()
    assert got[0].loss == la  # t = 0 is exactly w_a
    assert got[1].loss == pytest.approx(lb, rel=1e-12)
    with pytest.raises(ValueError, match="same parameters"):
        S.interpolation(wa, {n: v for n, v in wb.items() if n != "0.bias"})


def test_the_pca_plane_holds_a_planar_trajectory():
    g = torch.Generator().manual_seed(2)
    base = {"a.weight": torch.randn(3, 4, generator=g, dtype=F64), "a.bias": torch.randn(3, generator=g, dtype=F64)}
    u, v = torch.randn(3, 4, generator=g, dtype=F64), torch.randn(3, 4, generator=g, dtype=F64)
    ts = [(math.cos(t), 0.3 * math.sin(2 * t) + 0.1 * t) for t in torch.linspace(0, 3, 9).tolist()]
    traj = [{"a.weight": base["a.weight"] + x * u + y * v, "a.bias": base["a.bias"] + x} for x, y in ts]
    plane = S.pca_plane(traj)
    assert sum(plane.explained) == pytest.approx(1.0, rel=1e-9)  # every centred point lies in the plane
    assert plane.explained[0] >= plane.explained[1] > 0
    d1, d2 = plane.directions
    assert float((d1["a.weight"] * d2["a.weight"]).sum()) == pytest.approx(0, abs=1e-12)
    assert torch.equal(d1["a.bias"], torch.zeros(3, dtype=F64))  # 1-D parameters left out
    for w, (c1, c2) in zip(traj, plane.coords):  # the coordinates rebuild each point
        rebuilt = traj[-1]["a.weight"] + c1 * d1["a.weight"] + c2 * d2["a.weight"]
        assert torch.allclose(rebuilt, w["a.weight"], atol=1e-10)
    assert plane.coords[-1] == (0.0, 0.0)
    with pytest.raises(ValueError, match="at least 3"):
        S.pca_plane(traj[:2])


def test_hessian_directions_are_the_top_eigenvectors():
    model = mlp_bn().eval()
    batch = batch_for(model)
    dirs, values = S.hessian_directions(model, CE, batch, k=3, iters=200, tol=1e-10)
    names = [n for n, _ in model.named_parameters()]
    w = {n: p.detach() for n, p in model.named_parameters()}
    flat = torch.cat([w[n].reshape(-1) for n in names])

    def f(x):
        i, ps = 0, {}
        for n in names:
            ps[n] = x[i : i + w[n].numel()].reshape(w[n].shape)
            i += w[n].numel()
        return CE(torch.func.functional_call(model, ps, (batch[0],)), batch[1])

    evals, evecs = torch.linalg.eigh(torch.autograd.functional.hessian(f, flat))
    for k in range(3):
        assert values[k] == pytest.approx(float(evals[-1 - k]), rel=1e-6)
        u = torch.cat([dirs[k][n].reshape(-1) for n in names])
        assert abs(float(u @ evecs[:, -1 - k])) == pytest.approx(1.0, abs=1e-5)


def bn_modes_setup():
    model = mlp_bn()
    batch = batch_for(model, n=24)
    for _ in range(3):
        model(batch[0])  # running statistics away from their initial values
    batches = [(batch[0][:12], batch[1][:12]), (batch[0][12:], batch[1][12:])]
    return model, batch, batches


def test_each_batchnorm_mode_is_the_computation_it_names():
    model, batch, batches = bn_modes_setup()
    origin = {(n): p.detach() for n, p in model.named_parameters()}
    zero = {n: torch.zeros_like(p) for n, p in origin.items()}
    got = {bn: S.evaluate_slice(model, CE, [zero], [(0.0,)], batches, bn=bn)[0].loss for bn in S.BN_MODES}
    with torch.no_grad():
        m = copy.deepcopy(model).eval()
        checkpoint = sum(CE(m(x), y).item() * len(y) for x, y in batches) / 24
        m.train()  # batch statistics, per evaluation batch
        train = sum(CE(copy.deepcopy(model)(x), y).item() * len(y) for x, y in batches) / 24
        r = copy.deepcopy(model)
        torch.optim.swa_utils.update_bn([x for x, _ in batches], r)  # the reference recompute
        r.eval()
        recompute = sum(CE(r(x), y).item() * len(y) for x, y in batches) / 24
    assert got["checkpoint"] == pytest.approx(checkpoint, rel=1e-12)
    assert got["train"] == pytest.approx(train, rel=1e-12)
    assert got["recompute"] == pytest.approx(recompute, rel=1e-12)
    assert len({round(v, 9) for v in got.values()}) == 3  # three different landscapes, not one
    with pytest.raises(ValueError, match="bn must be"):
        S.evaluate_slice(model, CE, [zero], [(0.0,)], batches, bn="eval")


@pytest.mark.parametrize("bn", S.BN_MODES)
def test_slicing_leaves_everything_as_it_found_it(bn):
    model, batch, batches = bn_modes_setup()
    model[-1].dropout = None
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for _ in range(2):
        opt.zero_grad()
        CE(model(batch[0]), batch[1]).backward()
        opt.step()
    momenta = [getattr(m, "momentum", None) for m in model.modules()]
    before = full_state(model, opt)
    w = {n: p.detach() for n, p in model.named_parameters()}
    d = S.random_direction(w, 0)
    S.evaluate_slice(model, CE, [d, S.random_direction(w, 1)], S.grid_coords(2, 3, -1, 1), batches, bn=bn)
    assert_same(before, full_state(model, opt))
    assert momenta == [getattr(m, "momentum", None) for m in model.modules()]


def test_bad_slices_say_what_is_wrong():
    model = mlp_bn()
    batch = batch_for(model)
    w = {n: p.detach() for n, p in model.named_parameters()}
    with pytest.raises(ValueError, match="does not fit the model"):
        S.evaluate_slice(model, CE, [{"x": torch.zeros(2)}], [(0.0,)], [batch], bn="train")
    with pytest.raises(ValueError, match="does not fit the model: '0.weight'"):
        S.evaluate_slice(model, CE, [{**w, "0.weight": torch.zeros(2, 2, dtype=F64)}], [(0.0,)], [batch], bn="train")
    with pytest.raises(ValueError, match="empty"):
        S.evaluate_slice(model, CE, [w], [(0.0,)], [], bn="train")
    with pytest.raises(ValueError, match="a < b"):
        S.grid_coords(1, 5, 1.0, 1.0)
    with pytest.raises(ValueError, match="at least 2"):
        S.grid_coords(2, 0, 0.0, 1.0)
    assert sorted(S.shard(10, 0, 3) + S.shard(10, 1, 3) + S.shard(10, 2, 3)) == list(range(10))


def test_the_loss_slice_probe_in_a_users_loop(tmp_path):
    model = small_cnn()
    batch = batch_for(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    records = []
    mon = Monitor(
        records.append,
        model,
        opt,
        CE,
        schedule=explicit([1, 2]),
        probes=["loss_slice"],
        options={"loss_slice": {"points": 5, "radius": 0.5}},
    )
    for step in (1, 2):
        mon.before_forward(step)
        opt.zero_grad()
        loss = CE(model(batch[0]), batch[1])
        loss.backward()
        mon.observe(step, batch, loss)
        opt.step()
        mon.after_step()
    rec = [r for r in records if r.get("probe") == "loss_slice"]
    assert [r["step"] for r in rec] == [1, 2]
    v = rec[0]["values"]
    assert v["alphas"] == pytest.approx([-0.5, -0.25, 0.0, 0.25, 0.5])
    assert v["losses"][2] == pytest.approx(v["loss"], rel=1e-12) and v["bn"] == "train"
    assert math.isfinite(v["curvature"])


class Twice(nn.Module):
    """The first layer used twice, the second time on another tensor: the cache must answer only
    for the model's own input."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.first, self.head = nn.Linear(5, 5), nn.Linear(5, 3)

    def forward(self, x):
        return self.head(torch.tanh(self.first(torch.tanh(self.first(x)))))


class Scaled(nn.Module):
    """A parameter acts on the input before the first Linear: no input layer to cache."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.scale, self.first = nn.Parameter(torch.ones(5)), nn.Linear(5, 3)

    def forward(self, x):
        return self.first(x * self.scale)


def flat_mlp():
    """Images flattened by nn.Flatten (a view of the input) into the first Linear, as our MLP does."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(2 * 6 * 6, 7), nn.Tanh(), nn.Linear(7, 3))


def half_mlp():
    """The first Linear reads half of the input (a view, but not of exactly its memory): not cached."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), Half(), nn.Linear(2 * 6 * 3, 3))


class Half(nn.Module):
    def forward(self, x):
        return x[:, : x.shape[1] // 2]


@pytest.mark.parametrize(
    "make,bn",
    [
        (mlp_bn, "checkpoint"),
        (mlp_bn, "train"),
        (mlp_bn, "recompute"),
        (small_cnn, "recompute"),
        (Twice, "checkpoint"),
        (Scaled, "checkpoint"),
        (flat_mlp, "checkpoint"),
        (half_mlp, "checkpoint"),
    ],
)
def test_the_cached_input_layer_gives_the_plain_forwards_values(make, bn):
    model = make().to(F64)
    images = make in (small_cnn, flat_mlp, half_mlp)
    x, y = batch_for(nn.Sequential(nn.Conv2d(1, 1, 1) if images else nn.Linear(1, 1)), n=24)
    batches = [(x[:12], y[:12]), (x[12:], y[12:])]
    w = {n: p.detach() for n, p in model.named_parameters()}
    dirs = [S.random_direction(w, 0, ignore="none"), S.random_direction(w, 1, ignore="none")]  # biases move too
    coords = S.grid_coords(2, 4, -1.0, 1.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = full_state(model, opt)
    cached = S.evaluate_slice(model, CE, dirs, coords, batches, bn=bn, input_layer=True)  # wherever it applies
    plain = S.evaluate_slice(model, CE, dirs, coords, batches, bn=bn, input_layer=False)
    for i in range(len(coords)):
        assert cached[i].loss == pytest.approx(plain[i].loss, rel=1e-12, abs=1e-14)
        assert cached[i].acc == plain[i].acc
    assert_same(before, full_state(model, opt))
    assert all("forward" not in vars(m) for m in model.modules())  # the class's forward is back
    with S.slicing(model, bn):
        layer = S.InputLayer.build(model, w, dict(model.named_buffers()), dirs, batches, lambda t: t, 16, min_macs=0)
        assert (layer is not None) == (make not in (Scaled, half_mlp))
        if layer is not None:
            first = model.first if make is Twice else model[1] if make is flat_mlp else model[0]
            assert layer.module is first
            assert (
                S.InputLayer.build(
                    model, w, dict(model.named_buffers()), dirs, batches, lambda t: t, 16, budget=100, min_macs=0
                )
                is None
            )  # over its memory budget: not cached
            assert (
                S.InputLayer.build(model, w, dict(model.named_buffers()), dirs, batches, lambda t: t, 3, min_macs=0)
                is None
            )  # 3 points: nothing to save over 1 + 2 passes


def test_statistics_batches_that_are_not_the_evaluation_batches_run_the_layer():
    model, batch, batches = bn_modes_setup()
    w = {n: p.detach() for n, p in model.named_parameters()}
    dirs = [S.random_direction(w, 0, ignore="none")]
    other = [batch[0][:8] * 0.5, batch[0][8:] + 1.0]
    coords = S.grid_coords(1, 6, -1.0, 1.0)
    cached = S.evaluate_slice(model, CE, dirs, coords, batches, bn="recompute", bn_batches=other, input_layer=True)
    plain = S.evaluate_slice(model, CE, dirs, coords, batches, bn="recompute", bn_batches=other, input_layer=False)
    assert [v.loss for v in cached.values()] == pytest.approx([v.loss for v in plain.values()], rel=1e-12)


def test_a_shard_of_a_grid_gives_the_bits_of_the_whole_grid():
    model = flat_mlp().to(F64).float()  # float32: where the cached and plain paths round differently
    x, y = torch.randn(24, 2, 6, 6), torch.randint(0, 3, (24,))
    w = {n: p.detach() for n, p in model.named_parameters()}
    dirs = [S.random_direction(w, 0), S.random_direction(w, 1)]
    coords = S.grid_coords(2, 5, -1.0, 1.0)
    whole = S.evaluate_slice(model, CE, dirs, coords, [(x, y)], bn="checkpoint", input_layer=True)
    for part in ([0], [1, 2], list(range(3, 25))):
        shard = S.evaluate_slice(model, CE, dirs, coords, [(x, y)], bn="checkpoint", indices=part, input_layer=True)
        assert all(shard[i].loss == whole[i].loss for i in part)


@pytest.mark.parametrize("wrap", ["hook", "parametrize"])
def test_a_weight_normalised_first_layer_is_not_taken_for_a_linear_one(wrap):
    model = flat_mlp().to(F64)
    if wrap == "hook":
        with pytest.warns(FutureWarning):
            model[1] = nn.utils.weight_norm(model[1])  # weight = g v / |v|: not linear in (g, v)
    else:
        model[1] = nn.utils.parametrizations.weight_norm(model[1])
    x, y = torch.randn(24, 2, 6, 6, dtype=F64), torch.randint(0, 3, (24,))
    w = {n: p.detach() for n, p in model.named_parameters()}
    dirs = [S.random_direction(w, 0, ignore="none")]
    coords = S.grid_coords(1, 6, -1.0, 1.0)
    with S.slicing(model, "checkpoint"):
        assert S.InputLayer.build(model, w, {}, dirs, [(x, y)], lambda t: t, 6, min_macs=0) is None
    cached = S.evaluate_slice(model, CE, dirs, coords, [(x, y)], bn="checkpoint", input_layer=True)
    plain = S.evaluate_slice(model, CE, dirs, coords, [(x, y)], bn="checkpoint", input_layer=False)
    assert [v.loss for v in cached.values()] == [v.loss for v in plain.values()]


def test_auto_caches_only_a_first_layer_with_enough_work_per_output():
    model = flat_mlp().to(F64)  # first layer: 72 multiply-adds per output element
    x, y = torch.randn(24, 2, 6, 6, dtype=F64), torch.randint(0, 3, (24,))
    w = {n: p.detach() for n, p in model.named_parameters()}
    one, two = [S.random_direction(w, 0)], [S.random_direction(w, 0), S.random_direction(w, 1)]
    assert S.macs_per_output(model[1]) == 72 and S.macs_per_output(small_cnn()[0]) == 18
    assert S.macs_per_output(nn.Conv2d(8, 8, 3, groups=4)) == 18
    with S.slicing(model, "checkpoint"):
        build = lambda dirs: S.InputLayer.build(model, w, {}, dirs, [(x, y)], lambda t: t, 9)  # noqa: E731
        assert build(one) is not None  # 72 >= 32 x (1 + 1)
        assert build(two) is None  # 72 < 32 x (1 + 2): three passes over the output cost more than the layer
    with pytest.raises(ValueError, match="input_layer"):
        S.evaluate_slice(model, CE, one, [(0.0,)], [(x, y)], bn="checkpoint", input_layer="yes")
