"""`alsel simulate`: the active-learning experiment with an oracle that holds the hidden annotations.

For every strategy and seed, round r = 0..R:
    train a head on paired_r (from its initialisation, every round) → evaluate on the test store;
    if r < R: choose B pool items with the strategy in that head's space → write the oracle's
    annotations of exactly those items → merge → paired_{r+1}, pool_{r+1}.
Every step calls the function its stage command calls (train_head, evaluate, strategies.select,
merge) on files in
OUT/runs/<strategy>/seed<s>/round<r>/, so each round can be inspected with `alsel info` and an
interrupted simulation resumes: a round whose metrics.json exists (and whose successor's stores
exist) is not redone. All strategies of one seed start from the same initial split.

`annotate="labels"` is the ASCMR setting (supervised cross-modal retrieval): the pool holds pairs
(images with their captions) without class labels, annotators return the labels of the chosen
pairs (the oracle's store of those pairs), `merge` moves them into the labelled store, the head is
the probabilistic head (train_prob_head) and the measure is mAP@all.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
from dataclasses import asdict, dataclass, field, replace
from typing import Callable

import numpy as np
import torch

from . import strategies
from .errors import AlselError
from .head import TrainConfig, default_epochs, load_head, save_head, train_head
from .merge import merge
from .metrics import KEYS, MAP_KEYS, evaluate, store_labels
from .probhead import ProbConfig, load_prob_head, save_prob_head, train_prob_head
from .scoring import WEIGHTS
from .selection import save_selection
from .store import check_compatible, load_paired, normalize_rows, open_store, write_store
from .thresholds import BATCH, SELECT

AUTO = "auto"  # --strategies auto: advise every round, then run the recommended strategy (SPEC §9)


# --------------------------------------------------------------------------- strategies


def all_strategies() -> list[str]:
    """Every hard-negative variant of the paper (top-1/top-3 × full/mini × counting/surplus ×
    images/texts), plus random and core-set on both sides."""
    out = [f"hn-{s}-top{k}-{b}-{w}" for s in SELECT for k in (1, 3) for b in BATCH for w in WEIGHTS]
    return out + [f"{k}-{s}" for k in ("random", "coreset") for s in SELECT]


def parse_strategies(text: str, options: dict | None = None, head: TrainConfig | None = None,
                     consumed: tuple = ()) -> list[str]:
    """Canonical strategy names (alsel.strategies) of a comma list of specs or `all`. `options`: the
    strategy flags, applied to every strategy that reads them (a token contradicting one is an error, and
    so is a flag that no strategy reads, unless `consumed` elsewhere); hn's mini-batch size and α default
    to the head's --batch-size and --margin."""
    specs: list[str] = []
    for part in text.split(","):
        if part.strip().lower() == "all":
            specs.extend(all_strategies())
        elif part.strip():
            specs.append(part.strip())
    auto = [s for s in specs if s.lower() == AUTO]
    specs = [s for s in specs if s.lower() != AUTO]
    if not specs and auto:
        return [AUTO]
    if not specs:
        raise AlselError("--strategies: give at least one strategy")
    options = {k: v for k, v in (options or {}).items() if v is not None}
    unread = [k for k in options if k not in consumed and not any(k in strategies.resolve(sp, "--strategies", strict=False)[0].reads()
                                            for sp in specs)]
    if unread:
        raise AlselError(f"--strategies: no strategy given reads {strategies.OPTION_SPECS[unread[0]].flag}")
    names = []
    for spec in specs:
        strategy, opts, explicit = strategies.resolve(spec, "--strategies", strict=False, **options)
        if head is not None:
            implied = {k: getattr(head, k) for k in ("batch_size", "margin") if k in strategy.reads() and k not in explicit}
            opts = replace(opts, **implied)
        names.append(strategy.canonical(opts))
    names += [AUTO] * len(auto)
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise AlselError(f"--strategies: {sorted(dup)[0]} is given twice")
    return names


