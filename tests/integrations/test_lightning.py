"""The Lightning callback: records in a run directory, the same probe values as Monitor, training
bitwise unchanged, and a fit resumed from its checkpoint continues the records with no gap or
duplicate."""

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

pl = pytest.importorskip("lightning.pytorch")

from landscape.errors import UserError  # noqa: E402
from landscape.integrations.lightning import LandscapeCallback  # noqa: E402
from landscape.probes import Monitor, every  # noqa: E402

PROBES = ("gradient_sweep", "ics_opti", "sharpness", "activation_stats")
STEPS, EVERY, BATCH = 12, 3, 16


def make_cnn(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 4),
    )


def data():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(4 * BATCH, 3, 8, 8, generator=g), torch.randint(0, 4, (4 * BATCH,), generator=g)
    return torch.utils.data.TensorDataset(x, y)


class Module(pl.LightningModule):
    def __init__(self, seed=0):
        super().__init__()
        self.net = make_cnn(seed)

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def loader():
    return torch.utils.data.DataLoader(data(), batch_size=BATCH, shuffle=False)


def trainer(callbacks, tmp_path, max_steps=STEPS, **kw):
    return pl.Trainer(
        max_steps=max_steps,
        accelerator="cpu",
        devices=1,
        callbacks=callbacks,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path),
        **kw,
    )


def records(path):
    return [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]


def probe_records(path):
    return [(r["step"], r["probe"], r["values"]) for r in records(path) if r["kind"] == "probe"]


def test_fit_records_match_monitor_and_leave_training_bitwise_unchanged(tmp_path):
    plain = Module()
    trainer([], tmp_path / "a", enable_checkpointing=False).fit(plain, loader())
    probed = Module()
    cb = LandscapeCallback(tmp_path / "run", every(EVERY), probes=PROBES, sharpness_iters=5)
    trainer([cb], tmp_path / "b", enable_checkpointing=False).fit(probed, loader())
    for (n, a), (_, b) in zip(plain.state_dict().items(), probed.state_dict().items()):
        assert torch.equal(a, b), n

    # The same probes through Monitor in a hand-written loop on the same model, data and seed.
    model = make_cnn()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor = Monitor(
        tmp_path / "monitor",
        model,
        opt,
        F.cross_entropy,
        every(EVERY),
        probes=PROBES,
        sharpness_iters=5,
        step_hook=False,
    )
    batches = list(loader())
    for step in range(1, STEPS + 1):
        x, y = batches[(step - 1) % len(batches)]
        monitor.before_forward(step)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        monitor.observe(step, (x, y))
        opt.step()
        monitor.after_step()
    monitor.close()

    ours, theirs = probe_records(tmp_path / "run"), probe_records(tmp_path / "monitor")
    assert [(s, p) for s, p, _ in ours] == [(s, p) for s, p, _ in theirs]
    assert {s for s, _, _ in ours} == {1, 3, 6, 9, 12}
    for (_, p, a), (_, _, b) in zip(ours, theirs):
        if p == "gradient_sweep":
            assert a["losses"] == pytest.approx(b["losses"], rel=1e-6) and a["beta_eff"] == pytest.approx(
                b["beta_eff"], rel=1e-6
            )
        elif p == "ics_opti":
            assert list(a["cosine"]) == [f"net.{k}" for k in b["cosine"]]  # the module is the LightningModule's .net
            assert list(a["cosine"].values()) == pytest.approx(list(b["cosine"].values()), rel=1e-6, abs=1e-9)
        elif p == "sharpness":
            assert a["value"] == pytest.approx(b["value"], rel=1e-5) and a["threshold"] == pytest.approx(20.0)
    status = json.loads((tmp_path / "run" / "status.json").read_text())
    assert status["status"] == "done"
    assert (tmp_path / "run" / "monitor.yaml").is_file()


class Crash(pl.Callback):
    def __init__(self, at):
        self.at = at

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.at:
            raise RuntimeError("killed")


