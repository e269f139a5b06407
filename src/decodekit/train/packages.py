"""The larger code corpus: the standard library plus the Python sources of installed packages.

Each package's ``*.py`` files come from its installed distribution's file list (test
directories excluded), with its version and licence from the distribution's metadata. The
standard library keeps its own relative paths and its own 2% validation split (the same files
as :mod:`decodekit.train.corpus`, so held-out losses stay comparable across corpora); a package
file is named ``site-packages/<path as installed>`` and split by the same stable hash. Whole packages can
be held out (``held_out``): none of their files is trained on, and they give the loss on code
from projects the model never saw.

Deduplication, in sorted order (standard library first, then packages in the order given; the
first copy stays): exact copies by content hash, then near-duplicates by MinHash over shingles
of three normalised lines (runs of whitespace collapsed, blank and comment-only lines dropped), with locality-
sensitive hashing: 16 bands of 4 of 64 hash functions; a candidate pair is a near-duplicate
when its signatures agree on at least ``NEAR_DUPLICATE`` of the functions (an estimate of
their Jaccard similarity).
"""

from __future__ import annotations

import hashlib
import importlib.metadata as metadata
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from decodekit.train.corpus import (
    EXCLUDED_DIRECTORIES,
    Corpus,
    collect_corpus,
    is_validation,
    sha1_text,
)

PACKAGE_EXCLUDED = EXCLUDED_DIRECTORIES | {"testing", "_vendor", "vendored"}
NEAR_DUPLICATE = 0.8
HASHES, BANDS = 64, 16
_PRIME = (1 << 31) - 1
_rng = np.random.default_rng(20261202)
_A = _rng.integers(1, _PRIME, HASHES, dtype=np.uint64)
_B = _rng.integers(0, _PRIME, HASHES, dtype=np.uint64)


def licence_of(dist: metadata.Distribution) -> str:
    """The distribution's declared licence: its SPDX expression, else its licence field's first
    line, else its licence classifiers; "unknown" when it declares none."""
    meta = dist.metadata
    expression = meta.get("License-Expression")
    if expression:
        return expression
    text = (meta.get("License") or "").strip().splitlines()
    if text and len(text[0]) <= 80:
        return text[0]
    classifiers = [c.split(" :: ")[-1] for c in meta.get_all("Classifier") or [] if c.startswith("License ::")]
    return "; ".join(classifiers) or "unknown"


def shingles(text: str) -> np.ndarray:
    """``(n,)`` uint64: 31-bit hashes of every three consecutive normalised lines."""
    lines = [" ".join(line.split()) for line in text.splitlines()]
    lines = [line for line in lines if line and not line.startswith("#")]
    if len(lines) < 3:
        lines = lines + [""] * (3 - len(lines))
    keys = ["\n".join(lines[i : i + 3]) for i in range(len(lines) - 2)]
    digests = [int.from_bytes(hashlib.blake2b(k.encode("utf-8"), digest_size=4).digest(), "little") & _PRIME for k in keys]
    return np.asarray(digests, dtype=np.uint64)


def signature(text: str) -> np.ndarray:
    """``(HASHES,)`` MinHash signature of the text's shingles."""
    x = shingles(text)
    return ((_A[:, None] * x[None, :] + _B[:, None]) % _PRIME).min(axis=1)


class NearDuplicates:
    """MinHash + LSH index: ``seen(text)`` is True if a near-duplicate was added before (and
    then the text is not added)."""

    def __init__(self):
        self.buckets: list[dict[bytes, list[int]]] = [{} for _ in range(BANDS)]
        self.signatures: list[np.ndarray] = []

    def seen(self, text: str) -> bool:
        sig = signature(text)
        rows = HASHES // BANDS
        keys = [sig[b * rows : (b + 1) * rows].tobytes() for b in range(BANDS)]
        candidates = {i for b, key in enumerate(keys) for i in self.buckets[b].get(key, ())}
        if any(float((self.signatures[i] == sig).mean()) >= NEAR_DUPLICATE for i in candidates):
            return True
        index = len(self.signatures)
        self.signatures.append(sig)
        for b, key in enumerate(keys):
            self.buckets[b].setdefault(key, []).append(index)
        return False


