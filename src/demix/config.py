"""Run configuration: pydantic v2 models loaded from YAML, with dotted command-line overrides.

One :class:`RunConfig` describes a whole run. Every section is a strict model
(``extra="forbid"``) so a misspelt key is an error, not a silent default. The resolved config
(after overrides) is written into the run directory as ``config.yaml``.

Field docstrings (the string literal under each field) are the reference documentation: they
show up in ``demix init`` output and in ``--help`` texts.

Why one module of ~900 lines: it is one concept, the schema, and reads top to bottom in the
order of the YAML it validates; split by section, a reader would jump between files to follow
one config file.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from demix.errors import DemixError


class StrictModel(BaseModel):
    """Base for all config sections: unknown keys are errors; field docstrings are kept."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, validate_assignment=True)


# --------------------------------------------------------------------------- data


class DomainConfig(StrictModel):
    # A name is also a directory name (data/<domain>/, models/components/<domain>/): it must not
    # start with a dot, so that `.` and `..` can never point outside the run directory.
    name: str = Field(max_length=100)
    """Domain name used everywhere (mixtures, benchmarks, files), e.g. `general`, `math`, `code`:
    letters, digits, `_`, `-` and `.`, not starting with a dot."""

    source: str
    """Where the text comes from: `builtin:<name>` for an embedded offline corpus, or a path to a
    `.jsonl`, `.txt` or `.parquet` file or a directory of them."""

    text_field: str = "text"
    """Field holding the document text in `.jsonl` / `.parquet` sources."""

    max_tokens: int | None = Field(default=None, gt=0)
    """Optional cap on the number of training tokens prepared for this domain (None: all)."""

    license: str | None = None
    """Licence of a user-provided source, recorded in the run's provenance (builtin sources know theirs)."""

    errors: Literal["strict", "replace"] = "strict"
    """Invalid UTF-8 in the domain's files: `strict` stops prepare naming the file and the byte offset
    (and line); `replace` puts U+FFFD for each invalid byte sequence and counts them per file in
    provenance.json."""

    @field_validator("name")
    @classmethod
    def _check_name(cls, name: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*", name):
            raise ValueError(
                f"domain name {name!r} is not allowed: use letters, digits, '_', '-' and '.', not starting "
                "with a dot (it names the domain's directories in the run)"
            )
        return name


class DataConfig(StrictModel):
    domains: list[DomainConfig] = Field(min_length=1)
    """The candidate datasets. A mixture has one weight per domain."""

    general_domain: str = "general"
    """The domain used to pretrain the base and as the general share of every component."""

    heldout_fraction: float = Field(default=0.05, gt=0, lt=1)
    """Fraction of each domain's documents held out for evaluation (split by document, never trained on)."""

    max_heldout_documents: int | None = Field(default=None, gt=0)
    """Optional cap on held-out documents per domain (keeps evaluation cheap)."""

    seed: int = 0
    """Seed of the deterministic document-level train / held-out split."""

    @model_validator(mode="after")
    def _check_domains(self) -> DataConfig:
        names = [d.name for d in self.domains]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"domain names must be unique, repeated: {dupes}")
        if self.general_domain not in names:
            raise ValueError(
                f"general_domain '{self.general_domain}' is not one of the domains {names}; "
                "add it to data.domains or set data.general_domain"
            )
        return self

    @property
    def domain_names(self) -> list[str]:
        return [d.name for d in self.domains]


class TokenizerConfig(StrictModel):
    path: str | None = None
    """A Hugging Face tokenizer directory to use as is. None: train a byte-level BPE on the training splits."""

    vocab_size: int = Field(default=4096, ge=260)
    """Vocabulary size of the trained BPE tokenizer (ignored when `path` is set)."""

    max_train_bytes: int = Field(default=20_000_000, gt=0)
    """At most this many bytes of training text (spread over domains) are used to train the BPE."""


# --------------------------------------------------------------------------- model and training


class ModelConfig(StrictModel):
    architecture: Literal["llama", "qwen3"] = "llama"
    """HF decoder-only architecture used for a base trained from scratch."""

    hidden_size: int = Field(default=128, gt=0)
    """Width of the residual stream."""

    num_layers: int = Field(default=4, gt=0)
    """Number of transformer blocks."""

    num_heads: int = Field(default=4, gt=0)
    """Attention heads."""

    num_kv_heads: int | None = None
    """Key/value heads (grouped-query attention); None: same as num_heads."""

    intermediate_size: int | None = None
    """MLP width; None: 4 x hidden_size."""

    seq_len: int = Field(default=256, gt=8)
    """Context length used in training and held-out evaluation (tokens)."""

    tie_embeddings: bool = True
    """Share the input embedding and the output head (fewer parameters for tiny models)."""

    base_path: str | None = None
    """An existing HF checkpoint directory to use as the base instead of training one."""

    trust_remote_code: bool = False
    """Allow custom model code from checkpoint directories. Off unless you trust the files."""


