"""Built-in offline corpora: registered, deterministic, capped, licensed, and correct maths."""

from __future__ import annotations

import itertools
import re
from fractions import Fraction

import pytest

from demix.config import DomainConfig
from demix.corpora import BUILTINS, builtin_names, open_corpus
from demix.corpora.builtin import prose_paragraphs
from demix.corpora.mathgen import worksheets


def test_registry_has_required_corpora_with_licences():
    assert {"general", "math", "code", "math_problems"} <= set(builtin_names())
    for corpus in BUILTINS.values():
        assert corpus.license and corpus.provenance and corpus.description


@pytest.mark.parametrize("name", ["general", "math", "code", "math_problems"])
def test_builtin_is_deterministic_and_capped(name):
    corpus = BUILTINS[name]
    a = list(corpus.documents(max_bytes=100_000))
    b = list(corpus.documents(max_bytes=100_000))
    assert a == b and len(a) >= 1
    sizes = [len(d.encode()) for d in a]
    # The cap stops at the first document that reaches it.
    assert sum(sizes[:-1]) < 100_000 <= sum(sizes) or sum(sizes) < 100_000
    assert all(d.strip() for d in a)


def test_domain_max_tokens_raises_the_read_cap():
    small = open_corpus(DomainConfig(name="m", source="builtin:math_problems"))
    big = open_corpus(DomainConfig(name="m", source="builtin:math_problems", max_tokens=1_000_000))
    assert big.max_bytes > small.max_bytes == BUILTINS["math_problems"].default_bytes
    assert small.fingerprint() != big.fingerprint()


def test_code_and_general_share_no_text():
    code = list(BUILTINS["code"].documents(max_bytes=300_000))
    prose = [p for p in itertools.islice(BUILTINS["general"].documents(), 800)]
    code_text = "\n".join(code)
    paras = [p for doc in prose for p in doc.split("\n\n")]
    # The two corpora read disjoint stdlib files; only docstrings that the stdlib itself copies
    # between modules (gzip / bz2 / lzma file methods, ...) can recur: well under 1% of paragraphs.
    joined = " ".join(code_text.split())
    shared = sum(1 for p in paras if len(p) > 80 and p in joined)
    assert len(paras) > 1000 and shared < 0.01 * len(paras)


def test_prose_filter_keeps_sentences_drops_code_and_markup():
    text = (
        "Return the sum of the values. The values are added from left to right, and an empty "
        "sequence gives zero, which is the identity of addition for these numbers here.\n\n"
        ">>> add(1, 2)\n3\n\n"
        "Parameters\n----------\nx : int\n    value\n\n"
        "uses foo_bar and baz_qux with x=1 and y=2, not prose at all, though it is long enough to "
        "pass the word count of the filter."
    )
    kept = list(prose_paragraphs(text))
    assert len(kept) == 1 and kept[0].startswith("Return the sum")


def test_math_problems_answers_are_correct():
    checked = 0
    for doc in itertools.islice(worksheets(seed=7), 300):
        for block in doc.split("\n\n"):
            q, a = block.split("\nAnswer: ")
            if m := re.search(r"What is (-?\d+) ([+*-]) (-?\d+)\?", q):
                assert int(a) == eval(f"{m[1]} {m[2]} {m[3]}")  # noqa: S307 - our own digits
                checked += 1
            elif m := re.search(r"Calculate (\S+) ([+*/-]) (\S+) and simplify", q):
                x, y = Fraction(m[1]), Fraction(m[3])
                want = {"+": x + y, "-": x - y, "*": x * y, "/": x / y}[m[2]]
                assert Fraction(a) == want
                checked += 1
            elif m := re.search(r"Solve (.+) = (-?\d+) for x", q):
                x = int(a.rsplit("x = ", 1)[1].rstrip("."))
                assert eval(m[1].replace("x", f"({x})")) == int(m[2])  # noqa: S307
                checked += 1
            elif m := re.search(r"Write (\d+) as a product of prime factors", q):
                prod = 1
                for f in a.split(" = ")[1].split(" * "):
                    prod *= int(f)
                assert prod == int(m[1])
                checked += 1
    assert checked > 200
