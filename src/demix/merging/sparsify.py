"""How the generalized task-arithmetic methods sparsify a delta before weighting it: by
magnitude (TIES), at random (DARE), by magnitude-ranked random drop (DELLA), or by cutting
outliers and small values (breadcrumbs), with mergekit's L1 rescaling.

Randomness comes from a ``torch.Generator`` seeded from (``seed``, tensor name, component
index), so a tensor's mask depends neither on the order tensors are merged in nor on the
mixture: every proxy of a search sees the same drop pattern.
"""

from __future__ import annotations

import hashlib

import torch


def tensor_seed(seed: int, name: str, index: int) -> int:
    """A 63-bit seed from (seed, tensor name, component index), independent of merge order."""
    digest = hashlib.sha256(f"{seed}\0{name}\0{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def generator(device: torch.device, seed: int) -> torch.Generator:
    """A generator on ``device`` seeded with ``seed`` (one per tensor and component)."""
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    return gen


def rescale_l1(delta: torch.Tensor, kept: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """``kept`` scaled so its L1 norm equals ``delta``'s (mergekit's ``rescale: true``)."""
    before = delta.abs().sum()
    after = kept.abs().sum()
    if before < eps or after < eps:
        return kept
    return kept * (before / after)


def sparsify_magnitude(delta: torch.Tensor, density: float) -> torch.Tensor:
    """Keep the ``density`` fraction of largest |delta| (at least one element) (TIES)."""
    if density >= 1:
        return delta
    if density <= 0 or delta.numel() == 0:
        return torch.zeros_like(delta)
    k = max(1, int(density * delta.numel()))
    flat = delta.reshape(-1)
    mask = torch.zeros_like(flat)
    # argsort, not topk: equal magnitudes at the threshold are then broken the way mergekit does.
    mask[torch.argsort(flat.abs(), descending=True)[:k]] = 1
    return (flat * mask).view(delta.shape)


def sparsify_outliers(delta: torch.Tensor, density: float, gamma: float) -> torch.Tensor:
    """Breadcrumbs: drop the ``gamma`` fraction of largest |delta| and the smallest, keeping
    ``density`` of the elements (fewer outliers are dropped when both do not fit)."""
    if density >= 1:
        return delta
    n = delta.numel()
    keep = int(density * n)
    n_top = int(gamma * n)
    n_bot = max(0, n - keep - n_top)
    flat = delta.reshape(-1)
    order = torch.sort(flat.abs(), descending=False).indices
    mask = torch.zeros_like(flat)
    mask[order[n_bot : n_bot + keep]] = 1
    return (flat * mask).view(delta.shape)


def bernoulli_mask(shape: torch.Size, prob: torch.Tensor | float, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    """A 0/1 mask of ``shape``, each element 1 with probability ``prob`` (scalar or per element)."""
    probs = prob if isinstance(prob, torch.Tensor) else torch.full(shape, float(prob), device=device)
    return torch.bernoulli(probs, generator=gen)


def sparsify_random(delta: torch.Tensor, density: float, gen: torch.Generator) -> torch.Tensor:
    """DARE: keep each element with probability ``density``."""
    if density >= 1:
        return delta
    return delta * bernoulli_mask(delta.shape, density, gen, delta.device)


def sparsify_della(delta: torch.Tensor, density: float, epsilon: float, gen: torch.Generator) -> torch.Tensor:
    """DELLA MagPrune: within each row, keep probabilities rise linearly with the rank of
    |delta| from ``density - epsilon`` (smallest) to ``density + epsilon`` (largest)."""
    if density >= 1:
        return delta
    if density <= 0:
        return torch.zeros_like(delta)
    rows = delta.reshape(1, -1) if delta.dim() < 2 else delta.reshape(delta.shape[0], -1)
    cols = rows.shape[1]
    ranks = torch.argsort(torch.argsort(rows.abs(), dim=1), dim=1).to(torch.float32)
    # Ranks run 0..cols-1 in every row; a single column is at the middle probability.
    rank_norm = ranks / (cols - 1) if cols > 1 else torch.full_like(ranks, 0.5)
    probs = (density - epsilon) + rank_norm * (2 * epsilon)
    mask = torch.bernoulli(probs, generator=gen)
    return (rows * mask).view(delta.shape)
