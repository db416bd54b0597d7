"""Slice benchmark: time per grid point against the limit (the same plain forward passes over
the same data) and against the loss-landscapes package (``pip install -e .[bench]``), on the
same model, data, directions and grid; and where the values agree.

    python benchmarks/bench_slices.py --data-dir DATA [--model vgg|mlp] [--run RUN_DIR]

The model is VGG-11 at width 0.25 with BatchNorm (the quick preset's), or with ``--model mlp``
Cohen et al.'s fc-tanh (the eos experiments' MLP, whose first layer is 93% of its multiply-adds),
its weights a run's checkpoint when ``--run`` is given (else its initialisation), in eval mode
with the stored running statistics (``--bn checkpoint``: the mode loss-landscapes evaluates in,
so that the definitions agree). Ours is timed as it runs by default (``input_layer="auto"``: the
first layer cached where that pays, here fc-tanh's and not VGG's) and with the first layer cached
and not cached whatever it costs (``input_layer=True`` / ``False``). The directions are the lines from
the point to two other points (the peer's ``planar_interpolation``), so both evaluate exactly the same
parameter vectors.
Times are medians of ``--repeats``; nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import copy

import torch
from common import timeit, training_split

from landscape.config import MlpConfig, ModelConfig, VggConfig
from landscape.data import Batches
from landscape.models import build_model
from landscape.probes import slices as S

CE = torch.nn.functional.cross_entropy


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir")
    ap.add_argument("--model", choices=("vgg", "mlp"), default="vgg")
    ap.add_argument("--run", help="a run directory whose checkpoint gives the weights")
    ap.add_argument("--examples", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--steps", type=int, default=5, help="the grid's side (the peer's `steps`)")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.manual_seed(0)
    cfg = (
        ModelConfig(norm="batch", vgg=VggConfig(width=0.25))
        if args.model == "vgg"
        else ModelConfig(arch="mlp", init="torch_default", mlp=MlpConfig(widths=[200, 200], activation="tanh"))
    )
    model = build_model(cfg, seed=0)
    if args.run:
        model.load_state_dict(torch.load(f"{args.run}/checkpoint.pt", weights_only=True)["model"])
    model.eval()
    split = training_split(args.data_dir)
    b = Batches(split, 0, seed=0)
    x_all = b.prepare(split.inputs[: args.examples])
    y_all = split.targets[: args.examples]
    batches = [
        (x_all[i : i + args.batch_size], y_all[i : i + args.batch_size])
        for i in range(0, args.examples, args.batch_size)
    ]
    w = {n: p.detach().clone() for n, p in model.named_parameters()}
    ends = [copy.deepcopy(model) for _ in range(2)]
    for k, m in enumerate(ends):
        d = S.random_direction(w, 10 + k)  # filter-normalised (Li et al.), biases and BN left out
        with torch.no_grad():
            for n, p in m.named_parameters():
                p.add_(d[n], alpha=0.5)
    d1, d2 = ({n: p.detach() - w[n] for n, p in m.named_parameters()} for m in ends)
    steps = args.steps
    points = steps * steps

    # the peer: planar_interpolation visits start + i d1/steps + j d2/steps in a zig-zag (below)
    import loss_landscapes
    from loss_landscapes.metrics import Metric

    class BatchedLoss(Metric):  # the same forwards as ours: one per batch of the same data
        def __call__(self, wrapper) -> float:
            with torch.no_grad():
                return sum(CE(wrapper.forward(xb), yb).item() * len(yb) for xb, yb in batches) / args.examples

    def peer():
        start = copy.deepcopy(model)  # the peer moves the model it is given; a copy keeps ours
        return loss_landscapes.planar_interpolation(start, ends[0], ends[1], BatchedLoss(), steps=steps)

    # The peer's zig-zag: even rows i take j = 1..steps, odd rows j = 0..steps-1 (its in-place
    # walk along d2 is off by one step on alternate rows); these are the points it evaluates.
    visited = [(i / steps, (j + (1 if i % 2 == 0 else 0)) / steps) for i in range(steps) for j in range(steps)]

    def ours():
        return S.evaluate_slice(
            model, CE, [d1, d2], visited, batches, bn="checkpoint", origin=w, buffers=dict(model.named_buffers())
        )

    def ours_plain():
        return S.evaluate_slice(
            model,
            CE,
            [d1, d2],
            visited,
            batches,
            bn="checkpoint",
            origin=w,
            buffers=dict(model.named_buffers()),
            input_layer=False,
        )

    def ours_cached():
        return S.evaluate_slice(
            model,
            CE,
            [d1, d2],
            visited,
            batches,
            bn="checkpoint",
            origin=w,
            buffers=dict(model.named_buffers()),
            input_layer=True,
        )

    def limit():
        with torch.no_grad():
            for _ in range(points):
                sum(CE(model(xb), yb).item() for xb, yb in batches)

    t_limit, t_ours, t_cached, t_plain, t_peer = (
        timeit(f, args.repeats) for f in (limit, ours, ours_cached, ours_plain, peer)
    )
    mine, cached, plain = ours(), ours_cached(), ours_plain()
    theirs = peer()  # rows i, columns in its own order (ascending j after its inserts)
    worst = max(
        abs(mine[i * steps + j].loss - float(theirs[i][j])) / max(abs(float(theirs[i][j])), 1e-12)
        for i in range(steps)
        for j in range(steps)
    )
    name = "VGG-11 x0.25 BN (eval)" if args.model == "vgg" else "fc-tanh (3072-200-200-10)"
    print(
        f"model {name}, {args.examples} examples in batches of {args.batch_size}, "
        f"{steps}x{steps} grid, torch threads {torch.get_num_threads()}"
    )
    print(f"limit (plain forwards): {1e3 * t_limit / points:.1f} ms/point")
    print(f"landscape slice:        {1e3 * t_ours / points:.1f} ms/point  ({t_ours / t_limit:.2f}x the limit)")
    print(
        f"  first layer always cached:     {1e3 * t_cached / points:.1f} ms/point  "
        f"({t_cached / t_limit:.2f}x the limit)"
    )
    print(
        f"  first layer never cached:      {1e3 * t_plain / points:.1f} ms/point  ({t_plain / t_limit:.2f}x the limit)"
    )
    print(
        f"loss-landscapes 3.0.6:  {1e3 * t_peer / points:.1f} ms/point  ({t_peer / t_limit:.2f}x the limit; "
        f"ours is {t_peer / t_ours:.2f}x faster)"
    )
    own = max(abs(cached[i].loss - plain[i].loss) / max(abs(plain[i].loss), 1e-12) for i in range(points))
    print(
        f"values: largest relative difference at the same points {worst:.2e} (against the peer), "
        f"{own:.2e} (cached input layer against plain forwards)"
    )


if __name__ == "__main__":
    main()