def parse_seeds(text: str) -> list[int]:
    """`0,1,2` or `0-4` (inclusive) or a mix."""
    seeds: list[int] = []
    for part in text.split(","):
        m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if not m:
            raise AlselError(f"--seeds {text!r}: expected a list like 0,1,2 or a range like 0-4")
        a, b = int(m.group(1)), int(m.group(2) or m.group(1))
        if b < a:
            raise AlselError(f"--seeds {text!r}: range {a}-{b} is empty")
        seeds.extend(range(a, b + 1))
    if len(set(seeds)) != len(seeds):
        raise AlselError(f"--seeds {text!r}: a seed is repeated")
    return seeds


# --------------------------------------------------------------------------- configuration


@dataclass
class SimConfig:
    oracle: str
    test: str
    out: str
    budget: int
    rounds: int
    strategies: list  # canonical names (parse_strategies)
    seeds: list
    paired: str | None = None  # initial paired store; else split the oracle with `initial`
    initial: float = 0.1  # fraction (< 1) or count (>= 1) of oracle images paired at the start
    head: TrainConfig = field(default_factory=TrainConfig)
    device: str = "cpu"
    chunk_size: int | None = None
    annotate: str = "captions"  # or "labels": the ASCMR setting
    prob: ProbConfig = field(default_factory=ProbConfig)  # the head of the labels setting
    auto_fallback: str = strategies.AUTO_FALLBACK  # auto's choice when no candidate is reliably ahead (alsel.advise)

    @property
    def labels(self) -> bool:
        return self.annotate == "labels"

    def describe(self) -> dict:
        """The settings that define the experiment (kept in OUT/config.json; a resume must match them)."""
        d = asdict(self)
        for k in ("device", "chunk_size") + (("head",) if self.labels else ("annotate", "prob")) \
                + (() if AUTO in self.strategies else ("auto_fallback",)):
            d.pop(k)
        if isinstance(d.get("head"), dict) and d["head"].get("epochs") is None:
            d["head"]["epochs"] = default_epochs(d["head"]["init"])  # the number, as before it had a default
        if isinstance(d.get("head"), dict) and d["head"].get("warmup") == 0:
            d["head"].pop("warmup")  # no warm-up: the rule before the setting existed (older folders resume)
        return d


# --------------------------------------------------------------------------- oracle and initial split


class Oracle:
    """The hidden annotations: a paired store covering every pool item."""

    def __init__(self, path: str):
        self.path = path
        with open_store(path, need="paired") as st:
            self.images = st.images.raw(0, st.images.n).copy()
            self.texts = st.texts.raw(0, st.texts.n).copy()
            for name, rows in (("/images/emb", self.images), ("/texts/emb", self.texts)):
                normalize_rows(np.array(rows, dtype=np.float32), path, name, 0)  # checked here, copied raw later
            self.image_ids = st.ids("images")
            self.text_ids = st.ids("texts")
            self.text_image = st.text_image.copy()
            self.image_labels, self.text_labels = st.labels("images"), st.labels("texts")
            self.text_strings = st.text_strings()  # the captions' text, carried into every round's stores
            self.model, self.pretrained = st.model, str(st.attrs.get("pretrained", ""))
        self.image_row = {x: r for r, x in enumerate(self.image_ids)}
        self.text_row = {x: r for r, x in enumerate(self.text_ids)}

    def write(self, out: str, image_rows: np.ndarray, text_rows: np.ndarray | None = None, paired: bool = True,
              images: bool = True, texts: bool = True, labels: bool = True) -> None:
        """A store of the given oracle images and texts (texts default: all captions of the images),
        with their class labels when the oracle has them and `labels`."""
        image_rows = np.asarray(image_rows, dtype=np.int64)
        if text_rows is None:
            text_rows = np.flatnonzero(np.isin(self.text_image, image_rows))
        text_rows = np.asarray(text_rows, dtype=np.int64)
        pos = {int(r): k for k, r in enumerate(image_rows)}
        ti = np.array([pos.get(int(self.text_image[j]), -1) for j in text_rows], dtype=np.int64) if paired \
            else np.full(len(text_rows), -1, np.int64)
        kw = {}
        if images:
            kw.update(images=self.images[image_rows], image_ids=self.image_ids[image_rows])
            if self.image_labels is not None and labels:
                kw.update(image_labels=self.image_labels[image_rows])
        if texts:
            kw.update(texts=self.texts[text_rows], text_ids=self.text_ids[text_rows], text_image=ti)
            if self.text_strings is not None:
                kw.update(text_strings=self.text_strings[text_rows])
            if self.text_labels is not None and labels:
                kw.update(text_labels=self.text_labels[text_rows])
        write_store(out, model=self.model, pretrained=self.pretrained, created_by="alsel simulate", **kw)

    def annotations(self, out: str, select: str, ids: np.ndarray) -> None:
        """What annotators would return for the selected pool items."""
        if select == "images":
            self.write(out, np.array([self.image_row[x] for x in ids]))
        else:
            text_rows = np.array([self.text_row[x] for x in ids])
            image_rows = np.unique(self.text_image[text_rows])
            self.write(out, image_rows, text_rows)


