"""Make the run directories of tests/data/release-0.2 with landscape 0.2 (the release before the
probe table): run it with that release's code on the path, e.g.
    git worktree add /tmp/v02 9980cf1 && PYTHONPATH=/tmp/v02 python tests/data/release-0.2/make.py OUT
It writes OUT/interrupted (stopped by Ctrl-C after the checkpoint at step 8) and OUT/full (the same
run uninterrupted; its checkpoint is replaced by the sha256 of its final weights)."""

import hashlib
import json
import shutil
import sys
from pathlib import Path

import torch

from landscape.config import build_config
from landscape.runs import Run
from landscape.train import Interrupted, train

CONFIG = {
    "name": "run", "steps": 12, "device": "cpu",
    "data": {"dataset": "synthetic", "batch_size": 16, "synthetic_size": 64},
    "model": {"width": 0.0625, "norm": "batch"}, "optim": {"lr": 0.05, "momentum": 0.9},
    "log": {"train_every": 2, "eval_every": 6, "checkpoint_every": 4},
    "probes": {"enabled": ["gradient_sweep", "ics_opti", "activation_stats", "sharpness", "layer_sharpness",
                           "hessian_trace"],
               "schedule": "list", "steps": [1, 3, 6, 9, 12], "etas": [0.5, 2.0], "activation_batch": 16,
               "sharpness_iters": 5, "sharpness_tol": 0.05, "trace_samples": 4, "warm_start": True},
}


def weights_sha256(state: dict) -> str:
    h = hashlib.sha256()
    for name in sorted(state):
        h.update(name.encode())
        h.update(state[name].cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def main(out: Path) -> None:
    torch.set_num_threads(2)
    cfg = build_config([CONFIG])
    train(cfg, out / "full-tmp")
    full = out / "full"
    (out / "full-tmp" / "run").rename(full)
    shutil.rmtree(out / "full-tmp")
    state = torch.load(full / "checkpoint.pt", weights_only=True)
    (full / "weights.sha256").write_text(weights_sha256(state["model"]) + "\n")
    (full / "checkpoint.pt").unlink()

    save = Run.save_checkpoint

    def stop_after_8(self, state):
        save(self, state)
        if state["step"] == 8:
            raise KeyboardInterrupt

    Run.save_checkpoint = stop_after_8
    try:
        train(cfg, out / "interrupted-tmp")
    except Interrupted:
        pass
    finally:
        Run.save_checkpoint = save
    (out / "interrupted-tmp" / "run").rename(out / "interrupted")
    shutil.rmtree(out / "interrupted-tmp")
    for d in ("full", "interrupted"):
        lock = out / d / ".lock"
        if lock.exists():
            lock.unlink()
    print(json.dumps({"full": weights_sha256(torch.load(out / "interrupted" / "checkpoint.pt",
                                                      weights_only=True)["model"])}))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
