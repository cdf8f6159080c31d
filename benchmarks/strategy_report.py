"""Writes benchmarks/strategy_report.md (and its PNGs): which strategy buys the most retrieval per
annotation, in which regime, and how well `--strategy auto` (alsel advise, SPEC §9) chooses.

Every strategy of the comparison (random, coreset, typiclust, probcover, hn = the paper's default,
hn-density, schedule, hn-learnability, and auto, which advises again every round) runs through
`alsel simulate` (the library function the command calls) on
  - synth: the default world of `alsel synth` (2,000 images, 50 coarse × 4 fine classes, D = 64),
  - synthfine: a finer world (200 coarse × 4 fine classes, same size),
  - coco: the real CLIP ViT-B/16 embeddings in ../shared/data/coco500-clip-vitb16 (skipped with a
    note where the folder is absent),
  - large: a larger synthetic world (8,000 images: 2,000 paired at the start, a pool of 4,800, 400 per
    round),
each with a head trained from scratch and one started from identity, with the linear and the MLP
learner, with `alsel train`'s default training (held-out split, early stopping, pull toward the initial
map), 5 seeds. For each strategy the report gives R-sum per round (mean ± std), paired per-seed
differences to random and to core-set (last round, and averaged over rounds 1..R) with the verdict rule,
auto against the best fixed strategy, and the advisor's calibration.

    python benchmarks/strategy_report.py --only synth_scratch_linear --threads 1 &   # experiments in
    python benchmarks/strategy_report.py --only coco_identity_mlp --threads 1 &      # parallel, then
    python benchmarks/strategy_report.py                      # once more to write the report (resumes)
    python benchmarks/strategy_report.py --list               # the experiment keys
    python benchmarks/strategy_report.py --seeds 0-1 --rounds 2 --work /tmp/sr --report /tmp/sr.md  # a look
    python benchmarks/strategy_report.py --from-data --only coco_scratch_linear,coco_scratch_mlp --report X.md

Each finished experiment leaves its figures (every row of results.csv, auto's advice tables, the fill shares,
the nearness, the wall time) in benchmarks/strategy_report_data/KEY.json, committed with the report: the
run folders under --work are hours of computing and do not outlive the machine, so `--from-data` writes the
report from those files alone, and seeds run on another machine can be added by rerunning only them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from alsel.advise import BASELINE, RELIABLE, recommend  # noqa: E402
from alsel.head import TrainConfig  # noqa: E402
from alsel.selection import read_selection  # noqa: E402
from alsel.strategies import AUTO_FALLBACK  # noqa: E402
from alsel.simulate import SimConfig, parse_seeds, parse_strategies, plot_curves, simulate, summarize  # noqa: E402
from alsel.synth import synth_stores  # noqa: E402

COCO = os.path.join(ROOT, "..", "shared", "data", "coco500-clip-vitb16", "features.npy")
STRATEGIES = "random,coreset,typiclust,probcover,hn,hn-density,schedule,hn-learnability,auto"
FIXED = ("coreset", "typiclust", "probcover", "hn", "hn-density", "schedule", "hn-learnability")
BASELINES = ("random", "coreset")
DATA = os.path.join(ROOT, "benchmarks", "strategy_report_data")
DATA_FORMAT = "alsel-strategy-report-data-1"


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
    """(key, title, simulate's data, head config) of every experiment: world × init × learner."""
    worlds = []
    for world, title, kw, budget in (("synth", "synth (50 coarse × 4 fine classes)", {}, 100),
                                     ("synthfine", "synth-fine (200 coarse × 4 fine classes)", {"classes": 200}, 100),
                                     ("large", "large synth (8,000 images, 2,000 paired)",
                                      {"images": 8000, "paired": 0.25, "test": 0.15}, 400)):
        folder = os.path.join(work, world)
        names = ("paired", "pool_images", "pool_texts", "test", "oracle")
        if all(os.path.exists(os.path.join(folder, f"{n}.h5")) for n in names):  # made once (parallel runs read it)
            w = {n: os.path.join(folder, f"{n}.h5") for n in names}
        else:
            w = synth_stores(folder, seed=0, **kw)
        data = dict(paired=w["paired"], oracle=w["oracle"], test=w["test"], budget=budget)
        if world == "large":
            data["rounds"] = 3  # 1,200 of the 4,800 pool images; a fourth round would double the cost of auto
        worlds.append((world, title, data))
        if world == "synthfine" and os.path.exists(COCO):
            coco = coco_stores(work)
            worlds.append(("coco", "COCO-500 (CLIP ViT-B/16)", dict(oracle=coco["oracle"], test=coco["test"],
                                                                    initial=50, budget=25)))
    out = []
    for world, title, data in worlds:
        for init, how in (("scratch", "from scratch"), ("identity", "from identity")):
            for learner in ("linear", "mlp"):
                head = TrainConfig(init="random" if init == "scratch" else "identity", learner=learner)
                out.append((f"{world}_{init}_{learner}", f"{title}, {learner} head {how}", data, head))
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


def setbacks(rows: list[dict], drop: float = 0.1) -> tuple[int, int]:
    """(rounds whose R-sum fell more than `drop` of the previous round's, rounds after the first), over every
    strategy and seed: with more pairs and the same training rule a healthy learner does not fall that far,
    so these count trainings that went wrong (stalled early, or stopped at a poor epoch)."""
    n = bad = 0
    for name in dict.fromkeys(r["strategy"] for r in rows):
        for curve in by_seed(rows, name).values():
            for r in range(1, len(curve)):
                n += 1
                bad += curve[r] < (1 - drop) * curve[r - 1]
    return bad, n


def verdict(area: tuple) -> str:
    """beats / trails when the mean paired difference is more than two standard errors from zero."""
    mean, sd, _, n = area
    if abs(mean) > 2 * sd / max(np.sqrt(n), 1):
        return "beats" if mean > 0 else "trails"
    return "is level with"


def fill_share(cfg: SimConfig, name: str, seed: int) -> list[float]:
    """The share (%) of each round's batch that came from the fill, one seed."""
    return [100.0 * int(read_selection(os.path.join(cfg.out, "runs", name, f"seed{seed}", f"round{rnd}",
                                                    "selection.h5")).attrs.get("fill_count", 0)) / cfg.budget
            for rnd in range(cfg.rounds)]


def nearness(cfg: SimConfig, name: str) -> dict:
    """Per seed: the mean distance (raw embeddings) from the items of round 0's selection to their nearest
    paired image: how far a strategy reaches beyond what is already paired."""
    from alsel.store import open_store

    out = {}
    with open_store(cfg.oracle, need="paired") as oracle:
        row = {x: r for r, x in enumerate(oracle.ids("images"))}
        images = oracle.images.read()
        for seed in cfg.seeds:
            start = cfg.paired or os.path.join(cfg.out, "init", f"seed{seed}", "paired.h5")
            with open_store(start, need="paired") as p:
                paired = p.images.read()
            ids = read_selection(os.path.join(cfg.out, "runs", name, f"seed{seed}", "round0", "selection.h5")).ids
            picked = images[[row[str(x)] for x in ids]]
            out[str(seed)] = float(np.sqrt(np.maximum(2 - 2 * (picked @ paired.T).max(axis=1), 0)).mean())
    return out


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


def experiment_data(key: str, title: str, cfg: SimConfig, rows: list[dict]) -> dict:
    """Everything the report shows of one experiment, per seed, from its run folder (kept in DATA/KEY.json)."""
    names = list(dict.fromkeys(r["strategy"] for r in rows))
    start = "the synth paired store" if cfg.paired else f"{int(cfg.initial)} of the oracle's images (per seed)"
    return {"format": DATA_FORMAT, "key": key, "title": title,
            "settings": {"start": start, "budget": cfg.budget, "rounds": cfg.rounds, "init": cfg.head.init,
                         "learner": cfg.head.learner, "auto_fallback": cfg.auto_fallback,
                         "strategies": list(cfg.strategies)},
            "seeds": sorted(cfg.seeds), "rows": rows, "advices": advices(cfg),
            "fill_share": {n: {str(s): fill_share(cfg, n, s) for s in cfg.seeds} for n in names if n.startswith("hn")},
            "nearness": {n: nearness(cfg, n) for n in names},
            "runs": [{"seeds": sorted(cfg.seeds), "seconds": wall_seconds(cfg.out)}],
            "raw_rsum": raw_rsum(cfg.test) if cfg.head.init == "identity" else None}


def merged(old: dict, new: dict) -> dict:
    """`new` with the seeds of `old` that `new` did not run (same settings): seeds run on another machine add
    up; a seed run again replaces its figures."""
    if old["settings"] != new["settings"]:
        raise SystemExit(f"{new['key']}: the kept figures were made with other settings ({old['settings']}); "
                         f"move {new['key']}.json away to start afresh")
    keep = [s for s in old["seeds"] if s not in new["seeds"]]
    if not keep:
        return new
    out = dict(new, seeds=sorted(new["seeds"] + keep))
    out["rows"] = [r for r in old["rows"] if r["seed"] in keep] + new["rows"]
    out["advices"] = [a for a in old["advices"] if a["seed"] in keep] + new["advices"]
    for part in ("fill_share", "nearness"):
        out[part] = {n: {**{s: v for s, v in old[part].get(n, {}).items() if int(s) in keep}, **per_seed}
                     for n, per_seed in new[part].items()}
    out["runs"] = old["runs"] + new["runs"]
    return out


def save_data(folder: str, data: dict) -> str:
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"{data['key']}.json")
    if os.path.exists(path):
        data = merged(load_data(folder, data["key"]), data)
    with open(path + ".tmp", "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=0, sort_keys=True)
    os.replace(path + ".tmp", path)
    return path


def load_data(folder: str, key: str) -> dict:
    path = os.path.join(folder, f"{key}.json")
    if not os.path.exists(path):
        raise SystemExit(f"{path}: no data for {key} (run the experiment first)")
    with open(path, encoding="utf-8") as fh:
        data = json.load(fh)
    if data.get("format") != DATA_FORMAT:
        raise SystemExit(f"{path}: not {DATA_FORMAT}")
    return data


def wall_line(runs: list[dict]) -> str:
    """The wall time of an experiment's runs: the total of one run, else each seed's as a median and range (a
    seed's folder resumed in a later session counts the time between the sessions, so a total would mislead)."""
    if len(runs) == 1:
        return f"{runs[0]['seconds'] / 60:.1f} min for all seeds in one run"
    minutes = [r["seconds"] / 60 / len(r["seeds"]) for r in runs]
    return (f"median {np.median(minutes):.0f} min per seed over {len(runs)} runs, {min(minutes):.0f}–{max(minutes):.0f} "
            f"(a run resumed in a later session counts the time between the sessions)")


def section(data: dict, png: str, verdicts: list) -> str:
    key, title, st, rows = data["key"], data["title"], data["settings"], data["rows"]
    rounds, budget = st["rounds"], st["budget"]
    lines = [f"### {title}", "",
             f"Start: {st['start']}; budget {budget} per round, {rounds} rounds; head `--init {st['init']}` "
             f"`--learner {st['learner']}`, "
             f"trained with `alsel train`'s defaults every round; seeds {', '.join(map(str, data['seeds']))}"
             + f"; wall time, beside one other experiment on 2 cores (one thread each): {wall_line(data['runs'])}.", "",
             f"![{title}]({os.path.basename(png)})", "", "R-sum (%), mean ± std over seeds, by annotated pool items:", ""]
    summary = summarize(rows, "rsum")
    names = list(dict.fromkeys(s["strategy"] for s in summary))
    lines += ["| strategy | " + " | ".join(str(r * budget) for r in range(rounds + 1)) + " |",
              "|---" * (rounds + 2) + "|"]
    for name in names:
        cells = [f"{s['mean']:.1f} ± {s['std']:.1f}" for s in summary if s["strategy"] == name]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if data["raw_rsum"] is not None:
        raw = data["raw_rsum"]
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
            last, area = differences(rows, name, base, rounds)
            cells += [f"{last[0]:+.1f} ± {last[1]:.1f} ({last[2]}/{last[3]})",
                      f"{area[0]:+.1f} ± {area[1]:.1f} ({area[2]}/{area[3]})"]
            verdicts.append((key, title, name, base, verdict(area), area))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    hn = [n for n in names if n.startswith("hn")]
    lines += ["", "Share of each hard-negative batch that came from the fill (items with no positive score, "
                  "chosen by `--fill random`), mean over seeds:", "",
              "| strategy | " + " | ".join(f"round {r}" for r in range(rounds)) + " |",
              "|---" * (rounds + 1) + "|"]
    for name in hn:
        share = np.mean(list(data["fill_share"][name].values()), axis=0)  # mean over seeds
        lines.append(f"| {name} | " + " | ".join(f"{v:.0f}%" for v in share) + " |")
    lines += ["", "How far round 0's picks lie from the paired set: mean distance (raw embeddings, unit rows) from "
                  "each chosen image to its nearest paired image, mean over seeds:", "",
              "| " + " | ".join(names) + " |", "|---" * len(names) + "|",
              "| " + " | ".join(f"{np.mean(list(data['nearness'][n].values())):.3f}" for n in names) + " |"]
    if "auto" in names:
        lines += auto_lines(data, verdicts)
    lines += ["", "Verdicts (averaged over rounds 1..R):", ""]
    lines += [f"- {n} {v} {b} ({a[0]:+.1f} ± {a[1]:.1f} R-sum, {a[2]}/{a[3]} seeds ahead)"
              for k, _, n, b, v, a in verdicts if k == key]
    return "\n".join(lines) + "\n"


def advices(cfg: SimConfig) -> list[dict]:
    """auto's advice files, every seed and round: {seed, round, recommendation, reliable, seconds, table}."""
    out = []
    for seed in cfg.seeds:
        for r in range(cfg.rounds):
            path = os.path.join(cfg.out, "runs", "auto", f"seed{seed}", f"round{r}", "advice.json")
            if os.path.exists(path):
                with open(path, encoding="utf-8") as fh:
                    doc = json.load(fh)
                out.append({"seed": seed, "round": r, "recommendation": doc["recommendation"],
                            "reliable": doc["reliable"], "seconds": doc["seconds"], "table": doc["table"]})
    return out


CALIBRATION: dict = {}  # key -> what the summary's calibration table needs


RULES = (0.0, 1.0, RELIABLE, 3.0)  # decision thresholds (standard errors) replayed on the advice files
FALLBACKS = ("typiclust", "coreset")  # replayed in random's place when no candidate is reliably ahead


def auto_lines(data: dict, verdicts: list) -> list[str]:
    """What auto chose, how it fared against random and against the best fixed strategy, and how often the
    advice named the experiment's actual best."""
    key, rows, rounds = data["key"], data["rows"], data["settings"]["rounds"]
    fallback = data["settings"].get("auto_fallback", BASELINE)
    gains = {n: differences(rows, n, "random", rounds)[1] for n in FIXED if by_seed(rows, n)}
    best = max(gains, key=lambda n: gains[n][0])
    auto_vs_random = differences(rows, "auto", "random", rounds)[1]
    auto_vs_best = differences(rows, "auto", best, rounds)[1]
    se = auto_vs_best[1] / max(np.sqrt(auto_vs_best[3]), 1)
    within = auto_vs_best[0] >= -se
    adv = data["advices"]
    hits = sum(a["recommendation"] == best for a in adv)
    # what following each advice would have gained under each rule, by the fixed strategies' own gains (random:
    # 0); the rule advise uses gives the gap to always taking the best
    rule = {t: float(np.mean([gains.get(recommend(a["table"], t)[0], (0.0,))[0] for a in adv])) if adv else None
            for t in RULES}
    rule.update({fb: float(np.mean([gains.get(recommend(a["table"], RELIABLE, fb)[0], (0.0,))[0] for a in adv])) if adv
                 else None for fb in FALLBACKS})
    ran = fallback if fallback in FALLBACKS else RELIABLE  # the replayed column auto's own rule corresponds to
    used = {}
    for r in rows:
        if r["strategy"] == "auto" and r["round"] > 0:
            used.setdefault(r["round"], []).append(r.get("used") or "?")
    CALIBRATION[key] = dict(best=best, best_gain=gains[best], auto=auto_vs_random, auto_vs_best=auto_vs_best,
                            within=within, hits=hits, advices=len(adv), gap=gains[best][0] - rule[ran] if adv else None,
                            fallback=fallback,
                            seconds=float(np.mean([a["seconds"] for a in adv])) if adv else None,
                            reliable=sum(a["reliable"] for a in adv), rule=rule)
    lines = ["", f"**auto** (advice before every round on that round's paired set, `--fallback {fallback}` when no "
                 f"candidate is reliably ahead; {len(adv)} advices, "
                 f"{np.mean([a['seconds'] for a in adv]):.0f} s each on average):" if adv else "", ""]
    lines += ["| round | strategies auto used (one per seed) |", "|---|---|"]
    for rnd in sorted(used):
        counts = {u: used[rnd].count(u) for u in dict.fromkeys(used[rnd])}
        lines.append(f"| {rnd - 1} → {rnd} | " + ", ".join(f"{u} ×{c}" for u, c in counts.items()) + " |")
    lines += ["", f"- the best fixed strategy here: {best} ({gains[best][0]:+.1f} ± "
                  f"{gains[best][1] / max(np.sqrt(gains[best][3]), 1):.1f} vs random, mean of rounds 1..R);",
              f"- auto vs random: {auto_vs_random[0]:+.1f} ± {auto_vs_random[1] / max(np.sqrt(auto_vs_random[3]), 1):.1f}"
              f" ({verdict(auto_vs_random)} random); auto vs {best}: {auto_vs_best[0]:+.1f} ± {se:.1f} "
              f"({'within' if within else 'not within'} one standard error);",
              f"- the advice named {best} in {hits} of {len(adv)} advices and was reliable (a candidate more than 2 SE ahead, not the fallback) in "
              f"{sum(a['reliable'] for a in adv)}; following each advice gives up {CALIBRATION[key]['gap']:.1f} R-sum on average "
              f"against always taking {best} (by the fixed strategies' own gains)." if adv else "- no advice files."]
    return lines


def calibration_lines(keys: list[str], titles: dict) -> list[str]:
    """The advisor over every experiment: auto against random and the best fixed strategy, hits, gaps, time."""
    out = ["## auto and the advisor's calibration", "",
           "| experiment | best fixed (vs random) | auto vs random | auto vs best | advice named the best | "
           "gap when following the advice | advise time |", "|---|---|---|---|---|---|---|"]
    for key in keys:
        c = CALIBRATION.get(key)
        if c is None:
            continue
        b, a, ab = c["best_gain"], c["auto"], c["auto_vs_best"]
        out.append(f"| {titles[key]} | {c['best']} {b[0]:+.1f} | {a[0]:+.1f} ± {a[1] / np.sqrt(a[3]):.1f} "
                   f"({verdict(a)}) | {ab[0]:+.1f} ± {ab[1] / np.sqrt(ab[3]):.1f} ({'within' if c['within'] else 'not within'} "
                   f"1 SE) | {c['hits']}/{c['advices']} | {c['gap']:.1f} | {c['seconds']:.0f} s |")
    n = len([k for k in keys if k in CALIBRATION])
    behind = sum(verdict(CALIBRATION[k]["auto"]) == "trails" for k in keys if k in CALIBRATION)
    within = sum(CALIBRATION[k]["within"] for k in keys if k in CALIBRATION)
    out += ["", f"auto trails random (by the verdict rule) on {behind} of {n} experiments and is within one standard "
                f"error of the best fixed strategy on {within} of {n}.", ""]
    out += ["### The decision rule", "",
            "advise recommends its best candidate only when the mean gain over its splits is more than 2 standard "
            "errors above zero, else its fallback (`alsel.advise.recommend`). Replayed on every advice auto received "
            "above (each advice file keeps its table), a weaker or stronger rule falling back to random would have "
            "chosen as follows (columns t > …), and so would the rule at 2 falling back to TypiClust or core-set "
            "(last two columns); a choice is valued by that strategy's own gain over random in the experiment "
            "(random: 0), so this is what following each advice for a whole run would have gained, not a rerun:", "",
            "| experiment | best fixed | auto (ran; its fallback) | " + " | ".join(f"t > {t:g}" for t in RULES)
            + " | " + " | ".join(f"t > {RELIABLE:g}, else {fb}" for fb in FALLBACKS) + " |",
            "|---|---|---|" + "---|" * (len(RULES) + len(FALLBACKS))]
    replayed = {t: [] for t in RULES + FALLBACKS}
    for key in keys:
        c = CALIBRATION.get(key)
        if c is None or c["rule"][RULES[0]] is None:
            continue
        for t in RULES + FALLBACKS:
            replayed[t].append(c["rule"][t])
        out.append(f"| {titles[key]} | {c['best']} {c['best_gain'][0]:+.1f} | {c['auto'][0]:+.1f}; {c['fallback']} | "
                   + " | ".join(f"{c['rule'][t]:+.1f}" for t in RULES + FALLBACKS) + " |")
    if replayed[RULES[0]]:
        name = (lambda t: f"t > {t:g}" if t in RULES else f"else {t}")
        out += ["", "Over the experiments, mean: " + ", ".join(f"{name(t)}: {np.mean(replayed[t]):+.1f}"
                                                                for t in RULES + FALLBACKS)
                + "; lowest: " + ", ".join(f"{name(t)}: {min(replayed[t]):+.1f}" for t in RULES + FALLBACKS) + "."]
    return out


HEADLINE = ("coreset", "typiclust", "schedule", "hn", "auto")


def headline_lines(verdicts: list, keys: list[str], titles: dict) -> list[str]:
    """The README's table: R-sum over random averaged over rounds 1..R, bold = beats, italics = trails."""
    out = ["| experiment (seeds) | " + " | ".join(f"`{n}`" for n in HEADLINE) + " |", "|---" * (len(HEADLINE) + 1) + "|"]
    for key in keys:
        mine = {v[2]: v for v in verdicts if v[0] == key and v[3] == "random"}
        if not mine:
            continue
        cells = []
        for name in HEADLINE:
            if name not in mine:
                cells.append("")
                continue
            _, _, _, _, v, a = mine[name]
            mark = {"beats": "**", "trails": "*"}.get(v, "")
            cells.append(f"{mark}{a[0]:+.1f}{mark}".replace("-", "−"))
        n = next(iter(mine.values()))[5][3]
        out.append(f"| {titles[key]} ({n} seeds) | " + " | ".join(cells) + " |")
    return out


SETBACKS: dict = {}  # key -> setbacks(rows)


def summary_lines(verdicts: list, keys: list[str], titles: dict) -> list[str]:
    """Per experiment: the strategies that beat random, and where the hard-negative family stands."""
    out = []
    for key in keys:
        mine = [v for v in verdicts if v[0] == key and v[3] == "random"]
        beats = [f"{n} ({a[0]:+.1f})" for _, _, n, _, v, a in mine if v == "beats"]
        hn = [f"{n} {v} random ({a[0]:+.1f} ± {a[1]:.1f})" for _, _, n, _, v, a in mine if n.startswith("hn")]
        best = max(mine, key=lambda v: v[5][0])
        out.append(f"- *{titles[key]}*: beats random: {', '.join(beats) or 'none'}; the largest gain over random: "
                   f"{best[2]} ({best[5][0]:+.1f}); hard negatives: {'; '.join(hn)}; rounds whose R-sum fell more "
                   f"than 10% below the round before: {SETBACKS[key][0]} of {SETBACKS[key][1]}.")
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="0-4")
    ap.add_argument("--seeds-of", action="append", default=[], metavar="KEY=SEEDS",
                    help="other seeds for one experiment (e.g. large_scratch_linear=0-2); the report says which")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--only", default=None, help="run experiments (keys, comma-separated), write no report")
    ap.add_argument("--list", action="store_true", help="print the experiment keys")
    ap.add_argument("--write", action="store_true", help="with --only: write the report of those experiments")
    ap.add_argument("--from-data", action="store_true",
                    help="write the report from --data alone (no simulation; the run folders are not needed)")
    ap.add_argument("--fallback", default=AUTO_FALLBACK, help="auto's --fallback (what advise recommends when no "
                                                          "candidate is reliably ahead)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--work", default=os.path.join(ROOT, "bench-out", "strategies"))
    ap.add_argument("--data", default=DATA, help="where each experiment's figures are kept (KEY.json)")
    ap.add_argument("--report", default=os.path.join(ROOT, "benchmarks", "strategy_report.md"))
    ap.add_argument("--intro", default=os.path.join(ROOT, "benchmarks", "strategy_report_intro.md"),
                    help="the hand-written text the report starts with")
    args = ap.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    os.makedirs(args.work, exist_ok=True)
    out_dir = os.path.dirname(os.path.abspath(args.report))
    runs = experiments(args.work)
    known = {r[0] for r in runs}
    if args.list:
        print("\n".join(r[0] for r in runs))
        return
    if args.only:
        keys = args.only.split(",")
        runs = [r for r in runs if r[0] in keys]
        if len(runs) != len(keys):
            raise SystemExit(f"--only {args.only}: no such experiment")
    seeds_of = dict(kv.split("=", 1) for kv in args.seeds_of)
    if set(seeds_of) - known:
        raise SystemExit(f"--seeds-of: no experiment {', '.join(sorted(set(seeds_of) - known))}")
    write = not args.only or args.write or args.from_data
    sections, verdicts, titles = [], [], {}
    for key, title, data, head in runs:
        if args.from_data:
            found = load_data(args.data, key)
        else:
            data = dict(data)
            rounds = min(args.rounds, data.pop("rounds", args.rounds))
            cfg = SimConfig(out=os.path.join(args.work, key), rounds=rounds,
                            strategies=parse_strategies(STRATEGIES, head=head),
                            seeds=parse_seeds(seeds_of.get(key, args.seeds)), head=head, auto_fallback=args.fallback,
                            **data)
            rows = simulate(cfg, lambda msg: print(f"[{key}] {msg}", flush=True))
            found = experiment_data(key, title, cfg, rows)
            print(f"[{key}] kept its figures in {save_data(args.data, found)}", flush=True)
        if not write:
            continue
        png = os.path.join(out_dir, f"{os.path.splitext(os.path.basename(args.report))[0]}_{key}.png")
        plot_curves(found["rows"], png, title)
        titles[key] = title
        SETBACKS[key] = setbacks(found["rows"])
        sections.append(section(found, png, verdicts))
    if not write:
        return
    intro = open(args.intro, encoding="utf-8").read()
    missing = "" if os.path.exists(COCO) or args.from_data else \
        "\n### COCO-500\n\n`../shared/data/coco500-clip-vitb16` is not on this machine: skipped.\n"
    computed = ["## Computed summary (from the verdicts below)", ""] + summary_lines(verdicts, list(titles), titles) \
        + ["", "R-sum over random averaged over rounds 1..R (bold: beats random, more than two standard errors above 0; "
                 "italics: trails it), the README's table:", ""] + headline_lines(verdicts, list(titles), titles) \
        + [""] + calibration_lines(list(titles), titles)
    with open(args.report, "w", encoding="utf-8") as fh:
        fh.write(intro.rstrip() + "\n\n" + "\n".join(computed) + "\n\n" + "\n".join(sections) + missing)
    print(f"wrote {args.report}")


if __name__ == "__main__":
    main()
