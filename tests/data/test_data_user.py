"""User corpora: txt / jsonl / json / parquet round trips, offline loading, and errors that name the path."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hybridtune.data import CorpusError, corpus, user_corpus


@pytest.fixture
def cache(tmp_path):
    # keep the datasets arrow cache out of the user's home
    return str(tmp_path / "hf-cache")


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


PARAGRAPHS = [f"Paragraph {i} talks about topic {i * 7 % 13}.\nIt has a second line." for i in range(40)]


def test_txt_file_paragraphs(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("\n\n  \n".join(PARAGRAPHS) + "\n\n\n", encoding="utf-8")
    c = corpus(str(path))
    assert c.name == str(path) and c.source == str(path.resolve())
    assert c.documents("all") == PARAGRAPHS
    assert c.records("all")[0].key == PARAGRAPHS[0]
    assert c.documents("eval") and c.documents("train")
    assert c.describe()["format"] == "txt" and c.describe()["sample_by"] == "paragraph"
    # adding a paragraph does not move the others between splits (the key is the text)
    path.write_text("\n\n".join(["A brand new first paragraph.", *PARAGRAPHS]), encoding="utf-8")
    grown = corpus(path)
    assert set(c.documents("eval")) <= set(grown.documents("eval"))


def test_txt_crlf_and_lines(tmp_path):
    path = tmp_path / "win.txt"
    path.write_bytes(b"one\r\ntwo\r\n\r\nthree\r\n")
    assert corpus(path).documents("all") == ["one\ntwo", "three"]
    assert corpus(path, sample_by="line").documents("all") == ["one", "two", "three"]
    assert corpus(path, sample_by="document").documents("all") == ["one\ntwo\n\nthree\n"]


def test_txt_directory_one_document_per_file(tmp_path):
    root = tmp_path / "docs"
    (root / "sub").mkdir(parents=True)
    (root / ".hidden").mkdir()
    texts = {f"f{i:02d}.txt": f"file {i}\n\nbody" for i in range(20)}
    for name, text in texts.items():
        (root / name).write_text(text, encoding="utf-8")
    (root / "sub" / "deep.txt").write_text("deep file", encoding="utf-8")
    (root / "empty.txt").write_text("  \n", encoding="utf-8")
    (root / ".hidden" / "secret.txt").write_text("skip me", encoding="utf-8")
    (root / "README.md").write_text("not a corpus file", encoding="utf-8")
    c = corpus(root)
    keys = [r.key for r in c.records("all")]
    assert keys == sorted([*texts, "sub/deep.txt"])
    assert c.documents("all")[0] == "file 0\n\nbody"
    assert c.describe()["files"] == 22  # empty.txt is read, but gives no document
    assert len(corpus(root, sample_by="paragraph").documents("all")) == 41


def test_jsonl_round_trip(tmp_path, cache):
    rows = [{"text": f"row {i}", "id": i, "other": "x"} for i in range(50)]
    rows.insert(3, {"text": None, "id": 999, "other": "x"})
    path = write_jsonl(tmp_path / "data.jsonl", rows)
    c = corpus(path, cache_dir=cache)
    assert c.documents("all") == [f"row {i}" for i in range(50)]
    d = c.describe()
    assert d["format"] == "json" and d["text_field"] == "text"
    again = corpus(path, cache_dir=cache)
    assert again.content_hash("eval") == c.content_hash("eval")
    by_id = corpus(path, id_field="id", cache_dir=cache)
    assert [r.key for r in by_id.records("all")][:3] == ["0", "1", "2"]


def test_jsonl_custom_field_and_missing_field(tmp_path, cache):
    path = write_jsonl(tmp_path / "c.jsonl", [{"content": f"c{i}"} for i in range(10)])
    assert corpus(path, text_field="content", cache_dir=cache).documents("all") == [f"c{i}" for i in range(10)]
    with pytest.raises(CorpusError, match=r"no field 'text' for text_field; fields present: content") as info:
        corpus(path, cache_dir=cache)
    assert str(path) in str(info.value)


def test_json_array_and_parquet(tmp_path, cache):
    texts = [f"parquet document {i}" for i in range(30)]
    (tmp_path / "arr.json").write_text(json.dumps([{"text": t} for t in texts]), encoding="utf-8")
    assert corpus(tmp_path / "arr.json", cache_dir=cache).documents("all") == texts
    pq.write_table(pa.table({"text": texts, "n": list(range(30))}), tmp_path / "data.parquet")
    c = corpus(tmp_path / "data.parquet", cache_dir=cache)
    assert c.documents("all") == texts and c.describe()["format"] == "parquet"
    # a directory of parquet shards reads them in path order
    shards = tmp_path / "shards"
    shards.mkdir()
    pq.write_table(pa.table({"text": texts[15:]}), shards / "part-1.parquet")
    pq.write_table(pa.table({"text": texts[:15]}), shards / "part-0.parquet")
    assert corpus(shards, cache_dir=cache).documents("all") == texts


def test_table_formats_load_offline(tmp_path, cache, monkeypatch):
    path = write_jsonl(tmp_path / "off.jsonl", [{"text": f"t{i}"} for i in range(5)])

    def no_network(self, address):
        raise AssertionError(f"network access attempted: {address}")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    assert len(corpus(path, cache_dir=cache).documents("all")) == 5


def test_split_assignment_same_for_same_texts_across_formats(tmp_path, cache):
    texts = [f"shared document {i}" for i in range(60)]
    (tmp_path / "a.txt").write_text("\n\n".join(texts), encoding="utf-8")
    write_jsonl(tmp_path / "a.jsonl", [{"text": t} for t in texts])
    from_txt = corpus(tmp_path / "a.txt")
    from_jsonl = corpus(tmp_path / "a.jsonl", cache_dir=cache)
    assert from_txt.content_hash("eval") == from_jsonl.content_hash("eval")
    assert from_txt.content_hash("train") == from_jsonl.content_hash("train")


# ---- errors: each names the path and what is accepted ----


def assert_names_path(info, path):
    assert str(path) in str(info.value)
    assert info.value.path == str(path)
    assert isinstance(info.value, ValueError)


def test_missing_path(tmp_path):
    missing = tmp_path / "nope.txt"
    with pytest.raises(CorpusError, match="does not exist; expected a .txt, .jsonl, .json or .parquet") as info:
        corpus(str(missing))
    assert_names_path(info, missing)
    with pytest.raises(CorpusError, match="does not exist") as info:
        corpus(tmp_path / "no-dir" / "data")  # a PathLike is always a path, even without a suffix
    assert_names_path(info, tmp_path / "no-dir" / "data")


def test_wrong_extension(tmp_path):
    path = tmp_path / "table.csv"
    path.write_text("text\nhello\n", encoding="utf-8")
    with pytest.raises(CorpusError, match=r"unsupported file type '.csv'.*expected a .txt, .jsonl") as info:
        corpus(path)
    assert_names_path(info, path)


@pytest.mark.parametrize("content", [b"", b"   \n\n\t\n"])
def test_empty_txt(tmp_path, content):
    path = tmp_path / "empty.txt"
    path.write_bytes(content)
    with pytest.raises(CorpusError, match="is empty") as info:
        corpus(path)
    assert_names_path(info, path)


def test_empty_tables(tmp_path, cache):
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    with pytest.raises(CorpusError, match="is empty") as info:
        corpus(empty, cache_dir=cache)
    assert_names_path(info, empty)
    blank = write_jsonl(tmp_path / "blank.jsonl", [{"text": " "}, {"text": None}])
    with pytest.raises(CorpusError, match="is empty: no non-blank documents") as info:
        corpus(blank, cache_dir=cache)
    assert_names_path(info, blank)


def test_unreadable_inputs(tmp_path, cache, monkeypatch):
    bad_utf8 = tmp_path / "latin1.txt"
    bad_utf8.write_bytes("caf\u00e9 au lait".encode("latin-1"))
    with pytest.raises(CorpusError, match="is not valid utf-8 text") as info:
        corpus(bad_utf8)
    assert_names_path(info, bad_utf8)
    assert corpus(bad_utf8, encoding="latin-1").documents("all") == ["caf\u00e9 au lait"]

    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"text": "fine"}\n{"text": oops\n', encoding="utf-8")
    with pytest.raises(CorpusError, match="broken.jsonl': line 2 is not a JSON object") as info:
        corpus(broken, cache_dir=cache)
    assert_names_path(info, broken)

    corrupt = tmp_path / "corrupt.parquet"
    corrupt.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(CorpusError, match="cannot read parquet corpus") as info:
        corpus(corrupt, cache_dir=cache)
    assert_names_path(info, corrupt)

    locked = tmp_path / "locked.txt"
    locked.write_text("secret", encoding="utf-8")
    real_read_text = Path.read_text

    def denied(self, *args, **kwargs):
        if self == locked:  # chmod does not stop root, so simulate the OS refusing
            raise PermissionError(13, "Permission denied", str(self))
        return real_read_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", denied)
    with pytest.raises(CorpusError, match="cannot read corpus file .*Permission denied") as info:
        corpus(locked)
    assert_names_path(info, locked)


def test_bad_directories_and_options(tmp_path):
    nothing = tmp_path / "nothing"
    nothing.mkdir()
    (nothing / "a.csv").write_text("x", encoding="utf-8")
    with pytest.raises(CorpusError, match="holds no .txt, .jsonl, .json or .parquet files") as info:
        corpus(nothing)
    assert_names_path(info, nothing)
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "a.txt").write_text("x", encoding="utf-8")
    write_jsonl(mixed / "b.jsonl", [{"text": "y"}])
    with pytest.raises(CorpusError, match=r"mixes formats \(json, txt\)") as info:
        corpus(mixed)
    assert_names_path(info, mixed)
    path = tmp_path / "ok.txt"
    path.write_text("a\n\nb", encoding="utf-8")
    with pytest.raises(CorpusError, match="sample_by='sentence' is not one of document, paragraph, line"):
        corpus(path, sample_by="sentence")
    with pytest.raises(CorpusError, match=r"bad options \['colour'\]"):
        corpus(path, colour="red")
    with pytest.raises(CorpusError, match="eval_fraction"):
        user_corpus(path, eval_fraction=2)


def test_single_document_file_holds_out_its_end(tmp_path):
    path = tmp_path / "one.txt"
    path.write_text("only one paragraph", encoding="utf-8")
    c = corpus(path)
    assert c.documents("all") == ["only one paragraph"]
    assert (c.documents("train"), c.documents("eval")) == (["only one"], ["paragraph"])
    assert "the last 10% of the text is held out" in c.describe()["split_rule"]


def test_a_document_too_short_to_cut_names_a_remedy_the_user_can_type(tmp_path):
    path = tmp_path / "word.txt"
    path.write_text("word", encoding="utf-8")
    with pytest.raises(CorpusError, match=r"split 'eval' of corpus .* is empty .*data\.eval=PATH") as info:
        corpus(path).documents("eval")
    assert "split='all'" not in str(info.value)


def test_a_small_directory_is_cut_into_paragraphs_and_its_tail_held_out(tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("first thought\n\nsecond thought\n\nthird thought", encoding="utf-8")
    c = corpus(tmp_path / "notes")
    assert c.describe()["sample_by"] == "paragraph" and c.documents("all")[0] == "first thought"
    assert c.documents("eval") == ["thought"] and c.documents("train")[-1] == "third"


def test_undecodable_text_names_the_config_key_that_fixes_it(tmp_path):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\u00e9 au lait".encode("latin-1"))
    with pytest.raises(CorpusError, match="data.encoding=latin-1"):
        corpus(bad)


def test_a_bad_jsonl_line_is_numbered(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"text": "a"}\n\n{"text": "b"}\n[1, 2]\n', encoding="utf-8")
    with pytest.raises(CorpusError, match=r"rows\.jsonl': line 4 is not a JSON object \(a list"):
        corpus(path, cache_dir=str(tmp_path / "hf"))
