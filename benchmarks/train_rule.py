"""Does the head's training rule stall from a random start? (The strategy report counted rounds whose R-sum
fell more than 10% below the round before although the paired set grew: 17-22% of the rounds with the MLP
from scratch on the synthetic worlds, at most 2 of 180 with the linear head.)

For each world and seed, nested paired sets grow as the report's rounds do (the world's paired store plus
the first r·B images of a seeded permutation of its pool, with their captions, r = 0..R); a head is
trained on each with `alsel train`'s rule and a variant of it, and R-sum is measured on the test store.
Prints per variant: R-sum per size (mean ± std over seeds), the setbacks (a size whose R-sum fell more
than 10% below the size before), the mean and the range of the epochs the validation trial chose, and
seconds.

    python benchmarks/train_rule.py --worlds synth --variants epochs50,epochs50p20,warmup3,lr3e-4,epochs100,rule,patience20
    python benchmarks/train_rule.py --worlds synth --variants epochs50,rule --learner linear
    python benchmarks/train_rule.py --worlds large --seeds 0-1 --variants rule,nocollapse   # head.COLLAPSED
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import replace

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import alsel.head as head_module  # noqa: E402
from alsel.head import COLLAPSED, TrainConfig, train_head  # noqa: E402
from alsel.metrics import evaluate  # noqa: E402
from alsel.simulate import parse_seeds  # noqa: E402
from alsel.store import Paired, load_paired, open_store  # noqa: E402
from alsel.synth import synth_stores  # noqa: E402

WORLDS = {  # as in strategy_report.py: synth's arguments, budget per round, rounds
    "synth": ({}, 100, 4),
    "large": ({"images": 8000, "paired": 0.25, "test": 0.15}, 400, 3),
}
VARIANTS = {  # rule: alsel train's defaults now; epochs50: the cap from a random start before benchmarks/train_rule.py
    "rule": {},
    "epochs50": {"epochs": 50},
    "patience20": {"patience": 20},
    "patience30": {"patience": 30},
    "epochs50p20": {"epochs": 50, "patience": 20},
    "warmup1": {"warmup": 1, "epochs": 50},  # VSE++'s sum of hinges for the first epochs
    "warmup3": {"warmup": 3, "epochs": 50},
    "nocollapse": {"_collapsed": float("inf")},  # no collapse check (head.COLLAPSED): the rule before it
    "warmup1e200": {"warmup": 1},  # the same at the 200-epoch cap from a random start
    "warmup3e200": {"warmup": 3},
    "epochs100": {"epochs": 100, "patience": 20},
    "lr3e-4": {"lr": 3e-4, "epochs": 50},
}


def grown(paired: Paired, oracle: Paired, extra: np.ndarray) -> Paired:
    """The paired set plus the oracle's images `extra` with their captions."""
    texts = np.flatnonzero(np.isin(oracle.text_image, extra))
    new = np.full(len(oracle.images), -1, np.int64)
    new[extra] = len(paired.images) + np.arange(len(extra))
    return Paired(paired.path, np.concatenate([paired.images, oracle.images[extra]]),
                  np.concatenate([paired.texts, oracle.texts[texts]]),
                  np.concatenate([paired.text_image, new[oracle.text_image[texts]]]), paired.model,
                  f"{paired.fingerprint}+{len(extra)}")


def main():
    import torch

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worlds", default="synth,large")
    ap.add_argument("--seeds", default="0-2")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--learner", default="mlp")
    ap.add_argument("--init", default="random")
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    work = tempfile.mkdtemp(prefix="alsel-train-rule-")
    print(f"{args.learner} head from {'scratch' if args.init == 'random' else args.init}; seeds {args.seeds}")
    for world in args.worlds.split(","):
        kw, budget, rounds = WORLDS[world]
        w = synth_stores(os.path.join(work, world), seed=0, **kw)
        with open_store(w["paired"], need="paired") as st:
            paired = load_paired(st)
        with open_store(w["oracle"], need="paired") as st:
            oracle = load_paired(st)
        pool_rows = np.arange(len(oracle.images))  # the oracle is the pool, with its captions
        print(f"\n{world}: {len(paired.images)} paired, +{budget} per round, {rounds} rounds")
        print("| variant | " + " | ".join(f"{len(paired.images) + r * budget} pairs" for r in range(rounds + 1))
              + " | setbacks | epochs chosen (mean, range) | s |")
        print("|---" * (rounds + 5) + "|")
        for name in args.variants.split(","):
            variant = dict(VARIANTS[name])
            head_module.COLLAPSED = variant.pop("_collapsed", COLLAPSED)
            cfg = replace(TrainConfig(init=args.init, learner=args.learner), **variant)
            rsum, epochs, bad, t0 = [], [], 0, time.perf_counter()
            for seed in parse_seeds(args.seeds):
                order = np.random.default_rng([seed, 31]).permutation(pool_rows)
                curve = []
                for r in range(rounds + 1):
                    data = grown(paired, oracle, np.sort(order[:r * budget]))
                    head, hist = train_head(data, replace(cfg, seed=seed * 100 + r), device)
                    with open_store(w["test"], need="paired") as test:
                        curve.append(evaluate(test, device, head)["rsum"])
                    epochs.append(hist.best_epoch)
                bad += sum(b < 0.9 * a for a, b in zip(curve, curve[1:]))
                rsum.append(curve)
            rsum = np.array(rsum)
            cells = [f"{m:.1f} ± {s:.1f}" for m, s in zip(rsum.mean(0), rsum.std(0, ddof=1) if len(rsum) > 1
                                                           else np.zeros(rsum.shape[1]))]
            print(f"| {name} | " + " | ".join(cells) + f" | {bad}/{len(rsum) * rounds} | "
                  f"{np.mean(epochs):.1f} ({min(epochs)}–{max(epochs)}) | {time.perf_counter() - t0:.0f} |", flush=True)


if __name__ == "__main__":
    main()
