"""Ingest of every source format: text, HTML, JSONL, Parquet and datasets folders; counted drops; source checks."""

from __future__ import annotations

import builtins
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kubetune.api.v1alpha1.datasetbuild import CleaningSpec, SourceSpec
from kubetune.datagen import documents
from kubetune.datagen.documents import Document

PAGE = """<!DOCTYPE html>
<html><head><title>Site | Page</title><style>p { color: red }</style>
<script>var tracking = "not prose";</script></head>
<body>
<header><a href="/">Home</a> <a href="/about">About</a></header>
<nav><ul><li>Menu one</li><li>Menu two</li></ul></nav>
<!-- a comment that is not prose -->
<h1>Fish &amp; Chips</h1>
<p>Fried   fish
is served with <b>chips</b>&nbsp;&mdash; a &quot;classic&quot;&#33;</p>
<h2>Is it healthy?</h2>
<div>Not very.<br>Eat it rarely.</div>
<ul><li>Cod</li><li>Haddock</li></ul>
<table><tr><th>Fish</th><th>Price</th></tr><tr><td>Cod</td><td>5</td></tr></table>
<aside>Related: burgers</aside><noscript>Enable JS</noscript><svg><text>logo</text></svg>
<footer>Copyright 2024</footer>
</body></html>
"""


def source(tmp_path, **kw) -> SourceSpec:
    return SourceSpec(paths=[str(tmp_path)], **kw)


def write_jsonl(path, lines: list[str]):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def save_datasets_folder(path, splits: dict[str, dict[str, list]]):
    datasets = pytest.importorskip("datasets")
    datasets.DatasetDict({name: datasets.Dataset.from_dict(cols) for name, cols in splits.items()}).save_to_disk(
        str(path)
    )
    return path


def test_html_is_turned_into_prose(tmp_path):
    page = tmp_path / "page.html"
    page.write_text(PAGE)
    docs, dropped = documents.read_documents([page], source(tmp_path))
    assert dropped == {}
    assert docs == [
        Document(
            str(page),
            "Fish & Chips.\n"
            'Fried fish is served with chips \u2014 a "classic"!\n'
            "Is it healthy?\n"
            "Not very.\nEat it rarely.\n"
            "Cod\nHaddock\n"
            "Fish Price\nCod 5",
        )
    ]
    # A heading ends a sentence once cleaned, as a markdown heading does.
    assert documents.clean(docs[0].text, CleaningSpec()).startswith("Fish & Chips. Fried fish is served")


def test_text_files_and_undecodable_or_empty_ones(tmp_path):
    (tmp_path / "a.md").write_text("# Title\n\nBody.")
    (tmp_path / "b.txt").write_bytes("\ufeffWith a BOM.".encode())
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    (tmp_path / "blank.txt").write_text("  \n\t\n")
    (tmp_path / "empty.htm").write_text("<html><script>x()</script></html>")
    docs, dropped = documents.read_documents(documents.find_files(source(tmp_path)), source(tmp_path))
    assert docs == [
        Document(str(tmp_path / "a.md"), "# Title\n\nBody."),
        Document(str(tmp_path / "b.txt"), "With a BOM."),
    ]
    assert dropped == {"empty": 2, "not_utf8": 1}


def test_jsonl_rows_and_every_drop_reason(tmp_path):
    path = write_jsonl(
        tmp_path / "rows.jsonl",
        [
            json.dumps({"body": "First document.", "title": "one"}),
            "{not json",
            json.dumps({"title": "no body"}),
            "",
            json.dumps({"body": 42}),
            json.dumps({"body": None}),
            json.dumps({"body": "   "}),
            json.dumps(["a", "list"]),
            "   ",
            json.dumps({"body": "Second document.\nTwo lines."}),
        ],
    )
    with path.open("ab") as f:
        f.write(b'{"body": "caf\xe9"}\n')
    docs, dropped = documents.read_documents([path], source(tmp_path, text_field="body"))
    assert docs == [
        Document(f"{path}#1", "First document."),
        Document(f"{path}#10", "Second document.\nTwo lines."),
    ]
    assert dropped == {"invalid_json": 2, "missing_text_field": 1, "not_a_string": 2, "empty": 1, "not_utf8": 1}


