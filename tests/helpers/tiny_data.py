"""Tiny deterministic documents for three domains, a byte-level BPE trained on them, and
packing with demix's PackedWriter: the data of the evaluation tests and of tests/tiny_run.py."""

from __future__ import annotations

import random
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

    from demix.rundir import RunDir

DOMAINS = ("general", "math", "code")


def domain_documents(domain: str, n: int, seed: int) -> list[str]:
    """Deterministic little documents; general text carries multi-byte characters on purpose."""
    rng = random.Random(f"{domain}:{seed}")
    docs = []
    for _ in range(n):
        if domain == "general":
            words = ["the", "river", "café", "naïve", "über", "城市", "mountain", "→", "quietly", "runs", "über-fast", "and"]
            docs.append(" ".join(rng.choice(words) for _ in range(rng.randint(30, 60))) + ".")
        elif domain == "math":
            lines = []
            for _ in range(rng.randint(6, 12)):
                a, b = rng.randint(1, 99), rng.randint(1, 99)
                lines.append(f"{a} + {b} = {a + b}; {a} * {b} = {a * b}.")
            docs.append(" ".join(lines))
        else:
            name = rng.choice(["add", "scale", "shift", "total"])
            body = "\n".join(f"    x = x {rng.choice('+-*')} {rng.randint(1, 9)}" for _ in range(rng.randint(4, 10)))
            docs.append(f"def {name}(x):\n{body}\n    return x\n")
    return docs


def train_tokenizer(texts: Iterable[str], vocab_size: int = 300) -> PreTrainedTokenizerFast:
    """A byte-level BPE of ``vocab_size`` tokens trained on ``texts``; ``<|endoftext|>`` is EOS and padding."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        clean_up_tokenization_spaces=False,
    )


def pack(prefix: Path, tokenizer: PreTrainedTokenizerFast, docs: Iterable[str]) -> None:
    """Tokenise ``docs`` and write them as packed token files at ``prefix`` (demix's format)."""
    from demix.packing import PackedWriter

    writer = PackedWriter(prefix, len(tokenizer), tokenizer.eos_token_id)
    for text in docs:
        writer.add(tokenizer(text, add_special_tokens=False)["input_ids"], len(text.encode("utf-8")))
    writer.close()


def write_tiny_data(run: RunDir) -> tuple[PreTrainedTokenizerFast, dict[str, list[str]]]:
    """Write the tokenizer and packed train (40 documents) and held-out (12) splits per domain
    into ``run``; returns the tokenizer and the held-out texts per domain."""
    texts = {d: domain_documents(d, 40, seed=0) for d in DOMAINS}
    tokenizer = train_tokenizer([t for docs in texts.values() for t in docs])
    tokenizer.save_pretrained(str(run.tokenizer))
    heldout = {d: domain_documents(d, 12, seed=1) for d in DOMAINS}
    for d in DOMAINS:
        pack(run.data / d / "heldout", tokenizer, heldout[d])
        pack(run.data / d / "train", tokenizer, texts[d])
    return tokenizer, heldout
