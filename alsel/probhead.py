"""Probabilistic head for ASCMR (issue 7): per modality a diagonal Gaussian embedding (PCME-style mean
and log-variance from the frozen CLIP embedding), a multi-label classifier shared by both modalities,
trained on labelled pairs with

    L = BCE(classifier(z_i), y_i) + BCE(classifier(z_t), y_t)              z = μ + σ ε, J samples each
        + align · VSE++(μ_i/||μ_i||, μ_t/||μ_t||)                          cross-modal alignment of the means
        + β · KL(N(μ, σ²) || N(0, I))                                       a small KL term, both modalities

choice: VSE++ max-of-hinges (margin α, captions of one image never negatives) as the alignment term,
the same loss as the retrieval head; BCE and KL averaged over samples, batch and dimensions.
The checkpoint is a plain torch dict {"format", "config", "state_dict"}.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .errors import AlselError
from .head import encode_rows, vsepp_loss
from .output import atomic_path

FORMAT = "alsel-probhead-1"


@dataclass
class ProbConfig:
    dim: int = 64
    samples: int = 8  # J
    epochs: int = 30
    steps: int = 0  # > 0: train for exactly this many optimiser steps instead of `epochs` passes
    batch_size: int = 128
    lr: float = 1e-3
    margin: float = 0.2
    align: float = 1.0
    kl: float = 1e-3  # β
    seed: int = 0

    def check(self) -> "ProbConfig":
        """The config with its values checked (bad values are one-line AlselErrors)."""
        for name in ("dim", "samples", "batch_size"):
            if getattr(self, name) < 1:
                raise AlselError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        for name in ("epochs", "steps"):
            if getattr(self, name) < 0:
                raise AlselError(f"--{name} must be >= 0, got {getattr(self, name)}")
        for name in ("lr",):
            if not (getattr(self, name) > 0 and np.isfinite(getattr(self, name))):
                raise AlselError(f"--{name} must be a positive number, got {getattr(self, name)}")
        for name in ("align", "kl", "margin"):
            if not (np.isfinite(getattr(self, name)) and getattr(self, name) >= 0):
                raise AlselError(f"--{name} must be a finite number >= 0, got {getattr(self, name)}")
        return self


class ProbHead(nn.Module):
    """The ASCMR probabilistic head: per modality a Gaussian embedding (mean, log-variance) and a multi-label
    classifier."""
    def __init__(self, d_in: int, n_classes: int, config: ProbConfig):
        super().__init__()
        self.d_in, self.n_classes, self.config = d_in, n_classes, config
        dim = config.dim
        self.mu = nn.ModuleDict({s: nn.Linear(d_in, dim) for s in ("image", "text")})
        self.logvar = nn.ModuleDict({s: nn.Linear(d_in, dim) for s in ("image", "text")})
        self.classifier = nn.Linear(dim, n_classes)

    def gaussian(self, x: torch.Tensor, side: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(μ, log σ²) of rows x of one modality; log σ² clamped to [-10, 5] for stability."""
        return self.mu[side](x), self.logvar[side](x).clamp(-10, 5)

    def encode(self, rows, side: str, device: torch.device, block: int = 4096) -> np.ndarray:
        """The retrieval embedding: normalised means μ/||μ|| of unit rows, in blocks; float32 numpy out."""
        self.to(device)
        return encode_rows(self.transform(side), rows, self.config.dim, device, block)

    def transform(self, side: str):
        """A chunk transform for stream.sweep: unit rows -> normalised means (core-set in this space)."""

        def f(x: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return F.normalize(self.gaussian(x, side)[0], dim=1)

        return f

    def fingerprint(self) -> str:
        """A hash of the head's weights (recorded by what is computed through it)."""
        h = hashlib.sha256(f"{FORMAT}:{self.d_in}x{self.config.dim}x{self.n_classes}".encode())
        for k, v in sorted(self.state_dict().items()):
            h.update(k.encode())
            h.update(v.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()[:32]

    def label_probs(self, mu: torch.Tensor, logvar: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """Label probabilities of the samples z = μ + σ ε: eps (J, N, dim) -> (J, N, C)."""
        return torch.sigmoid(self.classifier(mu[None] + torch.exp(0.5 * logvar)[None] * eps))


def kl_standard_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Mean over rows and dimensions of KL(N(μ, σ²) || N(0, 1)) = (μ² + σ² - 1 - log σ²) / 2."""
    return 0.5 * (mu ** 2 + logvar.exp() - 1 - logvar).mean()


def prob_loss(head: ProbHead, x_img, x_txt, y_img, y_txt, owner, generator) -> torch.Tensor:
    """The training loss of one batch: the max-of-hinges loss on sampled embeddings, the label loss and β·KL."""
    c = head.config
    loss = 0.0
    means = {}
    for side, x, y in (("image", x_img, y_img), ("text", x_txt, y_txt)):
        mu, logvar = head.gaussian(x, side)
        eps = torch.randn((c.samples, *mu.shape), generator=generator, device=mu.device)
        logits = head.classifier(mu[None] + torch.exp(0.5 * logvar)[None] * eps)
        loss = loss + F.binary_cross_entropy_with_logits(logits, y[None].expand_as(logits))
        loss = loss + c.kl * kl_standard_normal(mu, logvar)
        means[side] = F.normalize(mu, dim=1)
    if c.align > 0:
        loss = loss + c.align * vsepp_loss(means["image"], means["text"], owner, c.margin) / len(x_img)
    return loss


def train_prob_head(images: np.ndarray, texts: np.ndarray, text_image: np.ndarray, image_labels: np.ndarray,
                    text_labels: np.ndarray, config: ProbConfig, device: torch.device, progress=None
                    ) -> tuple[ProbHead, list[float]]:
    """Fit on the paired captions (each with its image); returns the head and the loss of each epoch.
    With `config.steps` > 0 the run stops after exactly that many steps (the last epoch may be partial),
    so heads trained on sets of different sizes get the same number of updates."""
    config.check()
    if len(texts) == 0:
        raise AlselError("the paired set has no captions to train on")
    torch.manual_seed(config.seed)
    gen = torch.Generator(device=device).manual_seed(config.seed)
    head = ProbHead(images.shape[1], image_labels.shape[1], config).to(device)
    opt = torch.optim.Adam(head.parameters(), lr=config.lr)
    X = torch.from_numpy(np.asarray(images, np.float32)).to(device)
    T = torch.from_numpy(np.asarray(texts, np.float32)).to(device)
    YI = torch.from_numpy(np.asarray(image_labels, np.float32)).to(device)
    YT = torch.from_numpy(np.asarray(text_labels, np.float32)).to(device)
    ti = torch.from_numpy(np.asarray(text_image, np.int64)).to(device)
    order_rng = np.random.default_rng(config.seed)
    losses = []
    taken = 0
    for _ in range(prob_epochs(config, len(T))):
        perm = torch.from_numpy(order_rng.permutation(len(T))).to(device)
        total, steps = 0.0, 0
        for s in range(0, len(perm), config.batch_size):
            j = perm[s:s + config.batch_size]
            if config.steps and taken == config.steps:
                break
            if len(j) < 2:
                continue
            owner = ti[j]
            loss = prob_loss(head, X[owner], T[j], YI[owner], YT[j], owner, gen)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total, steps, taken = total + float(loss.detach()), steps + 1, taken + 1
        losses.append(total / max(steps, 1))
        if progress is not None:
            progress(1)
    return head.eval(), losses


def prob_epochs(config: ProbConfig, n_texts: int) -> int:
    """Passes over the captions: `epochs`, or with `steps` as many as it takes to make that many steps."""
    if not config.steps:
        return config.epochs
    per_epoch = sum(1 for s in range(0, n_texts, config.batch_size) if min(config.batch_size, n_texts - s) >= 2)
    if per_epoch == 0:
        raise AlselError(f"--steps {config.steps}: {n_texts} caption(s) make no training batch of two or more")
    return -(-config.steps // per_epoch)


def save_prob_head(out: str, head: ProbHead, inputs: tuple = ()) -> None:
    """Write the head's config and weights atomically."""
    ckpt = {"format": FORMAT, "config": asdict(head.config), "d_in": head.d_in, "n_classes": head.n_classes,
            "state_dict": {k: v.detach().cpu() for k, v in head.state_dict().items()}}
    with atomic_path(out, inputs) as tmp:
        torch.save(ckpt, tmp)


def _checkpoint(path: str):
    if not os.path.exists(path):
        raise AlselError(f"{path}: no such file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable checkpoint is bad input
        raise AlselError(f"{path}: not a readable checkpoint ({str(e).splitlines()[0][:120]})") from None


def is_prob_head(path: str) -> bool:
    """Whether a head file holds a probabilistic head (else a retrieval head)."""
    ckpt = _checkpoint(path)
    return isinstance(ckpt, dict) and ckpt.get("format") == FORMAT


def load_prob_head(path: str, store=None) -> ProbHead:
    """Load on the CPU; with `store`, check that its D matches the head's input."""
    ckpt = _checkpoint(path)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise AlselError(f"{path}: not a probabilistic head written by `alsel train --objective labels`")
    try:
        head = ProbHead(int(ckpt["d_in"]), int(ckpt["n_classes"]), ProbConfig(**ckpt["config"]).check())
        head.load_state_dict(ckpt["state_dict"])
    except (KeyError, TypeError, ValueError, RuntimeError, AlselError) as e:
        raise AlselError(f"{path}: malformed probabilistic head ({str(e).splitlines()[0][:120]})") from None
    if store is not None and store.d != head.d_in:
        raise AlselError(f"{path}: head expects embeddings of D = {head.d_in}, {store.path} has D = {store.d}")
    return head.eval()


def load_any_head(path: str, store=None):
    """A retrieval head (`alsel train`) or a probabilistic head (`--objective labels`), whichever the file
    holds, checked against `store` when given."""
    from .head import load_head

    return load_prob_head(path, store) if is_prob_head(path) else load_head(path, store)