def test_parquet_rows_read_only_the_text_column(tmp_path):
    path = tmp_path / "rows.parquet"
    table = pa.table({"text": ["Row zero.", None, "", "Row three."], "other": [[1], [2], [3], [4]]})
    pq.write_table(table, path)
    pq.write_table(pa.table({"content": ["x", "y"]}), tmp_path / "other.parquet")
    pq.write_table(pa.table({"text": [1, 2]}), tmp_path / "ints.parquet")
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 not really")
    files = documents.find_files(source(tmp_path))
    assert [f.name for f in files] == ["broken.parquet", "ints.parquet", "other.parquet", "rows.parquet"]
    docs, dropped = documents.read_documents(files, source(tmp_path))
    assert docs == [Document(f"{path}#0", "Row zero."), Document(f"{path}#3", "Row three.")]
    assert dropped == {"unreadable": 1, "not_a_string": 2, "missing_text_field": 3, "empty": 1}


def test_datasets_folder_is_one_input_read_split_by_split(tmp_path):
    folder = save_datasets_folder(
        tmp_path / "corpus" / "saved",
        {
            "train": {"text": ["Train zero.", " ", "Train two."], "n": [0, 1, 2]},
            "test": {"text": ["Test zero."], "n": [3]},
        },
    )
    (tmp_path / "corpus" / "notes.md").write_text("A note.")
    files = documents.find_files(SourceSpec(paths=[str(tmp_path / "corpus")]))
    assert files == [tmp_path / "corpus" / "notes.md", folder], "the folder is not descended into"
    docs, dropped = documents.read_documents([folder], source(tmp_path))
    assert docs == [
        Document(f"{folder}/train#0", "Train zero."),
        Document(f"{folder}/train#2", "Train two."),
        Document(f"{folder}/test#0", "Test zero."),
    ]
    assert dropped == {"empty": 1}
    assert documents.read_documents([folder], source(tmp_path, text_field="body")) == ([], {"missing_text_field": 4})


def test_datasets_folder_without_the_datasets_library(tmp_path, monkeypatch):
    """The datagen image has pyarrow but not datasets: the rows datasets would load come from the Arrow files."""
    import datasets

    folder = save_datasets_folder(tmp_path / "saved", {"train": {"text": ["A.", ""]}, "test": {"text": ["B."]}})
    loaded = datasets.load_from_disk(str(folder))
    rows = [(f"{folder}/{split}#{i}", t) for split in loaded for i, t in enumerate(loaded[split]["text"])]
    expected = ([documents.Document(src, t) for src, t in rows if t], {"empty": 1})
    real_import = builtins.__import__

    def no_datasets(name, *args, **kwargs):
        if name == "datasets":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_datasets)
    assert documents.read_documents([folder], source(tmp_path)) == expected
    assert expected[1] == {"empty": 1}


def test_a_single_dataset_folder_and_a_broken_one(tmp_path):
    datasets = pytest.importorskip("datasets")
    single = tmp_path / "single"
    datasets.Dataset.from_dict({"text": ["Only split."]}).save_to_disk(str(single))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "dataset_dict.json").write_text("{}")
    assert documents.find_files(SourceSpec(paths=[str(single)])) == [single]
    docs, dropped = documents.read_documents([single, broken], source(tmp_path))
    assert docs == [Document(f"{single}#0", "Only split.")]
    assert dropped == {"unreadable": 1}


def test_find_files_names_the_missing_path(tmp_path):
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match=r"spec\.source\.paths\[1\]: '.*nope' is neither a file nor a folder"):
        documents.find_files(SourceSpec(paths=[str(tmp_path / "a.txt"), str(tmp_path / "nope")]))


