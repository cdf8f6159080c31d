"""The ASCMR family (Zhang et al., "Active Supervised Cross-Modal Retrieval", TPAMI 2025) and its
baselines, over a pool of pairs with a probabilistic head: the math is in `alsel.ascmr`."""

from __future__ import annotations

from ..ascmr import AscmrConfig, choose_rows
from .base import Allocation, Context, Strategy, register


class LabelStrategy(Strategy):
    """The ASCMR family (labels setting): uncertainty gains of a probabilistic head, allocated as configured."""
    needs = frozenset({"pool_pairs", "prob_head"})
    sides = ("images",)
    paper = "Zhang et al., TPAMI 2025"

    def gain(self, ctx: Context):
        return None  # informativeness and allocation are one pass over the pool pairs (choose_rows)

    def allocate(self, ctx: Context, gain) -> Allocation:
        o, pool = ctx.opts, ctx.inputs.pool
        config = AscmrConfig(clusters=ctx.clusters(), lam=o.lam, mix=o.density_mix, samples=o.samples,
                             seed=ctx.inputs.seed).check()
        rows, g, info = choose_rows(self.name, ctx.head, pool.images, pool.texts, pool.text_image, ctx.budget,
                                    config, ctx.device, ctx.selectable)
        return Allocation(rows, g[rows], parts={k: info[k][rows] for k in ("intra", "inter")})

    def reason(self, score, parts, attrs):
        terms = ", ".join(f"{k} {v:.3g}" for k, v in parts.items())
        return f"uncertain for the probabilistic head: informativeness {score:.3g}" + (f" ({terms})" if terms else "")


def label_strategy(name: str, options: tuple, summary: str) -> LabelStrategy:
    """A registered member of the ASCMR family: its name, the options it reads and its summary."""
    return type(name.replace("-", "_"), (LabelStrategy,), {"name": name, "options": options, "summary": summary})()


DENSITY = ("clusters", "lam", "density_mix", "samples")
register(label_strategy("ascmr", DENSITY, "intra (BALD) + inter (JS) uncertainty → density-aware allocation over "
                                          "k-means clusters of the fused representation"))
register(label_strategy("ascmr-no-inter", DENSITY, "ascmr without the inter-modality term"))
register(label_strategy("ascmr-no-density", ("samples",), "ascmr without the density term: the B most "
                                                          "informative pairs"))
register(label_strategy("bald", ("samples",), "BALD of the image's and its captions' samples: the B largest"))
register(label_strategy("entropy", (), "label entropy at the image's mean embedding: the B largest"))