class TrainRecipe(StrictModel):
    """One training recipe: token budget, optimiser schedule, batch, precision (the `train.base`,
    `train.reference` and `train.trained_proxy` sections)."""

    tokens: int = Field(default=1_000_000, gt=0)
    """Token budget of the run (steps = tokens / (batch_size x seq_len))."""

    lr: float = Field(default=1e-3, gt=0)
    """Peak learning rate."""

    schedule: Literal["cosine", "linear", "constant", "wsd"] = "cosine"
    """Learning-rate schedule after warmup (wsd: warmup-stable-decay, decay over the last 20%)."""

    warmup_fraction: float = Field(default=0.05, ge=0, lt=1)
    """Fraction of steps spent in linear warmup."""

    min_lr_ratio: float = Field(default=0.1, ge=0, le=1)
    """Final learning rate as a fraction of the peak (cosine / linear / wsd)."""

    batch_size: int = Field(default=16, gt=0)
    """Sequences per optimizer step (per device x gradient accumulation)."""

    grad_accumulation: int = Field(default=1, gt=0)
    """Gradient accumulation steps (batch_size counts the accumulated sequences)."""

    weight_decay: float = Field(default=0.0, ge=0)
    """AdamW weight decay."""

    seed: int = 0
    """Seed of data order and initialisation."""

    save_every_steps: int = Field(default=200, gt=0)
    """Checkpoint interval; an interrupted training resumes from the last one."""

    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    """Training precision (bf16 on GPUs that have it; fp32 on CPU)."""


class ComponentRecipe(TrainRecipe):
    general_share: float = Field(default=0.5, ge=0, lt=1)
    """Share of general-domain tokens in each component's training data (DeMix: 0.5; pure-domain
    components merge badly)."""

    paths: dict[str, str] = Field(default_factory=dict)
    """Components trained elsewhere: domain name -> HF checkpoint directory. Those domains are not trained."""

    mixtures: dict[str, dict[str, float]] = Field(default_factory=dict)
    """Training mixtures (token shares) of the components trained elsewhere (`paths`): domain ->
    {domain: share}, e.g. {math: {general: 0.3, math: 0.7}}. A component of `paths` without one
    (and without a demix.json recording it) is assumed to follow `general_share`, with a warning.
    The data mixture a proxy stands for is computed from these."""


class CommandTrainerConfig(StrictModel):
    template: str | None = None
    """Your trainer's launch command for one run, with placeholders filled per component /
    reference: {data_mixture_file} {output_dir} {tokens} {seed} {domain} {role} {name} {init}
    {lr} {batch_size} {seq_len} {run_dir}. Paths are shell-quoted. Example (Megatron-LM, which
    counts the budget in samples, so the shell divides the tokens by the sequence length):
    `torchrun --nproc_per_node 8 pretrain_gpt.py --data-args-path {data_mixture_file} --split 100,0,0
    --train-samples $(( ({tokens} + {seq_len} - 1) / {seq_len} )) --seq-length {seq_len}
    --seed {seed} --save {output_dir} --load {init}`."""

    format: str = "megatron"
    """Trainer format of the data-mixture file written per run (a `demix export` format:
    megatron, megatron-per-split, megatron-bridge, nemo2, nemo1, nanotron, olmo-core,
    olmo-core-sources, hf-datasets, mosaic, litdata, torchtitan, json; docs/exporters.md)."""

    data_prefixes: dict[str, str] = Field(default_factory=dict)
    """Domain -> the data path your trainer reads for it (e.g. /data/math_text_document). Every
    domain a run trains on needs one (else planning stops with an error naming the domains),
    unless `allow_placeholder_paths`."""

    allow_placeholder_paths: bool = False
    """Write a domain's name where `data_prefixes` has no path for it (for a trainer command
    that maps names to data itself, or files you edit before launching). Off: a trainer handed
    a path named after a domain fails much later, on the cluster."""

    converter: str | None = None
    """Command run on a finished run whose output is not a HF checkpoint, to write one:
    placeholders {output_dir} (the trainer's output) and {hf_dir} (where the HF directory must
    appear). None: the trainer writes a HF checkpoint (safetensors) into {output_dir} itself."""

    slurm: bool = False
    """Also write a Slurm array script (one array task per run) instead of running the commands here."""

    slurm_options: list[str] = Field(default_factory=list)
    """Extra `#SBATCH` options of the array script, e.g. ["--gpus-per-node=8", "--time=24:00:00"]."""