def test_check_source_reports_missing_paths_and_an_absent_text_field(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", ["", json.dumps({"text": "x", "title": "t"})])
    assert documents.check_source(SourceSpec(paths=[str(tmp_path)])) == []
    assert documents.check_source(SourceSpec(paths=[str(tmp_path)], text_field="body")) == [
        f"spec.source.textField: 'body' is not a field of {tmp_path / 'a.jsonl'} (its fields: text, title)"
    ]
    missing = str(tmp_path / "x")
    assert documents.check_source(SourceSpec(paths=[str(tmp_path / "a.jsonl"), missing])) == [
        f"spec.source.paths[1]: {missing!r} is neither a file nor a folder"
    ]


def test_check_source_looks_at_the_first_readable_structured_input_only(tmp_path):
    (tmp_path / "0.txt").write_text("plain text has no fields")
    (tmp_path / "1.parquet").write_bytes(b"unreadable")
    pq.write_table(pa.table({"content": ["x"], "id": [1]}), tmp_path / "2.parquet")
    write_jsonl(tmp_path / "3.jsonl", [json.dumps({"body": "x"})])
    assert documents.check_source(SourceSpec(paths=[str(tmp_path)], text_field="body")) == [
        f"spec.source.textField: 'body' is not a field of {tmp_path / '2.parquet'} (its fields: content, id)"
    ]
    assert documents.check_source(SourceSpec(paths=[str(tmp_path)], text_field="content")) == []


def test_check_source_reads_a_datasets_folder_schema(tmp_path):
    folder = save_datasets_folder(tmp_path / "saved", {"train": {"question": ["q"], "answer": ["a"]}})
    assert documents.check_source(SourceSpec(paths=[str(folder)])) == [
        f"spec.source.textField: 'text' is not a field of {folder} (its fields: question, answer)"
    ]


def write_pdf(path, pages: list[str]) -> None:
    """A PDF 1.4 file of one text line per page in Helvetica, written byte by byte (objects, xref, trailer), as
    a word processor's export would hold it; an empty string gives a page with no text layer, as a scan has."""
    objects = ["<< /Type /Catalog /Pages 2 0 R >>", ""]
    kids = []
    font = 3 + 2 * len(pages)
    for i, text in enumerate(pages):
        page, content = 3 + 2 * i, 4 + 2 * i
        kids.append(f"{page} 0 R")
        stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET" if text else ""
        objects.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents {content} 0 R "
            f"/Resources << /Font << /F1 {font} 0 R >> >> >>"
        )
        objects.append(f"<< /Length {len(stream)} >>\nstream\n{stream}\nendstream")
    objects[1] = f"<< /Type /Pages /Kids [{' '.join(kids)}] /Count {len(pages)} >>"
    objects.append("<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    out, offsets = b"%PDF-1.4\n", []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n{body}\nendobj\n".encode()
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += "".join(f"{o:010d} 00000 n \n" for o in offsets).encode()
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    path.write_bytes(out)


def test_pdfs_are_read_page_by_page_and_a_scan_or_a_broken_one_is_counted(tmp_path):
    write_pdf(tmp_path / "guide.pdf", ["LoRA trains two small matrices per layer.", "QLoRA quantizes the base."])
    write_pdf(tmp_path / "scan.pdf", [""])
    (tmp_path / "broken.pdf").write_bytes(b"%PDF-1.4\nnot a pdf at all")
    docs, dropped = documents.read_documents(documents.find_files(source(tmp_path)), source(tmp_path))
    assert docs == [
        Document(str(tmp_path / "guide.pdf"), "LoRA trains two small matrices per layer.\n\nQLoRA quantizes the base.")
    ]
    assert dropped == {"no_text_layer": 1, "unreadable": 1}
