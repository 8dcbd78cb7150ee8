"""Held-out loss: bits per byte and loss per token of a model on each domain's held-out split.

The evaluation tokens are read once (``PackedTokens.sequences``: a fixed number of windows of
``seq_len + 1`` tokens per domain) and kept on the device with their target mask; every proxy
is then scored on exactly the same tokens with fixed-shape batches, no Python work per token and
one host synchronisation per domain.

Targets and bytes. Window ``j`` holds tokens ``t[j*L : (j+1)*L + 1]``: the inputs are the first
``L`` tokens and the targets the last ``L``, so every token of the scored stream except the very
first is a target exactly once. Special-token targets (the EOS between packed documents) are
left out of BOTH the numerator and the denominator: they encode no bytes of the domain's text,
and counting their loss against zero bytes would make bits per byte depend on document length.
So, over the non-special targets ``T``::

    bits_per_byte  = sum_{t in T} nll(t) / (ln 2 * sum_{t in T} bytes(t))
    loss_per_token = sum_{t in T} nll(t) / |T|        (nats)

``bytes(t)`` comes from a per-id table computed once (:func:`token_byte_lengths`); with the
run's byte-level BPE it is exact: ``sum bytes(t)`` is the UTF-8 length of the decoded targets.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from demix.errors import DemixError
from demix.packing import PackedTokens

_BYTE_FALLBACK = re.compile(r"^<0x[0-9A-Fa-f]{2}>$")


def _is_byte_level(tokenizer: Any) -> bool:
    """True when the tokenizer's decoder is GPT-2 style byte-level (one vocabulary char = one byte)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return False
    decoder = json.loads(backend.to_str()).get("decoder") or {}
    kinds = [decoder.get("type")] + [d.get("type") for d in decoder.get("decoders", []) or []]
    return "ByteLevel" in kinds


def token_byte_lengths(tokenizer: Any) -> np.ndarray:
    """UTF-8 bytes encoded by each token id (int64, length ``len(tokenizer)``); special tokens 0.

    Byte-level BPE: each character of a vocabulary entry stands for exactly one byte, so the
    length of the entry is its byte count (exact, also for tokens holding part of a multi-byte
    character). Other tokenizers (SentencePiece style): ``<0xNN>`` byte-fallback pieces are 1
    byte and ``▁`` is a space; this is exact for such vocabularies too, up to a leading space
    that the decoder may strip at the start of a text.
    """
    n = len(tokenizer)
    lengths = np.zeros(n, dtype=np.int64)
    byte_level = _is_byte_level(tokenizer)
    added = {int(i): tok for i, tok in tokenizer.added_tokens_decoder.items()}
    special = set(int(i) for i in tokenizer.all_special_ids)
    pieces = tokenizer.convert_ids_to_tokens(list(range(n)))
    for i, piece in enumerate(pieces):
        if i in special or piece is None:
            continue
        if i in added:
            # Added tokens are stored as plain text, not in the byte alphabet.
            lengths[i] = 0 if added[i].special else len(added[i].content.encode("utf-8"))
        elif byte_level:
            lengths[i] = len(piece)
        elif _BYTE_FALLBACK.match(piece):
            lengths[i] = 1
        else:
            lengths[i] = len(piece.replace("\u2581", " ").encode("utf-8"))
    return lengths


@dataclass
class HeldoutSet:
    """One domain's evaluation tokens, on the device, reused for every model."""

    domain: str
    inputs: torch.Tensor  # (n, L) int64
    targets: torch.Tensor  # (n, L) int64
    mask: torch.Tensor  # (n, L) float32: 1 for scored (non-special) targets
    tokens: int  # scored targets
    bytes: int  # UTF-8 bytes of the scored targets
    max_id: int  # largest token id in the windows (checked against the model's vocabulary)

    def to(self, device: torch.device) -> HeldoutSet:
        return HeldoutSet(
            self.domain,
            self.inputs.to(device),
            self.targets.to(device),
            self.mask.to(device),
            self.tokens,
            self.bytes,
            self.max_id,
        )


def load_heldout_set(
    prefix: str | Path, domain: str, seq_len: int, max_tokens: int, byte_lengths: np.ndarray, device: torch.device | str = "cpu"
) -> HeldoutSet:
    """Read a domain's held-out windows once and precompute the mask and byte count.

    Raises DemixError when the split is empty or shorter than one window.
    """
    packed = PackedTokens(prefix)
    fix = (
        "give the domain more documents or raise data.heldout_fraction, then run `demix prepare` again "
        "(or lower model.seq_len)"
    )
    if packed.num_tokens == 0:
        raise DemixError(f"the held-out split of domain '{domain}' ('{packed.prefix}') is empty", fix)
    windows = packed.sequences(seq_len, max_tokens=max_tokens)
    if len(windows) == 0:
        raise DemixError(
            f"the held-out split of domain '{domain}' has {packed.num_tokens} tokens, fewer than one "
            f"evaluation window of seq_len + 1 = {seq_len + 1}",
            fix,
        )
    if int(windows.max()) >= len(byte_lengths):
        raise DemixError(
            f"the held-out tokens of domain '{domain}' hold id {int(windows.max())}, outside the run's "
            f"tokenizer ({len(byte_lengths)} tokens)",
            "the data was prepared with another tokenizer: run `demix prepare` again",
        )
    targets = windows[:, 1:]
    nbytes = byte_lengths[targets]
    mask = nbytes > 0
    total_bytes = int(nbytes.sum())
    if total_bytes == 0:
        raise DemixError(f"the held-out split of domain '{domain}' holds only special tokens", fix)
    return HeldoutSet(
        domain=domain,
        inputs=torch.from_numpy(np.ascontiguousarray(windows[:, :-1])).to(device),
        targets=torch.from_numpy(np.ascontiguousarray(targets)).to(device),
        mask=torch.from_numpy(mask.astype(np.float32)).to(device),
        tokens=int(mask.sum()),
        bytes=total_bytes,
        max_id=int(windows.max()),
    )