class TrainingConfig(StrictModel):
    backend: Literal["hf", "command"] = "hf"
    """Who trains components and reference models: `hf`, demix's Hugging Face Trainer recipe
    (also under accelerate / torchrun), or `command`, your own trainer launched from
    `train.command.template` (see docs/scaling.md)."""

    command: CommandTrainerConfig = Field(default_factory=CommandTrainerConfig)
    """The `command` backend: launch template, data-mixture format, converter, Slurm."""

    base: TrainRecipe = Field(default_factory=TrainRecipe)
    """Pretraining of the base from scratch on the general domain."""

    components: ComponentRecipe = Field(default_factory=ComponentRecipe)
    """Continued training of one component per domain from the base."""

    reference: TrainRecipe = Field(default_factory=TrainRecipe)
    """Continued training of reference models on a mixture (ground truth for fidelity);
    defaults to the component budget when not set."""

    trained_proxy: TrainRecipe = Field(default_factory=lambda: TrainRecipe(tokens=200_000))
    """The training-based proxy baseline (RegMix style): a shorter run on a mixture."""

    device: str = "auto"
    """Training device: auto, cpu, cuda, cuda:0, ..."""

    heldout_tokens: int = Field(default=8192, ge=0)
    """Held-out tokens per trained domain scored before and after each training, recorded in the
    model's demix.json as a sanity check (0: skip)."""


# --------------------------------------------------------------------------- evaluation


class BenchmarkConfig(StrictModel):
    name: str = Field(pattern=r"^[A-Za-z0-9_.:-]+$")
    """Benchmark name, the key of its score in every result."""

    evaluator: Literal["heldout_loss", "lm_eval"] = "heldout_loss"
    """Which evaluator computes it."""

    domain: str | None = None
    """heldout_loss: the domain whose held-out split is scored."""

    task: str | None = None
    """lm_eval: the harness task name (a shipped local task or one from `task_dirs`)."""

    metric: str | None = None
    """Metric key read from the evaluator's output (heldout_loss: bits_per_byte or loss_per_token;
    lm_eval: a metric of the task, e.g. acc, acc_norm, or `acc,<filter>`). None: bits_per_byte
    for heldout_loss, the task's first metric for lm_eval."""

    higher_is_better: bool | None = None
    """Direction of the metric. None: known for heldout_loss (lower is better), read from the
    task for lm_eval. Scores where lower is better are negated before any ranking."""

    limit: int | None = Field(default=None, gt=0)
    """lm_eval: fixed number of samples (the first `limit` after a shuffle seeded by
    evaluation.seed), the same for every proxy. None: all samples of the task."""


class CapabilityConfig(StrictModel):
    name: str
    """Capability name (general, math, code, ...)."""

    benchmarks: dict[str, float] = Field(min_length=1)
    """Benchmark name -> weight (> 0) in this capability's weighted mean of sign-corrected
    benchmark values."""


class EvaluationConfig(StrictModel):
    benchmarks: list[BenchmarkConfig] = Field(default_factory=list)
    """The scored evaluations. Empty: one heldout_loss benchmark per domain."""

    capabilities: list[CapabilityConfig] = Field(default_factory=list)
    """Named groups of benchmarks. Empty: one capability per domain."""

    heldout_tokens: int = Field(default=32_768, gt=0)
    """Held-out tokens scored per domain for each proxy (fixed, so proxies are comparable)."""

    batch_size: int = Field(default=16, gt=0)
    """Sequences per forward pass (held-out loss and lm_eval tasks). Logits take
    batch_size x seq_len x vocab x 4 bytes: lower it for large vocabularies."""

    task_dirs: list[str] = Field(default_factory=list)
    """Extra directories of lm-eval task YAML files (e.g. the harness's own task folders when the
    machine has their datasets). Later directories override task names of earlier ones."""

    seed: int = 0
    """Seed of the fixed lm_eval sample subsets (`limit`) and of the shipped tasks' generated items."""

    device: str = "auto"
    """Evaluation device: auto, cpu, cuda, cuda:0, ..."""

    lm_eval_path: Literal["shared_context", "harness"] = "shared_context"
    """How lm_eval log-likelihood requests (multiple_choice, loglikelihood tasks) are scored.
    shared_context: each context runs once and its choices are packed after it with a block
    attention mask (the harness's requests, tokens and metrics; the same scores, about C times
    fewer context tokens for C choices). harness: every request through lm-eval's HFLM as its own
    sequence. Generation and rolling log-likelihood tasks always use the harness."""

    auto_batch_size: bool = True
    """On CUDA, choose the sequences per forward pass of held-out loss and multiple-choice scoring
    from free GPU memory and the model's shape (batch_size is then unused). CPU uses batch_size."""


# --------------------------------------------------------------------------- merging


class MergeConfig(StrictModel):
    method: str = "linear"
    """Merge method building a proxy from components (linear is the DeMix method and the fast path)."""

    params: dict[str, Any] = Field(default_factory=dict)
    """Method parameters, as in mergekit (density, lambda, epsilon, gamma, t, ...)."""

    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """dtype of the resident proxy (auto: the checkpoints' dtype). Accumulation is always fp32."""

    normalize: bool = False
    """Rescale mixtures that do not sum to 1 instead of rejecting them."""

    shard_size: str = "2GB"
    """Largest safetensors shard of a merged checkpoint written by `demix merge` (e.g. 2GB, 500MB)."""


