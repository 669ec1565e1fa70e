"""Reading labelled data: CSV and JSON Lines, joined text columns, errors that say what to fix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from classifiers.base import DatasetError
from classifiers.datasets import LabelledData, read_labelled

HEADER = "subject,body,kind,area,language\n"
ROWS = (
    "Card charged twice,Please refund the second payment,complaint,billing,en\n"
    'Посилка,"Де моя посилка?\nЧекаю тиждень",question,delivery,uk\n'
    ",,question,delivery,en\n"
    ",Thanks for the quick help,feedback,,en\n"
)


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_text(text, encoding=encoding)
    return path


def jsonl(path: Path, rows: list[object]) -> Path:
    lines = [json.dumps(row, ensure_ascii=False) for row in rows]
    return write(path, "\n".join(lines) + "\n")


def test_csv_joins_text_columns_and_skips_rows_without_text(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write(tmp_path / "data.csv", HEADER + ROWS)

    data = read_labelled(path, ["subject", "body"], ["kind", "area"])

    assert data.texts == [
        "Card charged twice\nPlease refund the second payment",
        "Посилка\nДе моя посилка?\nЧекаю тиждень",
        "Thanks for the quick help",
    ]
    assert data.labels == {
        "kind": ["complaint", "question", "feedback"],
        "area": ["billing", "delivery", None],
    }
    assert data.skipped == 1
    assert data.axes == ("kind", "area")
    [warning] = [r for r in caplog.records if r.levelname == "WARNING"]
    assert warning.getMessage().endswith(
        "skipped 1 row(s) with no text in column(s) 'subject', 'body'"
    )


def test_csv_with_byte_order_mark_reads_the_first_column(tmp_path: Path) -> None:
    path = write(tmp_path / "excel.csv", HEADER + ROWS, encoding="utf-8-sig")
    assert path.read_bytes().startswith(b"\xef\xbb\xbf")

    data = read_labelled(path, ["subject"], ["kind"])

    assert data.texts[0] == "Card charged twice"


def test_csv_unknown_column_names_it_and_the_available_ones(tmp_path: Path) -> None:
    path = write(tmp_path / "data.csv", HEADER + ROWS)

    with pytest.raises(DatasetError) as caught:
        read_labelled(path, ["subject", "text"], ["urgency"])

    message = str(caught.value)
    assert "data.csv" in message
    assert "'text'" in message and "'urgency'" in message
    assert "'subject', 'body', 'kind', 'area', 'language'" in message


def test_jsonl_reads_rows_with_varying_keys_and_blank_lines(tmp_path: Path) -> None:
    path = jsonl(
        tmp_path / "data.jsonl",
        [
            {"subject": "Пароль", "body": "Не можу увійти", "kind": "question", "area": "account"},
            {"body": "Refund please", "kind": "complaint", "area": None},
            {"subject": "", "body": "", "kind": "spam"},
            {"subject": "Rating", "kind": 5},
        ],
    )
    write(path, path.read_text(encoding="utf-8") + "\n\n")

    data = read_labelled(path, ["subject", "body"], ["kind", "area"])

    assert data.texts == ["Пароль\nНе можу увійти", "Refund please", "Rating"]
    assert data.labels == {
        "kind": ["question", "complaint", "5"],
        "area": ["account", None, None],
    }
    assert data.skipped == 1


def test_ndjson_suffix_is_json_lines(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "data.ndjson", [{"text": "hello", "kind": "feedback"}])
    assert read_labelled(path, ["text"], ["kind"]).texts == ["hello"]


def test_jsonl_unknown_column_names_the_keys_seen(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "data.jsonl", [{"text": "hi", "kind": "feedback"}, {"extra": 1}])

    with pytest.raises(DatasetError, match=r"no column 'body'.*'extra', 'kind', 'text'"):
        read_labelled(path, ["body"], ["kind"])


def test_jsonl_bad_line_is_named_by_number(tmp_path: Path) -> None:
    path = write(tmp_path / "data.jsonl", '{"text": "ok", "kind": "a"}\n{"text": oops}\n')

    with pytest.raises(DatasetError, match=r"data\.jsonl line 2 is not valid JSON"):
        read_labelled(path, ["text"], ["kind"])


def test_jsonl_line_that_is_not_an_object_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "data.jsonl", '["text", "kind"]\n')

    with pytest.raises(DatasetError, match="line 1 is not a JSON object"):
        read_labelled(path, ["text"], ["kind"])


def test_jsonl_nested_value_is_refused_naming_line_and_column(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "data.jsonl", [{"text": {"html": "<p>hi</p>"}, "kind": "a"}])

    with pytest.raises(DatasetError, match="line 1 column 'text' holds a dict"):
        read_labelled(path, ["text"], ["kind"])


def test_unsupported_suffix_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "data.xlsx", "whatever")

    with pytest.raises(DatasetError, match=r"data\.xlsx is neither CSV"):
        read_labelled(path, ["text"], ["kind"])


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"nope\.csv does not exist"):
        read_labelled(tmp_path / "nope.csv", ["text"], ["kind"])


def test_file_that_is_not_utf8_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "cp1251.csv"
    path.write_bytes("text,kind\nПривіт,question\n".encode("cp1251"))

    with pytest.raises(DatasetError, match=r"not valid UTF-8 .*; save it as UTF-8"):
        read_labelled(path, ["text"], ["kind"])


def test_a_semicolon_separated_file_gets_a_hint(tmp_path: Path) -> None:
    path = write(tmp_path / "excel.csv", "\ufefftext;kind\nПривіт;question\n")

    with pytest.raises(DatasetError, match="It looks separated by ';': save it as comma-sep"):
        read_labelled(path, ["text"], ["kind"])


def test_file_without_any_text_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "empty.csv", "text,kind\n,question\n  ,feedback\n")

    with pytest.raises(DatasetError, match="no row with text in column"):
        read_labelled(path, ["text"], ["kind"])


def test_empty_csv_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="is empty"):
        read_labelled(write(tmp_path / "empty.csv", ""), ["text"], ["kind"])


def test_no_text_column_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "data.csv", HEADER + ROWS)

    with pytest.raises(DatasetError, match="No text column"):
        read_labelled(path, [], ["kind"])


def test_same_content_in_csv_and_jsonl_has_the_same_fingerprint(tmp_path: Path) -> None:
    csv_path = write(tmp_path / "a.csv", "text,kind\nПривіт,question\nhello,\n")
    jsonl_path = jsonl(
        tmp_path / "a.jsonl", [{"text": "Привіт", "kind": "question"}, {"text": "hello"}]
    )

    from_csv = read_labelled(csv_path, ["text"], ["kind"])
    from_jsonl = read_labelled(jsonl_path, ["text"], ["kind"])

    assert from_csv.fingerprint == from_jsonl.fingerprint
    assert len(from_csv.fingerprint) == 64


def test_fingerprint_changes_with_any_label_and_ignores_blank_versus_none() -> None:
    base = LabelledData(texts=["a", "b"], labels={"kind": ["x", None]})

    assert LabelledData(["a", "b"], {"kind": ["x", " "]}).fingerprint == base.fingerprint
    assert LabelledData(["a", "b"], {"kind": ["x", "y"]}).fingerprint != base.fingerprint
    assert LabelledData(["a", "b"], {"area": ["x", None]}).fingerprint != base.fingerprint
    assert LabelledData(["a", "c"], {"kind": ["x", None]}).fingerprint != base.fingerprint


def test_labels_must_align_with_texts() -> None:
    with pytest.raises(DatasetError, match="Axis 'kind' has 1 labels for 2 texts"):
        LabelledData(texts=["a", "b"], labels={"kind": ["x"]})


def test_labelled_returns_rows_and_labels_of_one_axis() -> None:
    data = LabelledData(texts=["a", "b", "c"], labels={"kind": ["x", None, "y"]})

    assert data.labelled("kind") == ([0, 2], ["x", "y"])
    with pytest.raises(DatasetError, match="'area' is not in the data; its axes are 'kind'"):
        data.labelled("area")
