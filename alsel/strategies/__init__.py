"""Selection strategies: one interface and one registry (SPEC §5).

    from alsel import strategies
    sel = strategies.select("typiclust", strategies.Inputs(pool=pool_store, paired=paired_store, budget=100))

A new strategy is one module with a `Strategy` subclass (`gain`, `allocate`, what it `needs`, the
`options` it reads) and one `register(...)` call; it is then in `alsel select --strategy`, `alsel
simulate --strategies` and `alsel strategies`. Third-party packages register theirs through the
`alsel.strategies` entry-point group (a module imported on first use).
"""

from .base import (NEEDS, OPTION_SPECS, REGISTRY, Allocation, Context, Inputs, Options, OptionSpec,  # noqa: F401
                   Strategy, describe, get, merge_shards, names, register, resolve, select, select_shard,
                   sharded, token_forms)
from . import hn, baselines, typiclust, probcover, labels, schedule  # noqa: E402,F401  (registration)
from .hn import ScoredPool, scored_pool  # noqa: E402,F401

# `alsel select` without --strategy: auto (alsel advise on the user's paired store, then its choice). No
# fixed strategy is ahead of random on every data set (benchmarks/strategy_report.md: coreset +20.7 R-sum on
# COCO-500 from scratch, −10.3 on a Flickr30K set); auto falls back to AUTO_FALLBACK unless a candidate is
# reliably ahead, and trailed random on none of the report's experiments.
DEFAULT = "auto"
# auto's choice when no candidate is reliably ahead of random (alsel.advise): TypiClust was behind random on
# none of the report's 16 experiments and ahead on 8
AUTO_FALLBACK = "typiclust"


def default_for(scores) -> str:
    """The strategy of `alsel select` without --strategy: hn when score files are given, else DEFAULT."""
    return "hn" if scores else DEFAULT


def load_plugins() -> None:
    """Import the modules named in the `alsel.strategies` entry-point group (their register() calls)."""
    from importlib.metadata import entry_points

    for ep in entry_points(group="alsel.strategies"):
        ep.load()


load_plugins()