# --------------------------------------------------------------------------- search


class BoundsConfig(StrictModel):
    """Bounds on the DATA MIXTURE the proxies stand for (token shares of the training data, what
    a model trained on it sees), mapped exactly onto the component weights the search samples.
    Only data mixtures the components can reach are allowed (with the standard recipe: general
    >= train.components.general_share); a bound outside them is an error naming the region."""

    lower: dict[str, float] = Field(default_factory=dict)
    """Domain -> minimum token share in the data mixture."""

    upper: dict[str, float] = Field(default_factory=dict)
    """Domain -> maximum token share in the data mixture."""

    pinned: dict[str, float] = Field(default_factory=dict)
    """Domain -> fixed token share in the data mixture (only for a domain whose share depends on
    one component weight: every domain with the standard recipe)."""

    max_epochs: float | None = Field(default=None, gt=0)
    """Upper bound from data size: data share <= max_epochs x domain tokens / target_tokens."""


class SamplerConfig(StrictModel):
    prior: Literal["tokens", "uniform"] = "tokens"
    """Centre of the Dirichlet sampling of the component weights: the domains' token shares (a
    prior over component weights, not a data mixture) or uniform."""

    temperature: float = Field(default=1.0, gt=0)
    """Prior temperature: prior ** (1/T), renormalised (T > 1 flattens)."""

    min_concentration: float = Field(default=0.1, gt=0)
    """Smallest Dirichlet concentration strength (log-spaced range; small: spiky samples)."""

    max_concentration: float = Field(default=5.0, gt=0)
    """Largest Dirichlet concentration strength (large: samples near the prior)."""

    min_weight: float = Field(default=0.0, ge=0, lt=1)
    """Component weights below this are set to 0 and the rest renormalised."""

    granularity: float | None = Field(default=None, gt=0, lt=1)
    """Round the component weights to multiples of this (e.g. 0.01). None: no rounding."""


class RefineConfig(StrictModel):
    """Gradient refinement of the chosen mixture after the last round (demix.search.refine).

    Projected gradient ascent of the ``weighted`` objective on the bounded simplex, from the
    top-k mean, with exact gradients through the merge (one forward and backward pass per
    held-out domain gives the derivative for every component). Each proposal moves
    ``step_size`` (Euclidean length in component weights) along the normalised gradient, is
    projected onto the bounds (kept exactly), evaluated and stored like any proxy, and accepted
    only when its measured objective is higher; a rejected one halves the step. Stops after
    ``steps`` proposals, or when the step (or the projected move) is below ``min_step``.

    Off by default: it needs a linear merge, no ``search.constraints`` and held-out-loss
    capabilities (``rank_mean`` is climbed along a smooth surrogate and judged by its exact
    measured value, demix.search.surrogate), and costs up to ``steps`` more evaluations plus
    one gradient per accepted step (a forward and a backward pass per held-out domain: 3.6
    evaluations' time measured on the tiny test model on CPU)."""

    enabled: bool = False
    """Refine the chosen mixture after the last round (weighted, or rank_mean through its surrogate)."""

    steps: int = Field(default=6, ge=1)
    """Most proposals evaluated (each one more proxy evaluation, stored like the rounds')."""

    step_size: float = Field(default=0.05, gt=0, le=1)
    """First step length: Euclidean distance in component weights along the normalised gradient."""

    min_step: float = Field(default=0.002, gt=0)
    """Stop when the step length, or the move left after projecting onto the bounds, is below this."""


class ScreeningConfig(StrictModel):
    """Screening before full benchmarks (demix.search.screening): one step of successive halving
    per round. Every planned proxy of a round is first scored on ``fraction`` of each lm_eval
    task's documents (the same documents for every proxy, nested in the full set; held-out loss
    benchmarks in full); only the best ``keep`` of them by that screened objective, and any
    within ``margin`` of the best, are then scored in full. Screened scores are stored as their
    own proxy kind (``screened@<fraction>``, with the documents used) and never fitted: the
    predictors fit full scores only. Off by default: it needs lm_eval benchmarks, saves time
    only when they dominate an evaluation and ``fraction + keep < 1``, and helps the search only
    where a screen ranks proxies like the full set (on the demo's tasks it does not:
    ``benchmarks/eval_cost.py --run`` measures it on a run, docs/evaluation.md)."""

    enabled: bool = False
    """Screen each round's proxies before scoring the best of them in full."""

    fraction: float = Field(default=0.25, gt=0, lt=1)
    """Share of each lm_eval task's documents (of its `limit` subset, if any) a screen scores."""

    keep: float = Field(default=0.5, gt=0, le=1)
    """Share of a round's screened proxies scored in full (the best by screened objective; at least one)."""

    margin: float = Field(default=0.0, ge=0)
    """Also score in full every proxy whose screened objective is within this of the round's
    best (objective units: percentile ranks for rank_mean, capability units for weighted)."""


