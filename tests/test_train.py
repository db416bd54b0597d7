import json

import pytest
import torch

import landscape.train as train_mod
from landscape.config import build_config
from landscape.errors import UserError
from landscape.runs import Run, read_metrics
from landscape.train import LOSSES, train
from tests.conftest import tiny_config

TIMING = {"examples_per_s", "elapsed_s"}


def without_timing(records):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in records]


def train_killed_after(cfg, out, monkeypatch, step: int) -> None:
    """Train until the train record of ``step`` is written, then die as a kill would."""
    real_log = Run.log

    def dying_log(self, record):
        real_log(self, record)
        if record["step"] == step and record["kind"] == "train":
            raise KeyboardInterrupt

    monkeypatch.setattr(Run, "log", dying_log)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, out=out)
    monkeypatch.setattr(Run, "log", real_log)


def test_training_smoke_run_writes_a_complete_run_directory(tmp_path):
    cfg = tiny_config(steps=40, model={"norm": "batch"}, optim={"lr": 0.1})
    status = train(cfg, out=tmp_path)
    run = tmp_path / "tiny"
    assert status["status"] == "done" and status["step"] == 40
    assert {"config.yaml", "env.json", "metrics.jsonl", "status.json", "checkpoint.pt"} <= {
        p.name for p in run.iterdir()
    }
    records = read_metrics(run / "metrics.jsonl")
    train_recs = [r for r in records if r["kind"] == "train"]
    assert [r["step"] for r in train_recs] == list(range(2, 41, 2))
    assert train_recs[-1]["loss"] < 0.8 * train_recs[0]["loss"], "loss must go down on learnable data"
    assert [r["step"] for r in records if r["kind"] == "test"] == [6, 12, 18, 24, 30, 36, 40]
    env = json.loads((run / "env.json").read_text())
    assert env["torch"] == torch.__version__ and env["device"] == "cpu"
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    assert ckpt["step"] == 40 and ckpt["config"]["model"]["init"] == "xavier"
    assert Run(run).config() == cfg


def test_resume_after_a_kill_gives_the_same_records_and_weights(tmp_path, monkeypatch):
    cfg = tiny_config(
        steps=12, model={"norm": "noisy_batch"}, optim={"lr": 0.05, "momentum": 0.9}, data={"augment": True}
    )
    train(cfg, out=tmp_path / "whole")
    whole = read_metrics(tmp_path / "whole" / "tiny" / "metrics.jsonl")

    train_killed_after(cfg, tmp_path / "cut", monkeypatch, step=10)
    cut = tmp_path / "cut" / "tiny"
    assert json.loads((cut / "status.json").read_text())["status"] == "interrupted"
    assert max(r["step"] for r in read_metrics(cut / "metrics.jsonl")) == 10  # past the checkpoint at 8
    train(cfg, out=tmp_path / "cut", resume=True)
    assert without_timing(read_metrics(cut / "metrics.jsonl")) == without_timing(whole)
    a = torch.load(cut / "checkpoint.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "whole" / "tiny" / "checkpoint.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resuming_a_finished_run_does_nothing(tmp_path):
    cfg = tiny_config(steps=4)
    train(cfg, out=tmp_path)
    before = (tmp_path / "tiny" / "metrics.jsonl").read_text()
    assert train(cfg, out=tmp_path, resume=True)["status"] == "done"
    assert (tmp_path / "tiny" / "metrics.jsonl").read_text() == before


def test_existing_run_is_never_overwritten_without_force(tmp_path):
    cfg = tiny_config(steps=4)
    train(cfg, out=tmp_path)
    before = (tmp_path / "tiny" / "metrics.jsonl").read_text()
    with pytest.raises(UserError, match="already exists; pass --resume to continue it or --force"):
        train(cfg, out=tmp_path)
    with pytest.raises(UserError, match="different config"):
        train(tiny_config(steps=4, optim={"lr": 0.3}), out=tmp_path, resume=True)
    assert (tmp_path / "tiny" / "metrics.jsonl").read_text() == before
    train(tiny_config(steps=2), out=tmp_path, force=True)
    assert len(read_metrics(tmp_path / "tiny" / "metrics.jsonl")) == 2


def test_corrupt_checkpoint_is_a_user_error_and_keeps_the_run(tmp_path):
    cfg = tiny_config(steps=4)
    train(cfg, out=tmp_path)
    (tmp_path / "tiny" / "status.json").write_text('{"status": "running", "step": 4}')
    (tmp_path / "tiny" / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="checkpoint .* is unreadable"):
        train(cfg, out=tmp_path, resume=True)
    assert (tmp_path / "tiny" / "checkpoint.pt").read_bytes() == b"not a checkpoint"


def test_divergence_is_a_recorded_result(tmp_path):
    cfg = tiny_config(steps=30, optim={"lr": 1e6})
    status = train(cfg, out=tmp_path)
    assert status["status"] == "diverged"
    assert 1 <= status["diverged_step"] <= status["step"] < 30
    records = read_metrics(tmp_path / "tiny" / "metrics.jsonl")
    assert any(r["loss"] is None for r in records if r["kind"] == "train")  # NaN stored as null


def test_a_run_stuck_on_the_plateau_says_so(tmp_path):
    status = train(tiny_config(steps=6, optim={"lr": 1e-9}), out=tmp_path)
    assert status["status"] == "done" and status["stuck_on_plateau"] and status["left_plateau_step"] is None
    moving = train(tiny_config(name="moving", steps=40, model={"norm": "batch"}, optim={"lr": 0.1}), out=tmp_path)
    assert not moving["stuck_on_plateau"] and moving["left_plateau_step"] <= 40


def test_deep_linear_network_full_batch_regression(tmp_path):
    cfg = tiny_config(
        name="dln",
        steps=50,
        loss="sum_squares",
        data={"dataset": "gaussian", "batch_size": 0, "gaussian_samples": 64},
        model={"arch": "dln", "dln": {"depth": 6}},
        optim={"lr": 1e-4},
        log={"train_every": 10, "eval_every": 25, "checkpoint_every": 25},
    )
    status = train(cfg, out=tmp_path)
    recs = [r for r in read_metrics(tmp_path / "dln" / "metrics.jsonl") if r["kind"] == "train"]
    assert status["status"] == "done" and recs[-1]["loss"] < recs[0]["loss"]
    assert "acc" not in recs[0] and recs[0]["epoch"] == 10.0


def test_mismatched_model_and_data_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="does not fit"):
        train(tiny_config(model={"arch": "dln"}), out=tmp_path)


