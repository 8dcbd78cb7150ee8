"""The document-level train / held-out split: disjoint, stable, seeded, capped."""

from __future__ import annotations

from demix.corpora import SplitStats, heldout_score, split_documents

DOCS = [f"document number {i} about topic {i % 7}" for i in range(2000)]


def _split(docs, seed=0, frac=0.1, cap=None, stats=None):
    out = {"train": [], "heldout": []}
    for split, text in split_documents(iter(docs), seed, frac, cap, stats):
        out[split].append(text)
    return out


def test_disjoint_and_complete():
    s = _split(DOCS)
    assert not set(s["train"]) & set(s["heldout"])
    assert sorted(s["train"] + s["heldout"]) == sorted(DOCS)
    assert 140 <= len(s["heldout"]) <= 260  # 10% of 2000, binomial sd ~13


def test_stable_across_calls_and_order():
    a, b = _split(DOCS), _split(DOCS)
    assert a == b
    # The decision depends on the text only: reversing or truncating the input keeps it.
    rev = _split(DOCS[::-1])
    assert set(rev["heldout"]) == set(a["heldout"])
    half = _split(DOCS[:1000])
    assert set(half["heldout"]) == set(a["heldout"]) & set(DOCS[:1000])


def test_seed_changes_split():
    assert set(_split(DOCS, seed=0)["heldout"]) != set(_split(DOCS, seed=1)["heldout"])
    assert heldout_score("x", 0) == heldout_score("x", 0) != heldout_score("x", 1)


def test_duplicates_dropped_so_heldout_text_never_in_train():
    docs = DOCS[:300] * 2
    stats = SplitStats()
    s = _split(docs, frac=0.3, stats=stats)
    assert stats.documents_read == 600 and stats.duplicates == 300
    assert not set(s["train"]) & set(s["heldout"])
    assert len(s["train"]) + len(s["heldout"]) == 300


def test_max_heldout_documents_caps_without_moving_to_train():
    full = _split(DOCS, frac=0.2)
    stats = SplitStats()
    capped = _split(DOCS, frac=0.2, cap=10, stats=stats)
    assert capped["heldout"] == full["heldout"][:10]
    assert capped["train"] == full["train"]
    assert stats.heldout_over_cap == len(full["heldout"]) - 10