class SearchConfig(StrictModel):
    rounds: list[int] = Field(default_factory=lambda: [32, 16, 8])
    """Proxies evaluated per round (reference: N, N/2, N/4); round 0 samples the simplex, later
    rounds the predicted top region."""

    pool_size: int = Field(default=200_000, gt=0)
    """Candidate pool size ranked by the predictor."""

    top_k: int = Field(default=1280, gt=0)
    """The chosen mixture is the mean of the top-k candidates."""

    region_size: int | None = Field(default=None, gt=0)
    """Rounds after the first draw their proxies from this many best-ranked candidates of the
    previous round's pool (None: top_k)."""

    predictor: Literal["auto", "lightgbm", "ridge"] = "auto"
    """Regressor from mixture to score (auto: ridge below 32 evaluations, else LightGBM)."""

    predictor_intervals: int = Field(default=0, ge=0)
    """Members of a bootstrap ensemble of the predictor (each fitted on a resample of the
    evaluations, of the kind `predictor` resolves to) giving every candidate a mean and a
    `interval_level` interval (:class:`demix.predictors.Ensemble`); cv.json then reports each
    capability's out-of-fold interval coverage. 0: none (the paper's single fit)."""

    interval_level: float = Field(default=0.8, gt=0, lt=1)
    """Nominal coverage of the predicted intervals (two-sided)."""

    planner: Literal["paper", "ucb"] = "paper"
    """How rounds after the first choose their proxies. paper: a seeded draw from the predicted
    top region (the reference). ucb: the pool candidates of highest upper confidence bound on
    the objective (ensemble mean + ucb_beta x ensemble spread), each at least min_distance from
    the others and from every evaluated mixture (needs predictor_intervals >= 2)."""

    ucb_beta: float = Field(default=1.0, ge=0)
    """Weight of the ensemble's spread in the ucb planner's bound (0: the ensemble mean alone)."""

    min_distance: float = Field(default=0.05, ge=0)
    """Least Euclidean distance (component weights) between a ucb pick and the other picks and
    evaluated mixtures; halved while too few candidates are that far apart."""

    cv_folds: int = Field(default=5, ge=2)
    """k of the k-fold cross-validation reported per target."""

    objective: Literal["rank_mean", "weighted"] = "rank_mean"
    """rank_mean: mean of per-capability percentile ranks (reference); weighted: weighted capability scores."""

    capability_weights: dict[str, float] = Field(default_factory=dict)
    """Capability -> weight for the objective (empty: equal weights)."""

    constraints: list[str] = Field(default_factory=list)
    """Constraints such as `math >= natural`, `code >= 0.4` (capability scores), `weight.general >= 0.6`
    (a token share of the candidate's data mixture) or `component.code <= 0.5` (a component weight);
    `natural` / `uniform` are the baselines' values (data mixtures, or their component weights)."""

    target_tokens: int | None = Field(default=None, gt=0)
    """Token budget of the final training run (for token counts and epochs in best_mixture.json)."""

    sampler: SamplerConfig = Field(default_factory=SamplerConfig)
    """How candidate mixtures are sampled."""

    bounds: BoundsConfig = Field(default_factory=BoundsConfig)
    """Exact bounds on the data mixture every sampled candidate stands for (mapped exactly onto
    its component weights)."""

    seed: int = 0
    """Seed of sampling, predictors and selection."""

    refine: RefineConfig = Field(default_factory=RefineConfig)
    """Gradient refinement of the chosen mixture after the last round (off by default)."""

    screening: ScreeningConfig = Field(default_factory=ScreeningConfig)
    """Screen each round's proxies on a subset of the lm_eval documents first (off by default)."""

    measure_chosen: bool = False
    """Evaluate the chosen mixture's merged proxy once after the last round (stored like any
    proxy, round null) and record its measured scores and objective beside the predicted ones
    in best_mixture.json (`measured`): a check that the objective does not overfit the proxies.
    Off: `measured` is recorded only where the proxy is measured anyway (search.refine, or the
    store already holds it)."""

    @model_validator(mode="after")
    def _check_pool(self) -> SearchConfig:
        # A top-k (or region) as large as the pool would average the whole random pool: the
        # "chosen" mixture would be the sampler's mean, not a choice.
        if self.top_k >= self.pool_size:
            raise ValueError(
                f"search.top_k ({self.top_k}) must be smaller than search.pool_size ({self.pool_size}): "
                "the chosen mixture averages the top_k best of the pool"
            )
        if self.region_size is not None and self.region_size > self.pool_size:
            raise ValueError(
                f"search.region_size ({self.region_size}) is larger than search.pool_size ({self.pool_size})"
            )
        if self.planner == "ucb" and self.predictor_intervals < 2:
            raise ValueError(
                "search.planner: ucb needs the ensemble's spread: set search.predictor_intervals >= 2 (e.g. 16)"
            )
        if self.predictor_intervals == 1:
            raise ValueError("search.predictor_intervals must be 0 (off) or at least 2 (a spread needs two members)")
        return self


