"""The strategy interface (SPEC §5): a strategy is a gain (a number per pool item, higher = more wanted)
and an allocator (how B items are chosen from the gains), declares what it needs, and is reached
through one entry, `select`, from `alsel select`, `alsel simulate` and Python alike.

A strategy is named by a spec: its name, then tokens for its options, e.g. `hn-texts-top3-mini-counting`
or `typiclust-maxclusters200`; options may also come as keyword arguments (the commands' flags). The
canonical name of a choice lists only the options that differ from the strategy's defaults.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np
from .._lazy import torch  # imported on first use (fast start)

from ..errors import AlselError
from ..selection import Selection, check_budget
from ..store import Store, utf8_set
from ..thresholds import ThresholdParams

NEEDS = {
    "paired": "a paired store (--paired)",
    "pool_pairs": "a pool of pairs: images with their captions (--unpaired)",
    "prob_head": "a probabilistic head from `alsel train --objective labels` (--head)",
    "head": "a retrieval head from `alsel train` (--head)",
}
NEED_LABELS = {"paired": "paired store", "pool_pairs": "pool of pairs", "prob_head": "probabilistic head",
               "head": "retrieval head"}


# --------------------------------------------------------------------------- options


@dataclass(frozen=True)
class OptionSpec:
    """One option a strategy can read: its flag, its token form in a spec, its values."""

    name: str  # attribute of Options
    flag: str
    kind: str  # "choice", "int", "float", "count" (an int or auto) or "delta" (a float or auto)
    help: str
    values: tuple = ()  # choices
    token: str = ""  # numeric options: the token's prefix (top3); choices: "" (the value itself) or a prefix
    minimum: float | None = None

    def parse(self, text: str, where: str):
        """A value from its text (flag value or token remainder)."""
        if self.kind == "choice":
            if text not in self.values:
                raise AlselError(f"{where}: {self.flag} {text!r}: expected {'|'.join(self.values)}")
            return text
        if self.kind in AUTO_KINDS and text == "auto":
            return "auto"
        try:
            value = int(text) if self.kind in ("int", "count") else float(text)
        except ValueError:
            raise AlselError(f"{where}: {self.flag} {text!r}: expected a number") from None
        return self.check(value, where)

    def check(self, value, where: str):
        """A value given apart from the spec (a flag or a keyword), checked and of the option's kind."""
        if self.kind == "choice" or isinstance(value, str):
            return self.parse(value, where)
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
                or not np.isfinite(value) or (self.minimum is not None and value < self.minimum):
            bound = f" >= {self.minimum:g}" if self.minimum is not None else ""
            raise AlselError(f"{where}: {self.flag} must be a finite number{bound}, got {value!r}")
        return int(value) if self.kind in ("int", "count") else float(value)

    def to_token(self, value) -> str:
        """How the value is written in a strategy spec (e.g. top3, fill-closest)."""
        if self.kind == "choice":
            return f"{self.token}-{value}" if self.token else str(value)
        return f"{self.token}{value:g}" if isinstance(value, float) else f"{self.token}{value}"


AUTO_KINDS = ("count", "delta")  # options that also take `auto`

OPTION_SPECS = {o.name: o for o in (
    OptionSpec("select", "--select", "choice", "pool side to choose from", ("images", "texts")),
    OptionSpec("top_k", "--top-k", "int", "hn: k of the k-th hardest negative", token="top", minimum=1),
    OptionSpec("batch", "--batch", "choice", "hn: negatives from the whole paired set or a mini-batch",
               ("full", "mini")),
    OptionSpec("batch_size", "--batch-size", "int", "hn: mini-batch size of --batch mini", token="bs", minimum=1),
    OptionSpec("margin", "--margin", "float", "hn: α of the thresholds", token="margin"),
    OptionSpec("form", "--form", "choice", "hn: ξ = max(h, p-α) (loss), h (rank) or p-α (margin)",
               ("loss", "rank", "margin")),
    OptionSpec("weight", "--weight", "choice", "hn: surplus Σ max(0, c_j) or counting #{c_j > 0}",
               ("surplus", "counting")),
    OptionSpec("fill", "--fill", "choice", "hn: the rest of a batch with fewer positive scores than B",
               ("random", "closest", "row"), token="fill"),
    OptionSpec("clusters", "--clusters", "count", "k-means clusters (hn-density, ascmr; probcover's purity), "
               "or auto: as many as the budget", token="clusters", minimum=1),
    OptionSpec("lam", "--lambda", "float", "weight of the density term, unitless", token="lambda", minimum=0),
    OptionSpec("density_mix", "--density-mix", "float", "target shares: 0 = proportional, 1 = uniform",
               token="mix", minimum=0),
    OptionSpec("samples", "--samples", "int", "samples J of each Gaussian embedding", token="samples", minimum=1),
    OptionSpec("max_clusters", "--max-clusters", "int", "typiclust: at most this many clusters",
               token="maxclusters", minimum=1),
    OptionSpec("delta", "--delta", "delta", "probcover: ball radius δ, or auto (purity 95%)", token="delta",
               minimum=0),
)}


