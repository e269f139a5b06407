"""The code corpus: installed packages' sources, exact and near-duplicate removal, licences,
held-out packages, against distributions built in the test."""

from __future__ import annotations

import json
import sys

import pytest

from decodekit.train.packages import collect_code_corpus, signature

BODY = "\n".join(f"def function_{i}(x):\n    y = x * {i} + {i * 7}\n    return y - {i}\n" for i in range(40))


def install(site, name: str, licence: str, files: dict[str, str]) -> None:
    """A distribution as pip leaves it: its files, and a dist-info with METADATA and RECORD."""
    for relative, text in files.items():
        path = site / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    info = site / f"{name}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.4\nName: {name}\nVersion: 1.0\nLicense-Expression: {licence}\n")
    (info / "RECORD").write_text("".join(f"{r},,\n" for r in files) + f"{info.name}/METADATA,,\n")


@pytest.fixture
def site(tmp_path, monkeypatch):
    stdlib = tmp_path / "stdlib"
    stdlib.mkdir()
    (stdlib / "shared.py").write_text("import os\n\nprint(os.sep)\n" * 5)
    (stdlib / "other.py").write_text(BODY.replace("function", "helper"))
    packages = tmp_path / "site"
    packages.mkdir()
    near = BODY.replace("    return y", "    # the result\n    return  y") + "\n\n# trailing comment\n"
    install(packages, "alpha", "MIT", {
        "alpha/__init__.py": BODY,
        "alpha/copy_of_stdlib.py": "import os\n\nprint(os.sep)\n" * 5,
        "alpha/reformatted.py": near,
        "alpha/distinct.py": "\n".join(f"class Thing{i}:\n    size = {i}\n    name = 'thing{i}'\n" for i in range(40)),
        "alpha/tests/test_alpha.py": "def test():\n    assert True\n",
        "alpha/empty.py": "\n",
    })
    install(packages, "beta", "Apache-2.0", {
        "beta/core.py": "\n".join(f"VALUE_{i} = [{i}, {i + 1}, {i + 2}]\nTOTAL_{i} = sum(VALUE_{i})\n" for i in range(40)),
        "beta/dup.py": BODY,
    })
    monkeypatch.syspath_prepend(str(packages))
    return stdlib


def test_packages_join_the_stdlib_without_copies_tests_or_held_out_files(site):
    corpus = collect_code_corpus(["alpha"], ["beta"], stdlib=site)
    trained = set(corpus.train) | set(corpus.validation)
    assert {"shared.py", "other.py"} <= trained  # the stdlib keeps its names
    assert "site-packages/alpha/__init__.py" in trained and "site-packages/alpha/distinct.py" in trained
    # an exact copy of a stdlib file, a reformatted copy, tests and empty files are not taken
    dropped = {"copy_of_stdlib.py", "reformatted.py", "tests/test_alpha.py", "empty.py"}
    assert not {f"site-packages/alpha/{name}" for name in dropped} & trained
    alpha, beta = corpus.packages
    assert (alpha.name, alpha.licence, alpha.held_out, alpha.files) == ("alpha", "MIT", False, 2)
    assert (alpha.exact_duplicates, alpha.near_duplicates) == (1, 1)
    # a held-out package is evaluation only, and its copies of trained code are dropped too
    assert corpus.held_out == ["site-packages/beta/core.py"] and beta.held_out and beta.licence == "Apache-2.0"
    assert not set(corpus.held_out) & trained and beta.exact_duplicates == 1
    manifest = json.loads(json.dumps(corpus.manifest()))
    assert manifest["held_out_packages"] == ["beta"] and manifest["near_duplicates"] == 1
    assert manifest["stdlib_validation"] == corpus.stdlib_validation


def test_minhash_estimates_similarity():
    same = signature(BODY)
    assert (signature(BODY + "\n\n") == same).all()  # blank lines are not content
    edited = BODY.replace("function_3(", "renamed(")
    assert (signature(edited) == same).mean() > 0.8
    unrelated = "\n".join(f"x{i} = {{'k': {i}}}\nprint(x{i})\nassert x{i}\n" for i in range(40))
    assert (signature(unrelated) == same).mean() < 0.2


def test_a_package_that_is_not_installed_is_named(site):
    with pytest.raises(LookupError, match="not-a-package-xyz"):
        collect_code_corpus(["not-a-package-xyz"], [], stdlib=site)
    assert "alpha" not in sys.modules


def test_a_package_both_trained_on_and_held_out_is_refused(site):
    with pytest.raises(ValueError, match="alpha"):
        collect_code_corpus(["alpha"], ["alpha"], stdlib=site)
    with pytest.raises(ValueError, match="beta"):
        collect_code_corpus(["beta", "alpha", "beta"], [], stdlib=site)
