"""The training corpus: the Python standard library of the running interpreter.

Files are taken from ``sysconfig.get_paths()["stdlib"]``: every ``*.py`` file
outside test packages and installed third-party packages, decoded as strict
UTF-8, deduplicated by content hash (the first path in sorted order wins).
About 2% of files are held out for validation, chosen by a stable hash of the
relative path, so the split does not depend on file order or on the seed.
"""

from __future__ import annotations

import hashlib
import json
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path

from decodekit.models import stdlib_root

# Directory names whose contents are tests or not part of the standard library.
EXCLUDED_DIRECTORIES = frozenset(
    {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}
)
VALIDATION_PERCENT = 2


def is_validation(relative_path: str) -> bool:
    """Stable split: ``sha1(relative_path) % 100 < VALIDATION_PERCENT``."""
    digest = hashlib.sha1(relative_path.encode("utf-8")).hexdigest()
    return int(digest, 16) % 100 < VALIDATION_PERCENT


def sha1_text(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


@dataclass
class Corpus:
    """The split corpus. Paths are POSIX paths relative to ``root``."""

    root: Path
    train: list[str] = field(default_factory=list)
    validation: list[str] = field(default_factory=list)
    texts: dict[str, str] = field(default_factory=dict)
    skipped_duplicates: int = 0
    skipped_undecodable: int = 0

    def read_new(self, path: Path, hashes: set[str]) -> str | None:
        """``path``'s text if it is strict UTF-8, not empty and no copy of a text whose hash
        is in ``hashes`` (its hash is then added); else None, counted as undecodable or as a
        duplicate."""
        try:
            text = path.read_bytes().decode("utf-8")
        except UnicodeDecodeError:
            self.skipped_undecodable += 1
            return None
        if not text.strip():
            return None
        digest = sha1_text(text)
        if digest in hashes:
            self.skipped_duplicates += 1
            return None
        hashes.add(digest)
        return text

    def bytes_of(self, paths: list[str]) -> int:
        return sum(len(self.texts[path].encode("utf-8")) for path in paths)

    def manifest(self) -> dict:
        """A small JSON-ready description: file lists, byte counts, hashes."""
        return {
            "source": "Python standard library (sysconfig stdlib), *.py",
            "python_version": sysconfig.get_python_version(),
            "excluded_directories": sorted(EXCLUDED_DIRECTORIES),
            "split_rule": f"sha1(relative_path) % 100 < {VALIDATION_PERCENT} -> validation",
            "skipped_duplicates": self.skipped_duplicates,
            "skipped_undecodable": self.skipped_undecodable,
            "train_files": len(self.train),
            "train_bytes": self.bytes_of(self.train),
            "validation_files": len(self.validation),
            "validation_bytes": self.bytes_of(self.validation),
            "validation": self.validation,
            "validation_sha1": {path: sha1_text(self.texts[path]) for path in self.validation},
            "train": self.train,
        }


def _is_excluded(relative: Path) -> bool:
    return any(part in EXCLUDED_DIRECTORIES for part in relative.parts[:-1])


def collect_corpus(root: Path | None = None) -> Corpus:
    """Read, filter, deduplicate and split the standard library under ``root``."""
    root = stdlib_root() if root is None else Path(root)
    corpus = Corpus(root=root)
    seen_hashes: set[str] = set()
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root)
        if _is_excluded(relative) or not path.is_file():
            continue
        text = corpus.read_new(path, seen_hashes)
        if text is None:
            continue
        name = relative.as_posix()
        corpus.texts[name] = text
        (corpus.validation if is_validation(name) else corpus.train).append(name)
    return corpus


def write_manifest(corpus: Corpus, path: Path) -> None:
    path.write_text(json.dumps(corpus.manifest(), indent=1) + "\n", encoding="utf-8")
