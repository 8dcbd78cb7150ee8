"""Built-in offline corpora (`source: builtin:<name>`): text that `pip install demix-llm` brings.

No network, no root: every corpus is assembled from files of installed Python packages (or
generated), deterministically, so two machines with the same package versions get the same
documents. Each corpus records its provenance and licence; the versions it read are part of
its fingerprint.

Sizes are capped (``default_bytes``) so that `demix prepare` on the demo stays well under a
minute on 2 cores; a domain's ``max_tokens`` raises the cap (about 8 bytes per token, an upper
bound for the trained BPE).

Why hand-written instead of a dataset package: no PyPI package ships a large openly licensed
English prose corpus (checked: see docs/data.md), and `mathematics_dataset` needs compatibility
patches for numpy 2 / sympy 1.14 and generates about 186 problems/s per core, too slow here.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import inspect
import re
import sys
import sysconfig
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from demix.errors import DemixError

BYTES_PER_TOKEN_BOUND = 8
"""Upper bound on UTF-8 bytes per token, to turn a domain's max_tokens into a read cap."""


@dataclass(frozen=True)
class BuiltinCorpus:
    """One registered corpus: metadata plus a document generator capped by bytes."""

    name: str
    description: str
    license: str
    provenance: str
    default_bytes: int
    generate: Callable[[int], Iterator[str]] = field(repr=False)
    versions: Callable[[], dict[str, str]] = field(repr=False, default=lambda: {})

    def documents(self, max_bytes: int | None = None) -> Iterator[str]:
        """Documents in deterministic order, stopping once ``max_bytes`` UTF-8 bytes were given."""
        limit = self.default_bytes if max_bytes is None else max_bytes
        if limit <= _CACHE_MAX_BYTES:
            # prepare reads every domain twice (tokenizer, then packing); extracting prose from
            # ~100 MB of package sources is the slow part, so small corpora are kept in memory.
            key = (self.name, limit)
            if key not in _CACHE:
                _CACHE[key] = list(self._capped(limit))
            return iter(_CACHE[key])
        return self._capped(limit)

    def _capped(self, limit: int) -> Iterator[str]:
        total = 0
        for doc in self.generate(limit):
            if total >= limit:
                return
            total += len(doc.encode("utf-8"))
            yield doc


_CACHE_MAX_BYTES = 32_000_000
_CACHE: dict[tuple[str, int], list[str]] = {}


BUILTINS: dict[str, BuiltinCorpus] = {}


def register(corpus: BuiltinCorpus) -> BuiltinCorpus:
    """Add a corpus to the registry (name must be new)."""
    if corpus.name in BUILTINS:
        raise ValueError(f"builtin corpus {corpus.name!r} registered twice")
    BUILTINS[corpus.name] = corpus
    return corpus


def get_builtin(name: str, domain: str | None = None) -> BuiltinCorpus:
    """The registered corpus ``name``, or a DemixError listing the known ones."""
    if name not in BUILTINS:
        who = f" (domain '{domain}')" if domain else ""
        raise DemixError(
            f"unknown builtin corpus 'builtin:{name}'{who}",
            f"use one of: {', '.join('builtin:' + n for n in sorted(BUILTINS))}",
        )
    return BUILTINS[name]


# --------------------------------------------------------------------------- file helpers


def _stable_order(paths: list[Path], root: Path) -> list[Path]:
    """Files in a fixed pseudo-random order (hash of the relative path), so a byte cap takes a
    spread over the whole package rather than its alphabetically first subpackages."""
    return sorted(paths, key=lambda p: hashlib.blake2b(str(p.relative_to(root)).encode(), digest_size=8).digest())


def _is_test_path(rel: Path) -> bool:
    return any(part in ("test", "tests", "idle_test", "testing") or part.startswith("test_") for part in rel.parts)


