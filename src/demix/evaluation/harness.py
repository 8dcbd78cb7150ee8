"""lm-evaluation-harness tasks scored on a resident model.

The harness runs fully offline here: local task YAML (``dataset_path: json`` with local
``data_files``) found through ``TaskManager(include_path=..., include_defaults=False)`` (the
default manager spends about 15 s indexing every task), ``HFLM(pretrained=<the resident model>)``,
``bootstrap_iters=0`` and no per-sample logs.

Caching, and what is never cached:

- Tasks are loaded once (datasets read, fixed sample subsets drawn) and their requests (the
  prompt strings of every sample) are built on the first evaluation and reused for every later
  proxy, in memory. This is what the harness's own request cache does, but its on-disk cache is
  keyed by task name only (two runs' ``demix_heldout_mc_general`` tasks would collide) and stored
  as pickles; an in-memory one has neither problem.
- The tokenisation of each (context, continuation) pair is memoised: it depends on the tokenizer
  alone.
- Model outputs are NEVER cached: every proxy has the same name and object and different
  weights, so a result cache keyed by model (the harness's ``use_cache``) would return stale
  scores. Every call runs the model on every request.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from demix.errors import DemixError, require
from demix.evaluation.benchmarks import Benchmark

log = logging.getLogger("demix.evaluation")


def _offline() -> None:
    # Local tasks only: never let datasets / hub reach for the network.
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.getLogger("lm_eval").setLevel(logging.ERROR)


def task_files(dirs: Sequence[str | Path]) -> list[Path]:
    """Every task YAML file under ``dirs`` (recursively), in a stable order."""
    out = []
    for d in dirs:
        out.extend(sorted(p for p in Path(d).rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file()))
    return out


def check_task_dirs(dirs: Sequence[str | Path]) -> None:
    """Parse every task file under ``dirs`` the way the harness does (``!function`` unresolved).

    The harness's indexer skips a file that does not parse without a word, and the task then
    looks missing; this names the file and the parse error instead.
    """
    from lm_eval.tasks._yaml_loader import load_yaml

    for d in dirs:
        if not Path(d).is_dir():
            raise DemixError(f"lm_eval task directory '{d}' does not exist", "fix evaluation.task_dirs")
    for path in task_files(dirs):
        try:
            cfg = load_yaml(path, resolve_func=False, recursive=True)
        except Exception as exc:  # yaml.YAMLError, ValueError (not a mapping, include cycle), OSError
            raise DemixError(
                f"lm_eval task file '{path}' does not parse: {type(exc).__name__}: {exc}".rstrip(),
                "fix the YAML (or remove the file from the task directory)",
            ) from None
        if not any(k in cfg for k in ("task", "group", "tag", "include", "class")):
            raise DemixError(
                f"lm_eval task file '{path}' defines no task (no 'task' or 'group' key)",
                "add `task: <name>` (see docs/evaluation.md), or move the file out of the task directory",
            )


#: Self-check of the shared-context path on a new model object: largest allowed difference of a
#: log-likelihood from the harness's own, relative to max(1, |log-likelihood|), by the model's
#: float width. Both paths run the same weights in another order of operations; a model that
#: ignores the block mask or the positions is off by whole nats.
SELF_CHECK_TOLERANCE = {4: 1e-4, 8: 1e-6, 2: 3e-2}


def _resident_lm_class() -> type:
    """HFLM for a model held in memory, without progress bars, with memoised tokenisation, and
    (``shared_context=True``) log-likelihood requests scored by :mod:`demix.evaluation.multiple_choice`."""
    from lm_eval.models.huggingface import HFLM

    class ResidentLM(HFLM):
        def __init__(self, *args: Any, shared_context: bool = True, auto_batch: bool = False, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._pair_cache: dict[tuple[str, str], tuple[list[int], list[int]]] = {}
            self.shared_context = shared_context
            self.auto_batch = auto_batch
            self._use_shared = False
            # None: not checked yet on this model object; then True, or the reason it falls back.
            self.shared_context_check: bool | str | None = None
            self._plans: dict[Any, list[Any]] = {}

        def _rows_for(self, length: int) -> int:
            if self.auto_batch:
                from demix.evaluation.batching import cuda_batch_rows

                return cuda_batch_rows(self._model, length, fallback=int(self.batch_size))
            return int(self.batch_size)

        def _shared_context_scores(self, requests: list) -> list[tuple[float, bool]]:
            from demix.evaluation.heldout import model_device
            from demix.evaluation.multiple_choice import plan_batches, score_batches

            key = tuple(r[0] for r in requests)
            batches = self._plans.get(key)
            if batches is None:
                pairs = [(r[1], r[2]) for r in requests]
                batches = plan_batches(pairs, self.max_length, self._rows_for, model_device(self._model))
                # The same requests come back for every proxy (a few request sets: the full
                # subsets and a screening subset); the oldest plan goes first.
                if len(self._plans) >= 4:
                    self._plans.pop(next(iter(self._plans)))
                self._plans[key] = batches
            if self.shared_context_check is None:
                self.shared_context_check = self._self_check(requests, batches)
                if self.shared_context_check is not True:
                    log.warning("lm_eval: shared-context scoring falls back to the harness: %s", self.shared_context_check)
            if self.shared_context_check is not True:
                return super()._loglikelihood_tokens(requests, disable_tqdm=True)
            return score_batches(self._model, batches, len(requests))

        def _self_check(self, requests: list, batches: list) -> bool | str:
            """Score the smallest batch both ways once per model object: a model whose forward
            ignores a 4D mask or explicit positions would give other scores, and is refused."""
            from demix.evaluation.multiple_choice import score_batches

            small = batches[-1]
            idx = [int(i) for i in small.requests]
            sub = [requests[i] for i in idx]
            try:
                ours = score_batches(self._model, [_renumbered(small)], len(idx))
            except (TypeError, ValueError, RuntimeError) as exc:
                return f"the model's forward does not take a 4D attention mask and position ids ({type(exc).__name__}: {exc})"
            theirs = super()._loglikelihood_tokens(sub, disable_tqdm=True)
            width = next(self._model.parameters()).element_size()
            tol = SELF_CHECK_TOLERANCE.get(width, 3e-2)
            for (a, ga), (b, gb) in zip(ours, theirs):
                # Greedy flags may flip on a near tie in half precision; the values must agree.
                if abs(a - b) > tol * max(1.0, abs(b)) or (ga != gb and width >= 4):
                    return f"its log-likelihood {a:.6g} differs from the harness's {b:.6g} on this model"
            return True

        def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
            key = (context, continuation)
            hit = self._pair_cache.get(key)
            if hit is None:
                hit = self._pair_cache[key] = super()._encode_pair(context, continuation)
            return hit

        def loglikelihood(self, requests, disable_tqdm: bool = True):
            # The harness only asserts this deep inside; say which task and what to change instead.
            for req in requests:
                context, continuation = req.args[0], req.args[1]
                if not context:
                    continue
                answer = self._encode_pair(context, continuation)[1]  # memoised: the harness asks again
                if len(answer) > self.max_length:
                    raise DemixError(
                        f"lm_eval task '{req.task_name}' has an answer of {len(answer)} tokens, longer than the "
                        f"model's context of {self.max_length} tokens, so it cannot be scored",
                        "use a model with a longer context (model.seq_len), or a task (or subset) with shorter answers",
                    )
            self._use_shared = self.shared_context
            try:
                return super().loglikelihood(requests, disable_tqdm=True)
            finally:
                self._use_shared = False

        def loglikelihood_rolling(self, requests, disable_tqdm: bool = True):
            return super().loglikelihood_rolling(requests, disable_tqdm=True)

        def generate_until(self, requests, disable_tqdm: bool = True):
            return super().generate_until(requests, disable_tqdm=True)

        def _loglikelihood_tokens(self, requests, disable_tqdm: bool = True, **kwargs: Any):
            if self._use_shared and requests:
                return self._shared_context_scores(requests)
            # The rolling path asks for a progress bar per batch; demix shows its own.
            return super()._loglikelihood_tokens(requests, disable_tqdm=True, **kwargs)

    return ResidentLM


def _renumbered(batch: Any) -> Any:
    """``batch`` with its requests numbered 0.. (scored on their own by the self-check)."""
    import dataclasses

    import numpy as np

    return dataclasses.replace(batch, requests=np.arange(len(batch.requests)))


def _reuse_requests(task: Any) -> None:
    """Build the task's requests once; later evaluations get the same requests, answers cleared."""
    build = task.build_all_requests
    built: dict[Any, list] = {}

    def build_once(**kwargs: Any) -> None:
        key = (kwargs.get("limit"), tuple(kwargs.get("samples") or ()), kwargs.get("rank"), kwargs.get("world_size"))
        if key in built:
            for inst in built[key]:
                inst.resps.clear()
                inst.filtered_resps.clear()
            task._instances = built[key]
            return
        # The harness draws a progress bar per task here and has no switch for it; demix shows
        # its own progress, so the module's tqdm is silenced for this one call.
        import lm_eval.api.task as task_module

        bar = task_module.tqdm
        task_module.tqdm = functools.partial(bar, disable=True)
        try:
            build(**kwargs)
        finally:
            task_module.tqdm = bar
        built[key] = task._instances

    task.build_all_requests = build_once