def initial_split(cfg: SimConfig, oracle: Oracle, seed: int, folder: str) -> dict[str, str]:
    """paired.h5 and pool_images.h5 + pool_texts.h5 (captions) or pool_pairs.h5 (labels: the pool's
    images with their captions, no labels) for one seed (shared by all strategies)."""
    os.makedirs(folder, exist_ok=True)
    pools = ("pool_pairs",) if cfg.labels else ("pool_images", "pool_texts")
    paths = {k: os.path.join(folder, f"{k}.h5") for k in ("paired", *pools)}
    n = len(oracle.image_ids)
    if cfg.paired is not None:
        paths["paired"] = cfg.paired
        pool_images = np.arange(n)
    else:
        n_init = int(round(cfg.initial * n)) if cfg.initial < 1 else int(cfg.initial)
        if not 1 <= n_init < n:
            raise AlselError(f"--initial {cfg.initial}: needs between 1 and {n - 1} of the oracle's {n} images")
        order = np.random.default_rng(seed).permutation(n)
        init, pool_images = np.sort(order[:n_init]), np.sort(order[n_init:])
        if not os.path.exists(paths["paired"]):
            oracle.write(paths["paired"], init)
    if cfg.labels:
        if not os.path.exists(paths["pool_pairs"]):
            oracle.write(paths["pool_pairs"], pool_images, labels=False)
        return paths
    if not os.path.exists(paths["pool_images"]):
        oracle.write(paths["pool_images"], pool_images, texts=False)
    if not os.path.exists(paths["pool_texts"]):
        oracle.write(paths["pool_texts"], pool_images, paired=False, images=False)
    return paths


# --------------------------------------------------------------------------- one run


