"""A tiny run directory built on the fly: byte-level BPE, packed held-out splits, a random Llama.

Nothing is downloaded and nothing is mocked: the tokenizer is trained with `tokenizers`, the
held-out documents are packed with demix's PackedWriter, and the model is a real (random)
LlamaForCausalLM.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

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


def train_tokenizer(texts: list[str], vocab_size: int = 300):
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


def pack(prefix: Path, tokenizer, docs: list[str]) -> None:
    from demix.packing import PackedWriter

    writer = PackedWriter(prefix, len(tokenizer), tokenizer.eos_token_id)
    for text in docs:
        writer.add(tokenizer(text, add_special_tokens=False)["input_ids"], len(text.encode("utf-8")))
    writer.close()


def tiny_llama(vocab_size: int, seed: int = 0, max_positions: int = 512):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=max_positions,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config).eval()
    # Random init has tiny logits (loss ~ ln V for every token); scale them up so models differ.
    with torch.no_grad():
        model.model.embed_tokens.weight.mul_(20)
    return model


def make_config(root: Path, **evaluation):
    from demix.config import config_from_dict

    return config_from_dict(
        {
            "output_dir": str(root),
            "data": {"domains": [{"name": d, "source": f"builtin:{d}"} for d in DOMAINS]},
            "model": {"seq_len": 32, "hidden_size": 32, "num_layers": 2, "num_heads": 2},
            "evaluation": {"heldout_tokens": 400, "batch_size": 4, **evaluation},
        }
    )


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """(run directory, tokenizer, held-out texts per domain) shared by the evaluation tests."""
    from demix.rundir import RunDir

    root = tmp_path_factory.mktemp("run")
    run = RunDir(root)
    texts = {d: domain_documents(d, 40, seed=0) for d in DOMAINS}
    tokenizer = train_tokenizer([t for docs in texts.values() for t in docs])
    tokenizer.save_pretrained(str(run.tokenizer))
    heldout = {d: domain_documents(d, 12, seed=1) for d in DOMAINS}
    for d in DOMAINS:
        pack(run.data / d / "heldout", tokenizer, heldout[d])
        pack(run.data / d / "train", tokenizer, texts[d])
    return run, tokenizer, heldout


@pytest.fixture()
def model(tiny_run):
    _, tokenizer, _ = tiny_run
    return tiny_llama(len(tokenizer))
