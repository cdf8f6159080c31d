"""The batch as a page (SPEC §8): one self-contained HTML file a person opens to see what was chosen.

It holds the batch in rank order (a thumbnail of each photo, embedded and downscaled; the caption text
for a batch of texts) with id, rank, score and the strategy's reason in words; a 2-D map of the selected
side (PCA of the raw embeddings: paired items, the pool and the batch coloured apart, the batch numbered
by rank); and the strategy, budget and fill share. No script, no network: it opens offline.
"""

from __future__ import annotations

import base64
import html
import io
import os

import numpy as np

from .annotation import image_path
from .selection import Selection
from .store import Store
from .output import atomic_path

THUMB_PIXELS = 160  # the longer side of a thumbnail
MAX_THUMBS = 300  # items shown with a thumbnail; the rest of a larger batch is listed without
MAP_SAMPLE = 2000  # paired and pool items drawn (seeded) for the map, each
MAP_W, MAP_H, MAP_PAD = 640, 420, 16
COLORS = {"paired": "#1f5fbf", "pool": "#b4b4b4", "batch": "#e8590c"}


def thumbnail(path: str | None) -> str | None:
    """A JPEG data URI of the photo, downscaled to THUMB_PIXELS; None when there is no readable file."""
    if not path or not os.path.isfile(path):
        return None
    try:
        from PIL import Image

        with Image.open(path) as im:
            im = im.convert("RGB")
            im.thumbnail((THUMB_PIXELS, THUMB_PIXELS))
            buf = io.BytesIO()
            im.save(buf, format="JPEG", quality=85)
    except Exception:  # noqa: BLE001 - any unreadable image is shown as such, not an error of the page
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def pca_2d(points: np.ndarray) -> np.ndarray:
    """The first two principal components of `points` (rows), from their own SVD."""
    x = points.astype(np.float64) - points.mean(axis=0)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    return x @ vt[:2].T


def map_points(sel: Selection, pool: Store, paired: Store | None, select: str, seed: int = 0) -> dict:
    """2-D coordinates of a seeded sample of the paired items and the pool, and of the whole batch."""
    rng = np.random.default_rng(seed)
    side = pool.side(select)
    batch_rows = np.asarray(sel.rows, dtype=np.int64)
    rest = np.setdiff1d(np.arange(side.n), batch_rows)
    pool_rows = np.sort(rng.choice(rest, size=min(len(rest), MAP_SAMPLE), replace=False)) if len(rest) else rest
    parts = {"pool": side.take(pool_rows), "batch": side.take(np.sort(batch_rows))[np.argsort(np.argsort(batch_rows))]}
    if paired is not None and getattr(paired, select) is not None:
        p = paired.side(select)
        parts["paired"] = p.take(np.sort(rng.choice(p.n, size=min(p.n, MAP_SAMPLE), replace=False)))
    names = [k for k in ("paired", "pool", "batch") if k in parts]
    xy = pca_2d(np.concatenate([parts[k] for k in names]))
    lo, hi = xy.min(axis=0), xy.max(axis=0)
    span = np.where(hi > lo, hi - lo, 1.0)
    xy = (xy - lo) / span
    xy[:, 0] = MAP_PAD + xy[:, 0] * (MAP_W - 2 * MAP_PAD)
    xy[:, 1] = MAP_H - MAP_PAD - xy[:, 1] * (MAP_H - 2 * MAP_PAD)
    out, at = {}, 0
    for k in names:
        out[k] = xy[at:at + len(parts[k])]
        at += len(parts[k])
    return out


def svg_map(points: dict) -> str:
    """The map as inline SVG: pool grey, paired blue, the batch orange with its ranks."""
    e = []
    for kind, r in (("pool", 2.2), ("paired", 2.6)):
        for x, y in points.get(kind, ()):
            e.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{r}" fill="{COLORS[kind]}" fill-opacity="0.75"/>')
    for rank, (x, y) in enumerate(points["batch"], start=1):
        e.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="6" fill="{COLORS["batch"]}" stroke="#ffffff" '
                 f'stroke-width="1"><title>rank {rank}</title></circle>')
        if rank <= 50:
            e.append(f'<text x="{x + 7:.1f}" y="{y - 5:.1f}" font-size="10" fill="#222">{rank}</text>')
    return (f'<svg id="map" xmlns="http://www.w3.org/2000/svg" width="{MAP_W}" height="{MAP_H}" '
            f'viewBox="0 0 {MAP_W} {MAP_H}" role="img" aria-label="PCA map">'
            f'<rect width="{MAP_W}" height="{MAP_H}" fill="#ffffff" stroke="#cccccc"/>{"".join(e)}</svg>')