def run_one(cfg: SimConfig, name: str, seed: int, start: dict[str, str], oracle: Oracle, test_store,
            device: torch.device, progress: Callable[[str], None] | None = None) -> list[dict]:
    """Rounds 0..R of one strategy and seed: train, evaluate, select, annotate from the oracle, merge; rounds
    already on disk are read back."""
    base = os.path.join(cfg.out, "runs", name, f"seed{seed}")
    paired = start["paired"]
    select = side_of(name)
    pool = start["pool_pairs" if cfg.labels else "pool_images" if select == "images" else "pool_texts"]
    train_and_evaluate = _train_and_evaluate_labels if cfg.labels else _train_and_evaluate
    rows = []
    for r in range(cfg.rounds + 1):
        rd = os.path.join(base, f"round{r}")
        os.makedirs(rd, exist_ok=True)
        metrics_path = os.path.join(rd, "metrics.json")
        head_path = os.path.join(rd, "head.pt")
        if os.path.exists(metrics_path) and os.path.exists(head_path):
            with open(metrics_path, encoding="utf-8") as fh:
                row = json.load(fh)
        elif r == 0:  # every strategy of a seed starts from the same paired set: its head is trained once
            row = dict(_shared_round0(cfg, name, seed, paired, test_store, device, train_and_evaluate),
                       strategy=name, used="")
            shutil.copyfile(os.path.join(cfg.out, "runs", ROUND0, f"seed{seed}", "head.pt"), head_path)
            _write_json(metrics_path, row)
        else:
            row = train_and_evaluate(cfg, name, seed, r, paired, head_path, test_store, device)
            row = {k: _rounded(k, v) for k, v in row.items()}  # the figures kept are the figures shown
            row["used"] = _used(os.path.join(base, f"round{r - 1}"))
            _write_json(metrics_path, row)
        rows.append(row)
        if progress is not None:
            progress(f"{name} seed {seed} round {r}: "
                     + (f"mAP {row['map']:.4f}" if cfg.labels else f"R-sum {row['rsum']:.1f}"))
        if r == cfg.rounds:
            break
        nxt = os.path.join(base, f"round{r + 1}")
        next_paired, next_pool = os.path.join(nxt, "paired.h5"), os.path.join(nxt, "pool.h5")
        if not (os.path.exists(next_paired) and os.path.exists(next_pool)):
            os.makedirs(nxt, exist_ok=True)
            sel = select_round(cfg, name, seed, r, paired, pool, head_path, rd, device)
            ann = os.path.join(rd, "annotations.h5")
            if cfg.labels:  # the oracle's labels of the chosen pairs
                oracle.write(ann, np.array([oracle.image_row[str(x)] for x in sel.ids], dtype=np.int64))
            else:  # the oracle's captions of the chosen images (or images of the chosen captions)
                oracle.annotations(ann, select, sel.ids)
            merge(paired, pool, os.path.join(rd, "selection.h5"), ann, next_paired, next_pool,
                  created_by="alsel simulate")
        paired, pool = next_paired, next_pool
    return rows


def _used(round_dir: str) -> str:
    """The strategy that chose a round's batch, as its selection records it (auto's choice included)."""
    from .selection import read_selection

    return str(read_selection(os.path.join(round_dir, "selection.h5")).attrs.get("strategy", ""))


ROUND0 = "_round0"  # runs/_round0/seed<s>: the round-0 head and metrics every strategy of the seed shares


def _shared_round0(cfg, name, seed, paired, test_store, device, train_and_evaluate) -> dict:
    """Round 0's metrics (head.pt beside them), trained once per seed (same paired set, config and seed for
    every strategy, so the same head) and read back by the others."""
    rd = os.path.join(cfg.out, "runs", ROUND0, f"seed{seed}")
    os.makedirs(rd, exist_ok=True)
    metrics_path, head_path = os.path.join(rd, "metrics.json"), os.path.join(rd, "head.pt")
    if os.path.exists(metrics_path) and os.path.exists(head_path):
        with open(metrics_path, encoding="utf-8") as fh:
            return json.load(fh)
    row = train_and_evaluate(cfg, name, seed, 0, paired, head_path, test_store, device)
    row = {k: _rounded(k, v) for k, v in row.items()}
    _write_json(metrics_path, row)
    return row


def side_of(name: str) -> str:
    """The pool side (images or texts) a strategy spec chooses from (auto: images)."""
    return "images" if name == AUTO else strategies.resolve(name, "--strategies")[1].select


def round_seed(seed: int, r: int) -> int:
    """The seed of round r's selection (random draws, the fill, k-means, mini-batches, samples)."""
    return seed * 1000 + r