# --------------------------------------------------------------------------- fidelity, scale-out


class RegisteredReference(StrictModel):
    """A reference model trained elsewhere on a known data mixture (a past run, the DeMix
    release's reference models): the fidelity stage evaluates it as ground truth and never
    trains one for that data mixture."""

    mixture: dict[str, float]
    """The data mixture it was trained on (domain -> token share, summing to 1). Its merged
    proxy is built at the component weights that stand for this data mixture, so it must lie
    in the region merging reaches (general share at least train.components.general_share)."""

    path: str
    """Its Hugging Face checkpoint directory: safetensors only, loadable without its own code
    (unless model.trust_remote_code), the base's architecture, vocabulary and tensor shapes."""

    name: str | None = None
    """A label for errors and reports (the mixture's name in a mixtures file); None: its position."""


class ReferenceSet(StrictModel):
    """Reference models registered from a mixtures file, one folder per named mixture: the
    layout of the DeMix release (``reference_models/sampled_mixture.json`` and a folder per
    mixture)."""

    mixtures_file: str
    """JSON object ``{name: {domain: token share}}``: the data mixture each model was trained on."""

    path: str
    """Each model's checkpoint directory, with ``{name}`` standing for the mixture's name
    (``/data/DeMix_Corpora/reference_models/{name}``)."""

    skip_missing: bool = False
    """Leave out, with a warning naming them, mixtures whose folder does not exist (the DeMix
    release lists more mixtures than it ships models); off: a missing folder is an error."""


class CalibrateConfig(StrictModel):
    """`demix fidelity --calibrate`: the merge-vs-data-mix check of the DeMix paper's Appendix D.
    Two components are merged at a few ratios and each merged proxy is compared with a model
    trained on the data mixture it stands for, at each component budget."""

    domains: list[str] = Field(default_factory=list)
    """The two (non-general) domains whose components are merged. Empty: the first two domains
    of data.domains other than data.general_domain."""

    ratios: list[Annotated[float, Field(gt=0, lt=1)]] = Field(default_factory=lambda: [0.1, 0.3, 0.5, 0.7, 0.9])
    """Component weight of the first domain in each merged proxy (the second gets 1 - ratio).
    Strictly inside (0, 1): at 0 or 1 the merged proxy is a component itself."""

    budgets: list[Annotated[int, Field(gt=0)]] = Field(default_factory=list)
    """Training tokens of the two components (and of each data-mixed model, trained with the
    components' recipe at the same budget). Empty: a quarter of train.components.tokens and
    train.components.tokens (the run's own components are reused at that budget)."""


class FidelityConfig(StrictModel):
    num_references: int = Field(default=8, ge=0)
    """Reference mixtures sampled with the search's sampler (in addition to `mixtures` and
    `references`)."""

    references: list[RegisteredReference] = Field(default_factory=list)
    """Reference models trained elsewhere, registered by data mixture and path: evaluated, not
    trained (they come first, before `mixtures` and the sampled ones)."""

    reference_sets: list[ReferenceSet] = Field(default_factory=list)
    """More registered reference models, read from mixtures files (after `references`)."""

    mixtures: list[dict[str, float]] = Field(default_factory=list)
    """User-given reference mixtures (domain -> token share): data mixtures under the
    data_mixture pairing (mapped onto the component weights that stand for them; one that
    merging cannot reach is an error), component weights under component_weights."""

    pairing: Literal["data_mixture", "component_weights"] = "data_mixture"
    """What each reference model is trained on. data_mixture: the data the merged proxy of
    component weights a stands for, data(a) = sum_i a_i x (component i's training mixture).
    component_weights: a itself taken as a data mixture (the pairing before 0.2, kept for
    comparison)."""

    trained_proxy_budgets: list[Annotated[int, Field(gt=0)]] = Field(default_factory=list)
    """Token budgets of training-based proxies compared against merged proxies (empty: trained_proxy.tokens)."""

    train_proxies: bool = True
    """Train the training-based proxies (RegMix-style baseline) at `trained_proxy_budgets`.
    False: only merged proxies are compared with the reference models, and with registered
    references nothing is trained at all (scoring a release's models)."""

    top_fraction: float = Field(default=0.25, gt=0, le=1)
    """Share of reference mixtures (best by reference score) behind the top-share Spearman."""

    search_proxies: int | None = Field(default=None, gt=0)
    """Proxies one search evaluates, for the compute comparison (None: sum of search.rounds):
    DeMix pays components + this many merged evaluations, the baseline this many trained proxies."""

    bootstrap: int = Field(default=1000, ge=0)
    """Bootstrap resamples for confidence intervals."""

    confidence: float = Field(default=0.95, gt=0, lt=1)
    """Two-sided level of the bootstrap confidence intervals."""

    seed: int = 0
    """Seed of reference sampling and bootstrap."""

    audit_relative_delta: float = Field(default=0.5, gt=0)
    """Merge audit: warn when a component's ||delta|| / ||base|| in a tensor group exceeds this
    (critical above twice this). See docs/fidelity.md for why."""

    audit_min_cosine: float = Field(default=-0.1, ge=-1, le=1)
    """Merge audit: warn when two components' deltas have a cosine below this (they conflict)."""

    audit_proxy_gap: float = Field(default=1.0, gt=0)
    """Merge audit: warn when ||proxy - reference|| / ||reference - base|| reaches this."""

    transfer: list[DomainConfig] = Field(default_factory=list)
    """Transfer targets: corpora that are not components (a built-in corpus left out of
    data.domains, or a file such as one half of a split corpus), scored by held-out bits per
    byte for every model the stage compares, as benchmark `heldout:<name>` and capability
    `<name>`. Keys as in data.domains; `max_tokens` is ignored (evaluation.heldout_tokens of the
    first documents are scored). Names and sources must differ from every domain's."""

    calibrate: CalibrateConfig = Field(default_factory=CalibrateConfig)
    """Settings of `demix fidelity --calibrate` (the merge-vs-data-mix check)."""


