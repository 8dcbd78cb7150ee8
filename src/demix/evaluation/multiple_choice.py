"""Shared-context log-likelihood scoring: each context runs once, its continuations continue from it.

The harness scores a multiple-choice item of C choices as C separate sequences
``context + choice_j``, so the context is run C times. Here the requests that share a context
(after the harness's own tokenisation and left truncation) are packed into ONE sequence::

    [ context (n tokens) | choice_1[:-1] | choice_2[:-1] | ... ]

with a block attention mask (a context token sees the context before it; a choice token sees
the whole context and the tokens of its own choice before it, never another choice) and
position ids that restart at ``n`` for every choice. Each choice's first token is predicted by
the last context position and its k-th by its own (k-1)-th, exactly the positions, attention
pattern and inputs of the harness's per-request sequence ``(context + choice)[:-1]``; only the
order of floating-point operations differs (so log-likelihoods agree to ~1e-6 relative in fp32).

Forward tokens per item: ``n + sum_j (m_j - 1)`` instead of ``sum_j (n + m_j - 1)``. Packs are
then placed into rows of :data:`ROW_TOKENS` or the longest pack (first-fit decreasing; the mask also keeps
packs of one row apart and positions restart per pack), so padding stays small when item lengths
vary. Logits are computed only at the scored positions (``logits_to_keep`` per row, where the
model's forward takes it) and the log-softmax is taken in fp32 on those rows, whatever the
model's dtype.

Requests come in as the harness's own ``(strings, context tokens, continuation tokens)`` triples
(``HFLM._encode_pair``: the trailing-space move, the empty-context prefix token), and left
truncation to ``max_length`` is the harness's: the input is ``(context + continuation)[-(L+1):][:-1]``,
so a truncated request keeps ``context[cut:]`` with ``cut = max(0, n + m - (L + 1))`` and packs
with the requests that keep the same context tokens.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

#: Longest packed sequence (tokens) made of one context and its continuations; a group whose
#: pack would be longer is split (each part repeats the context). Bounds the (T x T) mask.
PACK_TOKENS = 2048
#: Row length packs are filled into (or the longest pack, if longer): short items share a row,
#: so a batch is not padded to its longest item. Attention over a row costs T^2, small beside
#: the per-token MLP and projections at this length.
ROW_TOKENS = 256

Pair = tuple[Sequence[int], Sequence[int]]


@dataclass
class Pack:
    """One context and the continuations packed after it (request indices into the input list)."""

    context: tuple[int, ...]
    requests: list[int]
    continuations: list[tuple[int, ...]]

    @property
    def length(self) -> int:
        return len(self.context) + sum(len(c) - 1 for c in self.continuations)


@dataclass
class PackedBatch:
    """Device tensors of one forward pass: rows of length ``T``, each holding one or more packs
    (first-fit decreasing, so rows are full and padding is small)."""

    input_ids: torch.Tensor  # (B, T) int64
    position_ids: torch.Tensor  # (B, T) int64: restart at 0 for every pack, at n for every continuation
    packs: torch.Tensor  # (B, T) int64: which pack of the row a token belongs to, -1 padding
    segments: torch.Tensor  # (B, T) int64: 0 context, j >= 1 the pack's j-th continuation
    keep: torch.Tensor  # (B, K) int64: the positions whose logits are computed (scored rows)
    rows: torch.Tensor  # (R,) int64: scored rows, flat index into the kept logits (B * K)
    targets: torch.Tensor  # (R,) int64: the token each row must predict
    owner: torch.Tensor  # (R,) int64: position in `requests` of the request the row belongs to
    requests: np.ndarray  # (Q,) int64: request indices (into the input list) scored in this batch

    @property
    def tokens(self) -> int:
        """Forward tokens of this batch, padding included (what the model is run on)."""
        return int(self.input_ids.numel())


def effective_pair(context: Sequence[int], continuation: Sequence[int], max_length: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The context tokens the harness keeps after left truncation to ``max_length`` (the model
    sees ``(context + continuation)[-(max_length + 1):][:-1]``), and the continuation."""
    cut = max(0, len(context) + len(continuation) - (max_length + 1))
    return tuple(context[cut:]), tuple(continuation)


def make_packs(pairs: Sequence[Pair], max_length: int, pack_tokens: int = PACK_TOKENS) -> list[Pack]:
    """Group requests by their (truncated) context; one pack per group, split when longer than
    ``pack_tokens``. Order inside a group follows the input order."""
    groups: dict[tuple[int, ...], list[int]] = {}
    conts: list[tuple[int, ...]] = []
    for i, (ctx, cont) in enumerate(pairs):
        if len(ctx) == 0 or len(cont) == 0:
            raise ValueError(f"request {i} has an empty context or continuation (the harness never makes one)")
        c, k = effective_pair(ctx, cont, max_length)
        groups.setdefault(c, []).append(i)
        conts.append(k)
    packs: list[Pack] = []
    for ctx, members in groups.items():
        current = Pack(ctx, [], [])
        for i in members:
            if current.requests and current.length + len(conts[i]) - 1 > pack_tokens:
                packs.append(current)
                current = Pack(ctx, [], [])
            current.requests.append(i)
            current.continuations.append(conts[i])
        packs.append(current)
    return packs