def _train_and_evaluate(cfg, name, seed, r, paired_path, head_path, test_store, device) -> dict:
    with open_store(paired_path, need="paired") as st:
        p = load_paired(st)
        n_img, n_txt = st.images.n, st.texts.n
    head, hist = train_head(p, TrainConfig(**dict(asdict(cfg.head), seed=seed)), device)
    save_head(head_path, head)
    m = evaluate(test_store, device, head, cfg.chunk_size)
    return {"strategy": name, "seed": seed, "round": r, "annotated": r * cfg.budget,
            "paired_images": n_img, "paired_texts": n_txt, **{k: m[k] for k in KEYS}}


def _train_and_evaluate_labels(cfg, name, seed, r, paired_path, head_path, test_store, device) -> dict:
    """The probabilistic head on the labelled pairs; R@K and mAP@all of its normalised means."""
    with open_store(paired_path, need="paired") as st:
        p = load_paired(st)
        yi, yt = store_labels(st, "images"), store_labels(st, "texts")
        n_img, n_txt = st.images.n, st.texts.n
    head, _ = train_prob_head(p.images, p.texts, p.text_image, yi, yt, ProbConfig(**dict(asdict(cfg.prob), seed=seed)),
                              device)
    save_prob_head(head_path, head)
    m = evaluate(test_store, device, head, cfg.chunk_size, labels=True)
    return {"strategy": name, "seed": seed, "round": r, "annotated": r * cfg.budget,
            "paired_images": n_img, "paired_texts": n_txt, **{k: m[k] for k in KEYS + MAP_KEYS},
            "map": (m["i2t_map"] + m["t2i_map"]) / 2}


def select_round(cfg: SimConfig, name: str, seed: int, r: int, paired_path: str, pool_path: str,
                 head_path: str, rd: str, device: torch.device):
    """Round r's selection by the strategy, in the current head's space, through the registry as
    `alsel select` does; writes selection.h5 (.csv), and scores.h5 for the hard-negative strategies."""
    with open_store(paired_path, need="paired") as pst, open_store(pool_path) as pool:
        check_compatible(pst, pool)
        head = load_prob_head(head_path, pst) if cfg.labels else load_head(head_path, pst)
        inputs = strategies.Inputs(pool=pool, budget=cfg.budget, paired=pst, head=head, seed=round_seed(seed, r),
                                   device=device, chunk_size=cfg.chunk_size, scores_out=os.path.join(rd, "scores.h5"))
        n = pool.side(side_of(name)).n
        if n < cfg.budget:
            raise AlselError(f"{pool_path}: the pool ran out: {n} items left, round {r} needs {cfg.budget}")
        spec = name
        if name == AUTO:  # advise again on this round's paired set (SPEC §9)
            from .advise import AdviceConfig, choose_auto

            spec, advice = choose_auto(pst, pool, cfg.budget, AdviceConfig(
                budget=cfg.budget, head=cfg.head, seed=round_seed(seed, r), device=cfg.device,
                chunk_size=cfg.chunk_size, fallback=cfg.auto_fallback), has_head=True)
            _write_json(os.path.join(rd, "advice.json"), advice)
        sel = strategies.select(spec, inputs, "--strategies")
    save_selection(os.path.join(rd, "selection.h5"), sel, os.path.join(rd, "selection.csv"),
                   created_by="alsel simulate")
    return sel


def _write_json(path: str, obj) -> None:
    from .output import atomic_path

    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(obj, fh, indent=1)


# --------------------------------------------------------------------------- the experiment