def test_unknown_device_is_a_user_error():
    with pytest.raises(UserError, match="unknown device"):
        train_mod.resolve_device("tpu9")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="CUDA is not available"):
            train_mod.resolve_device("cuda")
    assert train_mod.resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


def train_off_and_on(off, on, tmp_path) -> list[dict]:
    """Train both configs; assert bitwise equal final weights; return the probed run's records."""
    train(off, out=tmp_path)
    train(on, out=tmp_path)
    a = torch.load(tmp_path / "off" / "checkpoint.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "on" / "checkpoint.pt", weights_only=True)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    return read_metrics(tmp_path / "on" / "metrics.jsonl")


@pytest.mark.parametrize("norm", ["noisy_batch", "batch"])
def test_probes_never_change_training(tmp_path, norm):
    """All probes on, every 2 steps: bitwise the same weights, buffers and train records as probes off."""
    base = dict(steps=8, model={"norm": norm}, optim={"lr": 0.05, "momentum": 0.9}, data={"augment": True})
    off = tiny_config(name="off", **base)
    on = tiny_config(
        name="on",
        **base,
        probes={
            "enabled": ["gradient_sweep", "ics_opti", "activation_stats", "sharpness"],
            "every": 2,
            "sharpness_iters": 4,
            "activation_batch": 32,
        },
    )
    recs_on = train_off_and_on(off, on, tmp_path)
    plain = [r for r in recs_on if r["kind"] != "probe"]
    assert without_timing(plain) == without_timing(read_metrics(tmp_path / "off" / "metrics.jsonl"))
    probes = {(r["step"], r["probe"]) for r in recs_on if r["kind"] == "probe"}
    assert probes == {
        (s, p) for s in (1, 2, 4, 6, 8) for p in ("gradient_sweep", "ics_opti", "activation_stats", "sharpness")
    }
    sweep = next(r for r in recs_on if r.get("probe") == "gradient_sweep")
    assert sweep["values"]["etas"] == pytest.approx([m * 0.05 for m in on.probes.gradient_sweep.etas])
    assert sweep["cost"]["backward"] == len(on.probes.gradient_sweep.etas)  # reuses the training step's gradient
    sharp = next(r for r in recs_on if r.get("probe") == "sharpness")
    assert sharp["values"]["threshold"] == pytest.approx(2 * 1.9 / 0.05)
    stats = [r for r in recs_on if r.get("probe") == "activation_stats"]
    assert stats[0]["values"]["shift"] is None and stats[1]["values"]["shift"]


@pytest.mark.parametrize("norm", ["batch", "none"])
def test_the_mechanism_probes_never_change_training(tmp_path, norm):
    """Section 4's probes, the activation-space Hessian and the effective learning rate, every 2 steps: bitwise the
    same weights and train records as probes off; on the network without BN the theorem probes say why they are
    empty."""
    base = dict(steps=6, model={"norm": norm}, optim={"lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4})
    names = ["activation_hessian", "bn_gradient", "bn_curvature", "effective_lr"]
    on = tiny_config(
        name="on",
        **base,
        probes={
            "enabled": names,
            "every": 2,
            "layers": ["type:Conv2d", "type:Linear"],
            "activation_hessian": {"iters": 3, "layers": ["type:Conv2d"]},
        },
    )
    recs = train_off_and_on(tiny_config(name="off", **base), on, tmp_path)
    plain = [r for r in recs if r["kind"] != "probe"]
    assert without_timing(plain) == without_timing(read_metrics(tmp_path / "off" / "metrics.jsonl"))
    probes = [r for r in recs if r["kind"] == "probe"]
    assert {(r["step"], r["probe"]) for r in probes} == {(s, p) for s in (1, 2, 4, 6) for p in names}
    gradient = next(r["values"] for r in probes if r["probe"] == "bn_gradient")
    scale = next(r["values"] for r in probes if r["probe"] == "effective_lr")
    if norm == "batch":
        assert gradient["layers"] and max(gradient["identity_error"].values()) < 1e-4
        assert sum(scale["invariant"].values()) == len(gradient["layers"])  # each conv before a BN
    else:
        assert gradient["layers"] == [] and "no BatchNorm layer" in gradient["note"]
        assert not any(scale["invariant"].values())


def test_probe_records_survive_resume(tmp_path, monkeypatch):
    cfg = tiny_config(
        steps=12,
        model={"norm": "batch"},
        probes={
            "enabled": ["gradient_sweep", "activation_stats"],
            "schedule": "list",
            "steps": [3, 9, 11],
            "activation_batch": 16,
        },
    )
    train(cfg, out=tmp_path / "whole")
    train_killed_after(cfg, tmp_path / "cut", monkeypatch, step=10)
    train(cfg, out=tmp_path / "cut", resume=True)

    def strip(records):
        out = []
        for r in without_timing(records):
            r = dict(r)
            if "cost" in r:
                r["cost"] = {k: v for k, v in r["cost"].items() if k != "seconds"}
            out.append(r)
        return out

    assert strip(read_metrics(tmp_path / "cut" / "tiny" / "metrics.jsonl")) == strip(
        read_metrics(tmp_path / "whole" / "tiny" / "metrics.jsonl")
    )


@pytest.mark.parametrize(
    "optim, arch",
    [
        ({"name": "adamw", "lr": 0.003}, "vgg"),
        ({"name": "sgd", "lr": 0.05}, "vit"),
        ({"name": "sgd", "lr": 0.05, "momentum": 0.9}, "resnet"),
        ({"name": "sgd", "lr": 0.05}, "resnet-fixup"),
    ],
)
def test_curvature_probes_never_change_training(tmp_path, optim, arch):
    """Every probe, the curvature ones with a warm start included and the loss slice, on a VGG with BN under AdamW,
    a ViT with dropout under SGD, and ResNet-8 with BN and without (Fixup): bitwise the same weights and records as
    probes off."""
    model = (
        {"norm": "batch"}
        if arch == "vgg"
        else {"arch": "resnet", "resnet": {"depth": 8}, "norm": "batch", "init": "kaiming"}
        if arch == "resnet"
        else {"arch": "resnet", "resnet": {"depth": 8}, "norm": "none", "init": "fixup"}
        if arch == "resnet-fixup"
        else {"arch": "vit", "norm": "layer", "vit": {"dim": 16, "depth": 2, "heads": 2, "patch": 8, "dropout": 0.1}}
    )
    base = dict(steps=6, model=model, optim=optim)
    off = tiny_config(name="off", **base)
    on = tiny_config(
        name="on",
        **base,
        probes={
            "enabled": [
                "gradient_sweep",
                "ics_opti",
                "sharpness",
                "preconditioned_sharpness",
                "curvature",
                "layer_sharpness",
                "hessian_trace",
                "spectral_density",
                "loss_slice",
                "update_sweep",
                "critical_sharpness",
                "batch_sharpness",
                "edge_eigenvalues",
            ],
            "every": 2,
            "sharpness_iters": 4,
            "warm_start": True,
            "trace_samples": 4,
            "trace_method": "hutch++",
            "density_vectors": 2,
            "density_steps": 3,
            "preconditioned_sharpness": {"iters": 4, "warm_start": True},
            "batch_sharpness": {"batches": 2, "batch_size": 8},
            "edge_eigenvalues": {"max_products": 12, "min_products": 12, "batch": 16},
        },
    )
    recs_on = train_off_and_on(off, on, tmp_path)
    assert without_timing([r for r in recs_on if r["kind"] != "probe"]) == without_timing(
        read_metrics(tmp_path / "off" / "metrics.jsonl")
    )
    sharp = [r["values"] for r in recs_on if r.get("probe") == "sharpness"]
    pre = [r["values"] for r in recs_on if r.get("probe") == "preconditioned_sharpness"]
    assert all(s["value"] is not None and not s["preconditioned"] for s in sharp)  # H needs no optimizer state
    if optim["name"] == "adamw":  # Adam: no preconditioner before the first step, then P^-1 H against 38/lr
        assert pre[0]["value"] is None and pre[1]["preconditioned"]
        assert pre[1]["threshold"] == pytest.approx(38 / 0.003)
        assert sharp[1]["threshold"] is None and sharp[1]["preconditioned_threshold"] == pytest.approx(38 / 0.003)
    for records in (sharp, pre):
        flags = [s["warm_start"] for s in records if s.get("value") is not None]  # the first has no predecessor
        assert len(flags) >= 3 and flags[0] is False and all(flags[1:])
    edge = [
        r["values"] for r in recs_on if r.get("probe") == "edge_eigenvalues" and r["values"].get("values") is not None
    ]
    assert edge and [e["warm"] for e in edge][1:] == [True] * (len(edge) - 1)
    critical = [r for r in recs_on if r.get("probe") == "critical_sharpness"]
    assert len(critical) >= 3 and all(c["cost"]["forward"] <= 10 and c["cost"]["backward"] == 0 for c in critical)
    assert all(c["values"]["critical_sharpness"] is not None or c["values"].get("note") for c in critical)


def test_a_run_with_dropout_is_a_pure_function_of_its_config(tmp_path):
    """Dropout draws from a stream seeded by the run's config: whatever the process drew before
    (another run, a user's own code) changes nothing, and the caller's generator is left as it was."""
    cfg = tiny_config(
        steps=4,
        model={"arch": "vit", "norm": "layer", "vit": {"dim": 16, "depth": 1, "heads": 2, "patch": 8, "dropout": 0.3}},
    )
    weights = []
    for i, seed in enumerate((1, 2)):
        torch.manual_seed(seed)
        before = torch.get_rng_state()
        train(build_config([{"name": f"r{i}"}], base=cfg), out=tmp_path)
        assert torch.equal(before, torch.get_rng_state())
        weights.append(torch.load(tmp_path / f"r{i}" / "checkpoint.pt", weights_only=True)["model"])
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_the_mean_loss_is_the_summed_loss_over_the_number_of_samples():
    out, y = torch.randn(7, 10, dtype=torch.float64), torch.randn(7, 10, dtype=torch.float64)
    assert LOSSES["mean_squares"](out, y).item() == pytest.approx(LOSSES["sum_squares"](out, y).item() / 7, rel=1e-12)


def test_the_square_loss_to_one_hot_labels_is_cohen_et_als_and_trains_an_mlp(tmp_path):
    out, y = torch.randn(5, 4, dtype=torch.float64), torch.tensor([0, 3, 1, 1, 2])
    by_hand = sum(0.5 * float(((out[i] - torch.eye(4, dtype=torch.float64)[y[i]]) ** 2).sum()) for i in range(5)) / 5
    assert LOSSES["square_onehot"](out, y).item() == pytest.approx(by_hand, rel=1e-12)
    cfg = tiny_config(
        steps=6,
        loss="square_onehot",
        model={"arch": "mlp", "mlp": {"widths": [16]}, "init": "torch_default"},
        data={"batch_size": 0},
        optim={"lr": 0.05},
        probes={
            "enabled": ["sharpness", "batch_sharpness"],
            "every": 3,
            "sharpness": {"iters": 5, "batch": 64},
            "batch_sharpness": {"batches": 2, "batch_size": 16},
        },
    )
    status = train(cfg, out=tmp_path)
    recs = read_metrics(tmp_path / "tiny" / "metrics.jsonl")
    assert status["status"] == "done" and "acc" in [r for r in recs if r["kind"] == "train"][0]
    sharp = [r["values"] for r in recs if r.get("probe") == "sharpness"]
    assert sharp[0]["examples"] == 64 and not sharp[0]["preconditioned"] and sharp[0]["threshold"] == 2 / 0.05
    assert [len(r["values"]["per_batch"]) for r in recs if r.get("probe") == "batch_sharpness"] == [2, 2, 2]


def test_a_finished_run_resumed_with_more_steps_continues_to_them(tmp_path):
    """landscape train --resume --set steps=N: the run continues from its last checkpoint and ends with the weights
    of a run made that long; fewer steps, a diverged run, or log-spaced probe steps that would move are refused."""
    from landscape.errors import UserError

    probes = {"enabled": ["gradient_sweep"], "schedule": "every", "every": 2}
    short = tiny_config(name="grow", steps=6, probes=probes, log={"train_every": 2, "eval_every": 2})
    long = tiny_config(name="grow", steps=10, probes=probes, log={"train_every": 2, "eval_every": 2})
    train(short, out=tmp_path / "a")
    with pytest.raises(UserError, match="different config"):  # an experiment's resume never extends
        train(long, out=tmp_path / "a", resume=True)
    status = train(long, out=tmp_path / "a", resume=True, extend=True)
    assert status["status"] == "done" and status["step"] == 10
    train(long, out=tmp_path / "b")
    a = torch.load(tmp_path / "a" / "grow" / "checkpoint.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "b" / "grow" / "checkpoint.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    probe_steps = [r["step"] for r in read_metrics(tmp_path / "a" / "grow" / "metrics.jsonl") if r["kind"] == "probe"]
    assert probe_steps == [1, 2, 4, 6, 8, 10]
    with pytest.raises(UserError, match="not fewer"):
        train(short, out=tmp_path / "a", resume=True, extend=True)
    logged = tiny_config(name="logs", steps=6, probes={**probes, "schedule": "mixed", "points": 3})
    train(logged, out=tmp_path / "c")
    with pytest.raises(UserError, match="log-spaced"):
        train(
            tiny_config(name="logs", steps=9, probes={**probes, "schedule": "mixed", "points": 3}),
            out=tmp_path / "c",
            resume=True,
            extend=True,
        )


def test_channels_last_on_the_cpu_is_the_default_recorded_and_probes_leave_it_unchanged(tmp_path):
    """memory_format auto takes channels-last convolutions wherever the model has one, on the CPU too (oneDNN's
    fast path); env.json says which ran; probes still change nothing; contiguous is kept where asked for, and
    on a model without convolutions."""
    base = dict(steps=4, model={"norm": "batch"}, optim={"lr": 0.05})
    off = tiny_config(name="off", **base)
    on = tiny_config(name="on", **base, probes={"enabled": ["gradient_sweep", "sharpness"], "every": 2})
    train_off_and_on(off, on, tmp_path)
    assert json.loads((tmp_path / "on" / "env.json").read_text())["memory_format"] == "channels_last"
    train(tiny_config(name="contiguous", steps=2, memory_format="contiguous"), out=tmp_path)
    assert json.loads((tmp_path / "contiguous" / "env.json").read_text())["memory_format"] == "contiguous"
    mlp = tiny_config(name="mlp", steps=2, model={"arch": "mlp", "mlp": {"widths": [8]}})
    train(mlp, out=tmp_path)
    assert json.loads((tmp_path / "mlp" / "env.json").read_text())["memory_format"] == "contiguous"


def test_a_resumed_run_keeps_the_memory_format_it_started_in(tmp_path):
    """A run started when auto meant contiguous on the CPU (release 0.3) continues contiguous: its kernels never
    change midway, so extending it gives the weights of one contiguous run of the new length."""
    short = tiny_config(name="r", steps=4, memory_format="contiguous")
    train(short, out=tmp_path)
    config_path = tmp_path / "r" / "config.yaml"
    config_path.write_text(config_path.read_text().replace("memory_format: contiguous", "memory_format: auto"))
    train(tiny_config(name="r", steps=8), out=tmp_path, resume=True, extend=True)
    assert json.loads((tmp_path / "r" / "env.json").read_text())["memory_format"] == "contiguous"
    train(tiny_config(name="straight", steps=8, memory_format="contiguous"), out=tmp_path)
    a = torch.load(tmp_path / "r" / "checkpoint.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
