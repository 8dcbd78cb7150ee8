"""Tokenizer: byte-level BPE trained here (exact round trips, vocabulary size, EOS), or loaded."""

from __future__ import annotations

import pytest

from demix.errors import DemixError
from demix.tokenizer import EOS_TOKEN, encode_batch, load_tokenizer, train_bpe

TEXTS = [
    "The quick brown fox jumps over the lazy dog. " * 5,
    "def add(a, b):\n    return a + b\n\n\nclass Point:\n    x: int = 0\n",
    "Let f(x) = 3*x**2 - 2*x + 1. Then f'(x) = 6*x - 2.",
    "Ünïcödé: naïve café, Straße, 日本語のテキスト, emoji 🎉🚀, tabs\tand  double  spaces.",
] * 10


def test_trained_bpe_has_requested_vocab_and_eos(tmp_path):
    tok = train_bpe(iter(TEXTS), vocab_size=320, save_dir=tmp_path / "tok")
    assert len(tok) == 320
    assert tok.eos_token == EOS_TOKEN and tok.convert_tokens_to_ids(EOS_TOKEN) == tok.eos_token_id
    loaded = load_tokenizer(tmp_path / "tok")
    assert len(loaded) == 320 and loaded.eos_token_id == tok.eos_token_id


@pytest.mark.parametrize(
    "text",
    [
        "Ünïcödé: naïve café, Straße, 日本語のテキスト, emoji 🎉🚀",
        "  leading spaces, trailing newline\n\n",
        "never seen before: Ωmega ∑ ∫ ∂ — “quotes” 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 \x00\x7f",
        "    indented code\n\tand a tab\r\nCRLF",
    ],
)
def test_round_trip_is_exact(tmp_path, text):
    train_bpe(iter(TEXTS), vocab_size=300, save_dir=tmp_path / "tok")
    tok = load_tokenizer(tmp_path / "tok")
    ids = encode_batch(tok, [text])[0]
    assert EOS_TOKEN not in tok.convert_ids_to_tokens(ids)
    assert tok.decode(ids) == text
    assert ids == tok(text, add_special_tokens=False)["input_ids"]


def test_training_compresses_frequent_text(tmp_path):
    tok = train_bpe(iter(TEXTS), vocab_size=400)
    text = "The quick brown fox jumps over the lazy dog."
    assert len(encode_batch(tok, [text])[0]) < len(text.encode()) / 3


def test_load_missing_directory(tmp_path):
    with pytest.raises(DemixError, match="does not exist"):
        load_tokenizer(tmp_path / "none")


def test_load_directory_that_is_not_a_tokenizer(tmp_path):
    (tmp_path / "junk.txt").write_text("x")
    with pytest.raises(DemixError, match="not a loadable Hugging Face tokenizer"):
        load_tokenizer(tmp_path)


def test_save_replaces_only_a_tokenizer_demix_saved(tmp_path):
    from demix.tokenizer import MARKER, save_tokenizer

    tok = train_bpe(iter(TEXTS), vocab_size=300, save_dir=tmp_path / "tok")
    assert (tmp_path / "tok" / MARKER).is_file()
    save_tokenizer(tok, tmp_path / "tok")  # its own: replaced
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    with pytest.raises(DemixError, match=f"'{mine}' exists and is not a tokenizer demix saved"):
        save_tokenizer(tok, mine)
    assert (mine / "notes.txt").read_text() == "mine"
    save_tokenizer(tok, mine, replace_unmarked=True)  # the caller vouches for it
    assert len(load_tokenizer(mine)) == 300
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "tok"]  # no staging left