_XI = ThresholdParams()  # the threshold options' defaults are the paper's best setting (SPEC §2)


@dataclass(frozen=True)
class Options:
    """Every strategy option with its default; a strategy reads the ones it declares."""

    select: str = _XI.select
    top_k: int = _XI.top_k
    batch: str = _XI.batch
    batch_size: int = _XI.batch_size
    margin: float = _XI.margin
    form: str = _XI.form
    weight: str = "surplus"
    fill: str = "random"
    clusters: int | str = 20
    lam: float = 1.0
    density_mix: float = 0.5
    samples: int = 8
    max_clusters: int = 500
    delta: float | str = "auto"


# --------------------------------------------------------------------------- what a strategy gets


@dataclass
class Inputs:
    """What a selection runs on. `pool` is an opened store (None: hn on score files alone); `paired` the
    paired store, when the strategy needs one; `head` a retrieval head or a probabilistic head (compare
    in its space); hn may take score files (`scores`, all shards of one run) or a ξ file (`thresholds`)
    instead of computing them, and keeps what it computes in `scores_out` when given."""

    pool: Store | None  # None: hn on `scores` alone
    budget: int
    paired: Store | None = None
    head: object = None
    seed: int = 0
    device: torch.device | str = "cpu"
    chunk_size: int | None = None
    precision: torch.dtype | None = None  # None: float32
    scores: list | None = None
    thresholds: str | None = None
    scores_out: str | None = None
    progress: Callable[[str, int, int], None] | None = None  # (what, advance by, total)
    shard: tuple[int, int] | None = None  # (i, n): a sharded selection's shard i of n (SPEC §10), else the whole pool


