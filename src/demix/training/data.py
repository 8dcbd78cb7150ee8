"""Training data by mixture: windows drawn from the domains' packed train splits so that each
domain's share of training tokens equals its mixture weight.

Every window has the same length, so token shares are window shares. The number of windows per
domain is fixed up front (largest-remainder rounding of ``weight x samples``), and a seeded
permutation interleaves them; sample ``i`` is therefore a pure function of ``(seed, i)``, which
is what lets Trainer resume mid-run by skipping indices without reading any tokens. Within a
domain, windows are non-overlapping ``seq_len`` slices of the packed stream, visited in a seeded
order per epoch: data repeats only once a domain is exhausted. Reading a window is one memmap
slice: no Python work per token. Only ``train`` splits are opened; held-out text is never read.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from demix.errors import DemixError
from demix.packing import PackedTokens, split_prefix


def allocate(weights: Mapping[str, float], total: int) -> dict[str, int]:
    """Split ``total`` items between domains in proportion to ``weights`` (largest remainder),
    so the counts sum to ``total`` and each is within one of ``weight x total``."""
    names = list(weights)
    w = np.array([max(float(weights[n]), 0.0) for n in names])
    w = w / w.sum()
    exact = w * total
    counts = np.floor(exact).astype(np.int64)
    short = total - int(counts.sum())
    # Ties broken by domain order, so the allocation is deterministic.
    order = np.argsort(-(exact - counts), kind="stable")
    counts[order[:short]] += 1
    return {n: int(c) for n, c in zip(names, counts)}


class MixtureDataset(Dataset):
    """``num_samples`` training windows of ``seq_len`` tokens, domains in the mixture's token shares.

    Items are ``{"input_ids", "labels"}`` (int64, equal; the model shifts the labels), the usual
    causal-LM format, so any HF model and Trainer set-up (DDP, FSDP, DeepSpeed) consumes it as is.
    """

    def __init__(
        self, data_dir: str | Path, mixture: Mapping[str, float], num_samples: int, seq_len: int, seed: int
    ) -> None:
        self.data_dir = Path(data_dir)
        self.seq_len = int(seq_len)
        self.seed = int(seed)
        self.num_samples = int(num_samples)
        self.domains = [d for d, w in mixture.items() if w > 0]
        if not self.domains:
            raise DemixError("the training mixture gives no weight to any domain", "give a positive weight to a domain")
        self.mixture = {d: float(mixture[d]) for d in self.domains}
        self.counts = allocate(self.mixture, self.num_samples)

        self.windows: dict[str, int] = {}
        self.domain_tokens: dict[str, int] = {}
        for d in self.domains:
            packed = PackedTokens(split_prefix(self.data_dir, d, "train"))
            n = packed.num_tokens // self.seq_len
            if n == 0 and self.counts[d] > 0:
                raise DemixError(
                    f"domain '{d}' has {packed.num_tokens} training tokens, fewer than one window of seq_len={self.seq_len}",
                    "give the domain more text, lower model.seq_len, or drop the domain from the mixture",
                )
            self.windows[d] = n
            self.domain_tokens[d] = packed.num_tokens

        rng = np.random.default_rng([self.seed, 0x6D6978])
        labels = np.repeat(np.arange(len(self.domains), dtype=np.int32), [self.counts[d] for d in self.domains])
        rng.shuffle(labels)
        # ordinal[i]: how many earlier samples came from the same domain (the k-th window of it).
        ordinal = np.empty(self.num_samples, dtype=np.int64)
        for j in range(len(self.domains)):
            where = np.flatnonzero(labels == j)
            ordinal[where] = np.arange(len(where))
        self._labels = labels
        self._ordinal = ordinal
        self._packed: dict[str, PackedTokens] = {}
        self._perm: dict[str, tuple[int, np.ndarray]] = {}

    # Memmaps are reopened in each DataLoader worker rather than pickled.
    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_packed"] = {}
        state["_perm"] = {}
        return state

    def __len__(self) -> int:
        return self.num_samples

    def epochs(self) -> dict[str, float]:
        """Passes over each domain's training tokens this dataset makes (> 1 means repetition)."""
        return {d: self.counts[d] * self.seq_len / max(self.domain_tokens[d], 1) for d in self.domains}

    def _window_order(self, domain: str, epoch: int) -> np.ndarray:
        cached = self._perm.get(domain)
        if cached is None or cached[0] != epoch:
            j = self.domains.index(domain)
            perm = np.random.default_rng([self.seed, j, epoch]).permutation(self.windows[domain])
            self._perm[domain] = cached = (epoch, perm)
        return cached[1]

    def source(self, i: int) -> tuple[str, int]:
        """Domain and start offset (in tokens, in its packed train stream) of sample ``i``."""
        if not 0 <= i < self.num_samples:
            raise IndexError(i)
        domain = self.domains[int(self._labels[i])]
        epoch, k = divmod(int(self._ordinal[i]), self.windows[domain])
        return domain, int(self._window_order(domain, epoch)[k]) * self.seq_len

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        domain, start = self.source(int(i))
        packed = self._packed.get(domain)
        if packed is None:
            packed = self._packed[domain] = PackedTokens(split_prefix(self.data_dir, domain, "train"))
        ids = torch.from_numpy(np.asarray(packed.tokens[start : start + self.seq_len], dtype=np.int64))
        return {"input_ids": ids, "labels": ids.clone()}