class ExecutorConfig(StrictModel):
    kind: Literal["local", "ray"] = "local"
    """Where proxy evaluations run: in process, or on a Ray cluster (one actor per GPU / CPU slot)."""

    address: str | None = None
    """Ray cluster address (None: start a local cluster)."""

    num_workers: int | None = Field(default=None, gt=0)
    """Ray actors (None: one per GPU, or one per CPU slot without GPUs)."""

    num_gpus: float = Field(default=0, ge=0)
    """GPUs per Ray actor."""

    num_cpus: float = Field(default=1, gt=0)
    """CPUs per Ray actor."""

    max_restarts: int = Field(default=3, ge=0)
    """Ray: how many times a dead actor (killed process, out of memory) is restarted; its mixture
    in flight is re-queued to the next free actor."""

    device: str = "auto"
    """Ray: device inside each actor (auto: cuda when the actor was given a GPU, else cpu)."""


class StoreConfig(StrictModel):
    url: str | None = None
    """SQLAlchemy URL of the store (None: sqlite:///<run_dir>/store.sqlite). Several search drivers
    or Slurm workers share one run through a server database, e.g.
    postgresql+psycopg://demix@dbhost:5432/demix (needs the `postgres` extra)."""

    lease_seconds: float = Field(default=1800.0, gt=0)
    """How long a driver's claim on a mixture stays reserved without news from it (renewed after
    every evaluation). Must exceed the longest single evaluation; a driver that died on another
    machine has its mixtures re-queued after this."""

    wait_seconds: float = Field(default=2.0, gt=0)
    """Polling interval of a driver waiting for mixtures that another driver is evaluating."""


class RunConfig(StrictModel):
    name: str = "demix-run"
    """Run name (shown in reports)."""

    output_dir: str = "runs/demix-run"
    """Run directory: everything the run writes goes here; re-running resumes it."""

    seed: int = 0
    """Global seed: the default of every section seed that is not set (data.seed, the train.*
    recipes' seeds, evaluation.seed, search.seed, fidelity.seed). A section seed given in the
    config wins."""

    data: DataConfig
    """Domains and splits."""

    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig)
    """Tokenizer to train or reuse."""

    model: ModelConfig = Field(default_factory=ModelConfig)
    """Architecture of the base (when trained here)."""

    train: TrainingConfig = Field(default_factory=TrainingConfig)
    """Training recipes for base, components, references and trained proxies."""

    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    """Benchmarks and capabilities."""

    merge: MergeConfig = Field(default_factory=MergeConfig)
    """How proxies are merged."""

    search: SearchConfig = Field(default_factory=SearchConfig)
    """Sampling, predictors, objective and rounds."""

    fidelity: FidelityConfig = Field(default_factory=FidelityConfig)
    """Reference models and fidelity metrics."""

    executor: ExecutorConfig = Field(default_factory=ExecutorConfig)
    """Where proxy evaluations run."""

    store: StoreConfig = Field(default_factory=StoreConfig)
    """The results database."""

    @model_validator(mode="after")
    def _seed_sections(self) -> RunConfig:
        # The resolved config (saved into the run) then states every seed explicitly, so a
        # reloaded config.yaml reproduces the run whatever the global seed says.
        for section in self._seeded_sections():
            if "seed" not in section.model_fields_set:
                section.seed = self.seed
        return self

    def _seeded_sections(self) -> list[Any]:
        t = self.train
        return [self.data, t.base, t.components, t.reference, t.trained_proxy, self.evaluation, self.search, self.fidelity]

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir)


