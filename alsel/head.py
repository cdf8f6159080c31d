"""Retrieval head of SPEC §4: one linear map per modality (D -> dim), L2-normalised outputs,
trained with the VSE++ max-of-hinges loss on frozen embeddings. The `mlp` learner (SPEC §9) adds a
residual MLP per modality after the linear map, z + W2 GELU(W1 z + b1) + b2, its last layer zero at the
start, so it starts from exactly the linear head's initial map and trains by the same rule.

    L = Σ_a [α - S_aa + max_{b: img(b) ≠ img(a)} S_ab]_+  +  Σ_b [α - S_bb + max_{a: img(a) ≠ img(b)} S_ab]_+

over mini-batches of pairs (a paired caption and its image); captions of the same image are never
negatives of one another. `head.pt` is a plain torch checkpoint: {"format", "config", "state_dict"}.
"""

from __future__ import annotations

import copy
import hashlib
import os
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .errors import AlselError
from .store import Paired
from .output import atomic_path

FORMAT = "alsel-head-1"
SIDES = ("image", "text")
INITS = ("identity", "random")
LEARNERS = ("linear", "mlp")
ENCODE_ROWS = 65536


@dataclass
class TrainConfig:
    init: str = "identity"
    dim: int | None = None  # default: the input D
    margin: float = 0.2
    epochs: int | None = None  # at most (default EPOCHS by init); early stopping on the validation split
    #                            usually stops sooner
    batch_size: int = 128
    lr: float = 1e-3
    seed: int = 0
    patience: int = 10  # epochs without a better validation MRR before stopping
    val_split: float = 0.2  # fraction of the paired images held out for early stopping (no `val` store)
    anchor: float | None = None  # pull toward the initial map; None: chosen on the split from ANCHORS (identity)
    learner: str = "linear"  # or "mlp": a residual MLP per modality after the linear map
    hidden: int | None = None  # the MLP's hidden width (default: dim)
    warmup: int = 0  # epochs of the sum of hinges before the max of hinges

    def check(self, d_in: int) -> "TrainConfig":
        """The config checked against the embedding dimension `d` (dim defaults to d)."""
        if self.init not in INITS:
            raise AlselError(f"--init {self.init!r}: expected identity or random")
        if self.learner not in LEARNERS:
            raise AlselError(f"--learner {self.learner!r}: expected linear or mlp")
        if self.hidden is not None and self.hidden < 1:
            raise AlselError(f"--hidden must be at least 1, got {self.hidden}")
        dim = d_in if self.dim is None else self.dim
        if dim < 1:
            raise AlselError(f"--dim must be at least 1, got {dim}")
        if self.init == "identity" and dim != d_in:
            raise AlselError(f"--init identity needs --dim equal to the embedding D ({d_in}), got {dim}")
        epochs = default_epochs(self.init) if self.epochs is None else self.epochs
        if epochs < 0:
            raise AlselError(f"--epochs must be >= 0, got {epochs}")
        if self.batch_size < 2:
            raise AlselError(f"--batch-size must be at least 2, got {self.batch_size}")
        if not (self.lr > 0 and np.isfinite(self.lr)):
            raise AlselError(f"--lr must be a positive number, got {self.lr}")
        if not np.isfinite(self.margin):
            raise AlselError(f"--margin must be a finite number, got {self.margin}")
        if self.patience < 1:
            raise AlselError(f"--patience must be at least 1, got {self.patience}")
        if self.warmup < 0:
            raise AlselError(f"--warmup must be >= 0, got {self.warmup}")
        if not 0 <= self.val_split < 1:
            raise AlselError(f"--val-split must be in [0, 1), got {self.val_split}")
        if self.anchor is not None and not (np.isfinite(self.anchor) and self.anchor >= 0):
            raise AlselError(f"--anchor must be a finite number >= 0, got {self.anchor}")
        hidden = (self.hidden or dim) if self.learner == "mlp" else None
        return TrainConfig(**dict(asdict(self), dim=dim, hidden=hidden, epochs=epochs))

    def anchors(self) -> tuple[float, ...]:
        """The pulls toward the initial map to try: the one given, else ANCHORS from identity (a random
        initial map is no prior worth keeping) and none from a random start."""
        if self.anchor is not None:
            return (float(self.anchor),)
        return ANCHORS if self.init == "identity" else (0.0,)


EPOCHS = {"identity": 50, "random": 200}  # the cap on epochs by init: from a random map the max-of-hinges
# loss needs longer (benchmarks/train_rule.py: with 50 the trial chose 42-50 epochs, the cap, and R-sum fell
# from one paired-set size to the next in 4 of 12 steps with the MLP)


