"""The Hugging Face callback on a tiny BERT-style classifier built from a config (no download):
records written, training bitwise unchanged (dropout on), scalars where report_to sends them."""

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from landscape.errors import UserError  # noqa: E402
from landscape.integrations.hf import LandscapeHFCallback  # noqa: E402
from landscape.probes import every  # noqa: E402


class Pairs(torch.utils.data.Dataset):
    def __init__(self, n=32, length=12):
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(5, 60, (n, length), generator=g)
        self.labels = (self.ids[:, 0] > 32).long()

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "attention_mask": torch.ones_like(self.ids[i]), "labels": self.labels[i]}


def tiny_bert():
    cfg = transformers.BertConfig(
        vocab_size=64,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
        num_labels=2,
    )
    torch.manual_seed(0)
    return transformers.BertForSequenceClassification(cfg)


def fit(tmp_path, callbacks, report_to=(), steps=6):
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=steps,
        per_device_train_batch_size=8,
        learning_rate=1e-3,
        report_to=list(report_to),
        save_strategy="no",
        logging_strategy="no",
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    model = tiny_bert()
    transformers.Trainer(model=model, args=args, train_dataset=Pairs(), callbacks=callbacks).train()
    return model


def test_callback_records_probes_and_leaves_training_bitwise_unchanged(tmp_path):
    plain = fit(tmp_path / "a", [])
    cb = LandscapeHFCallback(
        tmp_path / "run",
        every(2),
        probes=("gradient_sweep", "ics_opti", "sharpness", "preconditioned_sharpness"),
        options={"sharpness": {"iters": 4}, "preconditioned_sharpness": {"iters": 4}},
        layers=["bert.encoder.layer.0", "bert.encoder.layer.1", "classifier"],
    )
    probed = fit(tmp_path / "b", [cb])
    for (n, a), (_, b) in zip(plain.state_dict().items(), probed.state_dict().items()):
        assert torch.equal(a, b), n
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = {(r["probe"], r["step"]) for r in records}
    probes = ("gradient_sweep", "ics_opti", "sharpness", "preconditioned_sharpness")
    assert steps == {(p, s) for p in probes for s in (1, 2, 4, 6)}
    sweep = [r for r in records if r["probe"] == "gradient_sweep"]
    assert all(r["values"]["beta_eff"] > 0 and len(r["values"]["losses"]) == 8 for r in sweep)
    ics = [r for r in records if r["probe"] == "ics_opti"][0]["values"]
    assert ics["layers"] == ["bert.encoder.layer.0", "bert.encoder.layer.1", "classifier"]
    raw = [r for r in records if r["probe"] == "sharpness"][0]["values"]
    pre = [r for r in records if r["probe"] == "preconditioned_sharpness"][0]["values"]
    assert raw["preconditioned"] is False and pre["preconditioned"] is True
    assert raw["optimizer"] == pre["optimizer"] == "AdamW"
    assert raw["threshold"] is None and pre["threshold"] > 0  # Adam's 38/lr is P^-1 H's threshold, not H's
    assert json.loads((tmp_path / "run" / "status.json").read_text())["status"] == "done"


def test_scalars_follow_report_to_tensorboard(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cb = LandscapeHFCallback(tmp_path / "run", every(2))
    fit(tmp_path / "out", [cb], report_to=["tensorboard"], steps=4)
    acc = EventAccumulator(str(tmp_path / "out" / "runs" / "landscape"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("landscape/beta_eff")] == [1, 2, 4]


def test_a_model_without_a_loss_is_refused_before_the_first_update(tmp_path):
    cb = LandscapeHFCallback(tmp_path / "run", every(1), output_fn=lambda out: out.logits)  # logits.loss: no
    with pytest.raises(UserError, match=r"LandscapeHFCallback: the model.s output has no \.loss"):
        fit(tmp_path / "out", [cb])


def tiny_gpt2():
    """GPT-2 in miniature, from a config (no download): its lm_head ties the token embedding, as every HF LM does."""
    cfg = transformers.GPT2Config(
        vocab_size=64, n_positions=16, n_embd=16, n_layer=2, n_head=2, bos_token_id=0, eos_token_id=0
    )
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(cfg)


class Texts(torch.utils.data.Dataset):
    def __init__(self, n=32, length=12):
        self.ids = torch.randint(1, 64, (n, length), generator=torch.Generator().manual_seed(1))

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "attention_mask": torch.ones_like(self.ids[i]), "labels": self.ids[i]}


DEFAULT_PROBES = ("gradient_sweep", "ics_opti")  # Monitor's and the callback's default


def test_a_tied_gpt2_trains_with_the_default_probes_through_monitor_with_its_own_loss(tmp_path):
    from landscape.probes import Monitor
    from landscape.results import read_run

    model = tiny_gpt2()
    assert model.lm_head.weight is model.transformer.wte.weight
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    data = Texts()
    with Monitor(
        tmp_path / "gpt2",
        model,
        opt,
        None,
        every(2),
        probes=[*DEFAULT_PROBES, "sharpness", "preconditioned_sharpness"],
        options={"sharpness": {"iters": 8}, "preconditioned_sharpness": {"iters": 8}},
    ) as mon:
        for step in range(1, 5):
            batch = {k: torch.stack([data[i][k] for i in range(8 * (step - 1), 8 * step)]) for k in data[0]}
            mon.before_forward(step)
            out = model(**batch)  # the model computes its own loss from its labels
            opt.zero_grad()
            out.loss.backward()
            mon.observe(step, batch, out.loss)  # a dict batch, the model's loss
            opt.step()
            mon.log_train(step, loss=out.loss.item())
    run = read_run(tmp_path / "gpt2")
    assert not run.problems and run.state == "done" and run.status["train_seconds"] > 0
    ics = run.probe("ics_opti")
    assert [r["step"] for r in ics] == [1, 2, 4] and "lm_head" not in ics[0]["values"]["layers"]
    assert ics[0]["values"]["layers"][0] == "transformer.wte"
    assert all(r["values"]["value"] > 0 for r in run.probe("sharpness"))


def test_the_trainer_callback_with_default_probes_on_a_tied_gpt2(tmp_path):
    from landscape.results import read_run

    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "out"),
        max_steps=4,
        per_device_train_batch_size=8,
        learning_rate=1e-3,
        report_to=[],
        save_strategy="no",
        logging_steps=2,
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    callback = LandscapeHFCallback(tmp_path / "gpt2", every(2))
    transformers.Trainer(model=tiny_gpt2(), args=args, train_dataset=Texts(), callbacks=[callback]).train()
    run = read_run(tmp_path / "gpt2")
    assert not run.problems and {r["probe"] for r in run.kind("probe")} == set(DEFAULT_PROBES)
    assert [r["step"] for r in run.kind("train")] == [2, 4]  # the Trainer's logged loss
