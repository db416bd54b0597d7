"""A causal language model under FSDP2 with the probes on: sharpness, Adam's preconditioned sharpness and the
critical sharpness over training, against the optimizer's thresholds.

The model is a small GPT (:mod:`landscape.models.gpt`, random initialisation from its config, tied embedding and
head). The text is the Python reference documentation that ships with CPython (``pydoc_data.topics``, what
``help()`` reads: about 465,000 characters of English prose), as bytes (a 256-token vocabulary, no tokenizer to
download); its SHA-256 is recorded, since another Python version ships another text. Every step draws its global
batch of windows from a generator seeded by (seed, step), so one process and two FSDP2 processes (each holding
half the batch and half of every parameter) train on the same data. The loop is the one a user writes: forward,
backward, ``monitor.observe``, ``optimizer.step``.

    python -m landscape.recipes.lm train --out results/lm/one
    python -m landscape.recipes.lm train --procs 2 --out results/lm/fsdp      # FSDP2, gloo (CPU) or NCCL (GPUs)
    python -m landscape.recipes.lm figure results/lm/one results/lm/fsdp --png docs/lm-fsdp.png

Under FSDP2 every Hessian-vector product is a central difference of two gradients (the all-gathered parameters
have no second backward); critical sharpness needs forward passes only.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import socket
import sys
import time
from pathlib import Path

import torch

from landscape.models.gpt import GPT, next_token_loss
from landscape.probes.monitor import Monitor
from landscape.probes.schedules import every

PROBES = ("sharpness", "preconditioned_sharpness", "critical_sharpness")


def corpus() -> tuple[torch.Tensor, str]:
    """The text as byte tokens, and its SHA-256."""
    from pydoc_data.topics import topics

    text = "\n\n".join(topics[k] for k in sorted(topics)).encode("utf-8")
    return torch.frombuffer(bytearray(text), dtype=torch.uint8).long(), hashlib.sha256(text).hexdigest()


def global_batch(tokens: torch.Tensor, size: int, context: int, seed: int, step: int):
    """``size`` windows of ``context + 1`` tokens at offsets drawn from a generator seeded by (seed, step)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    starts = torch.randint(0, len(tokens) - context - 1, (size,), generator=g)
    windows = torch.stack([tokens[s : s + context + 1] for s in starts.tolist()])
    return windows[:, :-1], windows[:, 1:]