def test_resume_from_checkpoint_continues_records_without_gap_or_duplicate(tmp_path):
    full = LandscapeCallback(tmp_path / "full", every(EVERY), probes=("gradient_sweep", "ics_opti"))
    trainer([full], tmp_path / "f", enable_checkpointing=False).fit(Module(), loader())

    ckpt = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=4, save_top_k=-1)
    first = LandscapeCallback(tmp_path / "run", every(EVERY), probes=("gradient_sweep", "ics_opti"))
    with pytest.raises(RuntimeError, match="killed"):
        trainer([first, Crash(7), ckpt], tmp_path / "t").fit(Module(), loader())
    assert max(s for s, _, _ in probe_records(tmp_path / "run")) == 6  # step 6 was probed after the step-4 checkpoint
    path = sorted((tmp_path / "ckpt").glob("*step=4*.ckpt"))[0]
    second = LandscapeCallback(tmp_path / "run", every(EVERY), probes=("gradient_sweep", "ics_opti"))
    trainer([second], tmp_path / "t", enable_checkpointing=False).fit(Module(), loader(), ckpt_path=str(path))

    resumed, uninterrupted = probe_records(tmp_path / "run"), probe_records(tmp_path / "full")
    assert [(s, p) for s, p, _ in resumed] == [(s, p) for s, p, _ in uninterrupted]
    for (_, p, a), (_, _, b) in zip(resumed, uninterrupted):
        key = "losses" if p == "gradient_sweep" else "cosine"
        assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-9)


def test_scalars_reach_the_trainers_loggers(tmp_path):
    from lightning.pytorch.loggers import CSVLogger

    cb = LandscapeCallback(tmp_path / "run", every(EVERY), probes=("gradient_sweep", "ics_opti"))
    t = pl.Trainer(
        max_steps=6,
        accelerator="cpu",
        devices=1,
        callbacks=[cb],
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        logger=CSVLogger(str(tmp_path), name="csv"),
    )
    t.fit(Module(), loader())
    text = next((tmp_path / "csv").rglob("metrics.csv")).read_text()
    assert "landscape/beta_eff" in text and "landscape/ics_cos/net.0" in text


def test_a_loss_the_callback_cannot_reach_is_refused_before_the_first_update(tmp_path):
    cb = LandscapeCallback(tmp_path / "run", every(1), loss_fn=lambda out, y: F.mse_loss(out, y))  # shapes differ
    model = Module()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(UserError) as err:
        trainer([cb], tmp_path / "t", enable_checkpointing=False).fit(model, loader())
    assert "loss cannot be computed" in str(err.value) and "\n" not in str(err.value)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_under_ddp_every_rank_probes_only_rank_0_writes_and_training_is_unchanged(tmp_path):
    """strategy="ddp_spawn" on 2 CPU processes (gloo): the callback attaches on both ranks (the probes
    all-reduce), one set of records is written, and the weights equal a DDP fit without the callback."""
    ddp = {"strategy": "ddp_spawn", "devices": 2, "enable_checkpointing": False}
    plain = Module()
    pl.Trainer(
        max_steps=4,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path / "a"),
        **ddp,
    ).fit(plain, loader())
    probed = Module()
    cb = LandscapeCallback(tmp_path / "run", every(2), probes=("gradient_sweep", "sharpness"), sharpness_iters=3)
    pl.Trainer(
        max_steps=4,
        accelerator="cpu",
        callbacks=[cb],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path / "b"),
        **ddp,
    ).fit(probed, loader())
    assert [(s, p) for s, p, _ in probe_records(tmp_path / "run")] == [
        (s, p) for s in (1, 2, 4) for p in ("gradient_sweep", "sharpness")
    ]
    for (n, a), (_, b) in zip(plain.state_dict().items(), probed.state_dict().items()):
        assert torch.equal(a, b), n
    assert not torch.equal(plain.net[0].weight, Module().net[0].weight)  # the trained weights came back