def _package_root(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.origin:
        return None
    return Path(spec.origin).parent


def _package_files(name: str) -> tuple[Path, list[Path]] | None:
    root = _package_root(name)
    if root is None:
        return None
    files = [p for p in root.rglob("*.py") if not _is_test_path(p.relative_to(root))]
    return root, _stable_order(files, root)


def _stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _stdlib_files() -> list[Path]:
    root = _stdlib_root()
    files = []
    for p in root.rglob("*.py"):
        rel = p.relative_to(root)
        # site-packages are not the stdlib; pydoc_data is one huge string literal (used as prose).
        if rel.parts[0] in ("site-packages", "dist-packages", "pydoc_data") or _is_test_path(rel):
            continue
        files.append(p)
    return _stable_order(files, root)


def _stdlib_half(path: Path) -> int:
    """0: the file belongs to the code corpus; 1: its docstrings may feed the prose corpus.
    Halving the stdlib keeps the same files out of two domains (a docstring that the stdlib
    itself copies between modules can still recur: under 1% of prose paragraphs)."""
    rel = str(path.relative_to(_stdlib_root()))
    return hashlib.blake2b(rel.encode(), digest_size=1).digest()[0] & 1


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


_DOCSTRING = re.compile(r'(?:"""(.*?)"""|\'\'\'(.*?)\'\'\')', re.S)


def _docstrings(path: Path) -> Iterator[str]:
    # A regex instead of ast: about 5x faster, and a stray non-docstring literal is harmless.
    text = path.read_text(encoding="utf-8", errors="replace")
    for m in _DOCSTRING.finditer(text):
        yield m.group(1) if m.group(1) is not None else m.group(2)


# --------------------------------------------------------------------------- general: English prose

_NOT_PROSE_CHARS = re.compile(r"[^A-Za-z0-9 ,.;:'()\-!?\"]")
_NOT_PROSE_START = (">>>", "...", "..", "-", "*", "|", "=", ":", "#", "+")


def prose_paragraphs(text: str, min_words: int = 15) -> Iterator[str]:
    """Paragraphs of ``text`` that read as English sentences: start upper-case, end with a
    period, almost only letters and punctuation, hardly any identifiers or markup."""
    for para in re.split(r"\n\s*\n", text):
        lines = [line.strip() for line in para.strip().splitlines()]
        if not lines or any(line.startswith(_NOT_PROSE_START) or "::" in line for line in lines):
            continue
        s = " ".join(lines)
        words = s.split()
        if len(words) < min_words or not s[0].isupper() or not s.endswith("."):
            continue
        if len(_NOT_PROSE_CHARS.findall(s)) > 0.01 * len(s):
            continue
        if sum(1 for w in words if "_" in w or "`" in w or "=" in w) > 0.03 * len(words):
            continue
        yield s


# Packages whose docstrings feed the prose corpus (all core dependencies of demix), with licences.
GENERAL_PACKAGES: dict[str, tuple[str, str]] = {
    # import name: (distribution name, licence)
    "torch": ("torch", "BSD-3-Clause"),
    "transformers": ("transformers", "Apache-2.0"),
    "scipy": ("scipy", "BSD-3-Clause"),
    "sklearn": ("scikit-learn", "BSD-3-Clause"),
    "sqlalchemy": ("sqlalchemy", "MIT"),
    "numpy": ("numpy", "BSD-3-Clause"),
    "matplotlib": ("matplotlib", "Matplotlib License (PSF-based, BSD-compatible)"),
    "pydantic": ("pydantic", "MIT"),
    "click": ("click", "BSD-3-Clause"),
    "accelerate": ("accelerate", "Apache-2.0"),
}


def _general(limit: int) -> Iterator[str]:
    # 1. The Python language reference (pydoc topics): one document per topic.
    topics: dict[str, str]
    try:
        import pydoc_data.topics

        topics = pydoc_data.topics.topics
    except ImportError:  # pragma: no cover - stripped-down Pythons
        topics = {}
    for key in sorted(topics):
        doc = "\n\n".join(prose_paragraphs(topics[key]))
        if len(doc) >= 200:
            yield doc
    # 2. Prose paragraphs of docstrings, one document per source file: the stdlib half that the
    #    code corpus does not use, then the third-party packages.
    sources: list[list[Path]] = [[p for p in _stdlib_files() if _stdlib_half(p) == 1]]
    for name in GENERAL_PACKAGES:
        found = _package_files(name)
        if found:
            sources.append(found[1])
    for files in sources:
        for path in files:
            paras = [p for d in _docstrings(path) for p in prose_paragraphs(d)]
            if sum(map(len, paras)) >= 200:
                yield "\n\n".join(paras)


def _general_versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0]}
    out.update({dist: _version(dist) for dist, _ in GENERAL_PACKAGES.values()})
    return out


register(
    BuiltinCorpus(
        name="general",
        description="English prose: the Python language reference and the prose paragraphs of "
        "docstrings of the standard library and of demix's dependencies (torch, transformers, "
        "scipy, scikit-learn, numpy, sqlalchemy, matplotlib, pydantic, click, accelerate)",
        license="PSF-2.0, BSD-3-Clause, Apache-2.0, MIT (per package: see provenance)",
        provenance="files of the installed Python and packages (pydoc_data.topics, *.py docstrings; tests "
        "excluded); licences: PSF-2.0 (Python docs and stdlib), "
        + ", ".join(f"{lic} ({dist})" for dist, lic in GENERAL_PACKAGES.values()),
        default_bytes=4_000_000,
        generate=_general,
        versions=_general_versions,
    )
)


# --------------------------------------------------------------------------- math: SymPy docstrings


def _math(limit: int) -> Iterator[str]:
    found = _package_files("sympy")
    if found is None:
        raise DemixError("builtin:math needs sympy, which is not installed", "pip install sympy")
    for path in found[1]:
        for raw in _docstrings(path):
            doc = inspect.cleandoc(raw)
            if len(doc) >= 300:
                yield doc


register(
    BuiltinCorpus(
        name="math",
        description="Mathematical prose with worked examples: SymPy docstrings (one per document)",
        license="BSD-3-Clause (SymPy)",
        provenance="docstrings of the installed sympy package (tests excluded)",
        default_bytes=2_000_000,
        generate=_math,
        versions=lambda: {"sympy": _version("sympy")},
    )
)


# --------------------------------------------------------------------------- code: stdlib source


def _code(limit: int) -> Iterator[str]:
    for path in _stdlib_files():
        if _stdlib_half(path) == 0:
            text = path.read_text(encoding="utf-8", errors="replace")
            if text.strip():
                yield text


register(
    BuiltinCorpus(
        name="code",
        description="Python source: half of the standard library's modules (tests excluded), one file per document",
        license="PSF-2.0 (Python standard library)",
        provenance="*.py files of the running Python's standard library",
        default_bytes=2_000_000,
        generate=_code,
        versions=lambda: {"python": sys.version.split()[0]},
    )
)


# --------------------------------------------------------------------------- math_problems: generated


def _math_problems(limit: int) -> Iterator[str]:
    from demix.corpora.mathgen import worksheets

    yield from worksheets(seed=20260101)


register(
    BuiltinCorpus(
        name="math_problems",
        description="Generated school-maths problems with answers (arithmetic, fractions, equations, "
        "polynomials, number theory, word problems), worksheets of 4-10 problems",
        license="Apache-2.0 (generated by demix)",
        provenance="demix.corpora.mathgen, seeded generator",
        default_bytes=1_500_000,
        generate=_math_problems,
        versions=lambda: {"generator": "1"},
    )
)