def fill_rows(packs: Sequence[Pack], capacity: int) -> list[list[Pack]]:
    """First-fit decreasing: packs (longest first) into rows of at most ``capacity`` tokens."""
    rows: list[list[Pack]] = []
    free: list[int] = []
    for p in sorted(packs, key=lambda p: (-p.length, p.requests[0])):
        for r, room in enumerate(free):
            if p.length <= room:
                rows[r].append(p)
                free[r] -= p.length
                break
        else:
            rows.append([p])
            free.append(capacity - p.length)
    return rows


def _least_padded_rows(packs: Sequence[Pack], row_tokens: int) -> list[list[Pack]]:
    """:func:`fill_rows` at the row length (between the longest pack and ``max(row_tokens,
    longest)``) that runs the fewest tokens, rows x longest row: a full row length leaves the last
    row mostly padding when the packs fill only a few rows."""
    longest = max(p.length for p in packs)
    top = max(row_tokens, longest)
    total = sum(p.length for p in packs)
    even = max(longest, math.ceil(total / math.ceil(total / top)))  # the same tokens in each row
    best: list[list[Pack]] | None = None
    cost = math.inf
    for capacity in sorted({min(top, math.ceil(even * f)) for f in (1.0, 1.05, 1.1, 1.2, 1.35, 1.5)} | {top}):
        rows = fill_rows(packs, capacity)
        padded = len(rows) * max(sum(p.length for p in row) for row in rows)
        if padded < cost:
            best, cost = rows, padded
    assert best is not None
    return best


def _batch(rows: Sequence[Sequence[Pack]], device: torch.device) -> PackedBatch:
    T = max(sum(p.length for p in row) for row in rows)
    B = len(rows)
    ids = np.zeros((B, T), dtype=np.int64)
    pos = np.zeros((B, T), dtype=np.int64)
    pack_of = np.full((B, T), -1, dtype=np.int64)
    seg = np.zeros((B, T), dtype=np.int64)
    kept: list[list[int]] = []
    where: list[tuple[int, int]] = []  # (row, position) of every scored target
    targets: list[int] = []
    owner: list[int] = []
    requests: list[int] = []
    for b, row in enumerate(rows):
        at = 0
        scored: set[int] = set()
        for k, p in enumerate(row):
            n = len(p.context)
            ids[b, at : at + n] = p.context
            pos[b, at : at + n] = np.arange(n)
            pack_of[b, at : at + n] = k
            last_ctx = at + n - 1
            at += n
            for j, (r, cont) in enumerate(zip(p.requests, p.continuations), start=1):
                m = len(cont)
                ids[b, at : at + m - 1] = cont[:-1]
                pos[b, at : at + m - 1] = np.arange(n, n + m - 1)
                pack_of[b, at : at + m - 1] = k
                seg[b, at : at + m - 1] = j
                # cont[0] is predicted at the last context position; cont[i] at the position of cont[i-1].
                q = len(requests)
                requests.append(r)
                positions = [last_ctx, *range(at, at + m - 1)]
                where.extend((b, w) for w in positions)
                scored.update(positions)
                targets.extend(cont)
                owner.extend([q] * m)
                at += m - 1
        kept.append(sorted(scored))
    K = max(len(k) for k in kept)
    keep = np.zeros((B, K), dtype=np.int64)
    index: dict[tuple[int, int], int] = {}
    for b, positions in enumerate(kept):
        keep[b, : len(positions)] = positions
        keep[b, len(positions) :] = positions[-1]  # padding repeats a kept position
        index.update({(b, w): b * K + i for i, w in enumerate(positions)})
    flat = [index[bw] for bw in where]

    def t(a: object) -> torch.Tensor:
        return torch.as_tensor(np.asarray(a, dtype=np.int64), device=device)

    return PackedBatch(
        t(ids), t(pos), t(pack_of), t(seg), t(keep), t(flat), t(targets), t(owner), np.asarray(requests, dtype=np.int64)
    )


def plan_batches(
    pairs: Sequence[Pair],
    max_length: int,
    rows_for: Callable[[int], int],
    device: torch.device | str = "cpu",
    pack_tokens: int = PACK_TOKENS,
    row_tokens: int = ROW_TOKENS,
) -> list[PackedBatch]:
    """Packs filled into rows of ``max(row_tokens, longest pack)`` tokens (:func:`fill_rows`),
    rows sorted by length (longest first: memory peaks at once), cut into batches of
    ``rows_for(T)`` rows."""
    packs = make_packs(pairs, max_length, pack_tokens)
    rows = sorted(_least_padded_rows(packs, row_tokens), key=lambda row: -sum(p.length for p in row))
    device = torch.device(device)
    out: list[PackedBatch] = []
    i = 0
    while i < len(rows):
        n = max(1, int(rows_for(sum(p.length for p in rows[i]))))
        out.append(_batch(rows[i : i + n], device))
        i += n
    return out


