"""Writes benchmarks/al_report.md: does hard-negative selection buy more retrieval per annotation?

Runs `alsel simulate` (the library function the command calls) on
  - the synthetic world of `alsel synth` (defaults: 2,000 images, 5 captions, 50 coarse classes), and
  - the real CLIP ViT-B/16 embeddings of 500 COCO pairs in ../shared/data/coco500-clip-vitb16
    (skipped with a note where the folder is absent),
each with a head trained from scratch and a head started from identity, over several seeds, and
writes the tables, the curves and a statement computed from the numbers: for each strategy, its
R-sum minus random's and minus core-set's at the last round and averaged over the rounds after the
first, as mean ± std of the per-seed differences (paired: same seed, same initial split).

    python benchmarks/al_report.py               # 5 seeds, both data sets, both heads (~25 min on 2 cores)
    python benchmarks/al_report.py --seeds 0-1 --quick
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from alsel.head import TrainConfig  # noqa: E402
from alsel.simulate import SimConfig, parse_seeds, parse_strategies, plot_curves, simulate, summarize  # noqa: E402
from alsel.synth import synth_stores  # noqa: E402

COCO = os.path.join(ROOT, "..", "shared", "data", "coco500-clip-vitb16", "features.npy")
STRATEGIES = "hn,hn-images-top1-full-counting,hn-images-top3-mini-surplus,random,coreset"
BASELINES = ("random", "coreset")


def coco_stores(folder: str) -> dict[str, str]:
    """COCO-500 as an oracle (350 pairs) and a test store (150 pairs), split once with seed 0."""
    from alsel.store import write_store

    f = np.load(COCO).astype(np.float32)
    f /= np.linalg.norm(f, axis=2, keepdims=True)
    order = np.random.default_rng(0).permutation(500)
    paths = {}
    for name, idx in (("oracle", np.sort(order[:350])), ("test", np.sort(order[350:]))):
        paths[name] = os.path.join(folder, f"coco_{name}.h5")
        if not os.path.exists(paths[name]):
            write_store(paths[name], images=f[0][idx], image_ids=[f"coco{i}" for i in idx], texts=f[1][idx],
                        text_ids=[f"coco{i}#0" for i in idx], text_image=np.arange(len(idx)), model="ViT-B-16",
                        pretrained="openai (coco500-clip-vitb16)", created_by="al_report.py")
    return paths


def differences(rows: list[dict], strategy: str, baseline: str, rounds: int) -> tuple[tuple, tuple]:
    """Per-seed R-sum differences strategy - baseline: (last round), (mean over rounds 1..R)."""
    def by_seed(name):
        out = {}
        for r in rows:
            if r["strategy"] == name:
                out.setdefault(r["seed"], {})[r["round"]] = r["rsum"]
        return out

    a, b = by_seed(strategy), by_seed(baseline)
    seeds = sorted(set(a) & set(b))
    last = np.array([a[s][rounds] - b[s][rounds] for s in seeds])
    area = np.array([np.mean([a[s][r] - b[s][r] for r in range(1, rounds + 1)]) for s in seeds])
    sd = (lambda x: float(x.std(ddof=1)) if len(x) > 1 else 0.0)
    return (float(last.mean()), sd(last), int((last > 0).sum()), len(seeds)), \
        (float(area.mean()), sd(area), int((area > 0).sum()), len(seeds))


def positive_share(cfg: SimConfig, strategy: str, rnd: int) -> str:
    import h5py

    shares, counts = [], []
    for seed in cfg.seeds:
        path = os.path.join(cfg.out, "runs", strategy, f"seed{seed}", f"round{rnd}", "scores.h5")
        with h5py.File(path, "r") as f:
            positive = f["count"][:] > 0
        shares.append(positive.mean())
        counts.append(positive.sum())
    return f"{100 * np.mean(shares):.1f}% ({np.mean(counts):.0f} items)"


def section(title: str, cfg: SimConfig, rows: list[dict], png: str, seconds: float) -> str:
    lines = [f"### {title}", "",
             f"Initial paired set: {cfg.paired and 'the synth paired store' or f'{cfg.initial} of the oracle'}; "
             f"budget {cfg.budget} per round, {cfg.rounds} rounds; head `--init {cfg.head.init}` "
             f"(dim {cfg.head.dim}, {cfg.head.epochs} epochs, lr {cfg.head.lr}), retrained every round; "
             f"seeds {', '.join(map(str, cfg.seeds))}; {seconds / 60:.1f} min on this machine.", "",
             f"![{title}]({os.path.basename(png)})", "",
             "R-sum (%), mean ± std over seeds, by annotated pool items:", ""]
    summary = summarize(rows, "rsum")
    header = "| strategy | " + " | ".join(str(r * cfg.budget) for r in range(cfg.rounds + 1)) + " |"
    lines += [header, "|---" * (cfg.rounds + 2) + "|"]
    for name in dict.fromkeys(s["strategy"] for s in summary):
        cells = [f"{s['mean']:.1f} ± {s['std']:.1f}" for s in summary if s["strategy"] == name]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "R-sum difference to the baselines (per-seed differences, mean ± std; `w/n` = seeds where "
              "the strategy is ahead):", "",
              "| strategy | vs random, last round | vs random, mean of rounds 1.. | vs core-set, last round | "
              "vs core-set, mean of rounds 1.. |", "|---|---|---|---|---|"]
    verdicts = []
    for name in dict.fromkeys(s["strategy"] for s in summary):
        if name in BASELINES:
            continue
        cells = []
        for base in BASELINES:
            last, area = differences(rows, name, base, cfg.rounds)
            cells += [f"{last[0]:+.1f} ± {last[1]:.1f} ({last[2]}/{last[3]})",
                      f"{area[0]:+.1f} ± {area[1]:.1f} ({area[2]}/{area[3]})"]
            if abs(area[0]) > 2 * area[1] / max(np.sqrt(area[3]), 1):
                word = "beats" if area[0] > 0 else "trails"
            else:
                word = "is level with"
            verdicts.append(f"{name} {word} {base} ({area[0]:+.1f} R-sum points averaged over rounds, "
                            f"± {area[1]:.1f} over seeds)")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "Share of the pool with a positive hard-negative count (count > 0) when each round's selection "
              "was made, mean over seeds — where it is below the budget, the rest of the batch is filled by the "
              "tie-break (lower pool row first, SPEC §3):", "",
              "| strategy | " + " | ".join(f"round {r}" for r in range(cfg.rounds)) + " |",
              "|---" * (cfg.rounds + 1) + "|"]
    for name in dict.fromkeys(s["strategy"] for s in summary):
        if name.startswith("hn-"):
            lines.append(f"| {name} | " + " | ".join(positive_share(cfg, name, r) for r in range(cfg.rounds)) + " |")
    lines += ["", "Computed verdicts (\"beats\"/\"trails\" when the mean paired difference exceeds two standard "
              "errors, else \"is level with\"):", ""] + [f"- {v}" for v in verdicts] + [""]
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="0-4")
    ap.add_argument("--quick", action="store_true", help="fewer epochs and rounds, for a look")
    ap.add_argument("--work", default=os.path.join(ROOT, "bench-out", "al"))
    ap.add_argument("--report", default=os.path.join(ROOT, "benchmarks", "al_report.md"))
    args = ap.parse_args()
    seeds = parse_seeds(args.seeds)
    strategies = parse_strategies(STRATEGIES)
    os.makedirs(args.work, exist_ok=True)
    out_dir = os.path.dirname(os.path.abspath(args.report))
    sections = []
    rounds = 2 if args.quick else 4
    world = synth_stores(os.path.join(args.work, "synth"), seed=0)
    experiments = [
        ("synth, head from identity", "synth_identity", dict(paired=world["paired"], oracle=world["oracle"],
                                                              test=world["test"], budget=100),
         TrainConfig(init="identity", dim=64, epochs=20)),
        ("synth, head from scratch", "synth_scratch", dict(paired=world["paired"], oracle=world["oracle"],
                                                            test=world["test"], budget=100),
         TrainConfig(init="random", dim=64, epochs=60, lr=3e-3)),
    ]
    if os.path.exists(COCO):
        coco = coco_stores(args.work)
        experiments += [
            ("COCO-500 (CLIP ViT-B/16), head from identity", "coco_identity",
             dict(oracle=coco["oracle"], test=coco["test"], initial=50, budget=25),
             TrainConfig(init="identity", dim=512, epochs=20, lr=1e-4)),
            ("COCO-500 (CLIP ViT-B/16), head from scratch", "coco_scratch",
             dict(oracle=coco["oracle"], test=coco["test"], initial=50, budget=25),
             TrainConfig(init="random", dim=512, epochs=60, lr=1e-3)),
        ]
    else:
        sections.append("### COCO-500\n\n`../shared/data/coco500-clip-vitb16` is not on this machine: skipped.\n")
    for title, key, data, head in experiments:
        if args.quick:
            head = TrainConfig(**{**head.__dict__, "epochs": max(2, head.epochs // 5)})
        cfg = SimConfig(out=os.path.join(args.work, key + ("_quick" if args.quick else "")), rounds=rounds,
                        strategies=strategies, seeds=seeds, head=head, **data)
        t = time.perf_counter()
        rows = simulate(cfg, lambda msg: print(msg, flush=True))
        seconds = time.perf_counter() - t
        png = os.path.join(out_dir, f"al_report_{key}.png")
        plot_curves(rows, png, title)
        sections.append(section(title, cfg, rows, png, seconds))
    head_text = open(os.path.join(ROOT, "benchmarks", "al_report_intro.md"), encoding="utf-8").read() \
        if os.path.exists(os.path.join(ROOT, "benchmarks", "al_report_intro.md")) else "# Active-learning report\n"
    with open(args.report, "w", encoding="utf-8") as fh:
        fh.write(head_text.rstrip() + "\n\n" + "\n".join(sections))
    print(f"wrote {args.report}")


if __name__ == "__main__":
    main()
