"""ASCMR report: fraction of the pool each strategy needs to reach 95% of the fully supervised mAP.

On a labelled synthetic world (`alsel synth --labels`): the pool of pairs is the world's oracle store
(pool images with their captions), the test store is held out. Every strategy starts from the same
random `--initial` fraction per seed and labels `--step` more per round; the probabilistic head is
retrained each round and scored by mAP@all (mean of both directions). Writes a Markdown report and
prints its tables.

    python benchmarks/ascmr_report.py --out benchmarks/ascmr_report.md
    python benchmarks/ascmr_report.py --images 800 --seeds 0 --rounds 3 --out /tmp/r.md   # a quick look
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from alsel import synth_stores  # noqa: E402
from alsel.ascmr import AscmrConfig  # noqa: E402
from alsel.ascmr_sim import STRATEGIES, Pairs, fraction_to_reach, full_map, run_strategy  # noqa: E402
from alsel.probhead import ProbConfig  # noqa: E402
from alsel.store import open_store  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=3000)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--initial", type=float, default=0.02, help="initial labelled fraction of the pool")
    ap.add_argument("--step", type=float, default=0.02, help="fraction of the pool labelled per round")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--strategies", default=",".join(STRATEGIES))
    ap.add_argument("--out", default="benchmarks/ascmr_report.md")
    args = ap.parse_args()
    device = torch.device("cpu")
    prob = ProbConfig(dim=32, samples=8, epochs=args.epochs, lr=1e-2)
    config = AscmrConfig(clusters=10, lam=1.0, mix=0.5, samples=8)
    with tempfile.TemporaryDirectory() as d:
        w = synth_stores(d, images=args.images, captions=5, classes=args.classes, dim=args.dim, seed=0,
                         multi_label=True, paired=0.01, test=0.25)
        with open_store(w["oracle"], need="paired") as st:
            pool = Pairs.from_store(st)
        with open_store(w["test"], need="paired") as st:
            test = Pairs.from_store(st)
    n = len(pool.images)
    initial, step = max(2, round(args.initial * n)), max(1, round(args.step * n))
    seeds = [int(s) for s in args.seeds.split(",")]
    strategies = args.strategies.split(",")
    t0 = time.perf_counter()
    full = {s: full_map(pool, test, prob, s, device) for s in seeds}
    curves = {(st, s): run_strategy(pool, test, st, s, initial, step, args.rounds, prob, config, device)
              for st in strategies for s in seeds}
    took = time.perf_counter() - t0
    lines = [f"# ASCMR on a labelled synthetic world\n",
             f"Pool {n} image-caption groups (5 captions each), test {len(test.images)} images, "
             f"{args.classes} classes (multi-hot), D = {args.dim}; start {initial} labelled images "
             f"({initial / n:.1%}), +{step} ({step / n:.1%}) per round, {args.rounds} rounds; seeds {seeds}; "
             f"probabilistic head dim {prob.dim}, {prob.epochs} epochs; ASCMR clusters {config.clusters}, "
             f"λ {config.lam}, mix {config.mix}. CPU, {took:.0f} s in all "
             f"(`python benchmarks/ascmr_report.py`).\n",
             "Fully supervised mAP (mean of both directions), per seed: "
             + ", ".join(f"{full[s]:.4f}" for s in seeds) + "\n",
             "## Fraction of the pool needed to reach 95% of the fully supervised mAP\n",
             "| strategy | " + " | ".join(f"seed {s}" for s in seeds) + " | mean (reached) |",
             "|---|" + "---|" * (len(seeds) + 1)]
    summary = {}
    for st in strategies:
        fr = [fraction_to_reach(curves[(st, s)], 0.95 * full[s], n) for s in seeds]
        got = [f for f in fr if f is not None]
        summary[st] = (np.mean(got) if got else None, len(got))
        cells = [f"{f:.1%}" if f is not None else f"> {curves[(st, s)][-1][0] / n:.0%}" for f, s in zip(fr, seeds)]
        mean = f"{summary[st][0]:.1%} ({len(got)}/{len(seeds)})" if got else f"not reached (0/{len(seeds)})"
        lines.append(f"| {st} | " + " | ".join(cells) + f" | {mean} |")
    lines += ["\n## mAP after each round (mean over seeds)\n",
              "| labelled | " + " | ".join(strategies) + " |", "|---|" + "---|" * len(strategies)]
    for r in range(args.rounds + 1):
        row = []
        for st in strategies:
            vals = [curves[(st, s)][r][1] for s in seeds if r < len(curves[(st, s)])]
            row.append(f"{np.mean(vals):.4f}" if vals else "-")
        lab = curves[(strategies[0], seeds[0])][min(r, len(curves[(strategies[0], seeds[0])]) - 1)][0]
        lines.append(f"| {lab} ({lab / n:.0%}) | " + " | ".join(row) + " |")
    text = "\n".join(lines) + "\n"
    with open(args.out, "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