def block_mask(packs: torch.Tensor, segments: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, 1, T, T) additive mask: 0 where a query may attend, the dtype's minimum elsewhere.

    Query q sees key k <= q of its own pack when k is context (segment 0) or in q's own
    continuation. Padding sees itself only, so its rows stay finite (a fully masked row would be
    NaN, and NaN values of a padded key would poison real rows through 0 * NaN)."""
    T = packs.shape[1]
    same_pack = (packs.unsqueeze(2) == packs.unsqueeze(1)) & (packs.unsqueeze(1) >= 0)
    q = segments.unsqueeze(2)
    k = segments.unsqueeze(1)
    causal = torch.ones(T, T, dtype=torch.bool, device=packs.device).tril()
    allowed = causal & same_pack & ((k == 0) | (k == q))
    allowed |= torch.eye(T, dtype=torch.bool, device=packs.device)
    zero = torch.zeros((), dtype=dtype, device=packs.device)
    return torch.where(allowed, zero, torch.finfo(dtype).min).unsqueeze(1)


_KEEPS_POSITIONS: dict[type[torch.nn.Module], bool] = {}


def _keeps_positions(cls: type[torch.nn.Module]) -> bool:
    """Whether ``cls.forward`` takes per-row logit positions (``logits_to_keep`` as a (B, K)
    tensor, through transformers' ``slice_logits_to_keep``); read once per class."""
    if cls not in _KEEPS_POSITIONS:
        try:
            _KEEPS_POSITIONS[cls] = "slice_logits_to_keep(" in inspect.getsource(cls.forward)
        except (OSError, TypeError, AttributeError):
            _KEEPS_POSITIONS[cls] = False
    return _KEEPS_POSITIONS[cls]


def batch_token_logprobs(model: torch.nn.Module, batch: PackedBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-probability (R,) fp32 of each scored target, whether it is the argmax (R,) bool).

    Differentiable when called with gradients enabled (the log-likelihood gradient uses it)."""
    dtype = next(model.parameters()).dtype
    mask = block_mask(batch.packs, batch.segments, dtype if dtype.is_floating_point else torch.float32)
    call = {"input_ids": batch.input_ids, "attention_mask": mask, "position_ids": batch.position_ids, "use_cache": False}
    if _keeps_positions(type(model)):
        # The vocabulary projection only at the scored positions.
        logits = model(**call, logits_to_keep=batch.keep).logits
    else:
        logits = torch.take_along_dim(model(**call).logits, batch.keep.unsqueeze(-1), dim=1)
    picked = logits.reshape(-1, logits.shape[-1]).index_select(0, batch.rows)
    # fp32 log-softmax on the scored rows only, whatever the model's dtype.
    logp = torch.log_softmax(picked.float(), dim=-1)
    token_lp = logp.gather(1, batch.targets.unsqueeze(1)).squeeze(1)
    greedy = picked.argmax(dim=-1) == batch.targets
    return token_lp, greedy


def request_sums(batch: PackedBatch, token_lp: torch.Tensor, greedy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per request of the batch: (summed log-likelihood fp32, all tokens greedy)."""
    q = len(batch.requests)
    ll = torch.zeros(q, dtype=token_lp.dtype, device=token_lp.device).index_add(0, batch.owner, token_lp)
    misses = torch.zeros(q, dtype=torch.int64, device=token_lp.device).index_add(0, batch.owner, (~greedy).long())
    return ll, misses == 0


@torch.inference_mode()
def score_batches(model: torch.nn.Module, batches: Sequence[PackedBatch], n_requests: int) -> list[tuple[float, bool]]:
    """``[(log-likelihood, is greedy)]`` per request, in input order (what ``HFLM.loglikelihood``
    returns); one host synchronisation at the end."""
    parts: list[tuple[np.ndarray, torch.Tensor, torch.Tensor]] = []
    for batch in batches:
        ll, greedy = request_sums(batch, *batch_token_logprobs(model, batch))
        parts.append((batch.requests, ll, greedy))
    lls = np.zeros(n_requests, dtype=np.float64)
    flags = np.zeros(n_requests, dtype=bool)
    seen = np.zeros(n_requests, dtype=bool)
    for req, ll, greedy in parts:
        lls[req] = ll.double().cpu().numpy()
        flags[req] = greedy.cpu().numpy()
        seen[req] = True
    assert seen.all(), "every request is scored exactly once"
    return [(float(a), bool(b)) for a, b in zip(lls, flags)]


def forward_tokens(batches: Sequence[PackedBatch]) -> int:
    """Tokens the model is run on for ``batches`` (padding included)."""
    return sum(b.tokens for b in batches)