class Context:
    """One selection in progress: the inputs, the options, the pool side and which of its rows may be
    chosen (not already paired), the current space (raw, or the head's), and the notes to report."""

    def __init__(self, strategy: "Strategy", inputs: Inputs, opts: Options, explicit: set = frozenset()):
        self.strategy, self.inputs, self.opts, self.explicit = strategy, inputs, opts, set(explicit)
        self.select = opts.select
        self.side = "image" if self.select == "images" else "text"
        self.pool = inputs.pool.side(self.select)
        self.notes: list[str] = []
        self.attrs: dict = {}
        self.selectable = np.ones(self.pool.n, dtype=bool)
        self.rows = (0, self.pool.n)  # the pool rows this process works on (a shard's, or all)
        if inputs.shard is not None:
            i, n = inputs.shard
            self.rows = (i * self.pool.n // n, (i + 1) * self.pool.n // n)
            self.selectable[:self.rows[0]] = False
            self.selectable[self.rows[1]:] = False
        self.left_out = 0
        self.skipped = 0  # rows left out because annotators skipped them
        self.pool_ids = None  # Store.scan_ids' answer for self.rows: which are paired (and their ids, if kept)

    @property
    def device(self) -> torch.device:
        return torch.device(self.inputs.device)

    @property
    def budget(self) -> int:
        return self.inputs.budget

    def clusters(self) -> int:
        """--clusters, with auto = the budget (one cluster per item to choose)."""
        return self.budget if self.opts.clusters == "auto" else int(self.opts.clusters)

    @property
    def head(self):
        return self.inputs.head

    @property
    def transform(self):
        """The pool side's map into the current space (None: raw embeddings)."""
        return None if self.head is None else self.head.transform(self.side)

    def leave_out(self, mask: np.ndarray) -> None:
        """Rows that may not be chosen (already paired)."""
        a, b = self.rows
        new = mask & self.selectable
        self.selectable &= ~mask
        self.left_out += int(new[a:b].sum())

    def sub(self, budget: int, selectable: np.ndarray) -> "Context":
        """The same selection with another budget and set of selectable rows (a part of a batch); notes and
        attrs are shared with this context."""
        part = copy.copy(self)
        part.inputs = replace(self.inputs, budget=budget)
        part.selectable = np.asarray(selectable, dtype=bool).copy()
        return part

    def leave_out_skipped(self, mask: np.ndarray) -> None:
        """Rows annotators skipped in an earlier round (SPEC §8): never chosen again."""
        new = np.zeros(len(self.selectable), dtype=bool)
        new[:len(mask)] = mask
        new &= self.selectable
        self.selectable &= ~mask
        self.skipped += int(new.sum())

    def paired_points(self) -> np.ndarray:
        """The paired store's items of the selected side, in the current space (float32 unit rows)."""
        rows = self.inputs.paired.side(self.select).read()
        return rows if self.head is None else self.head.encode(rows, self.side, self.device)

    def pool_points(self) -> np.ndarray | None:
        """The pool side in the current space when it fits in memory (Rows otherwise: None)."""
        if self.pool.n * self.pool.d * 4 > POOL_CACHE_BYTES:
            return None
        rows = self.pool.read()
        return rows if self.head is None else self.head.encode(rows, self.side, self.device)

    def progress(self, what: str, advance: int, total: int) -> None:
        """Report `advance` more of `total` units of the phase `what` (to the command's progress)."""
        if self.inputs.progress is not None:
            self.inputs.progress(what, advance, total)

    def rng(self, stream: int = 0) -> np.random.Generator:
        """A generator seeded by the selection seed and a stream number (one stream per use)."""
        return np.random.default_rng([self.inputs.seed, stream])


POOL_CACHE_BYTES = 1 << 30  # a pool side up to this size (float32) is held in memory where that saves passes


@dataclass
class Allocation:
    """An allocator's answer: pool rows in selection order (first = most wanted), their score, how many
    came from a fill (items chosen for no gain of their own) and by which rule, named terms of the score."""

    rows: np.ndarray
    score: np.ndarray
    fill: int = 0
    fill_rule: str = ""
    parts: dict = field(default_factory=dict)
    attrs: dict = field(default_factory=dict)  # what the selection records beside (e.g. a merge's bound)
    notes: list = field(default_factory=list)


# --------------------------------------------------------------------------- the interface


class Strategy:
    """Subclass, set the class attributes, implement `gain` and `allocate`, and `register` an instance."""

    name: str = ""
    needs: frozenset = frozenset()  # keys of NEEDS
    options: tuple = ()  # names in OPTION_SPECS this strategy reads, besides `select`
    sides: tuple = ("images", "texts")
    summary: str = ""
    paper: str = ""
    defaults: dict = {}  # option defaults that differ from Options' for this strategy

    def prepare(self, inputs: Inputs, opts: Options, explicit: set) -> Options:
        """Options fixed by the inputs (e.g. by score files); `explicit`: the options given by the user."""
        return opts

    def gain(self, ctx: Context):
        """A number per pool row (higher = more wanted), or whatever `allocate` takes."""
        raise NotImplementedError

    def allocate(self, ctx: Context, gain) -> Allocation:
        """B rows among ctx.selectable from the gains."""
        raise NotImplementedError

    shardable = False  # a sharded form (SPEC §10): shard_map on each shard's rows, merge over the shards
    shard_keep = 1  # a shard's map keeps this many times B picks (what one shard's task costs)

    def shard_map(self, ctx: Context, gain) -> tuple[dict, dict]:
        """One shard's candidates: datasets (with /row, /id: pool rows of ctx.rows) and attributes."""
        raise NotImplementedError

    def merge(self, shards: list, opts: Options, budget: int, seed: int, device) -> Allocation:
        """The selection from every shard's candidates (alsel.candidates.Shard, in shard order)."""
        raise NotImplementedError

    def reason(self, score: float, parts: dict, attrs: dict) -> str:
        """Why an item with this score (and named parts) was chosen, in words (the batch page, SPEC §8);
        `attrs` are the selection's attributes."""
        return f"chosen by {self.name}" + ("" if score != score else f" (score {score:.4g})")

    # the parts below are shared by every strategy

    def base_options(self) -> Options:
        """Options with this strategy's own defaults."""
        return replace(Options(), **self.defaults)

    def reads(self) -> tuple:
        """The options this strategy reads (select first)."""
        return ("select", *self.options)

    def canonical(self, opts: Options) -> str:
        """The name plus tokens for the options that differ from this strategy's defaults."""
        base = self.base_options()
        tokens = [OPTION_SPECS[k].to_token(getattr(opts, k)) for k in self.reads()
                  if getattr(opts, k) != getattr(base, k)]
        return "-".join([self.name, *tokens])

    def check(self, inputs: Inputs, opts: Options, where: str) -> None:
        """The inputs meet the strategy's needs and side, else a one-line error naming what is missing."""
        if opts.select not in self.sides:
            raise AlselError(f"{where}: {self.name} chooses {' or '.join(self.sides)}, not {opts.select}")
        if "paired" in self.needs and inputs.paired is None:
            raise AlselError(f"{where}: {self.name} needs {NEEDS['paired']}")
        if "pool_pairs" in self.needs and (inputs.pool.images is None or inputs.pool.texts is None
                                           or inputs.pool.text_image is None):
            raise AlselError(f"{inputs.pool.path}: {self.name} needs {NEEDS['pool_pairs']}")
        from ..probhead import ProbHead

        is_prob = isinstance(inputs.head, ProbHead)
        if "prob_head" in self.needs and not is_prob:
            raise AlselError(f"{where}: {self.name} needs {NEEDS['prob_head']}")
        if "head" in self.needs and (inputs.head is None or is_prob):
            raise AlselError(f"{where}: {self.name} needs {NEEDS['head']}")


REGISTRY: dict[str, Strategy] = {}


def register(strategy: Strategy) -> Strategy:
    """Add a strategy to the registry (by its name); it is then in `alsel select`, `alsel simulate`,
    `alsel strategies` and `alsel.strategies.select`."""
    if not re.fullmatch(r"[a-z][a-z0-9]*(-[a-z][a-z0-9]*)*", strategy.name or ""):
        raise ValueError(f"strategy name {strategy.name!r}: lower-case words joined by '-'")
    unknown = [o for o in strategy.options if o not in OPTION_SPECS] + [n for n in strategy.needs if n not in NEEDS]
    if unknown:
        raise ValueError(f"strategy {strategy.name!r}: unknown options or needs {unknown}")
    REGISTRY[strategy.name] = strategy
    return strategy


def names() -> list[str]:
    """The registered strategies' names, sorted."""
    return sorted(REGISTRY)


def get(name: str) -> Strategy:
    """The registered strategy of that name (an unknown name is a one-line error listing them)."""
    if name not in REGISTRY:
        raise AlselError(f"--strategy {name!r}: unknown (strategies: {', '.join(names())}; see `alsel strategies`)")
    return REGISTRY[name]


def resolve(spec: str, where: str = "--strategy", strict: bool = True, **given) -> tuple[Strategy, Options, set]:
    """The strategy, its options and the names of those given explicitly, from a spec (name + tokens) and
    option values given apart (flags; None = not given). A flag that contradicts a token is an error, and
    so is (with `strict`) an option the strategy does not read; without `strict` it is ignored."""
    spec = spec.strip().lower()
    parts = spec.split("-")
    for cut in range(len(parts), 0, -1):  # the longest registered name first: hn-density before hn
        if "-".join(parts[:cut]) in REGISTRY:
            strategy, tokens = REGISTRY["-".join(parts[:cut])], parts[cut:]
            break
    else:
        raise AlselError(f"{where} {spec!r}: unknown strategy (strategies: {', '.join(names())}; "
                         f"see `alsel strategies`)")
    from_tokens = _read_tokens(strategy, tokens, spec, where)
    values = {}
    for key, value in given.items():
        if value is None:
            continue
        opt = OPTION_SPECS[key]
        if key not in strategy.reads() and not strict:
            continue
        if key not in strategy.reads():
            raise AlselError(f"{where} {spec}: {opt.flag} is not an option of {strategy.name} "
                             f"(its options: {', '.join(OPTION_SPECS[k].flag for k in strategy.reads())})")
        value = opt.check(value, where)
        if key in from_tokens and from_tokens[key] != value:
            raise AlselError(f"{where} {spec}: {opt.flag} {value} contradicts the token "
                             f"{opt.to_token(from_tokens[key])!r}")
        values[key] = value
    return strategy, replace(strategy.base_options(), **{**values, **from_tokens}), {*values, *from_tokens}


def _read_tokens(strategy: Strategy, tokens: list[str], spec: str, where: str) -> dict:
    out: dict = {}
    specs = [OPTION_SPECS[k] for k in strategy.reads()]
    i = 0
    while i < len(tokens):
        t = tokens[i]
        found = None
        for opt in specs:
            if opt.kind == "choice" and not opt.token and t in opt.values:
                found = (opt, t, 1)
            elif opt.kind == "choice" and opt.token == t and i + 1 < len(tokens):
                found = (opt, tokens[i + 1], 2)
            elif opt.kind != "choice" and t.startswith(opt.token) and re.fullmatch(r"auto|\d+(\.\d*)?(e-?\d+)?",
                                                                                   t[len(opt.token):]):
                found = (opt, t[len(opt.token):], 1)
            if found:
                break
        if found is None:
            raise AlselError(f"{where} {spec!r}: cannot read {t!r} (tokens of {strategy.name}: "
                             f"{', '.join(token_forms(strategy))})")
        opt, text, used = found
        if opt.name in out:
            raise AlselError(f"{where} {spec!r}: {opt.flag} is given twice")
        out[opt.name] = opt.parse(text, f"{where} {spec}")
        i += used
    return out


def token_forms(strategy: Strategy) -> list[str]:
    """How each option of a strategy is written in a spec (for messages and `alsel strategies`)."""
    out = []
    for k in strategy.reads():
        opt = OPTION_SPECS[k]
        values = strategy.sides if k == "select" else opt.values
        if opt.kind == "choice":
            out.append("|".join(f"{opt.token}-{v}" if opt.token else v for v in values))
        else:
            out.append(f"{opt.token}<{'number|auto' if opt.kind in AUTO_KINDS else 'number'}>")
    return out


# --------------------------------------------------------------------------- the one entry


def select(spec: str, inputs: Inputs, where: str = "--strategy", strict: bool = True, **given) -> Selection:
    """Choose inputs.budget pool items with the strategy named by `spec` (tokens and/or `given` options).

    Pool items whose id is an id of the paired store's same side are already paired and never chosen
    (a note says how many). The Selection's attrs record the strategy's canonical name, its options, the
    fill (when a batch was completed by a rule, not by gains), the budget and the pool's fingerprint; its
    `notes` are the lines a command prints on stderr."""
    strategy, opts, explicit = resolve(spec, where, strict, **given)
    if inputs.pool is None:  # hn from score files alone: the files know the pool
        if not inputs.scores:
            raise AlselError(f"{where} {spec}: needs the pool (--unpaired POOL.h5)")
        from .hn import scored_pool

        inputs = replace(inputs, pool=scored_pool(inputs.scores))
    opts = strategy.prepare(inputs, opts, explicit)
    strategy.check(inputs, opts, where)
    ctx = Context(strategy, inputs, opts, explicit)
    if hasattr(inputs.pool, "file"):
        _leave_out(ctx, inputs, opts)
    check_budget(inputs.budget, int(ctx.selectable.sum()), inputs.pool.path, ctx.left_out, ctx.skipped)
    gain = strategy.gain(ctx)
    check_budget(inputs.budget, int(ctx.selectable.sum()), inputs.pool.path, ctx.left_out, ctx.skipped)
    if ctx.left_out:
        ctx.notes.append(f"{ctx.left_out} pool items are already paired and were left out")
    if ctx.skipped:
        ctx.notes.append(f"{ctx.skipped} pool items were skipped by annotators in an earlier round and were "
                         f"left out")
    alloc = strategy.allocate(ctx, gain)
    name = strategy.canonical(ctx.opts)
    rows = np.asarray(alloc.rows, dtype=np.int64)
    if len(rows) != inputs.budget or len(np.unique(rows)) != len(rows) or not ctx.selectable[rows].all():
        raise AlselError(f"strategy {strategy.name}: chose {len(rows)} rows, not {inputs.budget} distinct "
                         f"selectable ones (a bug in the strategy)")
    if alloc.fill:
        ctx.notes.append(f"{name}: {alloc.fill} of {inputs.budget} items came from the fill ({alloc.fill_rule}), "
                         f"not from gains")
    head = inputs.head
    attrs = {k: getattr(ctx.opts, k) for k in strategy.options if k != "fill"}  # the fill: fill_rule below
    attrs.update(ctx.attrs)  # what the strategy resolved (e.g. δ of --delta auto)
    attrs.update(alloc.attrs)
    ctx.notes.extend(alloc.notes)
    attrs.update(strategy=name, budget=inputs.budget, seed=inputs.seed, select=ctx.opts.select,
                 pool_size=ctx.pool.n, pool_fingerprint=inputs.pool.fingerprint(ctx.opts.select),
                 model=inputs.pool.model, head=head.fingerprint() if head is not None else "none",
                 paired_left_out=ctx.left_out, skipped_left_out=ctx.skipped, fill=f"{alloc.fill} {alloc.fill_rule or 'none'}",
                 fill_count=int(alloc.fill), fill_rule=alloc.fill_rule or "none")
    root = str(getattr(inputs.pool, "attrs", {}).get("image_root", "")) if ctx.opts.select == "images" else ""
    if root:  # the pool's images are files under this folder: selection CSVs get a path column
        attrs["image_root"] = root
    sel = Selection(rows, inputs.pool.ids_at(ctx.opts.select, rows), np.asarray(alloc.score, np.float32), attrs,
                    {k: np.asarray(v, np.float32) for k, v in alloc.parts.items()})
    sel.notes = ctx.notes
    return sel


def _leave_out(ctx: Context, inputs: Inputs, opts: Options) -> None:
    """Skipped and already paired rows of the rows this process works on are never chosen. One read of the
    pool's ids (Store.scan_ids) checks them all and finds the paired ones (as UTF-8 bytes: equal bytes,
    equal text); kept on the context, so a scoring here reads them no more (the ids themselves only where
    a scores file is written)."""
    ctx.leave_out_skipped(inputs.pool.flags(opts.select, "skipped"))
    a, b = ctx.rows
    known = None if inputs.paired is None else utf8_set(inputs.paired.ids(opts.select))
    ctx.pool_ids = inputs.pool.scan_ids(opts.select, a, b, known, keep=inputs.scores_out is not None)
    if ctx.pool_ids.paired is not None:
        mask = np.zeros(ctx.pool.n, dtype=bool)
        mask[a:b] = ctx.pool_ids.paired
        ctx.leave_out(mask)


def sharded() -> list[str]:
    """The strategies with a sharded form."""
    return [n for n in names() if REGISTRY[n].shardable]


def select_shard(spec: str, inputs: Inputs, where: str = "--strategy", strict: bool = True,
                 **given) -> tuple[dict, dict]:
    """Shard inputs.shard = (i, n) of a sharded selection (SPEC §10): the candidates of the pool rows
    [i·N/n, (i+1)·N/n) and the statistics the merge needs, as (datasets, attributes) of a candidates file."""
    import json

    strategy, opts, explicit = resolve(spec, where, strict, **given)
    if not strategy.shardable:
        hint = "; hn shards through `alsel score --shard i/n`" if strategy.name == "hn" else ""
        raise AlselError(f"{where} {spec}: {strategy.name} has no sharded form (sharded: {', '.join(sharded())}){hint}")
    if inputs.pool is None:
        raise AlselError(f"{where} {spec}: a shard needs the pool (--unpaired POOL.h5)")
    opts = strategy.prepare(inputs, opts, explicit)
    strategy.check(inputs, opts, where)
    ctx = Context(strategy, inputs, opts, explicit)
    _leave_out(ctx, inputs, opts)
    data, extra = strategy.shard_map(ctx, strategy.gain(ctx))
    from ..store import paired_fingerprint

    head = inputs.head
    a, b = ctx.rows
    data["id"] = inputs.pool.ids_at(opts.select, np.asarray(data["row"], dtype=np.int64))
    attrs = {"strategy": strategy.canonical(ctx.opts),
             "options": json.dumps({k: getattr(ctx.opts, k) for k in strategy.reads()}, sort_keys=True),
             "budget": inputs.budget, "seed": inputs.seed, "select": opts.select, "pool_size": ctx.pool.n,
             "pool_fingerprint": inputs.pool.fingerprint(opts.select), "model": inputs.pool.model,
             "paired_fingerprint": paired_fingerprint(inputs.paired) if inputs.paired is not None else "none",
             "head": head.fingerprint() if head is not None else "none",
             "shard": f"{inputs.shard[0]}/{inputs.shard[1]}", "rows": f"{a}:{b}",
             "selectable": int(ctx.selectable[a:b].sum()), "paired_left_out": ctx.left_out,
             "skipped_left_out": ctx.skipped, **ctx.attrs, **extra}
    root = str(getattr(inputs.pool, "attrs", {}).get("image_root", "")) if opts.select == "images" else ""
    if root:
        attrs["image_root"] = root
    return data, attrs


def merge_shards(paths: list[str], device="cpu") -> Selection:
    """The selection from every shard's candidates file (SPEC §10): checked to be one sharded selection
    covering the pool, merged by the strategy's merge."""
    from ..candidates import read_candidates

    shards = read_candidates(list(paths))
    first = shards[0].attrs
    strategy, opts, _ = resolve(str(first["strategy"]), "--candidates")
    budget, seed = int(first["budget"]), int(first["seed"])
    selectable = sum(int(s.attrs.get("selectable", 0)) for s in shards)
    left = sum(int(s.attrs.get("paired_left_out", 0)) for s in shards)
    skipped = sum(int(s.attrs.get("skipped_left_out", 0)) for s in shards)
    check_budget(budget, selectable, shards[0].path, left, skipped)
    alloc = strategy.merge(shards, opts, budget, seed, torch.device(device))
    rows = np.asarray(alloc.rows, dtype=np.int64)
    if len(rows) != budget or len(np.unique(rows)) != len(rows):
        raise AlselError(f"strategy {strategy.name}: the merge chose {len(rows)} rows, not {budget} distinct ones "
                         f"(a bug in the strategy)")
    id_of = {int(r): i for s in shards for r, i in zip(s.data["row"], s.data["id"])}
    attrs = {k: first[k] for k in ("strategy", "budget", "seed", "select", "pool_size", "pool_fingerprint", "model",
                                   "head") if k in first}
    attrs.update(paired_left_out=left, skipped_left_out=skipped, shards=len(shards),
                 fill=f"{alloc.fill} {alloc.fill_rule or 'none'}", fill_count=int(alloc.fill),
                 fill_rule=alloc.fill_rule or "none", **getattr(alloc, "attrs", {}))
    if "image_root" in first:
        attrs["image_root"] = first["image_root"]
    sel = Selection(rows, np.array([id_of[int(r)] for r in rows], dtype=object), np.asarray(alloc.score, np.float32),
                    attrs, {k: np.asarray(v, np.float32) for k, v in alloc.parts.items()})
    sel.notes = [f"merged {len(shards)} shards of {strategy.name}"] + list(getattr(alloc, "notes", []))
    if left:
        sel.notes.append(f"{left} pool items are already paired and were left out")
    if skipped:
        sel.notes.append(f"{skipped} pool items were skipped by annotators in an earlier round and were left out")
    if alloc.fill:
        sel.notes.append(f"{attrs['strategy']}: {alloc.fill} of {budget} items came from the fill ({alloc.fill_rule}), "
                         f"not from gains")
    return sel


def describe() -> list[dict]:
    """One row per registered strategy: name, needs, options (as tokens), summary, paper."""
    out = []
    for name in names():
        s = REGISTRY[name]
        out.append({"name": name, "needs": [NEED_LABELS[n] for n in sorted(s.needs)] or ["-"],
                    "sides": list(s.sides), "options": token_forms(s), "summary": s.summary, "paper": s.paper})
    return out


