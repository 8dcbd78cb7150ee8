"""The run's tokenizer: a byte-level BPE trained on the training splits, or the user's own.

Byte-level BPE (GPT-2 style, Hugging Face `tokenizers`) needs no normalisation and no unknown
token: every UTF-8 string encodes and decodes back exactly. It is saved as a
``PreTrainedTokenizerFast`` so every later stage (and the exported checkpoints) loads it with
plain transformers.

Every tokenizer directory demix saves holds :data:`MARKER`: it is how prepare knows a
``tokenizer/`` is its own to replace (a user's directory of the same name is never removed).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from demix.errors import DemixError

log = logging.getLogger("demix.tokenizer")

EOS_TOKEN = "<|endoftext|>"

MARKER = "demix_tokenizer.json"
"""Written into every tokenizer directory :func:`save_tokenizer` saves (transformers ignores it)."""


def train_bpe(texts: Iterable[str], vocab_size: int, save_dir: str | Path | None = None) -> Any:
    """Train a byte-level BPE with ``vocab_size`` entries (EOS included) on ``texts``.

    Returns a ``PreTrainedTokenizerFast`` whose EOS (also used for padding) is ``<|endoftext|>``;
    saves it to ``save_dir`` when given. The vocabulary is smaller than asked only when the text
    has too few distinct pairs to merge.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN],
        # All 256 byte symbols from the start: no text can ever be out of vocabulary.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=2,
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
        # Exact round trips: no whitespace clean-up on decode, and no length warnings (documents
        # are packed, not fed whole to a model).
        clean_up_tokenization_spaces=False,
        model_max_length=2**62,
    )
    if save_dir is not None:
        save_tokenizer(fast, save_dir)
    return fast


def check_replaceable(save_dir: str | Path, replace_unmarked: bool = False) -> None:
    """Raise unless ``save_dir`` is absent or a tokenizer demix saved (it holds :data:`MARKER`);
    ``replace_unmarked`` vouches for a directory without it (a run prepared by an older demix)."""
    save_dir = Path(save_dir)
    exists = save_dir.exists() or save_dir.is_symlink()
    ours = save_dir.is_dir() and not save_dir.is_symlink() and (replace_unmarked or (save_dir / MARKER).is_file())
    if not exists or ours:
        return
    raise DemixError(
        f"'{save_dir}' exists and is not a tokenizer demix saved (no {MARKER} in it); prepare writes the run's tokenizer there",
        f"move '{save_dir}' out of the run directory (to use it as the run's tokenizer, point tokenizer.path at its new "
        "place); one left by an interrupted prepare of an older demix can be deleted",
    )


def save_tokenizer(tokenizer: Any, save_dir: str | Path, replace_unmarked: bool = False) -> None:
    """Save a tokenizer directory (written next to it and renamed, so never half-written). An
    existing ``save_dir`` is replaced only when demix saved it (see :func:`check_replaceable`)."""
    save_dir = Path(save_dir)
    check_replaceable(save_dir, replace_unmarked)
    tmp = save_dir.with_name(f".{save_dir.name}.saving-{uuid.uuid4().hex[:12]}")
    try:
        tokenizer.save_pretrained(str(tmp))
        (tmp / MARKER).write_text(json.dumps({"written_by": "demix"}) + "\n")
        if save_dir.exists():
            shutil.rmtree(save_dir)
        os.replace(tmp, save_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # only ever our own staging directory


def load_tokenizer(path: str | Path, trust_remote_code: bool = False) -> Any:
    """Load a tokenizer directory (ours or a user's) as a fast tokenizer with an EOS token."""
    path = Path(path)
    if not path.is_dir():
        raise DemixError(
            f"tokenizer directory '{path}' does not exist",
            "run `demix prepare CONFIG` (it writes the run's tokenizer), or fix tokenizer.path",
        )
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    except Exception as exc:  # transformers raises OSError/ValueError/... for a bad directory
        raise DemixError(
            f"'{path}' is not a loadable Hugging Face tokenizer ({type(exc).__name__}: {exc})",
            "point tokenizer.path at a directory with tokenizer.json (or tokenizer_config.json and vocab files)",
        ) from None
    if not getattr(tok, "is_fast", False):
        raise DemixError(
            f"tokenizer '{path}' has no fast (Rust) implementation",
            "save it with tokenizer.json (e.g. AutoTokenizer.from_pretrained(..., use_fast=True).save_pretrained(dir))",
        )
    if tok.eos_token_id is None:
        raise DemixError(
            f"tokenizer '{path}' has no EOS token (documents are packed with EOS between them)",
            "set eos_token in its tokenizer_config.json",
        )
    return tok


def encode_batch(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    """Token ids of many texts at once (Rust, parallel), without special tokens."""
    return [enc.ids for enc in tokenizer.backend_tokenizer.encode_batch(texts, add_special_tokens=False)]


def vocab_size(tokenizer: Any) -> int:
    """Number of token ids the tokenizer can produce (added tokens included)."""
    return len(tokenizer)
