"""Built-in domains: present, non-empty, deterministic, disjoint splits, and clearly different from each other."""

from __future__ import annotations

import ast
import platform
import re
import unicodedata

import pytest

from hybridtune.data import BUILTIN_CORPORA, corpus
from hybridtune.data.builtin import EXCLUDED_DIRS, stdlib_dir, stdlib_source_files, unicode_line

NAMES = ("python-docs", "python-code", "unicode-names")


@pytest.fixture(scope="module")
def opened():
    return {name: corpus(name) for name in NAMES}


def test_registered():
    assert set(NAMES) <= set(BUILTIN_CORPORA)


@pytest.mark.parametrize("name", NAMES)
def test_non_empty_disjoint_deterministic(opened, name):
    c = opened[name]
    records = {s: c.records(s) for s in ("train", "eval", "all")}
    train_keys = {r.key for r in records["train"]}
    eval_keys = {r.key for r in records["eval"]}
    assert records["train"] and records["eval"]
    assert not train_keys & eval_keys
    assert train_keys | eval_keys == {r.key for r in records["all"]}
    assert len({r.key for r in records["all"]}) == len(records["all"])  # keys unique
    keys = [r.key for r in records["all"]]
    # canonical order: sorted names / paths; code points for the Unicode chunks
    assert keys == sorted(keys, key=(lambda k: int(k[2:], 16)) if name == "unicode-names" else None)
    n = len(records["all"])
    assert 0.03 * n <= len(records["eval"]) <= 0.2 * n
    fresh = BUILTIN_CORPORA[name]()
    for split in ("train", "eval"):
        assert fresh.content_hash(split) == c.content_hash(split)
    assert c.content_hash("train") != c.content_hash("eval")


@pytest.mark.parametrize("name", NAMES)
def test_describe_records_interpreter(opened, name):
    d = opened[name].describe()
    assert d["name"] == name and d["kind"] == "builtin"
    assert d["python"]["version"] == platform.python_version()
    for split in ("train", "eval"):
        assert len(d["splits"][split]["content_hash"]) == 64
        assert d["splits"][split]["characters"] > 10_000


def test_domains_differ(opened):
    hashes = {opened[n].content_hash("all") for n in NAMES}
    assert len(hashes) == 3
    texts = {n: set(opened[n].documents("all")) for n in NAMES}
    assert not texts["python-docs"] & texts["python-code"]
    assert not texts["python-code"] & texts["unicode-names"]


def test_python_docs_is_prose(opened):
    c = opened["python-docs"]
    from pydoc_data.topics import topics

    assert [r.key for r in c.records("all")] == sorted(k for k in topics if topics[k].strip())
    text = c.text("all")
    words = re.findall(r"[A-Za-z]+", text)
    assert {"the", "of", "statement"} <= {w.lower() for w in words}
    assert sum(len(w) for w in words) / len(text) > 0.6  # mostly words, unlike the other two domains


def test_python_code_is_stdlib_source(opened):
    c = opened["python-code"]
    root = stdlib_dir()
    keys = [r.key for r in c.records("all")]
    files = stdlib_source_files(root)
    # empty files (e.g. email/mime/__init__.py) are not documents
    assert keys == [f for f in files if (root / f).read_text(encoding="utf-8").strip()]
    assert len(keys) < len(files)
    assert {"os.py", "json/decoder.py", "collections/__init__.py"} <= set(keys)
    for key in keys:
        parts = key.split("/")
        assert not set(parts[:-1]) & EXCLUDED_DIRS, key
        assert not parts[-1].startswith("_sysconfigdata"), key
    for record in c.records("eval"):
        assert record.text == (root / record.key).read_text(encoding="utf-8")
        ast.parse(record.text, filename=record.key)  # every document is valid Python of this interpreter


def test_unicode_names_is_a_table(opened):
    c = opened["unicode-names"]
    assert c.describe()["unicode_version"] == unicodedata.unidata_version
    line_re = re.compile(r"^U\+[0-9A-F]{4,6} (\S+ )?[A-Z0-9][A-Z0-9 \-]* \([A-Z][a-z]\)$")
    for doc in c.documents("eval"):
        for line in doc.splitlines():
            assert line_re.match(line), line
    first = c.records("all")[0]
    assert first.key == "U+0000"
    assert first.text.splitlines()[:2] == ["U+0020 SPACE (Zs)", "U+0021 ! EXCLAMATION MARK (Po)"]
    assert unicode_line(0x0301) == "U+0301 \u25cc\u0301 COMBINING ACUTE ACCENT (Mn)"
    assert unicode_line(0x200B) == "U+200B ZERO WIDTH SPACE (Cf)"
    assert unicode_line(0xAC00) is None and unicode_line(0x0007) is None
    all_text = c.text("all")
    assert "U+4E00 " not in all_text and "U+AC00 " not in all_text  # CJK ideograph, Hangul syllable
    assert "SQUARED CJK UNIFIED IDEOGRAPH-" in all_text  # only algorithmic *names* are dropped
    assert "\u2028" not in all_text and "\x85" not in all_text  # nothing that str.splitlines would split on


def test_eval_fraction_option(opened):
    wide = corpus("python-code", eval_fraction=0.5)
    assert len(wide.records("eval")) > 2 * len(opened["python-code"].records("eval"))
    # a larger fraction only adds documents to eval: the rule is a threshold on a fixed score
    assert {r.key for r in opened["python-code"].records("eval")} <= {r.key for r in wide.records("eval")}