def _with_metrics(benchmarks: Sequence[Benchmark], leaf: dict[str, Any]) -> list[Benchmark]:
    """Each benchmark with its metric and direction: read from its (leaf) task; a group's are
    checked on the first run."""
    out: list[Benchmark] = []
    for b in benchmarks:
        if b.task in leaf:
            task = leaf[b.task]
            declared = task.higher_is_better() or {}
            metric = b.metric or next(iter(declared), None)
            base = (metric or "").split(",")[0]
            if metric is None or base not in declared:
                raise DemixError(
                    f"benchmark '{b.name}' asks for unknown metric '{metric}' of lm_eval task '{b.task}'",
                    f"use one of {sorted(declared)}",
                )
            out.append(b.with_metric(metric, bool(declared[base])))
        else:
            if b.metric is None:
                raise DemixError(
                    f"benchmark '{b.name}' reads group '{b.task}', which needs an explicit metric",
                    "set metric (and higher_is_better) for this benchmark",
                )
            out.append(b.with_metric(b.metric, True if b.higher_is_better is None else b.higher_is_better))
    return out


def _fixed_samples(benchmarks: Sequence[Benchmark], leaf: dict[str, Any], groups: dict[str, Any], seed: int) -> dict[str, list[int]]:
    """Fixed sample subsets: the first ``limit`` documents of a seeded permutation, per leaf task,
    so that every proxy is scored on the same documents."""
    samples: dict[str, list[int]] = {}
    limits: dict[str, int | None] = {}
    for b in benchmarks:
        members = [b.lm_task] if b.lm_task in leaf else [t.task_name for t in groups[b.lm_task].get_all_tasks()]
        for t in members:
            if t in limits and limits[t] != b.limit:
                raise DemixError(
                    f"lm_eval task '{t}' is read by benchmarks with different limits ({limits[t]} and {b.limit})",
                    "give every benchmark of the same task the same limit",
                )
            limits[t] = b.limit
    for t, limit in limits.items():
        n = len(leaf[t].eval_docs)
        if n == 0:
            raise DemixError(f"lm_eval task '{t}' has no documents", "check its data_files")
        if limit is not None and limit < n:
            rng = np.random.default_rng(seed)
            samples[t] = sorted(int(i) for i in rng.permutation(n)[:limit])
    return samples


