"""MCP-CL: multivariate class prototypes + pixel-to-prototype contrastive learning (spec §6).

For every class present in a batch, K prototypes come from spherical k-means over that class's
L2-normalised pixel features and are folded into a memory bank with momentum. Each sampled pixel is
pulled towards the nearest prototype of its own class and pushed from all prototypes of the other
(initialised) classes with an InfoNCE loss. Training only; nothing of it runs at inference.

Two ways to choose the pixels (``pixels``):
- ``"label"`` (default): a class's prototypes come from all pixels labelled with it, and the
  anchors are a random sample of them.
- ``"prediction"``: prototypes come only from the pixels of the class the model predicts
  correctly (clean modes, not the confusions), and the anchors are the wrongly predicted pixels
  first (the hard ones, which need pulling most), topped up with correct ones.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

PIXEL_CHOICES = ("label", "prediction")


def spherical_kmeans(x: torch.Tensor, centres: torch.Tensor, iters: int) -> torch.Tensor:
    """Refine unit ``centres`` (K, C) on unit points ``x`` (N, C) by cosine k-means.

    A cluster that loses all its points keeps its previous centre, so slot k stays slot k
    (the memory bank relies on that to update prototype k with the batch's cluster k).
    """
    for _ in range(iters):
        assign = (x @ centres.t()).argmax(dim=1)  # (N,)
        sums = torch.zeros_like(centres).index_add_(0, assign, x)  # (K, C)
        counts = torch.bincount(assign, minlength=centres.shape[0])  # (K,)
        centres = torch.where((counts > 0)[:, None], F.normalize(sums, dim=1), centres)
    return centres


def farthest_point_init(x: torch.Tensor, k: int) -> torch.Tensor:
    """K unit seeds (K, C) from unit points ``x`` (N, C): a random first point, then farthest-first."""
    idx = [int(torch.randint(x.shape[0], (1,)))]
    best = x @ x[idx[0]]  # (N,) highest similarity to any chosen seed
    for _ in range(1, k):
        nxt = int(best.argmin())
        idx.append(nxt)
        best = torch.maximum(best, x @ x[nxt])
    return x[idx]


class MCPContrastiveLoss(nn.Module):
    """Multivariate class-prototype InfoNCE loss with a momentum memory bank.

    Args:
        num_classes: number of semantic classes (labels >= num_classes are ignored).
        feat_dim: channel width C of the embedding.
        prototypes_per_class: K prototypes per class.
        momentum: bank update ``p <- normalise(m * p + (1 - m) * batch_centre)``.
        temperature: InfoNCE temperature.
        ignore_index: label id to skip.
        max_pixels_per_class: pixels sampled per class per batch (k-means and loss), bounds cost.
        kmeans_iters: spherical k-means iterations per class per batch.
        pixels: ``"label"`` or ``"prediction"`` (see the module docstring); ``"prediction"``
            needs the model's predicted classes in ``forward``.

    Buffers ``prototypes`` (num_classes, K, C) and ``initialized`` (num_classes,) live in the state
    dict. Under torch.distributed the batch centres are averaged over ranks, so every rank keeps the
    same bank; a class's first prototypes come from one rank (see ``update_bank``).
    """

    def __init__(self, num_classes: int, feat_dim: int, prototypes_per_class: int = 4,
                 momentum: float = 0.99, temperature: float = 0.1, ignore_index: int = 255,
                 max_pixels_per_class: int = 1024, kmeans_iters: int = 5, pixels: str = "label"):
        super().__init__()
        if pixels not in PIXEL_CHOICES:
            raise ValueError(f"MCP-CL pixels {pixels!r} is not one of {PIXEL_CHOICES}")
        self.pixels = pixels
        self.num_classes = num_classes
        self.feat_dim = feat_dim
        self.prototypes_per_class = prototypes_per_class
        self.momentum = momentum
        self.temperature = temperature
        self.ignore_index = ignore_index
        self.max_pixels_per_class = max_pixels_per_class
        self.kmeans_iters = kmeans_iters
        self.register_buffer("prototypes", torch.zeros(num_classes, prototypes_per_class, feat_dim))
        self.register_buffer("initialized", torch.zeros(num_classes, dtype=torch.bool))

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, feat_dim={self.feat_dim}, "
                f"prototypes_per_class={self.prototypes_per_class}, momentum={self.momentum}, "
                f"temperature={self.temperature}, pixels={self.pixels!r}")

    def _sample(self, labels: torch.Tensor, wrong: torch.Tensor | None = None):
        """Indices of up to ``max_pixels_per_class`` pixels per present class (random; with
        ``wrong`` given, the wrongly predicted ones first), and the present classes."""
        valid = (labels != self.ignore_index) & (labels >= 0) & (labels < self.num_classes)
        classes = torch.unique(labels[valid])
        picks = []
        for c in classes.tolist():
            idx = torch.nonzero(labels == c).squeeze(1)
            if wrong is not None or idx.numel() > self.max_pixels_per_class:
                idx = idx[torch.randperm(idx.numel(), device=idx.device)]
            if wrong is not None:  # stable sort: wrong pixels first, random order within each group
                idx = idx[torch.sort((~wrong[idx]).to(torch.uint8), stable=True).indices]
            picks.append(idx[: self.max_pixels_per_class])
        index = torch.cat(picks) if picks else labels.new_zeros(0)
        return index, classes

    @torch.no_grad()
    def update_bank(self, feats: torch.Tensor, labels: torch.Tensor, classes: torch.Tensor) -> None:
        """Fold this batch's per-class k-means centres into the bank. feats: (N, C) unit, labels: (N,)."""
        k = self.prototypes_per_class
        centres = torch.zeros_like(self.prototypes)  # (num_classes, K, C)
        present = torch.zeros(self.num_classes, device=feats.device)
        present[classes] = 1.0
        distributed = dist.is_available() and dist.is_initialized()
        if distributed:
            # A class's first k-means starts from each rank's own random seeds, so slot j of one
            # rank need not match slot j of another: averaging them would blur the modes. The
            # first initialisation is therefore taken from one rank alone (the lowest that saw
            # the class); once initialised, every rank refines the same bank, slots correspond and
            # the centres are averaged.
            present *= self._first_owner(present)
        for c in torch.nonzero(present).squeeze(1).tolist():
            x = feats[labels == c]  # (n, C)
            init = self.prototypes[c] if self.initialized[c] else farthest_point_init(x, k)
            centres[c] = spherical_kmeans(x, init, self.kmeans_iters)
        if distributed:
            dist.all_reduce(centres)
            dist.all_reduce(present)
            centres = F.normalize(centres, dim=2)
        seen = present > 0
        m = torch.where(self.initialized[seen], self.momentum, 0.0)[:, None, None]
        self.prototypes[seen] = F.normalize(m * self.prototypes[seen] + (1 - m) * centres[seen], dim=2)
        self.initialized |= seen

    def _first_owner(self, present: torch.Tensor) -> torch.Tensor:
        """(num_classes,) 1.0 where this rank contributes its centres: every present class that
        is initialised already, and a new class only on the lowest rank that has it."""
        rank, world = dist.get_rank(), dist.get_world_size()
        owner = torch.where(present > 0, float(rank), float(world))  # (num_classes,)
        dist.all_reduce(owner, op=dist.ReduceOp.MIN)
        return (self.initialized | (owner == rank)).float()

    def forward(self, features: torch.Tensor, labels: torch.Tensor,
                predictions: torch.Tensor | None = None) -> torch.Tensor:
        """features: (B, C, h, w) embedding; labels and predictions (the model's classes, only
        for ``pixels="prediction"``): (B, H, W) int64 → scalar loss.

        Labels and predictions are resized to (h, w) by nearest neighbour. Returns a zero that
        keeps a grad_fn when no pixel has a usable label or no other class has prototypes yet.
        """
        c, h, w = features.shape[1:]
        labels = _to_grid(labels, h, w)  # (B*h*w,)
        wrong = None
        if self.pixels == "prediction":
            if predictions is None:
                raise ValueError('MCP-CL with pixels="prediction" needs the predicted classes')
            wrong = _to_grid(predictions, h, w) != labels  # (B*h*w,)
        feats = F.normalize(features.float().permute(0, 2, 3, 1).reshape(-1, c), dim=1)  # (N, C)

        if wrong is None:
            index, classes = self._sample(labels)
            self.update_bank(feats[index].detach(), labels[index], classes)
        else:  # prototypes from a sample of the correctly predicted pixels, anchors wrong-first
            source, classes = self._sample(labels.masked_fill(wrong, -1))  # -1: never a class
            self.update_bank(feats[source].detach(), labels[source], classes)
            index, _ = self._sample(labels, wrong)
            index = index[self.initialized[labels[index]]]  # a class never predicted right: no prototypes
        feats, labels = feats[index], labels[index]  # (n, C), (n,)
        zero = features.sum() * 0.0
        if labels.numel() == 0:
            return zero

        k = self.prototypes_per_class
        protos = self.prototypes.reshape(-1, c)  # (num_classes*K, C)
        logits = (feats @ protos.t() / self.temperature).view(-1, self.num_classes, k)  # (n, cls, K)
        own = F.one_hot(labels, self.num_classes).bool()  # (n, cls)
        positive = logits[own].max(dim=1).values  # (n,) nearest own prototype
        negatives = logits.masked_fill(~self.initialized[None, :, None], float("-inf"))
        negatives = negatives.masked_fill(own[:, :, None], float("-inf")).flatten(1)  # (n, cls*K)
        if not torch.isfinite(negatives).any():
            return zero
        denom = torch.logsumexp(torch.cat([positive[:, None], negatives], dim=1), dim=1)
        return (denom - positive).mean()


def _to_grid(labels: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(B, H, W) class map -> (B*h*w,) int64, nearest-neighbour resized to (h, w)."""
    if labels.shape[-2:] != (h, w):
        labels = F.interpolate(labels[:, None].float(), size=(h, w), mode="nearest")[:, 0]
    return labels.long().reshape(-1)
