"""Models for training: build a fresh base from ModelConfig, load HF checkpoints from
safetensors only, check a checkpoint against the run's tokenizer, score held-out loss.

What a checkpoint on disk holds (shards, headers, hashes, compatibility) is
:mod:`demix.checkpoints`'s; this module adds what needs torch and transformers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from demix.checkpoints import check_loadable, read_hf_config, safetensors_files
from demix.config import ModelConfig
from demix.errors import DemixError


def build_model(model: ModelConfig, tokenizer, seed: int) -> torch.nn.Module:
    """A freshly initialised decoder-only HF model of the configured shape (fp32), its vocabulary
    the tokenizer's, initialised from ``seed``."""
    from transformers import AutoModelForCausalLM, LlamaConfig, PretrainedConfig, Qwen3Config, set_seed

    if model.hidden_size % model.num_heads:
        raise DemixError(
            f"model.hidden_size={model.hidden_size} is not divisible by model.num_heads={model.num_heads}",
            "choose a hidden size that is a multiple of the number of heads",
        )
    kv_heads = model.num_kv_heads or model.num_heads
    if model.num_heads % kv_heads:
        raise DemixError(
            f"model.num_heads={model.num_heads} is not a multiple of model.num_kv_heads={kv_heads}",
            "choose num_kv_heads dividing num_heads (or leave it unset)",
        )
    common: dict[str, Any] = dict(
        vocab_size=len(tokenizer),
        hidden_size=model.hidden_size,
        intermediate_size=model.intermediate_size or 4 * model.hidden_size,
        num_hidden_layers=model.num_layers,
        num_attention_heads=model.num_heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=model.seq_len,
        tie_word_embeddings=model.tie_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    hf_config: PretrainedConfig
    if model.architecture == "llama":
        hf_config = LlamaConfig(**common)
    else:
        hf_config = Qwen3Config(head_dim=model.hidden_size // model.num_heads, **common)
    set_seed(seed)
    return AutoModelForCausalLM.from_config(hf_config, dtype=torch.float32)


def check_vocabulary(tokenizer, path: Path, what: str = "checkpoint") -> None:
    """The tokenizer's ids must index the checkpoint's embedding; a tokenizer saved with the
    checkpoint must be the run's tokenizer."""
    vocab = read_hf_config(path).get("vocab_size")
    n = len(tokenizer)
    fix = "use the checkpoint's own tokenizer (tokenizer.path) or a checkpoint trained with the run's tokenizer"
    if vocab is not None and n > int(vocab):
        raise DemixError(f"the run's tokenizer has {n} tokens but the {what} '{path}' has vocab_size {vocab}", fix)
    if (Path(path) / "tokenizer.json").is_file():
        from transformers import PreTrainedTokenizerFast

        own = PreTrainedTokenizerFast(tokenizer_file=str(Path(path) / "tokenizer.json"))
        if len(own) != n or own.get_vocab() != tokenizer.get_vocab():
            raise DemixError(
                f"the {what} '{path}' was trained with another tokenizer than the run's: "
                f"{vocabulary_difference(own.get_vocab(), tokenizer.get_vocab())}",
                "the run's tokenizer/ was replaced since the checkpoint was trained (a prepare that trained a new "
                "tokenizer, e.g. after the data changed): restore the tokenizer saved with the checkpoint "
                f"('{path}') as tokenizer.path, or {fix}",
            )


def vocabulary_difference(checkpoint: dict[str, int], run: dict[str, int]) -> str:
    """What differs between two vocabularies (token -> id), in words: sizes, then tokens only one
    has and tokens with another id, each with an example (same-size tokenizers differ in merges)."""
    only_ckpt = sorted(set(checkpoint) - set(run))
    only_run = sorted(set(run) - set(checkpoint))
    moved = sorted(t for t in set(checkpoint) & set(run) if checkpoint[t] != run[t])
    parts = [f"{len(checkpoint)} tokens in the checkpoint's, {len(run)} in the run's"]
    if only_ckpt:
        parts.append(f"{len(only_ckpt)} token(s) only in the checkpoint's (e.g. {only_ckpt[0]!r})")
    if only_run:
        parts.append(f"{len(only_run)} token(s) only in the run's (e.g. {only_run[0]!r})")
    if moved:
        t = moved[0]
        parts.append(f"{len(moved)} token(s) with another id (e.g. {t!r}: {checkpoint[t]} vs {run[t]})")
    return "; ".join(parts)


def load_checkpoint(
    path: Path, trust_remote_code: bool = False, dtype: torch.dtype = torch.float32, role: str = "checkpoint"
) -> torch.nn.Module:
    """Load a causal LM from a checkpoint directory, from safetensors only; one that needs its
    own code loads only with ``trust_remote_code`` (``model.trust_remote_code``)."""
    from transformers import AutoModelForCausalLM

    # Refuse pickled weights and custom code with an error naming the fix, before transformers looks.
    safetensors_files(path, role)
    check_loadable(path, trust_remote_code, role)
    return AutoModelForCausalLM.from_pretrained(
        str(path), use_safetensors=True, trust_remote_code=trust_remote_code, dtype=dtype
    )


def checkpoint_dtype(path: Path) -> torch.dtype:
    """The dtype a checkpoint's config declares (fp32 when it says nothing)."""
    cfg = read_hf_config(path)
    name = cfg.get("dtype") or cfg.get("torch_dtype") or "float32"
    return getattr(torch, str(name), torch.float32)


@torch.no_grad()
def heldout_loss(model: torch.nn.Module, windows, batch_size: int = 16) -> float:
    """Mean next-token cross-entropy (nats per token) of ``model`` on windows of ``seq_len + 1``
    tokens (``PackedTokens.sequences``); accumulated in fp64 so long evaluations do not drift."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for i in range(0, len(windows), batch_size):
        batch = torch.as_tensor(windows[i : i + batch_size], device=device)
        logits = model(input_ids=batch[:, :-1]).logits.float()
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1), reduction="sum"
        )
        total += float(loss.double())
        count += batch[:, 1:].numel()
    model.train(was_training)
    return total / max(count, 1)