def simulate(cfg: SimConfig, progress: Callable[[str], None] | None = None) -> list[dict]:
    """Run (or resume) every strategy × seed; writes results.csv and config.json into cfg.out."""
    if cfg.budget < 1:
        raise AlselError(f"--budget must be at least 1, got {cfg.budget}")
    if cfg.rounds < 1:
        raise AlselError(f"--rounds must be at least 1, got {cfg.rounds}")
    if os.path.exists(cfg.out) and not os.path.isdir(cfg.out):
        raise AlselError(f"{cfg.out}: --out is a file, not a folder (simulate writes a folder of results)")
    check_setting(cfg)
    device = torch.device(cfg.device)
    oracle = Oracle(cfg.oracle)
    if cfg.labels and oracle.image_labels is None:
        raise AlselError(f"{cfg.oracle}: --annotate labels needs class labels in the oracle (/images/labels)")
    with open_store(cfg.test, need="paired") as test_store:
        with open_store(cfg.oracle) as ost:
            check_compatible(test_store, ost)
            if cfg.labels:
                store_labels(test_store, "images"), store_labels(test_store, "texts")
            if cfg.paired is not None:
                with open_store(cfg.paired, need="paired") as pst:
                    check_compatible(pst, ost)
        n_pool = len(oracle.image_ids) if cfg.paired else len(oracle.image_ids) - _initial_count(cfg, oracle)
        for s in cfg.strategies:
            need = cfg.budget * cfg.rounds
            have = n_pool if side_of(s) == "images" else None
            if have is not None and need > have:
                raise AlselError(f"{cfg.oracle}: the pool runs out: {cfg.rounds} rounds of {cfg.budget} need "
                                 f"{need} images, the pool has {have}")
        _claim_folder(cfg)
        rows: list[dict] = []
        for seed in cfg.seeds:
            start = initial_split(cfg, oracle, seed, os.path.join(cfg.out, "init", f"seed{seed}"))
            for name in cfg.strategies:
                rows.extend(run_one(cfg, name, seed, start, oracle, test_store, device, progress))
                write_results(os.path.join(cfg.out, "results.csv"), rows)
    return rows


def check_setting(cfg: SimConfig) -> None:
    """Every strategy's needs are met by the setting: captions (a paired store, pools of one side, a
    retrieval head) or labels (a labelled store, a pool of pairs, a probabilistic head; images chosen)."""
    check_annotate(cfg.annotate)
    for name in cfg.strategies:
        if name == AUTO:
            if cfg.labels:
                raise AlselError("--strategies auto: advice compares caption strategies; not with --annotate labels")
            from .advise import check_fallback

            check_fallback(cfg.auto_fallback)
            continue
        strategy, opts, _ = strategies.resolve(name, "--strategies")
        label = bool(strategy.needs & {"pool_pairs", "prob_head"})
        if cfg.labels and opts.select != "images":
            raise AlselError(f"--strategies {name}: --annotate labels chooses pool pairs by their images")
        if not cfg.labels and label:
            raise AlselError(f"--strategies {name}: a label strategy; add --annotate labels (pool pairs, "
                             f"class labels as annotations)")
    if cfg.labels:
        if cfg.paired is not None:
            raise AlselError("--annotate labels splits the oracle with --initial; --paired is not supported")
        cfg.prob.check()


def check_annotate(annotate: str) -> None:
    """--annotate is captions or labels."""
    if annotate not in ANNOTATE:
        raise AlselError(f"--annotate {annotate!r}: expected {' or '.join(ANNOTATE)}")


def _claim_folder(cfg: SimConfig) -> None:
    """Record the settings in OUT/config.json, or check they match those of the run being resumed."""
    os.makedirs(cfg.out, exist_ok=True)
    config_path = os.path.join(cfg.out, "config.json")
    now = json.loads(json.dumps(cfg.describe()))
    if os.path.exists(config_path):
        with open(config_path, encoding="utf-8") as fh:
            old = json.load(fh)
        diff = sorted(k for k in set(old) | set(now) if old.get(k) != now.get(k))
        if diff == ["seeds"] and set(old["seeds"]) < set(now["seeds"]):
            # more seeds for the same experiment: each seed is computed on its own, the old ones are kept;
            # config.json keeps the time of the first run (its mtime is where the experiment started)
            first = os.stat(config_path)
            _write_json(config_path, now)
            os.utime(config_path, ns=(first.st_atime_ns, first.st_mtime_ns))
        elif diff:
            more = " (more seeds may be added: give all of the old ones too)" if diff == ["seeds"] else ""
            raise AlselError(f"{config_path}: {cfg.out} holds a simulation with other settings "
                             f"({', '.join(diff)}); use another --out{more}")
    else:
        _write_json(config_path, now)


