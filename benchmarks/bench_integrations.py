"""What the Lightning and Hugging Face callbacks cost, against the same probes through Monitor.

For each framework, on the same model, data and probe schedule (gradient_sweep + ics_opti every
``--every`` steps), in one process:

- bare: the framework's fit with no callback;
- idle: the callback installed with a schedule that never fires (its per-step cost);
- probed: the callback probing;
and for Monitor, a hand-written loop bare and probed. The callback's probe overhead
(probed - bare) is divided by Monitor's (probed - bare) on the same model: 1.0 means the
callback adds nothing to the probes' own cost.

    python benchmarks/bench_integrations.py

Times are medians of ``--repeats`` after a warm-up call (``common.timeit``); nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import tempfile
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from common import timeit

from landscape.config import ModelConfig, VggConfig
from landscape.models import build_model
from landscape.probes import Monitor, every, explicit

PROBES = ("gradient_sweep", "ics_opti")


def vgg():
    return build_model(ModelConfig(norm="batch", vgg=VggConfig(width=0.25)), seed=0)


def cifar_like(n: int):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)


def hand_loop(model, opt, loss_fn, batch_at, steps: int, schedule, probes, output_fn=None) -> None:
    """A hand-written loop, with Monitor's probes when ``probes`` is not empty; ``batch_at(step)``
    is ``(inputs, targets)``, inputs a tensor or a dict of keyword arguments."""
    with tempfile.TemporaryDirectory() as tmp:
        monitor = (
            Monitor(
                Path(tmp) / "run", model, opt, loss_fn, schedule, probes=probes, output_fn=output_fn, step_hook=False
            )
            if probes
            else None
        )
        for step in range(1, steps + 1):
            inputs, targets = batch_at(step)
            if monitor:
                monitor.before_forward(step)
            opt.zero_grad()
            out = model(**inputs) if isinstance(inputs, dict) else model(inputs)
            loss_fn(out if output_fn is None else output_fn(out), targets).backward()
            if monitor:
                monitor.observe(step, (inputs, targets))
            opt.step()
            if monitor:
                monitor.after_step()
        if monitor:
            monitor.close()


def monitor_loop(steps: int, batch: int, schedule, probes) -> None:
    model = vgg()
    x, y = cifar_like(steps * batch)
    hand_loop(
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        F.cross_entropy,
        lambda t: (x[(t - 1) * batch : t * batch], y[(t - 1) * batch : t * batch]),
        steps,
        schedule,
        probes,
    )


def lightning_fit(steps: int, batch: int, schedule, probes) -> None:
    import lightning.pytorch as pl

    from landscape.integrations.lightning import LandscapeCallback

    class Module(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = vgg()

        def forward(self, x):
            return self.net(x)

        def training_step(self, b, i):
            return F.cross_entropy(self(b[0]), b[1])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    x, y = cifar_like(steps * batch)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=batch)
    with tempfile.TemporaryDirectory() as tmp:
        callbacks = [LandscapeCallback(Path(tmp) / "run", schedule, probes=probes)] if probes else []
        pl.Trainer(
            max_steps=steps,
            accelerator="cpu",
            devices=1,
            callbacks=callbacks,
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            enable_checkpointing=False,
        ).fit(Module(), loader)


def hf_fit(steps: int, batch: int, schedule, probes) -> None:
    import transformers

    from landscape.integrations.hf import LandscapeHFCallback

    model, ids, labels = tiny_bert_data(steps, batch)
    data = [{"input_ids": t, "labels": int(y)} for t, y in zip(ids, labels)]
    with tempfile.TemporaryDirectory() as tmp:
        args = transformers.TrainingArguments(
            tmp,
            max_steps=steps,
            per_device_train_batch_size=batch,
            report_to=[],
            save_strategy="no",
            logging_strategy="no",
            use_cpu=True,
            disable_tqdm=True,
        )
        callbacks = [LandscapeHFCallback(Path(tmp) / "run", schedule, probes=probes)] if probes else []
        transformers.Trainer(model=model, args=args, train_dataset=data, callbacks=callbacks).train()


def tiny_bert_data(steps: int, batch: int):
    import transformers

    cfg = transformers.BertConfig(
        vocab_size=1000,
        hidden_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=256,
        max_position_embeddings=64,
        num_labels=2,
    )
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(cfg)
    ids = torch.randint(0, 1000, (steps * batch, 64), generator=torch.Generator().manual_seed(0))
    return model, ids, (ids[:, 0] > 500).long()


def hf_monitor_loop(steps: int, batch: int, schedule, probes) -> None:
    """The same tiny BERT in a hand-written AdamW loop with Monitor (the HF callback's baseline)."""
    model, ids, labels = tiny_bert_data(steps, batch)
    model.train()
    hand_loop(
        model,
        torch.optim.AdamW(model.parameters(), lr=5e-5),
        lambda out, _: out.loss,
        lambda t: (
            {"input_ids": ids[(t - 1) * batch : t * batch], "labels": labels[(t - 1) * batch : t * batch]},
            None,
        ),
        steps,
        schedule,
        probes,
        output_fn=lambda o: o,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--every", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    warnings.filterwarnings("ignore")
    import logging

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    never = explicit([10**9])
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; {a.steps} steps, batch {a.batch}, "
        f"{', '.join(PROBES)} every {a.every} "
        f"(probe steps: {len([s for s in range(1, a.steps + 1) if every(a.every)(s)])})"
    )
    rows = []
    for label, fit, base in (
        ("Lightning, VGG-11 x0.25 + BN, SGD", lightning_fit, monitor_loop),
        ("HF Trainer, BERT 4x128, AdamW", hf_fit, hf_monitor_loop),
    ):
        t = {
            k: timeit(lambda s=s, p=p, f=f: f(a.steps, a.batch, s, p), a.repeats)
            for k, f, s, p in (
                ("bare", fit, None, ()),
                ("idle", fit, never, PROBES),
                ("probed", fit, every(a.every), PROBES),
                ("m_bare", base, None, ()),
                ("m_probed", base, every(a.every), PROBES),
            )
        }
        cb, mon = t["probed"] - t["bare"], t["m_probed"] - t["m_bare"]
        rows.append((label, t, cb, mon))
        print(f"\n{label}")
        print(f"  framework fit: bare {t['bare']:.2f} s, callback idle {t['idle']:.2f} s, probing {t['probed']:.2f} s")
        print(f"  Monitor loop:  bare {t['m_bare']:.2f} s, probing {t['m_probed']:.2f} s")
        print(f"  probe overhead: callback {cb:.2f} s / Monitor {mon:.2f} s = {cb / mon:.2f}x")
        print(
            f"  idle callback: {(t['idle'] - t['bare']) / a.steps * 1e3:+.1f} ms per step "
            f"({(t['idle'] - t['bare']) / t['bare'] * 100:+.1f}% of the bare fit)"
        )


if __name__ == "__main__":
    main()
