"""Writes benchmarks/strategy_report.md (and its PNGs): which strategy buys the most retrieval per
annotation, in which regime.

Every strategy of the comparison (hn = the paper's default, hn-counting, hn-density, random, coreset,
typiclust, probcover) runs through `alsel simulate` (the library function the command calls) on
  - synth: the default world of `alsel synth` (2,000 images, 50 coarse × 4 fine classes, D = 64),
  - synth-fine: a finer world (200 coarse × 4 fine classes, same size),
  - COCO-500: the real CLIP ViT-B/16 embeddings in ../shared/data/coco500-clip-vitb16 (skipped with a
    note where the folder is absent),
each with a head trained from scratch and one started from identity, with `alsel train`'s default
training (held-out split, early stopping, pull toward the initial map), 5 seeds. For each strategy the
report gives R-sum per round (mean ± std), paired per-seed differences to random and to core-set
(last round, and averaged over rounds 1..R) with the verdict rule, and the share of each hard-negative
batch that came from the fill.

    python benchmarks/strategy_report.py                      # everything (about 2 h on 2 cores)
    python benchmarks/strategy_report.py --only synth_scratch --threads 1 &   # experiments in parallel,
    python benchmarks/strategy_report.py --only coco_identity --threads 1 &   # then once more without
    python benchmarks/strategy_report.py                      # --only to write the report (resumes)
    python benchmarks/strategy_report.py --seeds 0-1 --rounds 2 --work /tmp/sr --report /tmp/sr.md  # a look
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from alsel.head import TrainConfig  # noqa: E402
from alsel.selection import read_selection  # noqa: E402
from alsel.simulate import SimConfig, parse_seeds, parse_strategies, plot_curves, simulate, summarize  # noqa: E402
from alsel.synth import synth_stores  # noqa: E402

COCO = os.path.join(ROOT, "..", "shared", "data", "coco500-clip-vitb16", "features.npy")
STRATEGIES = "hn,hn-counting,hn-density,random,coreset,typiclust,probcover"
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
                        pretrained="openai (coco500-clip-vitb16)", created_by="strategy_report.py")
    return paths


def experiments(work: str) -> list[tuple[str, str, dict, TrainConfig]]:
    out = []
    for world, title, kw in (("synth", "synth (50 coarse × 4 fine classes)", {}),
                             ("synthfine", "synth-fine (200 coarse × 4 fine classes)", {"classes": 200})):
        w = synth_stores(os.path.join(work, world), seed=0, **kw)
        data = dict(paired=w["paired"], oracle=w["oracle"], test=w["test"], budget=100)
        out += [(f"{world}_scratch", f"{title}, head from scratch", data, TrainConfig(init="random")),
                (f"{world}_identity", f"{title}, head from identity", data, TrainConfig(init="identity"))]
    if os.path.exists(COCO):
        coco = coco_stores(work)
        data = dict(oracle=coco["oracle"], test=coco["test"], initial=50, budget=25)
        out += [("coco_scratch", "COCO-500 (CLIP ViT-B/16), head from scratch", data, TrainConfig(init="random")),
                ("coco_identity", "COCO-500 (CLIP ViT-B/16), head from identity", data, TrainConfig(init="identity"))]
    return out


def by_seed(rows: list[dict], name: str) -> dict:
    out: dict = {}
    for r in rows:
        if r["strategy"] == name:
            out.setdefault(r["seed"], {})[r["round"]] = r["rsum"]
    return out


def differences(rows: list[dict], strategy: str, baseline: str, rounds: int) -> tuple[tuple, tuple]:
    """Per-seed R-sum differences strategy - baseline: (last round), (mean over rounds 1..R); each as
    (mean, std, seeds ahead, seeds)."""
    a, b = by_seed(rows, strategy), by_seed(rows, baseline)
    seeds = sorted(set(a) & set(b))
    last = np.array([a[s][rounds] - b[s][rounds] for s in seeds])
    area = np.array([np.mean([a[s][r] - b[s][r] for r in range(1, rounds + 1)]) for s in seeds])
    sd = (lambda x: float(x.std(ddof=1)) if len(x) > 1 else 0.0)
    return (float(last.mean()), sd(last), int((last > 0).sum()), len(seeds)), \
        (float(area.mean()), sd(area), int((area > 0).sum()), len(seeds))


def verdict(area: tuple) -> str:
    """beats / trails when the mean paired difference is more than two standard errors from zero."""
    mean, sd, _, n = area
    if abs(mean) > 2 * sd / max(np.sqrt(n), 1):
        return "beats" if mean > 0 else "trails"
    return "is level with"


def fill_share(cfg: SimConfig, name: str, rnd: int) -> float:
    counts = []
    for seed in cfg.seeds:
        path = os.path.join(cfg.out, "runs", name, f"seed{seed}", f"round{rnd}", "selection.h5")
        counts.append(int(read_selection(path).attrs.get("fill_count", 0)))
    return 100.0 * float(np.mean(counts)) / cfg.budget


def nearness(cfg: SimConfig, name: str) -> float:
    """Mean distance (raw embeddings) from the items of round 0's selection to their nearest paired image,
    mean over seeds: how far a strategy reaches beyond what is already paired."""
    from alsel.store import open_store

    out = []
    with open_store(cfg.oracle, need="paired") as oracle:
        row = {x: r for r, x in enumerate(oracle.ids("images"))}
        images = oracle.images.read()
        for seed in cfg.seeds:
            start = cfg.paired or os.path.join(cfg.out, "init", f"seed{seed}", "paired.h5")
            with open_store(start, need="paired") as p:
                paired = p.images.read()
            ids = read_selection(os.path.join(cfg.out, "runs", name, f"seed{seed}", "round0", "selection.h5")).ids
            picked = images[[row[str(x)] for x in ids]]
            out.append(float(np.sqrt(np.maximum(2 - 2 * (picked @ paired.T).max(axis=1), 0)).mean()))
    return float(np.mean(out))


def raw_rsum(test: str) -> float:
    import torch

    from alsel.metrics import evaluate
    from alsel.store import open_store

    with open_store(test, need="paired") as st:
        return evaluate(st, torch.device("cpu"))["rsum"]


def wall_seconds(out: str) -> float:
    """Wall time of a simulation folder: from its config.json (written first) to the last round's metrics
    (results.csv is rewritten by every pass, also a resumed one that computes nothing)."""
    import glob

    last = max(os.path.getmtime(p) for p in glob.glob(os.path.join(out, "runs", "*", "*", "*", "metrics.json")))
    return last - os.path.getmtime(os.path.join(out, "config.json"))


def section(title: str, key: str, cfg: SimConfig, rows: list[dict], png: str, seconds: float | None,
            verdicts: list) -> str:
    init = "the synth paired store" if cfg.paired else f"{int(cfg.initial)} of the oracle's images (per seed)"
    lines = [f"### {title}", "",
             f"Start: {init}; budget {cfg.budget} per round, {cfg.rounds} rounds; head `--init {cfg.head.init}`, "
             f"trained with `alsel train`'s defaults every round; seeds {', '.join(map(str, cfg.seeds))}"
             + f"; {seconds / 60:.1f} min of wall time on 2 cores (two experiments at a time, one thread each).", "",
             f"![{title}]({os.path.basename(png)})", "", "R-sum (%), mean ± std over seeds, by annotated pool items:", ""]
    summary = summarize(rows, "rsum")
    names = list(dict.fromkeys(s["strategy"] for s in summary))
    lines += ["| strategy | " + " | ".join(str(r * cfg.budget) for r in range(cfg.rounds + 1)) + " |",
              "|---" * (cfg.rounds + 2) + "|"]
    for name in names:
        cells = [f"{s['mean']:.1f} ± {s['std']:.1f}" for s in summary if s["strategy"] == name]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if cfg.head.init == "identity":
        raw = raw_rsum(cfg.test)
        rnd = [s["mean"] for s in summary if s["strategy"] == "random"]
        lines += ["", f"Raw embeddings (no head) on this test set: R-sum {raw:.1f}. Random selection's curve "
                      f"starts at {rnd[0]:.1f} ({rnd[0] - raw:+.1f}) and ends at {rnd[-1]:.1f} "
                      f"({rnd[-1] - rnd[0]:+.1f} over its start)."]
    lines += ["", "R-sum difference to the baselines (per-seed differences, mean ± std; `w/n` = seeds where the "
                  "strategy is ahead):", "",
              "| strategy | vs random, last round | vs random, mean of rounds 1.. | vs core-set, last round | "
              "vs core-set, mean of rounds 1.. |", "|---|---|---|---|---|"]
    for name in names:
        cells = []
        for base in BASELINES:
            if name == base:
                cells += ["", ""]
                continue
            if name == "random" and base == "coreset":  # said once, as coreset vs random
                cells += ["", ""]
                continue
            last, area = differences(rows, name, base, cfg.rounds)
            cells += [f"{last[0]:+.1f} ± {last[1]:.1f} ({last[2]}/{last[3]})",
                      f"{area[0]:+.1f} ± {area[1]:.1f} ({area[2]}/{area[3]})"]
            verdicts.append((key, title, name, base, verdict(area), area))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    hn = [n for n in names if n.startswith("hn")]
    lines += ["", "Share of each hard-negative batch that came from the fill (items with no positive score, "
                  "chosen by `--fill random`), mean over seeds:", "",
              "| strategy | " + " | ".join(f"round {r}" for r in range(cfg.rounds)) + " |",
              "|---" * (cfg.rounds + 1) + "|"]
    for name in hn:
        lines.append(f"| {name} | " + " | ".join(f"{fill_share(cfg, name, r):.0f}%" for r in range(cfg.rounds)) + " |")
    lines += ["", "How far round 0's picks lie from the paired set: mean distance (raw embeddings, unit rows) from "
                  "each chosen image to its nearest paired image, mean over seeds:", "",
              "| " + " | ".join(names) + " |", "|---" * len(names) + "|",
              "| " + " | ".join(f"{nearness(cfg, n):.3f}" for n in names) + " |"]
    lines += ["", "Verdicts (averaged over rounds 1..R):", ""]
    lines += [f"- {n} {v} {b} ({a[0]:+.1f} ± {a[1]:.1f} R-sum, {a[2]}/{a[3]} seeds ahead)"
              for k, _, n, b, v, a in verdicts if k == key]
    return "\n".join(lines) + "\n"


def summary_lines(verdicts: list, keys: list[str], titles: dict) -> list[str]:
    """Per experiment: the strategies that beat random, and where the hard-negative family stands."""
    out = []
    for key in keys:
        mine = [v for v in verdicts if v[0] == key and v[3] == "random"]
        beats = [f"{n} ({a[0]:+.1f})" for _, _, n, _, v, a in mine if v == "beats"]
        hn = [f"{n} {v} random ({a[0]:+.1f} ± {a[1]:.1f})" for _, _, n, _, v, a in mine if n.startswith("hn")]
        best = max(mine, key=lambda v: v[5][0])
        out.append(f"- *{titles[key]}*: beats random: {', '.join(beats) or 'none'}; the largest gain over random: "
                   f"{best[2]} ({best[5][0]:+.1f}); hard negatives: {'; '.join(hn)}.")
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="0-4")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--only", default=None, help="run one experiment (its key), write no report")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--work", default=os.path.join(ROOT, "bench-out", "strategies"))
    ap.add_argument("--report", default=os.path.join(ROOT, "benchmarks", "strategy_report.md"))
    args = ap.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    os.makedirs(args.work, exist_ok=True)
    out_dir = os.path.dirname(os.path.abspath(args.report))
    runs = experiments(args.work)
    if args.only:
        runs = [r for r in runs if r[0] == args.only]
        if not runs:
            raise SystemExit(f"--only {args.only}: no such experiment")
    sections, verdicts, titles = [], [], {}
    for key, title, data, head in runs:
        cfg = SimConfig(out=os.path.join(args.work, key), rounds=args.rounds, strategies=parse_strategies(STRATEGIES, head=head),
                        seeds=parse_seeds(args.seeds), head=head, **data)
        rows = simulate(cfg, lambda msg: print(f"[{key}] {msg}", flush=True))
        if args.only:
            continue
        png = os.path.join(out_dir, f"strategy_report_{key}.png")
        plot_curves(rows, png, title)
        titles[key] = title
        sections.append(section(title, key, cfg, rows, png, wall_seconds(cfg.out), verdicts))
    if args.only:
        return
    intro = open(os.path.join(ROOT, "benchmarks", "strategy_report_intro.md"), encoding="utf-8").read()
    missing = "" if os.path.exists(COCO) else \
        "\n### COCO-500\n\n`../shared/data/coco500-clip-vitb16` is not on this machine: skipped.\n"
    computed = ["## Computed summary (from the verdicts below)", ""] + summary_lines(verdicts, list(titles), titles)
    with open(args.report, "w", encoding="utf-8") as fh:
        fh.write(intro.rstrip() + "\n\n" + "\n".join(computed) + "\n\n" + "\n".join(sections) + missing)
    print(f"wrote {args.report}")


if __name__ == "__main__":
    main()