def default_epochs(init: str) -> int:
    """The epoch cap when --epochs is not given (EPOCHS)."""
    return EPOCHS.get(init, EPOCHS["identity"])


COLLAPSED = 0.99  # an epoch whose outputs (either modality, over its batches) have a mean unit row of at
# least this norm has collapsed: all outputs within a few degrees of one point, the solution hardest negatives
# drive a random start into (FaceNet's "collapsed model"; the max-of-hinges loss sits at 2α there, and its
# hardest negative alone gives no way out). Such an epoch does not count toward the patience (nothing to
# overfit yet), and the next one trains on the sum of hinges (VSE++'s warm-up loss), which pushes every
# negative away (benchmarks/train_rule.py). CLIP spaces have norms of 0.7-0.8 (COCO-500, ViT-B/16).

ANCHORS = (0.0, 50.0)  # candidate pulls toward the initial map, in pairs' worth (see train_head)
MIN_VAL_IMAGES = 5  # a smaller held-out split gives no useful signal: train all epochs instead


class Head(nn.Module):
    """Two linear maps (with bias) whose outputs are L2-normalised; the `mlp` learner adds a residual MLP
    per modality after each map (z + mlp(z))."""

    def __init__(self, d_in: int, dim: int, meta: dict | None = None, learner: str = "linear",
                 hidden: int | None = None):
        super().__init__()
        self.d_in, self.dim, self.learner = d_in, dim, learner
        self.image = nn.Linear(d_in, dim)
        self.text = nn.Linear(d_in, dim)
        if learner == "mlp":
            self.hidden = hidden or dim
            self.image_mlp = nn.Sequential(nn.Linear(dim, self.hidden), nn.GELU(), nn.Linear(self.hidden, dim))
            self.text_mlp = nn.Sequential(nn.Linear(dim, self.hidden), nn.GELU(), nn.Linear(self.hidden, dim))
        elif learner != "linear":
            raise AlselError(f"learner {learner!r}: expected linear or mlp")
        self.meta = dict(meta or {})

    def reset(self, init: str, generator: torch.Generator) -> None:
        """Identity maps (the raw space) or a seeded random initialisation; an MLP's first layer is drawn
        from the seed and its last layer is zero, so the head starts as the linear map alone."""
        with torch.no_grad():
            for lin in (self.image, self.text):
                if init == "identity":  # cpu: made on the host, copy_ moves it
                    lin.weight.copy_(torch.eye(self.dim, self.d_in))
                else:  # cpu: drawn on the host from the seed, the same draws on every device
                    lin.weight.copy_(torch.randn(self.dim, self.d_in, generator=generator) / np.sqrt(self.d_in))
                lin.bias.zero_()
            if self.learner == "mlp":
                for mlp in (self.image_mlp, self.text_mlp):  # cpu: drawn on the host from the seed
                    mlp[0].weight.copy_(torch.randn(self.hidden, self.dim, generator=generator) / np.sqrt(self.dim))
                    mlp[0].bias.zero_()
                    mlp[2].weight.zero_()
                    mlp[2].bias.zero_()

    def is_identity(self, side: str) -> bool:
        """True when the side's map is exactly x -> x (W = I, b = 0, and an MLP's last layer zero)."""
        lin = getattr(self, side)
        if self.learner == "mlp":
            last = getattr(self, f"{side}_mlp")[2]
            if bool(last.weight.any()) or bool(last.bias.any()):
                return False
        return self.dim == self.d_in and bool(torch.equal(lin.weight, torch.eye(self.dim, device=lin.weight.device))) \
            and not bool(lin.bias.any())

    def forward_side(self, x: torch.Tensor, side: str) -> torch.Tensor:
        """Unit rows of one modality ('image' or 'text') through its map."""
        z = getattr(self, side)(x)
        if self.learner == "mlp":
            z = z + getattr(self, f"{side}_mlp")(z)
        return F.normalize(z, dim=1)

    def apply(self, x: torch.Tensor, side: str) -> torch.Tensor:
        """Inference on unit rows. An exactly-identity side returns them as they are: they are unit
        already, and normalising again would only perturb the last bit (and flip near-ties)."""
        with torch.no_grad():
            if self.is_identity(side):
                return x
            return self.forward_side(x, side)

    def transform(self, side: str) -> Callable[[torch.Tensor], torch.Tensor]:
        """A chunk transform for stream.sweep (no grad, on the chunk's device)."""

        identity = self.is_identity(side)

        def f(x: torch.Tensor) -> torch.Tensor:
            if identity:
                return x
            with torch.no_grad():
                return self.forward_side(x, side)

        return f

    def encode(self, rows: np.ndarray, side: str, device: torch.device) -> np.ndarray:
        """Unit rows through the head, in chunks; float32 numpy out."""
        self.to(device)
        return encode_rows(lambda x: self.apply(x, side), rows, self.dim, device)

    def fingerprint(self) -> str:
        """A hash of the head's weights: files made through a head record it, so a mismatch is caught."""
        h = hashlib.sha256(f"{self.d_in}x{self.dim}".encode())
        for k, v in sorted(self.state_dict().items()):
            h.update(k.encode())
            h.update(v.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()[:32]


def encode_rows(fn: Callable[[torch.Tensor], torch.Tensor], rows, dim: int, device: torch.device,
                block: int = ENCODE_ROWS) -> np.ndarray:
    """fn over rows in blocks of `block` (float32 on `device`, no grad); (len(rows), dim) float32 numpy out."""
    out = np.empty((len(rows), dim), dtype=np.float32)
    with torch.no_grad():
        for s in range(0, len(rows), block):
            x = torch.from_numpy(np.ascontiguousarray(rows[s:s + block], dtype=np.float32)).to(device)
            out[s:s + len(x)] = fn(x).cpu().numpy()
    return out


def vsepp_loss(img: torch.Tensor, txt: torch.Tensor, owner: torch.Tensor, margin: float,
               hardest: bool = True) -> torch.Tensor:
    """Max-of-hinges loss of a batch: row a of img/txt is pair a; owner[a] its image id. hardest=False: the
    sum of hinges over every negative (VSE++'s SH loss, the warm-up from a random map)."""
    s = img @ txt.T
    pos = s.diagonal()
    neg = s.masked_fill(owner[:, None] == owner[None, :], -torch.inf)
    if not hardest:
        return ((margin - pos[:, None] + neg).clamp(min=0).sum() + (margin - pos[None, :] + neg).clamp(min=0).sum())
    hardest_text = neg.amax(dim=1)  # for each image a: its hardest negative caption
    hardest_image = neg.amax(dim=0)  # for each caption b: its hardest negative image
    cost_t = (margin - pos + hardest_text).clamp(min=0)
    cost_i = (margin - pos + hardest_image).clamp(min=0)
    return cost_t.sum() + cost_i.sum()  # rows with no negative give -inf inside, 0 after clamp


@dataclass
class History:
    loss: list = field(default_factory=list)
    val_mrr: list = field(default_factory=list)  # validation MRR after epoch 0 (the initial map), 1, 2, ...
    best_epoch: int = 0
    steps: int = 0
    val_images: int = 0  # images held out for early stopping (then refit on all)
    anchor: float = 0.0  # the pull toward the initial map used
    trials: list = field(default_factory=list)  # per anchor tried on the split: its best val MRR and epochs
    collapsed: int = 0  # epochs whose outputs had collapsed (COLLAPSED): not counted toward the patience, and
    #                     each followed by an epoch of the sum of hinges


def train_head(paired: Paired, config: TrainConfig, device: torch.device, val=None,
               progress: Callable[[int, float], None] | None = None) -> tuple[Head, History]:
    """Fit a head on a paired set; deterministic on CPU for a seed.

    Loss per step: the batch's mean VSE++ hinge + (anchor / n) ||θ - θ₀||², θ₀ the initial map and n the
    training captions, so the initial map weighs like `anchor` pairs: it dominates a few dozen pairs and
    fades as the set grows (L2-SP). Early stopping on the validation mean reciprocal rank (both ways,
    `metrics.mrr`), the initial map (epoch 0) included, after every epoch, stopping after `patience`
    epochs without a better one (an epoch whose outputs collapsed to one point does not count, and the next
    trains on the sum of hinges: COLLAPSED);
    each pull of config.anchors() is tried and the better on validation wins (ties: the stronger pull);
    - with `val` (a paired Store), its best epoch's weights are kept;
    - else `val_split` of the paired images are held out, the pulls are fitted on the rest, and the head
      is refit on every pair with the winner's pull and epoch count.
    A raw CLIP space that a handful of pairs cannot improve stays as it is. Sets too small to hold out
    MIN_VAL_IMAGES train for config.epochs with the strongest pull.
    `progress(steps_done, loss)` is called after every step.
    """
    d_in = paired.images.shape[1]
    config = config.check(d_in)
    g = torch.Generator().manual_seed(config.seed)
    head = Head(d_in, config.dim, meta={"model": paired.model, "paired_fingerprint": paired.fingerprint,
                                        "paired_path": paired.path, **asdict(config)},
                learner=config.learner, hidden=config.hidden)
    head.reset(config.init, g)
    initial = copy.deepcopy(head.state_dict())
    hist = History()
    everything = (paired.images, paired.texts, paired.text_image)
    split = None if val is not None else split_images(len(paired.images), paired.text_image, config.val_split,
                                                      config.seed)
    if val is None and split is None:  # too few pairs to hold any out: the strongest pull, every epoch
        anchor = max(config.anchors())
        epochs = _fit(head, initial, everything, anchor, config, device, g, hist, progress)
    else:
        if val is not None:
            fit_data, val_data = everything, (val.images.read(), val.texts.read(), val.text_image)
        else:
            fit_data, val_data = _subset(paired, *split[0]), _subset(paired, *split[1])
            hist.val_images = len(split[1][0])
        trials = []
        for anchor in config.anchors():
            head.load_state_dict(initial)
            trial = History()
            best = _fit(head, initial, fit_data, anchor, config, device, torch.Generator().manual_seed(config.seed),
                        trial, _offset(progress, hist.steps), val_data)
            hist.steps += trial.steps
            # rounded: equal up to summation order is a tie
            trials.append((round(max(trial.val_mrr), 9), anchor, best, trial, copy.deepcopy(head.state_dict())))
        _, anchor, epochs, chosen, state = max(trials, key=lambda t: t[:2])  # ties: the stronger pull
        hist.trials = [{"anchor": t[1], "val_mrr": t[0], "epochs": t[2]} for t in trials]
        hist.loss, hist.val_mrr, hist.collapsed = chosen.loss, chosen.val_mrr, chosen.collapsed
        head.load_state_dict(state)
        if val is None:  # refit on every pair with the chosen anchor and epoch count
            head.load_state_dict(initial)
            refit = History()
            _fit(head, initial, everything, anchor, TrainConfig(**dict(asdict(config), epochs=epochs)), device,
                 torch.Generator().manual_seed(config.seed), refit, _offset(progress, hist.steps))
            hist.steps += refit.steps
    hist.best_epoch, hist.anchor = epochs, anchor
    head.meta.update(history=asdict(hist))
    return head.cpu(), hist


def _offset(progress, done: int):
    return None if progress is None else (lambda step, loss: progress(done + step, loss))


def split_images(n_images: int, text_image: np.ndarray, fraction: float, seed: int) -> tuple | None:
    """((fit image rows, fit text rows), (val image rows, val text rows)), captions kept with their
    image; None when fewer than MIN_VAL_IMAGES would be held out."""
    n_val = int(round(fraction * n_images))
    if n_val < MIN_VAL_IMAGES or n_images - n_val < 2:
        return None
    held = np.zeros(n_images, dtype=bool)
    held[np.random.default_rng([seed, 7]).permutation(n_images)[:n_val]] = True
    rows = np.arange(n_images)
    return (rows[~held], np.flatnonzero(~held[text_image])), (rows[held], np.flatnonzero(held[text_image]))


def _subset(paired: Paired, image_rows: np.ndarray, text_rows: np.ndarray) -> tuple:
    """(images, texts, text_image) of some images and their captions, text_image renumbered."""
    new_row = np.full(len(paired.images), -1, np.int64)
    new_row[image_rows] = np.arange(len(image_rows))
    return paired.images[image_rows], paired.texts[text_rows], new_row[paired.text_image[text_rows]]


def _fit(head: Head, initial: dict, data: tuple, anchor: float, config: TrainConfig, device: torch.device,
         g: torch.Generator, hist: History, progress, val_data: tuple | None = None) -> int:
    """Train `head` (starting from its current weights) for config.epochs on data = (images, texts,
    text_image); with val_data, keep the weights of the best validation epoch and stop after `patience`
    epochs without a better one. Returns the number of epochs behind the final weights."""
    from .metrics import mrr

    head.to(device)
    images = torch.from_numpy(np.ascontiguousarray(data[0])).to(device)
    texts = torch.from_numpy(np.ascontiguousarray(data[1])).to(device)
    owner = torch.from_numpy(np.ascontiguousarray(data[2])).to(device)
    pull = anchor / max(len(texts), 1)
    anchors = [initial[name].to(device) for name, _ in head.named_parameters()]
    opt = torch.optim.Adam(head.parameters(), lr=config.lr)
    n = len(texts)

    def score() -> float:
        return mrr(head.encode(val_data[0], "image", device), head.encode(val_data[1], "text", device),
                   val_data[2], device)

    best = (score(), copy.deepcopy(head.state_dict()), 0) if val_data is not None else None
    if best is not None:
        hist.val_mrr.append(best[0])
    stale, flat = 0, False
    for epoch in range(1, config.epochs + 1):
        perm = torch.randperm(n, generator=g).to(device)
        total, rows = 0.0, 0
        sums = torch.zeros(2, head.dim, device=device)  # the epoch's outputs summed, per modality
        hardest = epoch > config.warmup and not flat  # after a collapsed epoch: the sum of hinges
        for s in range(0, n, config.batch_size):
            idx = perm[s:s + config.batch_size]
            if len(idx) < 2:
                continue
            img, txt = head.forward_side(images[owner[idx]], "image"), head.forward_side(texts[idx], "text")
            hinge = vsepp_loss(img, txt, owner[idx], config.margin, hardest=hardest)
            loss = hinge / len(idx)
            if pull:  # L2-SP: the squared distance of the weights from the initial map's
                loss = loss + pull * sum(((p - p0) ** 2).sum() for p, p0 in zip(head.parameters(), anchors))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            hist.steps += 1
            value = hinge.detach().item()
            total += value
            with torch.no_grad():
                sums[0] += img.sum(0)
                sums[1] += txt.sum(0)
            rows += len(idx)
            if progress is not None:
                progress(hist.steps, value / len(idx))
        hist.loss.append(total / n)
        flat = rows > 0 and spread(sums, rows) >= COLLAPSED
        hist.collapsed += flat
        if best is not None:
            value = score()
            hist.val_mrr.append(value)
            if value > best[0] + 1e-9:  # better, not equal up to summation order
                best, stale = (value, copy.deepcopy(head.state_dict()), epoch), 0
            elif not flat:
                stale += 1
                if stale >= config.patience:
                    break
    if best is None:
        return config.epochs
    head.load_state_dict(best[1])
    return best[2]


def spread(sums: torch.Tensor, rows: int) -> float:
    """The larger norm of the mean unit output of either modality, from their sums over `rows` outputs: 1 when
    all outputs are one point, near 0 when they spread evenly."""
    return float(sums.double().norm(dim=1).max()) / rows


def steps_per_epoch(n_pairs: int, batch_size: int) -> int:
    """Optimiser steps in one pass: batches of at least two pairs (a lone pair has no negative)."""
    return sum(1 for s in range(0, n_pairs, batch_size) if min(batch_size, n_pairs - s) >= 2)


def save_head(out: str, head: Head, inputs: tuple = ()) -> None:
    """Write head.pt atomically: {"format", "config", "state_dict"} with CPU tensors."""
    ckpt = {"format": FORMAT, "config": dict(head.meta, d_in=head.d_in, dim=head.dim),
            "state_dict": {k: v.detach().cpu() for k, v in head.state_dict().items()}}
    with atomic_path(out, inputs) as tmp:
        torch.save(ckpt, tmp)


def load_head(path: str, store=None) -> Head:
    """Load head.pt on the CPU; with `store`, check its D and model match the head's input."""
    if not os.path.exists(path):
        raise AlselError(f"{path}: no such file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for bad files
        raise AlselError(f"{path}: not a readable head checkpoint ({str(e).splitlines()[0][:120]})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise AlselError(f"{path}: not an alsel head (expected format {FORMAT!r})")
    cfg = ckpt.get("config", {})
    try:
        head = Head(int(cfg["d_in"]), int(cfg["dim"]), meta=cfg, learner=str(cfg.get("learner", "linear")),
                    hidden=None if cfg.get("hidden") is None else int(cfg["hidden"]))
        head.load_state_dict(ckpt["state_dict"])
    except (KeyError, TypeError, ValueError, RuntimeError, AlselError) as e:
        raise AlselError(f"{path}: malformed head checkpoint ({str(e).splitlines()[0][:120]})") from None
    head.eval()
    if store is not None:
        check_head_fits(head, path, store)
    return head


def check_head_fits(head: Head, path: str, store) -> None:
    """The head takes this store's embeddings (same D and model), else a one-line error."""
    if store.d != head.d_in:
        raise AlselError(f"{path}: head expects embeddings of D = {head.d_in}, {store.path} has D = {store.d}")
    model = head.meta.get("model")
    if model is not None and model != store.model:
        raise AlselError(f"{path}: head was trained on model {model!r} embeddings, {store.path} has {store.model!r}")


def through_head(paired: Paired, head: Head | None, device: torch.device) -> Paired:
    """The paired set in the head's space (identity when head is None)."""
    if head is None:
        return paired
    return Paired(paired.path, head.encode(paired.images, "image", device), head.encode(paired.texts, "text", device),
                  paired.text_image, paired.model, paired.fingerprint, head=head.fingerprint(), ids=paired.ids)