def page_html(sel: Selection, pool: Store, paired: Store | None = None, title: str | None = None) -> str:
    """The page of a selection made on `pool` (with the paired store it was made against, when given)."""
    from . import strategies

    attrs = sel.attrs
    select = str(attrs.get("select", "images"))
    name = str(attrs.get("strategy", "?"))
    try:
        strategy = strategies.resolve(name, strict=False)[0]
    except Exception:  # noqa: BLE001 - a strategy not registered here: the page still shows the batch
        strategy = None
    root = str(attrs.get("image_root", "")) or str(pool.attrs.get("image_root", "")) or None
    budget = int(attrs.get("budget", len(sel.rows)))
    fill = int(attrs.get("fill_count", 0))
    rule = str(attrs.get("fill_rule", "none"))
    texts = pool.text_strings(sel.rows) if select == "texts" else None
    cards = []
    for k, (row, item, score) in enumerate(zip(sel.rows, sel.ids, sel.score)):
        parts = {p: float(v[k]) for p, v in sel.parts.items()}
        why = strategy.reason(float(score), parts, attrs) if strategy is not None else ""
        if select == "texts":
            shown = f'<div class="text">{html.escape(str(texts[k]) if texts is not None else "(no text stored)")}</div>'
        elif k < MAX_THUMBS:
            uri = thumbnail(image_path(root, item) if root else None)
            shown = (f'<img src="{uri}" alt="{html.escape(str(item))}">' if uri else
                     '<div class="nofile">no image file</div>')
        else:
            shown = ""
        score_text = "" if np.isnan(score) else f"score {float(score):.4g} · "
        cards.append(f'<figure class="card" id="rank{k + 1}">{shown}<figcaption><b>{k + 1}.</b> '
                     f'<code>{html.escape(str(item))}</code><br><small>{score_text}row {int(row)}</small>'
                     f'<p>{html.escape(why)}</p></figcaption></figure>')
    points = map_points(sel, pool, paired, select, int(attrs.get("seed", 0)))
    n_paired = len(points.get("paired", ()))
    legend = " ".join(f'<span class="dot" style="background:{COLORS[k]}"></span>{label}'
                      for k, label in (("paired", f"paired (sample of {n_paired})" if n_paired else ""),
                                       ("pool", f"pool (sample of {len(points['pool'])})"),
                                       ("batch", f"batch ({len(sel.rows)})")) if label)
    fill_text = (f"{fill} of {budget} ({100 * fill / max(budget, 1):.0f}%) came from the fill ({rule}), not "
                 f"from the strategy's gains" if fill else f"none of the {budget} came from a fill")
    head = html.escape(title or f"alsel batch: {len(sel.rows)} {select} by {name}")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{head}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 24px; color: #222; }}
.summary {{ margin: 0 0 16px 0; }}
.grid {{ display: flex; flex-wrap: wrap; gap: 12px; }}
.card {{ width: 200px; margin: 0; border: 1px solid #ddd; border-radius: 6px; padding: 8px; }}
.card img {{ display: block; max-width: {THUMB_PIXELS}px; max-height: {THUMB_PIXELS}px; margin: 0 auto 6px; }}
.card p {{ font-size: 12px; margin: 4px 0 0 0; color: #444; }}
.nofile {{ height: 60px; background: #f1f1f1; color: #888; font-size: 12px; text-align: center; line-height: 60px; }}
.text {{ font-size: 13px; background: #f7f7f7; padding: 6px; }}
.dot {{ display: inline-block; width: 10px; height: 10px; border-radius: 5px; margin: 0 4px 0 12px; }}
code {{ word-break: break-all; }}
</style></head><body>
<h1>{head}</h1>
<p class="summary">Strategy <b>{html.escape(name)}</b>{": " + html.escape(strategy.summary) if strategy else ""}.
Budget {budget}; {fill_text}. Pool: {pool.side(select).n:,} {select}
({html.escape(os.path.basename(pool.path))}).</p>
<h2>Map</h2>
<p>First two principal components of the raw embeddings of the {select}. {legend}</p>
{svg_map(points)}
<h2>The batch, most wanted first</h2>
<div class="grid">
{chr(10).join(cards)}
</div>
</body></html>
"""


def write_page(out: str, sel: Selection, pool: Store, paired: Store | None = None, inputs: tuple = ()) -> None:
    """Write the page atomically (nothing half-written)."""
    text = page_html(sel, pool, paired)
    with atomic_path(out, inputs) as tmp:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
