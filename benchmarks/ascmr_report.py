"""ASCMR report: fraction of the pool each strategy needs to reach 95% of the fully supervised mAP.

On a labelled synthetic world (`alsel synth --labels`): the pool is the world's oracle store (pool
images with their captions), the test store is held out. The experiment is `alsel simulate
--annotate labels` (alsel.simulate): every strategy starts from the same random `--initial`
fraction per seed and labels `--step` more per round; the probabilistic head is retrained every
round for a fixed number of optimiser steps and scored by mAP@all (mean of both directions). The
fully supervised reference trains the same head, for the same steps, on every pool pair. Writes a
Markdown report and prints it. The simulation folder (`--work`) resumes if the run is interrupted.

    python benchmarks/ascmr_report.py --out benchmarks/ascmr_report.md
    python benchmarks/ascmr_report.py --images 800 --seeds 0 --rounds 3 --out /tmp/r.md   # a quick look
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import asdict

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from alsel import synth_stores  # noqa: E402
from alsel.metrics import evaluate, store_labels  # noqa: E402
from alsel.probhead import ProbConfig, train_prob_head  # noqa: E402
from alsel.simulate import SimConfig, parse_strategies, simulate  # noqa: E402
from alsel.store import load_paired, open_store  # noqa: E402

STRATEGIES = "ascmr,ascmr-no-inter,ascmr-no-density,bald,entropy,random,coreset"


def full_reference(oracle: str, test: str, prob: ProbConfig, seed: int, device) -> float:
    """mAP (mean of both directions) of the head trained on every pool pair."""
    with open_store(oracle, need="paired") as st:
        p = load_paired(st)
        yi, yt = store_labels(st, "images"), store_labels(st, "texts")
    head, _ = train_prob_head(p.images, p.texts, p.text_image, yi, yt, ProbConfig(**dict(asdict(prob), seed=seed)),
                              device)
    with open_store(test, need="paired") as st:
        m = evaluate(st, device, head, labels=True)
    return (m["i2t_map"] + m["t2i_map"]) / 2


def fraction_to_reach(curve: list[tuple[int, float]], target: float, n_pool: int) -> float | None:
    """Fraction of the pool labelled when the curve [(labelled, mAP)] first reaches `target`."""
    for labelled, m in curve:
        if m >= target:
            return labelled / n_pool
    return None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=3000)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--initial", type=float, default=0.02, help="initial labelled fraction of the pool")
    ap.add_argument("--step", type=float, default=0.02, help="fraction of the pool labelled per round")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--steps", type=int, default=2000, help="optimiser steps of every head")
    ap.add_argument("--strategies", default=STRATEGIES)
    ap.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "alsel_ascmr_report"),
                    help="simulation folder (resumed when it exists with the same settings)")
    ap.add_argument("--out", default="benchmarks/ascmr_report.md")
    args = ap.parse_args()
    device = torch.device("cpu")
    prob = ProbConfig(dim=32, samples=8, steps=args.steps, lr=1e-3)
    options = dict(clusters=10, lam=1.0, density_mix=0.5, samples=8)  # the strategies' flags
    world = os.path.join(args.work, "world")
    if not os.path.exists(os.path.join(world, "test.h5")):
        synth_stores(world, images=args.images, captions=5, classes=args.classes, dim=args.dim, seed=0,
                     multi_label=True, paired=0.01, test=0.25)
    oracle, test = os.path.join(world, "oracle.h5"), os.path.join(world, "test.h5")
    with open_store(oracle, need="paired") as st:
        n = st.images.n
    with open_store(test, need="paired") as st:
        n_test = st.images.n
    initial, step = max(2, round(args.initial * n)), max(1, round(args.step * n))
    seeds = [int(s) for s in args.seeds.split(",")]
    strategies = parse_strategies(args.strategies, options, consumed=("samples",))
    t0 = time.perf_counter()
    full = {s: full_reference(oracle, test, prob, s, device) for s in seeds}
    resumed = os.path.exists(os.path.join(args.work, "sim", "results.csv"))
    cfg = SimConfig(oracle=oracle, test=test, out=os.path.join(args.work, "sim"), budget=step, rounds=args.rounds,
                    strategies=strategies, seeds=seeds, initial=initial, device="cpu", annotate="labels", prob=prob)
    rows = simulate(cfg, lambda msg: print(msg, flush=True))
    took = time.perf_counter() - t0
    curves = {(st, s): [(r["paired_images"], r["map"]) for r in rows if r["strategy"] == st and r["seed"] == s]
              for st in strategies for s in seeds}
    lines = ["# ASCMR on a labelled synthetic world\n",
             f"Pool {n} image-caption pairs (5 captions per image), test {n_test} images, {args.classes} classes "
             f"(multi-hot), D = {args.dim}; start {initial} labelled pairs ({initial / n:.1%}), +{step} "
             f"({step / n:.1%}) per round, {args.rounds} rounds; seeds {seeds}. Probabilistic head: dim {prob.dim}, "
             f"J = {prob.samples}, {prob.steps} Adam steps (lr {prob.lr}, batch {prob.batch_size}) every round and "
             f"for the reference, so small and large labelled sets get the same number of updates. ASCMR: "
             f"{options['clusters']} clusters, λ = {options['lam']}, density mix {options['density_mix']}. Core-set: k-center greedy "
             f"on the head's normalised image means. CPU, {took:.0f} s for the "
             f"{'run (resumed from an earlier one in --work)' if resumed else 'whole run'} "
             f"(`python benchmarks/ascmr_report.py`; the experiment is `alsel simulate --annotate labels`).\n",
             "Fully supervised mAP (mean of both directions), per seed: "
             + ", ".join(f"{full[s]:.4f}" for s in seeds) + "\n",
             "## Fraction of the pool needed to reach 95% of the fully supervised mAP\n",
             "Measured at the end of each round, so a figure is a multiple of the step "
             f"({step / n:.1%}).\n",
             "| strategy | " + " | ".join(f"seed {s}" for s in seeds) + " | mean (reached) |",
             "|---|" + "---|" * (len(seeds) + 1)]
    reach = {}
    for st in strategies:
        fr = [fraction_to_reach(curves[(st, s)], 0.95 * full[s], n) for s in seeds]
        reach[st] = fr
        got = [f for f in fr if f is not None]
        cells = [f"{f:.1%}" if f is not None else f"> {curves[(st, s)][-1][0] / n:.0%}" for f, s in zip(fr, seeds)]
        mean = f"{np.mean(got):.1%} ({len(got)}/{len(seeds)})" if got else f"not reached (0/{len(seeds)})"
        lines.append(f"| {st} | " + " | ".join(cells) + f" | {mean} |")
    lines += ["\n## mAP after each round (mean ± std over seeds)\n",
              "| labelled | " + " | ".join(strategies) + " |", "|---|" + "---|" * len(strategies)]
    for r in range(args.rounds + 1):
        cells = []
        for st in strategies:
            vals = [curves[(st, s)][r][1] for s in seeds]
            cells.append(f"{np.mean(vals):.4f} ± {np.std(vals, ddof=1) if len(vals) > 1 else 0:.4f}")
        lab = curves[(strategies[0], seeds[0])][r][0]
        lines.append(f"| {lab} ({lab / n:.0%}) | " + " | ".join(cells) + " |")
    lines += comparison(strategies, seeds, curves, reach, args.rounds)
    lines += comparison(strategies, seeds, curves, reach, args.rounds,
                        base=parse_strategies("ascmr", options, consumed=("samples",))[0])
    text = "\n".join(lines) + "\n"
    with open(args.out, "w") as f:
        f.write(text)
    print(text)


def comparison(strategies, seeds, curves, reach, rounds, base="random") -> list[str]:
    """Paired differences against `base` (same seed, same initial set), averaged over rounds 1..R."""
    if base not in strategies:
        return []
    others = [st for st in strategies if st != base and (base == "random" or st.startswith("ascmr-"))]
    if not others:
        return []
    out = [f"\n## Against {base} (paired by seed)\n",
           f"Mean mAP difference to {base} over rounds 1–{rounds} (mean ± std over seeds), and the pool fraction "
           f"to reach 95% minus {base}'s (seeds where both reached it).\n",
           f"| strategy | Δ mAP vs {base} | Δ fraction to 95% |", "|---|---|---|"]
    summary = {}
    for st in others:
        d = [np.mean([curves[(st, s)][r][1] - curves[(base, s)][r][1] for r in range(1, rounds + 1)])
             for s in seeds]
        f = [a - b for a, b in zip(reach[st], reach[base]) if a is not None and b is not None]
        summary[st] = (float(np.mean(d)), float(np.std(d, ddof=1)) if len(d) > 1 else 0.0)
        fcell = f"{np.mean(f):+.1%} ({len(f)} seeds)" if f else "-"
        out.append(f"| {st} | {summary[st][0]:+.4f} ± {summary[st][1]:.4f} | {fcell} |")
    better = [st for st, (m, sd) in summary.items() if m - sd > 0]
    worse = [st for st, (m, sd) in summary.items() if m + sd < 0]
    level = [st for st in summary if st not in better and st not in worse]
    out.append(f"\nIn words (a difference counts when its mean is more than one seed-std from zero): "
               f"above {base}: {', '.join(better) or 'none'}; below {base}: {', '.join(worse) or 'none'}; "
               f"level with {base}: {', '.join(level) or 'none'}.")
    return out


if __name__ == "__main__":
    main()