def token_nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-token negative log-likelihood in nats, computed in fp32 whatever the model's dtype.

    ``logsumexp - gathered logit`` reads the logits once and writes one value per token, where
    ``cross_entropy`` would first write the whole log-softmax.
    """
    logits = logits.float()
    return torch.logsumexp(logits, dim=-1) - logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def model_device(model: torch.nn.Module) -> torch.device:
    """Device of the model's first parameter."""
    return next(model.parameters()).device


class HeldoutLoss:
    """Scores models on the held-out splits of some domains (bits per byte and loss per token)."""

    def __init__(self, sets: Mapping[str, HeldoutSet], batch_size: int, auto_batch: bool = False) -> None:
        """``auto_batch``: on CUDA, windows per forward pass from free memory
        (:func:`demix.evaluation.batching.cuda_batch_rows`) instead of ``batch_size``."""
        if batch_size <= 0:
            raise DemixError(f"evaluation batch size must be positive, got {batch_size}", "set evaluation.batch_size")
        self.sets = dict(sets)
        self.batch_size = int(batch_size)
        self.auto_batch = bool(auto_batch)

    def rows_for(self, model: torch.nn.Module, seq_len: int) -> int:
        """Windows per forward pass of ``seq_len`` tokens for ``model``."""
        if self.auto_batch and model_device(model).type == "cuda":
            from demix.evaluation.batching import cuda_batch_rows

            return cuda_batch_rows(model, seq_len, fallback=self.batch_size)
        return self.batch_size

    def _sets_on(self, device: torch.device) -> dict[str, HeldoutSet]:
        # Moved once and kept: the next proxy on the same device reuses the same tensors.
        for name, s in self.sets.items():
            if s.inputs.device != device:
                self.sets[name] = s.to(device)
        return self.sets

    @torch.inference_mode()
    def nll_sums(self, model: torch.nn.Module) -> dict[str, float]:
        """Sum of the scored targets' nll (nats) per domain; one host synchronisation at the end."""
        device = model_device(model)
        sums = {}
        for name, s in self._sets_on(device).items():
            total = torch.zeros((), dtype=torch.float64, device=device)
            rows = self.rows_for(model, s.inputs.shape[1])
            for start in range(0, len(s.inputs), rows):
                stop = start + rows
                logits = model(input_ids=s.inputs[start:stop], use_cache=False).logits
                nll = token_nll(logits, s.targets[start:stop])
                # fp32 per batch (at most batch x seq_len terms), fp64 across batches.
                total += (nll * s.mask[start:stop]).sum().double()
            sums[name] = total
        return {name: float(t) for name, t in sums.items()}

    def evaluate(self, model: torch.nn.Module) -> dict[str, dict[str, float]]:
        """{domain: {bits_per_byte, loss_per_token, tokens, bytes}} for ``model``.

        The model is put in eval mode for the call (dropout off) and restored afterwards.
        """
        # A transformers causal LM; nn.Module types an unknown attribute as Tensor | Module.
        get_input_embeddings = model.get_input_embeddings
        assert callable(get_input_embeddings)
        vocab = get_input_embeddings().num_embeddings
        for s in self.sets.values():
            if s.max_id >= vocab:
                raise DemixError(
                    f"the held-out tokens of domain '{s.domain}' hold id {s.max_id}, but the model's vocabulary has {vocab} entries",
                    "evaluate a model trained with the run's tokenizer",
                )
        was_training = model.training
        model.eval()
        try:
            sums = self.nll_sums(model)
        finally:
            model.train(was_training)
        out = {}
        for name, nll in sums.items():
            s = self.sets[name]
            if not math.isfinite(nll):
                raise DemixError(
                    f"the model's held-out loss on domain '{name}' is {nll}",
                    "the weights hold NaN/Inf or overflow in this dtype: check the checkpoint, or evaluate in float32",
                )
            out[name] = {
                "bits_per_byte": nll / (math.log(2) * s.bytes),
                "loss_per_token": nll / s.tokens,
                "tokens": s.tokens,
                "bytes": s.bytes,
            }
        return out