@dataclass
class Package:
    name: str
    version: str
    licence: str
    held_out: bool
    files: int = 0
    bytes: int = 0
    exact_duplicates: int = 0
    near_duplicates: int = 0


@dataclass
class CodeCorpus(Corpus):
    """The standard library corpus plus packages; ``held_out`` holds the held-out packages'
    files (named ``site-packages/<path>``), never trained on."""

    held_out: list[str] = field(default_factory=list)
    packages: list[Package] = field(default_factory=list)
    stdlib_validation: list[str] = field(default_factory=list)
    near_duplicates: int = 0

    def manifest(self) -> dict:
        base = super().manifest()
        base["source"] = "Python standard library (sysconfig stdlib) and installed packages, *.py"
        base["dedup"] = (f"exact: sha1 of the content; near: MinHash ({HASHES} functions, {BANDS} bands) over "
                         f"3-line shingles of normalised lines, agreement >= {NEAR_DUPLICATE}")
        base["near_duplicates"] = self.near_duplicates
        base["stdlib_validation"] = self.stdlib_validation
        base["held_out_packages"] = [p.name for p in self.packages if p.held_out]
        base["held_out_files"] = len(self.held_out)
        base["held_out_bytes"] = self.bytes_of(self.held_out)
        base["packages"] = [p.__dict__ for p in self.packages]
        return base


def package_files(dist: metadata.Distribution) -> list[tuple[str, Path]]:
    """``(relative path, file)`` of the distribution's installed ``*.py`` files, tests out."""
    out = []
    for entry in dist.files or ():
        relative = Path(str(entry))
        if relative.suffix != ".py" or any(part in PACKAGE_EXCLUDED or part.endswith(".dist-info") for part in relative.parts[:-1]):
            continue
        path = Path(dist.locate_file(entry))
        if path.is_file():
            out.append((relative.as_posix(), path))
    return sorted(out)


def collect_code_corpus(packages: list[str], held_out: list[str], stdlib: Path | None = None) -> CodeCorpus:
    """The standard library under ``stdlib`` (default: the running interpreter's) and the
    installed distributions named in ``packages`` (trained on, 2% validation) and ``held_out``
    (evaluation only). A name that is not installed raises ``LookupError``; one named twice
    (or in both lists) ``ValueError``."""
    names = [*packages, *held_out]
    if len(set(names)) != len(names):
        both = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"packages named twice, or both trained on and held out: {both}")
    base = collect_corpus(stdlib)
    corpus = CodeCorpus(root=base.root, train=list(base.train), validation=list(base.validation), texts=dict(base.texts),
                        skipped_duplicates=base.skipped_duplicates, skipped_undecodable=base.skipped_undecodable)
    corpus.stdlib_validation = list(base.validation)
    hashes = {sha1_text(text) for text in base.texts.values()}
    near = NearDuplicates()
    for name in sorted(base.texts):
        near.seen(base.texts[name])
    for name in names:
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            raise LookupError(f"package {name!r} is not installed; the code corpus reads installed sources") from None
        package = Package(dist.metadata["Name"], dist.version, licence_of(dist), name in held_out)
        for relative, path in package_files(dist):
            copies = corpus.skipped_duplicates
            text = corpus.read_new(path, hashes)
            package.exact_duplicates += corpus.skipped_duplicates - copies
            if text is None:
                continue
            if near.seen(text):
                package.near_duplicates += 1
                corpus.near_duplicates += 1
                continue
            key = f"site-packages/{relative}"
            corpus.texts[key] = text
            package.files += 1
            package.bytes += len(text.encode("utf-8"))
            if package.held_out:
                corpus.held_out.append(key)
            else:
                (corpus.validation if is_validation(key) else corpus.train).append(key)
        corpus.packages.append(package)
    return corpus
