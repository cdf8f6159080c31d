"""`alsel advise` (SPEC §9): which strategy gains most over random at this budget, measured on the user's
own paired store by repeated self-simulation.

Each split of the paired store (seeded) holds out a test part, keeps a starting part and makes the rest
a pseudo-pool whose captions are known; `alsel simulate` (the same learner and training rule as `train`,
selection in the head's space, the oracle's captions merged) then runs every candidate and random from
the starting part for `rounds` rounds and measures R-sum on the held-out part. The gain of a candidate on
a split is its R-sum minus random's, averaged over rounds 1..R; the table gives the mean ± standard error
over splits and on how many splits it was ahead.

The split mirrors the user's next step: the budget is the same share of the starting part as B is of
the paired store (ρ = B / n), and the pseudo-pool is what the rounds take times the user's own
pool-to-budget ratio (between MIN_POOL_FACTOR and POOL_FACTOR), so the regime — a budget small or large against what is
already paired — is the user's. At most `max_pairs` paired images are used (a seeded sample), so the cost
does not grow with the paired store.

Recommendation: the candidate with the largest mean gain, when that gain is more than RELIABLE standard
errors above zero; otherwise the fallback ("no strategy is reliably ahead of random here"), TypiClust by
default: on the strategy report's 16 experiments it was behind random on none and ahead on 8, and replayed
on every advice there, falling back to it instead of random raised the mean gain of following the advice from
+0.8 to +3.8 R-sum (`--fallback random` restores the plain rule). A paired set chosen actively is biased
toward what earlier strategies liked (Baram et al. 2004): the advice describes this set.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np

from .errors import AlselError
from .head import TrainConfig
from .strategies import AUTO_FALLBACK

FORMAT = "alsel-advice-1"
CANDIDATES = ("coreset", "typiclust", "probcover", "hn", "hn-density", "schedule", "hn-learnability")
BASELINE = "random"
POOL_FACTOR = 4.0  # the pseudo-pool holds the user's pool-to-budget ratio, at most this many times what
MIN_POOL_FACTOR = 2.0  # the rounds take, and at least this many
RELIABLE = 2.0  # recommend a strategy when its mean gain is more than this many standard errors above 0
#                 (the strategy report's verdict rule): with few splits a weaker rule picks noise
MIN_START = 4  # images in a split's starting part, at the least
MIN_TEST = 5


NONE_AHEAD = "no strategy is reliably ahead of random here"


class TooFewPairs(AlselError):
    """The paired store is too small for the splits advise simulates on; `reason` says how small."""

    def __init__(self, reason: str):
        super().__init__(f"{reason}; choose without advice")
        self.reason = reason


@dataclass
class AdviceConfig:
    budget: int
    rounds: int = 1
    candidates: tuple = CANDIDATES
    splits: int = 6
    max_pairs: int = 1000
    test_fraction: float = 0.3
    head: TrainConfig = field(default_factory=TrainConfig)
    seed: int = 0
    device: str = "cpu"
    chunk_size: int | None = None
    fallback: str = AUTO_FALLBACK  # what advise recommends when no candidate is reliably ahead

    def check(self) -> "AdviceConfig":
        """The settings checked (one-line errors)."""
        from . import strategies

        if self.budget < 1:
            raise AlselError(f"--budget must be at least 1, got {self.budget}")
        if self.rounds < 1:
            raise AlselError(f"--rounds must be at least 1, got {self.rounds}")
        if self.splits < 2:
            raise AlselError(f"--splits must be at least 2 (a standard error needs two), got {self.splits}")
        if self.max_pairs < 20:
            raise AlselError(f"--max-pairs must be at least 20, got {self.max_pairs}")
        if not 0.05 <= self.test_fraction <= 0.6:
            raise AlselError(f"--test-fraction must be in [0.05, 0.6], got {self.test_fraction}")
        names = []
        for spec in self.candidates:
            strategy, opts, _ = strategies.resolve(spec, "--strategies")
            if strategy.needs & {"pool_pairs", "prob_head"}:
                raise AlselError(f"--strategies {spec}: a label strategy; advise compares caption strategies")
            if opts.select != "images":
                raise AlselError(f"--strategies {spec}: advise chooses pool images (the pseudo-pool is images)")
            names.append(strategy.canonical(opts))
        names = [n for n in dict.fromkeys(names) if n != BASELINE]
        if not names:
            raise AlselError("--strategies: give at least one strategy besides random")
        return AdviceConfig(**dict(asdict(self), candidates=tuple(names), head=self.head,
                                   fallback=check_fallback(self.fallback)))


def check_fallback(spec: str) -> str:
    """--fallback: a caption strategy over pool images that needs no head (it is used when nothing could be
    measured, also where no head exists); its canonical name."""
    from . import strategies

    strategy, opts, _ = strategies.resolve(spec, "--fallback")
    if strategy.needs & {"pool_pairs", "prob_head", "head"} or opts.select != "images":
        raise AlselError(f"--fallback {spec}: give a strategy over pool images that needs no head "
                         f"(e.g. {AUTO_FALLBACK} or {BASELINE})")
    return strategy.canonical(opts)


@dataclass
class Plan:
    """How one split divides the (sampled) paired images, and the budget per round in it."""

    images: int  # paired images used (at most max_pairs)
    test: int
    start: int
    pool: int
    budget: int

    def describe(self) -> str:
        """The split in words."""
        return (f"{self.images} paired images per split: {self.start} to start, a pseudo-pool of {self.pool}, "
                f"{self.test} held out; {self.budget} per round")


def plan(n_images: int, pool_size: int, cfg: AdviceConfig) -> Plan:
    """The split of SPEC §9 for n paired images, a pool of pool_size and the budget (module docstring)."""
    m = min(n_images, cfg.max_pairs)
    t = max(MIN_TEST, int(round(cfg.test_fraction * m)))
    rest = m - t
    rho = cfg.budget / n_images
    factor = min(POOL_FACTOR, max(MIN_POOL_FACTOR, pool_size / (cfg.rounds * cfg.budget)))
    s = int(round(rest / (1.0 + factor * cfg.rounds * rho)))
    b = max(1, int(round(rho * s)))
    if s < MIN_START or rest - s < cfg.rounds * b + 1:
        need = MIN_TEST + MIN_START + 2 * cfg.rounds + 1
        raise TooFewPairs(f"the paired store has {n_images} images: too few to simulate rounds of this budget "
                          f"on splits of it (at least about {max(need, 20)} are needed)")
    return Plan(m, t, s, rest - s, b)


@dataclass
class Advice:
    """What advise found (also the advice file's content, `as_dict`)."""

    recommendation: str
    reliable: bool
    table: list  # per candidate: strategy, gain_mean, gain_se, ahead, splits (best first)
    plan: Plan
    settings: dict
    fingerprints: dict
    seconds: float
    per_split: dict = field(default_factory=dict)  # strategy -> gains per split
    fallback: str = BASELINE  # what the recommendation is when no candidate is reliably ahead

    @property
    def best(self) -> dict:
        return self.table[0]

    def confidence(self) -> str:
        """The recommendation's support in words."""
        b = self.best
        if b["gain_se"] > 0:
            t = f" (t = {b['gain_mean'] / b['gain_se']:.1f})"
        else:  # every split gave the same gain: t is undefined, the splits say it all
            t = " (the same on every split)"
        line = (f"{b['strategy']}: {b['gain_mean']:+.1f} ± {b['gain_se']:.1f} R-sum over random, ahead on "
                f"{b['ahead']} of {b['splits']} splits{t}")
        if self.reliable:
            return line
        return f"{NONE_AHEAD} (best: {line}){fallback_words(self.fallback)}"

    def as_dict(self) -> dict:
        """The advice file's content (format alsel-advice-1)."""
        return {"format": FORMAT, "recommendation": self.recommendation, "reliable": self.reliable,
                "confidence": self.confidence(), "table": self.table, "plan": asdict(self.plan),
                "settings": self.settings, "fingerprints": self.fingerprints, "seconds": round(self.seconds, 1),
                "per_split": self.per_split}


def fallback_words(fallback: str) -> str:
    """What the advice adds when it falls back (nothing for random, the plain rule)."""
    return "" if fallback == BASELINE else f"; falling back to {fallback} (--fallback)"


def recommend(table: list, reliable_at: float = RELIABLE, fallback: str = BASELINE) -> tuple[str, bool]:
    """The decision rule: the first row of `table` (best mean gain first) when its mean gain is positive and
    more than `reliable_at` standard errors above zero, else `fallback` (also for an empty table: nothing was
    measured). Returns (strategy, reliable)."""
    if not table:
        return fallback, False
    best = table[0]
    reliable = best["gain_mean"] > 0 and best["gain_mean"] > reliable_at * best["gain_se"]
    return (best["strategy"], True) if reliable else (fallback, False)


def fingerprints(paired, pool, budget: int) -> dict:
    """What an advice file must match to be reused: the paired store, the pool and the budget."""
    from .store import paired_fingerprint

    return {"paired": paired_fingerprint(paired), "pool": pool.fingerprint("images"), "budget": int(budget)}


def _write_split(folder: str, paired, rows: dict[str, np.ndarray]) -> dict[str, str]:
    """The split's stores: start (paired), oracle (the pseudo-pool with its captions), test."""
    from .store import write_store

    images, texts, ti = paired.images.raw(0, paired.images.n), paired.texts.raw(0, paired.texts.n), paired.text_image
    img_ids, txt_ids = paired.ids("images"), paired.ids("texts")
    text = paired.text_strings()
    paths = {}
    for part, image_rows in rows.items():
        image_rows = np.sort(image_rows)
        text_rows = np.flatnonzero(np.isin(ti, image_rows))
        new = np.full(len(images), -1, np.int64)
        new[image_rows] = np.arange(len(image_rows))
        paths[part] = os.path.join(folder, f"{part}.h5")
        write_store(paths[part], images=images[image_rows], image_ids=img_ids[image_rows], texts=texts[text_rows],
                    text_ids=txt_ids[text_rows], text_image=new[ti[text_rows]],
                    text_strings=None if text is None else text[text_rows], model=paired.model,
                    pretrained=str(paired.attrs.get("pretrained", "")), created_by="alsel advise")
    return paths


def advise(paired, pool, cfg: AdviceConfig, progress: Callable[[str], None] | None = None,
           work: str | None = None) -> Advice:
    """Self-simulate every candidate and random on `cfg.splits` splits of the paired store (opened Stores;
    `pool` gives the pool's size). `work`: a folder for the splits' files (default: a temporary one,
    removed after). Deterministic for cfg.seed."""
    from .simulate import SimConfig, simulate

    cfg = cfg.check()
    t0 = time.perf_counter()
    pool_n = pool.side("images").n if pool is not None else 10 * cfg.budget
    n = paired.images.n
    p = plan(n, pool_n, cfg)
    names = [BASELINE, *cfg.candidates]
    gains = {c: [] for c in cfg.candidates}
    owned = work is None
    work = work or tempfile.mkdtemp(prefix="alsel-advise-")
    try:
        for k in range(cfg.splits):
            rng = np.random.default_rng([cfg.seed, 90210, k])
            order = rng.permutation(n)[:p.images]
            rows = {"test": order[:p.test], "start": order[p.test:p.test + p.start],
                    "oracle": order[p.test + p.start:]}
            folder = os.path.join(work, f"split{k}")
            os.makedirs(folder, exist_ok=True)
            paths = _write_split(folder, paired, rows)
            sim = SimConfig(oracle=paths["oracle"], test=paths["test"], out=os.path.join(folder, "sim"),
                            budget=p.budget, rounds=cfg.rounds, strategies=names, seeds=[cfg.seed * 1000 + k],
                            paired=paths["start"], head=cfg.head, device=cfg.device, chunk_size=cfg.chunk_size)

            def step(msg: str, k=k) -> None:
                if progress is not None:
                    progress(f"split {k + 1}/{cfg.splits}: {msg}")

            rows_out = simulate(sim, step)
            rsum = {(r["strategy"], r["round"]): float(r["rsum"]) for r in rows_out}
            for c in cfg.candidates:
                diffs = [rsum[(c, r)] - rsum[(BASELINE, r)] for r in range(1, cfg.rounds + 1)]
                gains[c].append(float(np.mean(diffs)))
    finally:
        if owned:
            shutil.rmtree(work, ignore_errors=True)
    table = []
    for c in cfg.candidates:
        g = np.array(gains[c])
        table.append({"strategy": c, "gain_mean": round(float(g.mean()), 3),
                      "gain_se": round(float(g.std(ddof=1) / np.sqrt(len(g))), 3),
                      "ahead": int((g > 0).sum()), "splits": len(g)})
    table.sort(key=lambda r: (-r["gain_mean"], r["strategy"]))
    choice, reliable = recommend(table, fallback=cfg.fallback)
    settings = {"budget": cfg.budget, "rounds": cfg.rounds, "splits": cfg.splits, "max_pairs": cfg.max_pairs,
                "test_fraction": cfg.test_fraction, "seed": cfg.seed, "candidates": list(cfg.candidates),
                "learner": cfg.head.learner, "init": cfg.head.init, "reliable_at": RELIABLE,
                "fallback": cfg.fallback}
    return Advice(choice, reliable, table, p, settings,
                  fingerprints(paired, pool, cfg.budget) if pool is not None else {}, time.perf_counter() - t0,
                  {c: [round(x, 3) for x in v] for c, v in gains.items()}, cfg.fallback)


def save_advice(out: str, advice: Advice, inputs: tuple = ()) -> None:
    """The advice file (JSON), written atomically."""
    from .output import atomic_path

    with atomic_path(out, inputs) as tmp:
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(advice.as_dict(), fh, indent=1)
            fh.write("\n")


def read_advice(path: str, paired, pool, budget: int) -> dict:
    """An advice file whose fingerprints match these stores and budget (else a one-line error)."""
    try:
        with open(path, encoding="utf-8") as fh:
            doc = json.load(fh)
    except FileNotFoundError:
        raise AlselError(f"{path}: no such file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise AlselError(f"{path}: not an advice file ({e})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise AlselError(f"{path}: not an alsel advice file (expected format {FORMAT!r})")
    want = fingerprints(paired, pool, budget)
    got = doc.get("fingerprints") or {}
    for key, what in (("paired", "paired store"), ("pool", "pool"), ("budget", "budget")):
        if got.get(key) != want[key]:
            raise AlselError(f"{path}: the advice was made for another {what} than this one; run alsel advise "
                             f"again (or leave out --advice)")
    if not isinstance(doc.get("recommendation"), str):
        raise AlselError(f"{path}: no recommendation in the advice file")
    return doc


def config_hash(cfg: AdviceConfig) -> str:
    """A short hash of the advice settings (for file names of cached advice)."""
    return hashlib.sha256(json.dumps(asdict(cfg), sort_keys=True, default=str).encode()).hexdigest()[:12]


AUTO = "auto"


def choose_auto(paired, pool, budget: int, cfg: AdviceConfig | None = None, advice_path: str | None = None,
                has_head: bool = False, progress: Callable[[str], None] | None = None,
                fallback_given: str | None = None) -> tuple[str, dict]:
    """`--strategy auto` (SPEC §9): the strategy advise recommends for these stores and budget, read from
    `advice_path` when its fingerprints match, else computed (a candidate that needs a head is left out
    when the selection has none). An advice file made with another fallback than `fallback_given` (a
    --fallback the user gave) is refused: its recommendation may be that fallback. Returns (strategy, the
    advice as a dict)."""
    from . import strategies

    if advice_path is not None:
        doc = read_advice(advice_path, paired, pool, budget)
        made = (doc.get("settings") or {}).get("fallback", "random")  # files from before --fallback: the plain rule
        if fallback_given is not None and made != fallback_given:
            raise AlselError(f"{advice_path}: the advice was made with --fallback {made}, not {fallback_given}; run "
                             f"alsel advise again with --fallback {fallback_given} (or leave out --fallback)")
    else:
        cfg = cfg or AdviceConfig(budget=budget)
        if not has_head:
            cfg = AdviceConfig(**dict(asdict(cfg), head=cfg.head, candidates=tuple(
                c for c in cfg.candidates if "head" not in strategies.resolve(c, "--strategies")[0].needs)))
        try:
            doc = advise(paired, pool, AdviceConfig(**dict(asdict(cfg), head=cfg.head, budget=budget)),
                         progress).as_dict()
        except TooFewPairs as e:  # nothing can be measured, so nothing is reliably ahead of random (the rule)
            fallback = check_fallback(cfg.fallback)
            doc = {"format": FORMAT, "recommendation": fallback, "reliable": False, "table": [], "seconds": 0.0,
                   "confidence": f"{NONE_AHEAD}: nothing could be measured ({e.reason})"
                                 f"{fallback_words(fallback)}"}
    choice = doc["recommendation"]
    if "head" in strategies.resolve(choice, "--advice")[0].needs and not has_head:
        raise AlselError(f"{advice_path}: the advice recommends {choice}, which needs --head (a head from "
                         f"alsel train)")
    return choice, doc