# --------------------------------------------------------------------------- loading


def _format_validation_error(exc: ValidationError, source: str) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "<root>"
        if err["type"] == "extra_forbidden":
            lines.append(f"unknown key '{loc}'")
        else:
            lines.append(f"{loc}: {err['msg']}")
    return f"invalid config {source}: " + "; ".join(lines)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse one `dotted.key=value` override; the value is read as YAML (numbers, lists, ...)."""
    if "=" not in text:
        raise DemixError(f"override '{text}' has no '='", "write overrides as key.path=value, e.g. train.base.lr=3e-4")
    key, _, raw = text.partition("=")
    path = [p for p in key.strip().split(".") if p]
    if not path:
        raise DemixError(f"override '{text}' has an empty key", "write overrides as key.path=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return path, value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply dotted overrides to a raw config dict (list items by index: data.domains.0.max_tokens=1e6)."""
    for text in overrides:
        path, value = parse_override(text)
        node: Any = data
        for i, part in enumerate(path[:-1]):
            if isinstance(node, list):
                node = node[int(part)]
            else:
                node = node.setdefault(part, {})
            if not isinstance(node, (dict, list)):
                raise DemixError(f"override '{text}': '{'.'.join(path[: i + 1])}' is not a section")
        last = path[-1]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
    return data


def config_from_dict(data: dict[str, Any], overrides: list[str] | None = None, source: str = "<dict>") -> RunConfig:
    """Validate a raw dict (plus overrides) into a RunConfig, with one readable error."""
    data = apply_overrides(dict(data), overrides or [])
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        raise DemixError(
            _format_validation_error(exc, source), "see `demix init` for a commented example of every key"
        ) from None


def read_yaml_mapping(path: str | Path, what: str, missing_fix: str) -> dict[str, Any]:
    """Read a YAML file that must hold a mapping; ``what`` names it in errors ("config file", ...)."""
    path = Path(path)
    if path.is_dir():
        raise DemixError(f"{what} '{path}' is a directory, not a YAML file", missing_fix)
    if not path.is_file():
        raise DemixError(f"{what} '{path}' does not exist", missing_fix)
    try:
        data = yaml.load(path.read_text(), Loader=_UniqueKeyLoader) or {}
    except yaml.YAMLError as exc:
        raise DemixError(f"{what} '{path}' is not valid YAML: {exc}", "fix the YAML syntax") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DemixError(f"{what} '{path}' cannot be read ({exc})", "check the file's permissions and encoding (UTF-8)") from None
    if not isinstance(data, dict):
        raise DemixError(f"{what} '{path}' must hold a mapping at the top level")
    return data


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Load a YAML config file and apply dotted overrides."""
    data = read_yaml_mapping(path, "config file", "pass the path of a YAML config (`demix init` writes one)")
    return config_from_dict(data, overrides, source=str(path))


RESOLVED_HEADER = "# The resolved config of this run, written by demix (edits here are overwritten).\n"
"""First line of every config.yaml demix writes into a run: how it tells its own file from a user's."""

#: Files that mark a directory as a demix run (written before config.yaml carried its header).
_RUN_MARKERS = ("timings.json", "store.sqlite", "data/provenance.json", "logs/demix.log")


def dump_config(config: RunConfig) -> str:
    """The resolved config as YAML (written into every run directory)."""
    return RESOLVED_HEADER + yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


def save_config(config: RunConfig, path: str | Path) -> None:
    """Write the resolved config; atomically, so a crash never leaves half a file. A file at
    ``path`` that demix did not write (a user's own config.yaml in ``output_dir``) is never replaced."""
    from demix.rundir import atomic_write_text

    path = Path(path)
    if path.is_file() and not _written_by_demix(path):
        raise DemixError(
            f"'{path}' is not a config demix wrote, and the run would overwrite it with its resolved config",
            "set output_dir to a directory of its own (e.g. runs/<name>), or rename your file",
        )
    atomic_write_text(path, dump_config(config))


def _written_by_demix(path: Path) -> bool:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            if fh.readline() == RESOLVED_HEADER:
                return True
    except OSError:
        return False
    # Runs made before the header existed: a config.yaml beside demix's own run files.
    return any((path.parent / m).exists() for m in _RUN_MARKERS)


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe YAML loader that refuses a key given twice in one mapping: PyYAML keeps the last
    one without a word, so `search:` twice would silently drop the first section."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is given twice (line {key_node.start_mark.line + 1})", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)