def shard(model: GPT) -> GPT:
    """FSDP2: each block is its own unit, the root holds the embeddings, the tied head and the final norm."""
    from torch.distributed.fsdp import fully_shard

    for block in model.blocks:
        fully_shard(block)
    return fully_shard(model)


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(rank: int, world: int, args: argparse.Namespace, port: int) -> None:
    """One process's training loop (rank ``rank`` of ``world``)."""
    import torch.distributed as dist

    if world > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=world)
        torch.set_num_threads(max(1, args.threads // world))
    else:
        torch.set_num_threads(args.threads)
    try:
        tokens, sha = corpus()
        torch.manual_seed(args.seed)
        model = GPT(context=args.context, dim=args.dim, depth=args.depth, heads=args.heads)
        if world > 1:
            model = shard(model)
        opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.0)
        monitor = Monitor(
            args.out,
            model,
            opt,
            next_token_loss,
            every(args.every),
            probes=list(PROBES),
            options={
                "sharpness": {"iters": args.iters, "tol": args.tol},
                "preconditioned_sharpness": {"iters": args.iters, "tol": args.tol},
            },
            force=args.force,
        )
        if rank == 0:
            about = {
                "recipe": "landscape.recipes.lm",
                "processes": world,
                "fsdp": world > 1,
                "text": "pydoc_data.topics (CPython " + sys.version.split()[0] + ")",
                "text_sha256": sha,
                "tokens": len(tokens),
                **{k: v for k, v in vars(args).items() if k not in ("out", "force", "command")},
            }
            (Path(args.out) / "recipe.json").write_text(json.dumps(about, indent=1))
        t0 = time.perf_counter()
        half = args.batch // world
        for step in range(1, args.steps + 1):
            x, y = global_batch(tokens, args.batch, args.context, args.seed, step)
            x, y = x[rank * half : (rank + 1) * half], y[rank * half : (rank + 1) * half]
            opt.zero_grad(set_to_none=True)
            loss = next_token_loss(model(x), y)
            loss.backward()
            monitor.observe(step, (x, y), loss)
            opt.step()
            if step % args.log_every == 0 or step == args.steps:
                value = loss.detach().clone()
                if world > 1:
                    dist.all_reduce(value)
                    value /= world
                monitor.log_train(step, loss=float(value))
                if rank == 0:
                    print(f"step {step}: loss {float(value):.4f} ({time.perf_counter() - t0:.0f} s)", flush=True)
        monitor.close()
    finally:
        if world > 1:
            dist.destroy_process_group()


def train(args: argparse.Namespace) -> None:
    if args.procs == 1:
        run(0, 1, args, 0)
        return
    import torch.multiprocessing as mp

    mp.spawn(run, args=(args.procs, args, _port()), nprocs=args.procs, join=True)


def series(folder: Path, probe: str) -> tuple[list[int], list[float], list[float]]:
    """Steps, values and thresholds of one probe in a run's records."""
    steps, values, thresholds = [], [], []
    for line in (folder / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        if r.get("kind") == "probe" and r.get("probe") == probe:
            v = r["values"]
            value = v.get("critical_sharpness") if probe == "critical_sharpness" else v.get("value")
            if value is not None and math.isfinite(value):
                steps.append(r["step"])
                values.append(value)
                thresholds.append(v.get("threshold"))
    return steps, values, thresholds


def figure(folders: list[Path], png: Path) -> None:
    """Per run (a column): the three sharpnesses over training against their thresholds, and the loss."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.8 * len(folders), 6.4))
    axes = fig.subplots(2, len(folders), squeeze=False)
    labels = {
        "sharpness": "top eigenvalue of H",
        "preconditioned_sharpness": "top eigenvalue of P^-1 H",
        "critical_sharpness": "critical sharpness 2/eta_c",
    }
    for col, folder in enumerate(folders):
        about = json.loads((folder / "recipe.json").read_text())
        ax = axes[0][col]
        for probe, colour in zip(PROBES, ("tab:blue", "tab:orange", "tab:green")):
            s, v, _ = series(folder, probe)
            ax.plot(s, v, marker=".", color=colour, label=labels[probe])
        lr = about["lr"]
        ax.axhline(38 / lr, color="tab:orange", ls="--", lw=1, label="Adam's threshold 38/lr (for P^-1 H)")
        ax.axhline(2 / lr, color="tab:green", ls="--", lw=1, label="2/lr (the next step raises the loss above it)")
        ax.set_yscale("log")
        ax.set_xlabel("step")
        kind = f"FSDP2, {about['processes']} processes" if about["fsdp"] else "1 process"
        ax.set_title(f"{kind}: lr {lr:g}, batch {about['batch']} x {about['context']} tokens", fontsize=9)
        if col == 0:  # the legend where the loss panel below has room (the loss falls from its top left)
            axes[1][0].legend(*ax.get_legend_handles_labels(), fontsize=7, loc="upper right")
        loss = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
        loss = [(r["step"], r["loss"]) for r in loss if r.get("kind") == "train"]
        axes[1][col].plot([s for s, _ in loss], [v for _, v in loss], color="k")
        axes[1][col].set_xlabel("step")
        axes[1][col].set_ylabel("train loss (nats per byte)")
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=96)


def table(folders: list[Path]) -> str:
    """A Markdown table per run: the last probe step's values, their medians over the second half, and costs."""
    rows = [
        "| run | final loss | sharpness (last; median 2nd half) | P^-1 H sharpness x lr / 38 (median 2nd half) | "
        "critical sharpness x lr / 2 (median 2nd half) | critical / P^-1 H sharpness (median) | forward passes per "
        "critical sharpness | probe seconds per step |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for folder in folders:
        about = json.loads((folder / "recipe.json").read_text())
        records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
        lr, end = about["lr"], about["steps"]
        loss = [r["loss"] for r in records if r.get("kind") == "train"]

        sharp, by_step = _second_half(folder, "sharpness", end)
        pre, pre_by_step = _second_half(folder, "preconditioned_sharpness", end)
        crit, crit_by_step = _second_half(folder, "critical_sharpness", end)
        # Adam's update is P^-1 m: on a quadratic, critical sharpness is a Rayleigh quotient of P^-1/2 H P^-1/2
        both = [crit_by_step[t] / pre_by_step[t] for t in pre_by_step if t in crit_by_step and pre_by_step[t] > 0]
        passes = [r["cost"]["forward"] for r in records if r.get("probe") == "critical_sharpness"]
        seconds = sum(r["cost"]["seconds"] for r in records if r.get("kind") == "probe")
        kind = f"FSDP2 x {about['processes']}" if about["fsdp"] else "1 process"
        last = list(by_step.values())[-1] if by_step else math.nan
        rows.append(
            f"| {kind} | {loss[-1]:.3f} | {last:.3g}; {_median(sharp):.3g} | {_median(pre) * lr / 38:.3g} | "
            f"{_median(crit) * lr / 2:.3g} | {_median(both):.3g} | {_median(passes):.0f} | "
            f"{seconds / end:.3f} |"
        )
    return "\n".join(rows)


def _second_half(folder: Path, probe: str, end: int) -> tuple[list[float], dict[int, float]]:
    """A probe's values after step ``end / 2``, and all its values by step."""
    s, v, _ = series(folder, probe)
    return [x for t, x in zip(s, v) if t > end / 2], dict(zip(s, v))


def _median(xs: list[float]) -> float:
    xs = sorted(xs)
    if not xs:
        return math.nan
    mid = len(xs) // 2
    return xs[mid] if len(xs) % 2 else (xs[mid - 1] + xs[mid]) / 2


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m landscape.recipes.lm", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train the GPT with the probes on (one process, or FSDP2 over --procs)")
    t.add_argument("--out", required=True, help="the run folder to create (rank 0 writes it)")
    t.add_argument("--procs", type=int, default=1, help="1: one process; 2 or more: FSDP2 over that many (gloo)")
    t.add_argument("--steps", type=int, default=300)
    t.add_argument("--batch", type=int, default=16, help="the global batch, in sequences")
    t.add_argument("--context", type=int, default=64)
    t.add_argument("--dim", type=int, default=64)
    t.add_argument("--depth", type=int, default=2)
    t.add_argument("--heads", type=int, default=4)
    t.add_argument("--lr", type=float, default=3e-3)
    t.add_argument("--every", type=int, default=10, help="probe every this many steps")
    t.add_argument("--iters", type=int, default=40, help="Lanczos products at most per sharpness")
    t.add_argument("--tol", type=float, default=1e-3, help="Lanczos stops when its error bound is below this")
    t.add_argument("--log-every", type=int, default=10)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--threads", type=int, default=2, help="CPU threads in all (split between the processes)")
    t.add_argument("--force", action="store_true", help="replace an existing run folder")
    f = sub.add_parser("figure", help="draw the runs' sharpnesses and print their table")
    f.add_argument("runs", nargs="+", type=Path)
    f.add_argument("--png", type=Path, required=True)
    args = ap.parse_args(argv)
    if args.command == "train":
        bad = [
            k
            for k in ("procs", "steps", "batch", "context", "dim", "depth", "heads", "every", "iters")
            if getattr(args, k) < 1
        ]
        if bad or args.lr <= 0 or not 0 < args.tol < 1 or args.batch % args.procs:
            ap.error(f"positive numbers needed ({', '.join(bad) or 'lr'}), and a batch divisible by --procs")
        train(args)
    else:
        missing = [str(r) for r in args.runs if not (r / "recipe.json").is_file()]
        if missing:
            ap.error(f"not a run folder of this recipe (no recipe.json): {missing[0]}")
        figure(args.runs, args.png)
        print(table(args.runs))


if __name__ == "__main__":
    main()