def _initial_count(cfg: SimConfig, oracle: Oracle) -> int:
    n = len(oracle.image_ids)
    return int(round(cfg.initial * n)) if cfg.initial < 1 else int(cfg.initial)


ANNOTATE = ("captions", "labels")
COLUMNS = ["strategy", "seed", "round", "annotated", "paired_images", "paired_texts", *KEYS, "used"]
LABEL_COLUMNS = COLUMNS + ["i2t_map", "t2i_map", "map"]


def write_results(path: str, rows: list[dict]) -> None:
    """OUT/results.csv, one row per strategy, seed and round, figures rounded (alsel.figures)."""
    from .output import atomic_path

    columns = LABEL_COLUMNS if rows and "map" in rows[0] else COLUMNS
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            w = csv.DictWriter(fh, fieldnames=columns)
            w.writeheader()
            for row in rows:
                w.writerow({k: _rounded(k, row.get(k, "")) for k in columns})


def _rounded(key: str, value):
    """R@K and R-sum in percent to 2 decimals, mAP to 6 significant digits; counts and names as they are."""
    from .figures import percent, sig

    if key in KEYS:
        return percent(value)
    if key in ("i2t_map", "t2i_map", "map"):
        return sig(value)
    return value


def summarize(rows: list[dict], metric: str = "rsum") -> list[dict]:
    """Mean and standard deviation over seeds per strategy and round."""
    out = []
    keys = sorted({(r["strategy"], r["round"]) for r in rows}, key=lambda k: (k[0], k[1]))
    order = list(dict.fromkeys(r["strategy"] for r in rows))
    keys.sort(key=lambda k: (order.index(k[0]), k[1]))
    for strategy, rnd in keys:
        vals = np.array([r[metric] for r in rows if r["strategy"] == strategy and r["round"] == rnd], dtype=float)
        ann = next(r["annotated"] for r in rows if r["strategy"] == strategy and r["round"] == rnd)
        out.append({"strategy": strategy, "round": rnd, "annotated": ann, "mean": float(vals.mean()),
                    "std": float(vals.std(ddof=1)) if len(vals) > 1 else 0.0, "n": len(vals)})
    return out


def panels(rows: list[dict]) -> tuple[tuple[str, str], ...]:
    """The two measures a run is summarised by: R-sum and R@1-sum, or mAP@all and R-sum (labels)."""
    if rows and "map" in rows[0]:
        return ("map", "mAP@all (mean of both directions)"), ("rsum", "R-sum (%)")
    return ("rsum", "R-sum (%)"), ("r1sum", "R@1-sum (%)")


def plot_curves(rows: list[dict], out_png: str, title: str = "") -> None:
    """The two measures of `panels` against annotated items: a line per strategy (mean over seeds), a
    band of ±1 std."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, (metric, label) in zip(axes, panels(rows)):
        summary = summarize(rows, metric)
        for strategy in dict.fromkeys(s["strategy"] for s in summary):
            pts = [s for s in summary if s["strategy"] == strategy]
            x = np.array([p["annotated"] for p in pts])
            m = np.array([p["mean"] for p in pts])
            sd = np.array([p["std"] for p in pts])
            line, = ax.plot(x, m, marker="o", ms=3, label=strategy)
            ax.fill_between(x, m - sd, m + sd, color=line.get_color(), alpha=0.15)
        ax.set_xlabel("annotated pool items")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    from .output import atomic_path

    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