def scoring_path(task: Any, shared_context: bool = True) -> str:
    """How ``task``'s requests are scored: ``shared-context`` (log-likelihood requests, one forward
    pass per context) or ``harness (<reason>)``."""
    kind = getattr(task, "OUTPUT_TYPE", None) or getattr(getattr(task, "config", None), "output_type", None)
    if not shared_context:
        return "harness (evaluation.lm_eval_path: harness)"
    if kind not in ("multiple_choice", "loglikelihood"):
        return f"harness (output type {kind}: not a log-likelihood of a continuation)"
    return "shared-context"


class Harness:
    """The lm_eval benchmarks of a run: tasks loaded once, scored on any resident model."""

    def __init__(
        self,
        benchmarks: Sequence[Benchmark],
        task_dirs: Sequence[str | Path],
        tokenizer: Any,
        batch_size: int = 16,
        seed: int = 0,
        shared_context: bool = True,
        auto_batch: bool = False,
    ) -> None:
        """``shared_context``: score log-likelihood requests with one forward pass per context
        (:mod:`demix.evaluation.multiple_choice`; same scores) instead of the harness's one per
        request. ``auto_batch``: on CUDA, packs per forward pass from free memory."""
        require("lm_eval", extra="eval")
        _offline()
        from lm_eval.tasks import TaskManager

        self.tokenizer = tokenizer
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.shared_context = bool(shared_context)
        self.auto_batch = bool(auto_batch)
        self.task_dirs = [Path(d) for d in task_dirs]
        check_task_dirs(self.task_dirs)
        manager = TaskManager(include_path=[str(d) for d in self.task_dirs], include_defaults=False)
        names = list(dict.fromkeys(b.task for b in benchmarks))
        missing = [t for t in names if t not in manager.all_tasks]
        if missing:
            shown = ", ".join(manager.all_tasks[:30]) or "none"
            raise DemixError(
                f"lm_eval task(s) {missing} not found in {[str(d) for d in self.task_dirs]} (found: {shown})",
                "use a shipped task (demix_math, demix_humaneval, demix_humaneval_bpb, demix_heldout_mc_<domain>) "
                "or add the directory holding the task's YAML to evaluation.task_dirs",
            )
        import datasets

        bars = datasets.is_progress_bar_enabled()
        datasets.disable_progress_bars()  # local files load in milliseconds: no bars in the CLI's output
        try:
            self.task_dict = manager.load(names)
        except Exception as exc:  # the harness raises many kinds for a bad task (datasets, jinja, keys)
            raise DemixError(
                f"lm_eval could not load task(s) {names}: {type(exc).__name__}: {exc}",
                "check the task YAML and that its data_files exist (the run is offline: no hub datasets)",
            ) from None
        finally:
            if bars:
                datasets.enable_progress_bars()
        leaf = self.task_dict["tasks"]
        groups = self.task_dict["groups"]
        for task in leaf.values():
            if hasattr(task, "set_fewshot_seed"):
                task.set_fewshot_seed(seed)
            _reuse_requests(task)

        self.benchmarks = _with_metrics(benchmarks, leaf)
        self.samples = _fixed_samples(self.benchmarks, leaf, groups, seed)
        self.paths = {name: scoring_path(task, self.shared_context) for name, task in leaf.items()}
        for name, path in self.paths.items():
            log.info("lm_eval task '%s': %s", name, path)
        self._lm: Any = None

    def _lm_for(self, model: Any) -> Any:
        # The wrapper is kept while the model object is the same (its weights may change in place:
        # nothing computed from them is kept), and rebuilt for another object.
        if self._lm is None or self._lm._model is not model:
            self._lm = _resident_lm_class()(
                pretrained=model,
                tokenizer=self.tokenizer,
                batch_size=self.batch_size,
                # fp32 log-softmax on both paths, whatever the weights' dtype (the harness's
                # default is the model's dtype: bf16 log-probabilities for a bf16 proxy).
                softmax_dtype="float32",
                shared_context=self.shared_context,
                auto_batch=self.auto_batch,
            )
        return self._lm

    def evaluate(
        self, model: Any, samples: dict[str, list[int]] | None = None
    ) -> tuple[dict[str, float], dict[str, dict[str, Any]]]:
        """({benchmark name: value}, {benchmark name: details}) of ``model`` on the tasks;
        ``samples``: {task: document indices} to score instead of the run's fixed subsets
        (screening, :mod:`demix.evaluation.screening`)."""
        from lm_eval.evaluator import evaluate

        was_training = model.training
        model.eval()
        try:
            out = evaluate(
                self._lm_for(model),
                self.task_dict,
                samples=(self.samples if samples is None else samples) or None,
                bootstrap_iters=0,
                log_samples=False,
            )
        finally:
            model.train(was_training)
        results = out["results"]
        values, details = {}, {}
        for b in self.benchmarks:
            assert b.metric is not None  # filled in by with_metric in __init__
            key = b.metric if "," in b.metric else f"{b.metric},none"
            row = results.get(b.task, {})
            if key not in row:
                have = sorted(k for k in row if not k.endswith("_stderr") and "," in k and "stderr" not in k)
                raise DemixError(
                    f"benchmark '{b.name}': lm_eval task '{b.task}' reported no metric '{key}'",
                    f"use one of {have}",
                )
            values[b.name] = float(row[key])
            n = row.get("sample_len") or out.get("n-samples", {}).get(b.task, {}).get("effective")
            details[b.name] = {"task": b.task, "metric": key, "samples": n}
        return values, details
