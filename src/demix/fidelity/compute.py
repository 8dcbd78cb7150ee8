"""Compute accounting: tokens and FLOPs each approach spends to rank mixtures.

FLOPs follow the usual dense-transformer estimate per token: 6 x N to train (forward 2N,
backward 4N) and 2 x N to evaluate (forward only), where N is the number of *matmul
parameters* (see :class:`ParamCount`). Attention-score FLOPs (which grow with the context
length) are left out for every approach alike; at the context lengths demix uses they are a
small, equal share of each approach's cost, so the ratios between approaches hold.

- **DeMix** = training the components + evaluating every merged proxy (+ merging, counted as
  memory traffic in bytes, not FLOPs: a linear merge is one multiply-add per parameter and
  component, bound by memory bandwidth).
- **Training-based baseline** (RegMix style) = training every trained proxy + evaluating it.

The base is shared by both approaches (components and trained proxies both start from it), so
its pretraining is counted in neither; a baseline that trains smaller proxies from scratch
should pass their full from-scratch token budget.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from demix import proxy_kind
from demix.errors import DemixError
from demix.fidelity._tensors import TensorSource, tensor_group

if TYPE_CHECKING:
    from demix.config import RunConfig, TrainRecipe
    from demix.rundir import RunDir

DEMIX = "demix"
"""Approach label of DeMix's budget (the merged proxies' compute)."""

#: FLOPs per matmul parameter per token.
TRAIN_FLOPS_PER_PARAM_TOKEN = 6
EVAL_FLOPS_PER_PARAM_TOKEN = 2

_TOKEN_EMBEDDING = ("embed_tokens", "wte", "word_embeddings", "tok_embeddings", "embed_in")


@dataclass(frozen=True)
class ParamCount:
    """Parameter counts of one model.

    ``total`` counts stored parameters once (a tied embedding / output head counts once).
    ``embedding`` is the input lookup tables (token and learned position embeddings): a lookup
    costs no FLOPs. ``head`` is the output projection (vocabulary x hidden), a real matmul per
    token whether or not it is tied to the input embedding.

    FLOPs use :attr:`flop_params` = non-embedding parameters + head, for every approach. Using
    ``total`` would charge tiny models for their embedding lookups (at vocab 4096 / hidden 128
    the embedding is 40% of the model); using non-embedding parameters alone (Kaplan et al.)
    would drop the output matmul, which at that scale is 40% of the real FLOPs.
    """

    total: int
    embedding: int
    head: int
    tied: bool

    @property
    def non_embedding(self) -> int:
        """Parameters outside the input embedding and the output head."""
        return self.total - self.embedding - (0 if self.tied else self.head)

    @property
    def flop_params(self) -> int:
        """Parameters that take part in a matmul for every token (non-embedding + head)."""
        return self.non_embedding + self.head


def count_parameters(model: str | Path | Mapping[str, Any] | Any) -> ParamCount:
    """Count the parameters of an HF checkpoint directory, a ``{name: tensor}`` mapping, or a
    torch module, without loading weights from disk (shapes come from the safetensors header)."""
    if hasattr(model, "named_parameters"):
        # named_parameters() lists a tied weight once, under the input-embedding name.
        model = dict(model.named_parameters())
    with TensorSource(model) as src:
        total = embedding = head = token_embedding = 0
        for name in src.names():
            numel = 1
            for d in src.shape(name):
                numel *= int(d)
            total += numel
            group = tensor_group(name)
            if group == "embeddings":
                embedding += numel
                if any(f".{t}." in f".{name}" for t in _TOKEN_EMBEDDING):
                    token_embedding += numel
            elif group == "lm_head":
                head += numel
    if total == 0:
        raise DemixError(f"{model!r} has no parameters", "pass an HF checkpoint directory or a model")
    tied = head == 0
    if tied:
        head = token_embedding
    return ParamCount(total=total, embedding=embedding, head=head, tied=tied)


def training_flops(params: int, tokens: int) -> float:
    """6 x params x tokens."""
    return float(TRAIN_FLOPS_PER_PARAM_TOKEN) * params * tokens


def evaluation_flops(params: int, tokens: int) -> float:
    """2 x params x tokens."""
    return float(EVAL_FLOPS_PER_PARAM_TOKEN) * params * tokens


@dataclass(frozen=True)
class CostItem:
    """One line of a compute budget."""

    label: str
    kind: Literal["train", "eval", "merge"]
    count: int
    """How many models trained / evaluations run / proxies merged."""
    tokens: int
    """Tokens over all ``count`` (0 for merges)."""
    flops: float
    bytes_moved: float = 0.0
    """Memory traffic (merges only)."""


@dataclass
class ComputeBudget:
    """What one approach spent; totals are sums over :attr:`items`."""

    approach: str
    items: list[CostItem] = field(default_factory=list)

    def _sum(self, attr: str, kind: str | None = None) -> float:
        return sum(getattr(i, attr) for i in self.items if kind is None or i.kind == kind)

    @property
    def train_tokens(self) -> int:
        return int(self._sum("tokens", "train"))

    @property
    def eval_tokens(self) -> int:
        return int(self._sum("tokens", "eval"))

    @property
    def tokens(self) -> int:
        return int(self._sum("tokens"))

    @property
    def train_flops(self) -> float:
        return self._sum("flops", "train")

    @property
    def eval_flops(self) -> float:
        return self._sum("flops", "eval")

    @property
    def flops(self) -> float:
        return self._sum("flops")

    @property
    def bytes_moved(self) -> float:
        return self._sum("bytes_moved")

    def to_dict(self) -> dict[str, Any]:
        return {
            "approach": self.approach,
            "train_tokens": self.train_tokens,
            "eval_tokens": self.eval_tokens,
            "train_flops": self.train_flops,
            "eval_flops": self.eval_flops,
            "flops": self.flops,
            "bytes_moved": self.bytes_moved,
            "items": [asdict(i) for i in self.items],
        }


def _check_count(value: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise DemixError(f"{what} must be a non-negative integer, got {value!r}", f"pass {what} as a whole number")
    return value


def _flop_params(params: ParamCount | int, what: str = "params") -> int:
    n = params.flop_params if isinstance(params, ParamCount) else params
    if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
        raise DemixError(f"{what} must be a positive parameter count, got {n!r}", "use count_parameters(checkpoint)")
    return n


def demix_budget(
    params: ParamCount,
    component_tokens: Mapping[str, int],
    num_proxies: int,
    eval_tokens_per_proxy: int,
    *,
    bytes_per_param: int = 4,
) -> ComputeBudget:
    """Compute of DeMix: train one component per domain, then merge and evaluate ``num_proxies``.

    Args:
        params: parameter count of the base / components (:func:`count_parameters`).
        component_tokens: domain -> training tokens of its component (general share included).
        num_proxies: merged proxies evaluated (all search rounds; fidelity proxies too if counted).
        eval_tokens_per_proxy: tokens scored per proxy evaluation, over all benchmarks.
        bytes_per_param: bytes per stored parameter (4 fp32, 2 bf16) for the merge traffic.

    A merge reads the base and K deltas and writes the proxy: (K + 2) x total params x bytes.
    """
    n = _flop_params(params)
    if not component_tokens:
        raise DemixError("no component token budgets were given", "pass {domain: tokens} for every component")
    items = [
        CostItem(f"component {d}", "train", 1, _check_count(t, f"tokens of component '{d}'"), training_flops(n, t))
        for d, t in component_tokens.items()
    ]
    _check_count(num_proxies, "num_proxies")
    eval_tokens = num_proxies * _check_count(eval_tokens_per_proxy, "eval_tokens_per_proxy")
    k = len(component_tokens)
    items.append(CostItem("merge proxies", "merge", num_proxies, 0, 0.0,
                          float(num_proxies * (k + 2) * params.total * bytes_per_param)))
    items.append(CostItem("evaluate merged proxies", "eval", num_proxies, eval_tokens, evaluation_flops(n, eval_tokens)))
    return ComputeBudget(DEMIX, items)


def trained_budget(
    params: ParamCount | int,
    tokens_per_model: int | Sequence[int],
    eval_tokens_per_model: int,
    *,
    num_models: int | None = None,
    approach: str = "trained proxies",
) -> ComputeBudget:
    """Compute of models trained one per mixture (the baseline's trained proxies, or references).

    Args:
        params: parameter count of the trained models (may be smaller than the base).
        tokens_per_model: training tokens of each model: one int for ``num_models`` equal runs,
            or one entry per model.
        eval_tokens_per_model: tokens scored per model evaluation.
        num_models: number of models when ``tokens_per_model`` is one int.
        approach: label of the budget.
    """
    n = _flop_params(params)
    if isinstance(tokens_per_model, int):
        if num_models is None:
            raise DemixError("num_models is needed with a single token budget", "pass num_models=")
        budgets = [tokens_per_model] * _check_count(num_models, "num_models")
    else:
        budgets = list(tokens_per_model)
        if num_models is not None and num_models != len(budgets):
            raise DemixError(
                f"num_models={num_models} but {len(budgets)} token budgets were given",
                "give one budget per model, or one int and num_models",
            )
    train_tokens = sum(_check_count(t, "tokens per model") for t in budgets)
    eval_tokens = len(budgets) * _check_count(eval_tokens_per_model, "eval_tokens_per_model")
    return ComputeBudget(approach, [
        CostItem(f"train {approach}", "train", len(budgets), train_tokens, training_flops(n, train_tokens)),
        CostItem(f"evaluate {approach}", "eval", len(budgets), eval_tokens, evaluation_flops(n, eval_tokens)),
    ])


def heldout_eval_tokens(config: Any) -> int:
    """Tokens one held-out evaluation scores under a RunConfig: ``evaluation.heldout_tokens`` per
    heldout_loss benchmark (one per domain when no benchmarks are configured). lm-eval tasks
    are not counted: their token counts depend on the task data."""
    ev = config.evaluation
    heldout = [b for b in ev.benchmarks if b.evaluator == "heldout_loss"]
    count = len(heldout) if ev.benchmarks else len(config.data.domains)
    return int(count * ev.heldout_tokens)


def compare_budgets(budgets: Iterable[ComputeBudget], reference: str = DEMIX) -> list[dict[str, Any]]:
    """Rows (approach, tokens, FLOPs, FLOPs relative to ``reference``) for a table or plot."""
    budgets = list(budgets)
    base = next((b.flops for b in budgets if b.approach == reference), None)
    rows = []
    for b in budgets:
        rows.append({
            "approach": b.approach,
            "train_tokens": b.train_tokens,
            "eval_tokens": b.eval_tokens,
            "flops": b.flops,
            "flops_vs_" + reference: (b.flops / base) if base else None,
        })
    return rows


# --------------------------------------------------------------------------- the fidelity stage's accounting

def approach_of(kind: str) -> str:
    """The budget (``approach``) that pays for proxies of ``kind``: ``demix`` for merged ones,
    the proxy kind itself (``trained@<tokens>``) for trained ones."""
    return DEMIX if kind == proxy_kind.MERGED else kind


def compute_accounting(
    config: RunConfig, run: RunDir, base: Path, comps: Mapping[str, Path], num_references: int, budgets: Sequence[int]
) -> dict[str, Any]:
    """Tokens and FLOPs of one search done by DeMix and by trained proxies at each budget, and of
    the reference models this stage trained (the content of ``compute.json``, less its version)."""
    from demix.checkpoints import is_finished, read_provenance
    from demix.fidelity.references import trained_recipe
    from demix.training import reference_recipe, training_steps

    params = count_parameters(base)
    eval_tokens = heldout_eval_tokens(config)
    n = config.fidelity.search_proxies or sum(config.search.rounds)
    comp_tokens = {}
    for d, p in comps.items():
        tokens = read_provenance(p).tokens_seen if is_finished(p) else None
        comp_tokens[d] = int(tokens) if tokens else int(config.train.components.tokens)

    def trained_tokens(recipe: TrainRecipe) -> int:
        # What training really consumes (training refuses a budget under one step).
        return max(1, training_steps(recipe, config.model.seq_len)) * recipe.batch_size * config.model.seq_len

    budgets_ = [demix_budget(params, comp_tokens, n, eval_tokens)]
    budgets_ += [
        trained_budget(params, trained_tokens(trained_recipe(config, b)), eval_tokens, num_models=n,
                       approach=proxy_kind.trained(b))
        for b in budgets
    ]
    references = trained_budget(
        params, trained_tokens(reference_recipe(config)), eval_tokens, num_models=num_references, approach="reference models"
    )
    return {
        "params": {"total": params.total, "embedding": params.embedding, "head": params.head, "tied": params.tied,
                   "flop_params": params.flop_params},
        "search_proxies": n,
        "eval_tokens_per_model": eval_tokens,
        "note": "one search of search_proxies mixtures: DeMix trains the components once and evaluates a merged "
                "proxy per mixture; the baseline trains and evaluates a proxy per mixture. The base is shared and "
                "counted in neither; reference models are ground truth, counted apart.",
        "budgets": [b.to_dict() for b in budgets_],
        "references": references.to_dict(),
        "rows": compare_budgets(budgets_, reference=DEMIX),
    }