class ShardedModule(Module):
    """An MLP sharded by FSDP2 (``fully_shard`` per layer and at the root) in ``configure_model``, as Lightning's
    ModelParallelStrategy asks; the step and optimizer are Module's."""

    def __init__(self):
        pl.LightningModule.__init__(self)
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(12, 16), nn.Tanh(), nn.Linear(16, 8), nn.Tanh(), nn.Linear(8, 4))

    def configure_model(self):
        from torch.distributed.fsdp import fully_shard

        mesh = self.device_mesh["data_parallel"]
        for layer in self.net:
            if isinstance(layer, nn.Linear):
                fully_shard(layer, mesh=mesh)
        fully_shard(self.net, mesh=mesh)


def _sharded_data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(4 * BATCH, 12, generator=g), torch.randint(0, 4, (4 * BATCH,), generator=g)


def _fsdp2_worker(rank, port, folder, probed):
    import os

    from lightning.pytorch.strategies import ModelParallelStrategy
    from torch.distributed.tensor import DTensor

    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", RANK=str(rank), LOCAL_RANK=str(rank)
    )
    torch.set_num_threads(1)
    module = ShardedModule()
    callbacks = []
    if probed:
        probes = ("gradient_sweep", "sharpness")
        callbacks = [LandscapeCallback(f"{folder}/run", every(2), probes=probes, sharpness_iters=3)]
    strategy = ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1, process_group_backend="gloo")
    x, y = _sharded_data()
    mine = torch.utils.data.TensorDataset(x[rank::2], y[rank::2])  # every other example: global batches in order
    data = torch.utils.data.DataLoader(mine, batch_size=BATCH // 2, shuffle=False)
    pl.Trainer(
        max_steps=4,
        accelerator="cpu",
        devices=2,
        strategy=strategy,
        callbacks=callbacks,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        use_distributed_sampler=False,
        default_root_dir=folder,
    ).fit(module, data)
    weights = {k: v.full_tensor() if isinstance(v, DTensor) else v for k, v in module.state_dict().items()}
    torch.save(weights, f"{folder}/weights-{int(probed)}-rank{rank}.pt")


def test_under_lightnings_fsdp2_strategy_every_rank_probes_only_rank_0_writes_and_training_is_unchanged(tmp_path):
    """ModelParallelStrategy (FSDP2, ``fully_shard`` in ``configure_model``) on 2 CPU processes (gloo): the callback
    attaches on both ranks and probes the sharded module, one set of records is written, the weights on both ranks
    equal a fit without the callback, and the probed loss is the global batch's."""
    import torch.multiprocessing as mp

    from tests.probes.test_distributed import _port

    mp.spawn(_fsdp2_worker, args=(_port(), str(tmp_path), False), nprocs=2, join=True)
    mp.spawn(_fsdp2_worker, args=(_port(), str(tmp_path), True), nprocs=2, join=True)
    for rank in (0, 1):
        plain = torch.load(tmp_path / f"weights-0-rank{rank}.pt", weights_only=True)
        probed = torch.load(tmp_path / f"weights-1-rank{rank}.pt", weights_only=True)
        assert plain.keys() == probed.keys() and all(torch.equal(plain[k], probed[k]) for k in plain)
    assert not torch.equal(plain["net.0.weight"], ShardedModule().net[0].weight.detach())  # it trained
    got = probe_records(tmp_path / "run")
    assert [(s, p) for s, p, _ in got] == [(s, p) for s in (1, 2, 4) for p in ("gradient_sweep", "sharpness")]
    # rank r reads every other example, so step 1's global batch is the first 16: the probed loss is its loss
    x, y = _sharded_data()
    first = F.cross_entropy(ShardedModule()(x[:BATCH]), y[:BATCH]).item()
    assert got[0][2]["loss"] == pytest.approx(first, rel=1e-6)
    assert got[1][2]["value"] > 0 and len(list(tmp_path.glob("**/metrics.jsonl"))) == 1
