"""The probes on a causal language model (GPT-2 in miniature, built from a config: no download), each probe's time at
a probe step against a training step of the same model and batch, measured in the same run; with ``--report DIR`` it
also trains the model with every probe on and writes the HTML report the docs' screenshot is taken from.

    python benchmarks/bench_gpt2.py [--layers 4] [--repeats 3] [--report /tmp/gpt2]

The model ties its output layer to its token embedding, as every Hugging Face language model does; the loss is the
model's own (``loss_fn=None``, a dict batch with its labels). Times are medians; nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import time

import torch
import transformers
from common import timeit

from landscape.probes import Monitor, every, explicit

PROBES = {  # each at the options the report run uses
    "gradient_sweep": {},
    "ics_opti": {},
    "sharpness": {"iters": 15, "tol": 0.01},
    "preconditioned_sharpness": {"iters": 15, "tol": 0.01},
    "curvature": {},
    "layer_sharpness": {"iters": 8},
    "hessian_trace": {"samples": 8},
    "spectral_density": {"vectors": 2, "steps": 12},
    "layer_grad_norm": {},
    "update_sweep": {},
    "activation_stats": {"batch": 32},
}


def tiny_gpt2(layers: int) -> transformers.GPT2LMHeadModel:
    cfg = transformers.GPT2Config(
        vocab_size=64, n_positions=16, n_embd=32, n_layer=layers, n_head=2, bos_token_id=0, eos_token_id=0
    )
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(cfg)


def counting_text(n: int) -> torch.Tensor:
    """Sequences that count up in steps of 3 (mod 63) from a random start: a next token a small model learns."""
    start = torch.randint(1, 64, (n, 1), generator=torch.Generator().manual_seed(1))
    return 1 + (start + 3 * torch.arange(16)) % 63


def train_step(model, opt, batch) -> None:
    opt.zero_grad()
    model(**batch).loss.backward()
    opt.step()


def overhead(layers: int, repeats: int) -> None:
    model = tiny_gpt2(layers)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    ids = counting_text(64)
    batch = {"input_ids": ids[:16], "labels": ids[:16]}
    for _ in range(3):  # Adam's state exists: its preconditioner can be read
        train_step(model, opt, batch)
    step = timeit(lambda: train_step(model, opt, batch), repeats)
    n = sum(p.numel() for p in model.parameters())
    print(
        f"GPT-2, {layers} layers, {n:,} parameters, batch 16 x 16 tokens, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads: a training step {1e3 * step:.1f} ms"
    )
    print("| probe | ms at a probe step | / a training step |\n|---|---|---|")
    for name, options in PROBES.items():
        mon = Monitor(
            lambda r: None,
            model,
            opt,
            None,
            explicit([1]),
            probes=[name],
            options={name: options},
            probe_batch={"input_ids": ids[:32], "labels": ids[:32]},
            step_hook=False,
        )

        def probe_step(mon=mon):
            out = model(**batch)
            opt.zero_grad()
            out.loss.backward()
            mon.observe(1, batch, out.loss)
            mon.after_step()

        t = timeit(probe_step, repeats)
        print(f"| {name} | {1e3 * t:.0f} | {t / step:.1f} |")


def report(folder: str, layers: int) -> None:
    from landscape.report import build_report

    model = tiny_gpt2(layers)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    ids = counting_text(512)
    t0 = time.perf_counter()
    with Monitor(
        f"{folder}/gpt2-tiny",
        model,
        opt,
        None,
        every(20),
        probes=list(PROBES),
        options=PROBES,
        force=True,
        probe_batch={"input_ids": ids[:32], "labels": ids[:32]},
    ) as mon:
        for step in range(1, 101):
            b = ids[(step * 16) % 480 : (step * 16) % 480 + 16]
            batch = {"input_ids": b, "labels": b}
            mon.before_forward(step)
            out = model(**batch)
            opt.zero_grad()
            out.loss.backward()
            mon.observe(step, batch, out.loss)
            opt.step()
            mon.log_train(step, loss=out.loss.item())
    print(f"100 steps, {len(PROBES)} probes every 20 steps: {time.perf_counter() - t0:.0f} s")
    print("report:", build_report([f"{folder}/gpt2-tiny"], f"{folder}/gpt2-report.html"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--report", default=None, help="also train with every probe on and write the report here")
    args = parser.parse_args()
    overhead(args.layers, args.repeats)
    if args.report:
        report(args.report, args.layers)


if __name__ == "__main__":
    main()
