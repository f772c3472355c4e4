"""Tests for models.data: reading tables, validation, per-task splits and probe sets."""

from __future__ import annotations

import io
import json
import pickle
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.data import (
    MAX_COLUMN_NAME,
    NA_STRINGS,
    SUPPORTED_FORMATS,
    ClassSetAside,
    DataError,
    TaskData,
    build_probe_set,
    build_task,
    describe_labels,
    detect_format,
    load_dataset,
    normalise_label,
    read_table,
    validate_text_column,
)

# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def write_bytes(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def write_csv(tmp_path: Path, name: str, text: str) -> Path:
    return write_bytes(tmp_path, name, text.encode("utf-8"))


def write_jsonl(tmp_path: Path, name: str, records: list[dict[str, object]]) -> Path:
    lines = "".join(json.dumps(r) + "\n" for r in records)
    return write_bytes(tmp_path, name, lines.encode("utf-8"))


def write_parquet(tmp_path: Path, name: str, table: pa.Table) -> Path:
    path = tmp_path / name
    pq.write_table(table, path)
    return path


def labelled_frame(labels: Mapping[str, Sequence[object]], n: int | None = None) -> pd.DataFrame:
    n = n if n is not None else len(next(iter(labels.values())))
    data: dict[str, object] = {"text": [f"text number {i}" for i in range(n)]}
    data.update(labels)
    return pd.DataFrame(data)


def balanced(classes: list[str], n: int) -> list[object]:
    return [classes[i % len(classes)] for i in range(n)]


def task(frame: pd.DataFrame, column: str, **kwargs: object) -> TaskData:
    return build_task(
        frame,
        name=column,
        text_column="text",
        label_column=column,
        dataset="d.csv",
        **kwargs,  # type: ignore[arg-type]
    )


# ---------------------------------------------------------------------------------------------
# DataError
# ---------------------------------------------------------------------------------------------


def test_data_error_message_and_attributes() -> None:
    err = DataError("only 1 class left", column="stenosis", dataset="reports.csv")
    assert isinstance(err, ValueError)
    assert str(err) == "dataset 'reports.csv', column 'stenosis': only 1 class left"
    assert (err.column, err.problem, err.dataset) == (
        "stenosis",
        "only 1 class left",
        "reports.csv",
    )
    assert str(DataError("the file is empty")) == "The file is empty"
    assert str(DataError("x", dataset="a.csv")) == "dataset 'a.csv': x"


def test_data_error_pickles() -> None:
    err = DataError("bad", column="c", dataset="d")
    again = pickle.loads(pickle.dumps(err))
    assert (again.problem, again.column, again.dataset, str(again)) == (
        "bad",
        "c",
        "d",
        str(err),
    )


# ---------------------------------------------------------------------------------------------
# detect_format / read_table
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "fmt"),
    [
        ("a.csv", "csv"),
        ("A.CSV", "csv"),
        ("dir/x.jsonl", "jsonl"),
        ("x.ndjson", "jsonl"),
        ("x.parquet", "parquet"),
        ("x.pq", "parquet"),
    ],
)
def test_detect_format(name: str, fmt: str) -> None:
    assert detect_format(name) == fmt
    assert fmt in SUPPORTED_FORMATS


@pytest.mark.parametrize("name", ["x.xlsx", "x.json", "noext", "x.csv.gz"])
def test_detect_format_rejects_unknown(name: str) -> None:
    with pytest.raises(DataError, match="cannot tell the file format"):
        detect_format(name)


def test_read_csv_basic_and_missing_cells(tmp_path: Path) -> None:
    path = write_csv(tmp_path, "d.csv", 'text,label\nhello,a\n"with, comma",\nthird,NA\n')
    frame = read_table(path)
    assert list(frame.columns) == ["text", "label"]
    assert frame["text"].tolist() == ["hello", "with, comma", "third"]
    assert frame["label"].iloc[0] == "a"
    assert frame["label"].isna().tolist() == [False, True, True]
    assert list(frame.index) == [0, 1, 2]


def test_read_csv_accepts_bom_and_crlf(tmp_path: Path) -> None:
    path = write_bytes(tmp_path, "d.csv", b"\xef\xbb\xbftext,label\r\nh\xc3\xa9llo,a\r\n")
    frame = read_table(path)
    assert list(frame.columns) == ["text", "label"]
    assert frame["text"].tolist() == ["héllo"]


def test_read_csv_skips_blank_lines_and_strips_header(tmp_path: Path) -> None:
    frame = read_table(write_csv(tmp_path, "d.csv", "text , label\n\na,b\n\nc,d\n\n"))
    assert list(frame.columns) == ["text", "label"]
    assert frame["text"].tolist() == ["a", "c"]


def test_read_from_bytes_and_file_object() -> None:
    data = b"text,label\nx,1\n"
    assert read_table(data, fmt="csv")["label"].tolist() == ["1"]
    assert read_table(io.BytesIO(data), name="up.csv")["text"].tolist() == ["x"]
    with pytest.raises(DataError, match="without a file name"):
        read_table(data)


def test_read_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist") as info:
        read_table(tmp_path / "nope.csv")
    assert info.value.dataset == "nope.csv"


def test_read_directory(tmp_path: Path) -> None:
    folder = tmp_path / "dir.csv"
    folder.mkdir()
    with pytest.raises(DataError, match="directory"):
        read_table(folder)


def test_non_utf8_reports_offset_and_line(tmp_path: Path) -> None:
    path = write_bytes(tmp_path, "d.csv", b"text,label\nok,a\nbad\xff,b\n")
    with pytest.raises(DataError) as info:
        read_table(path)
    message = str(info.value)
    assert "UTF-8" in message
    assert "byte offset 19" in message
    assert "line 3" in message
    assert "d.csv" in message


def test_utf16_is_named(tmp_path: Path) -> None:
    path = write_bytes(tmp_path, "d.csv", "text,label\nx,y\n".encode("utf-16"))
    with pytest.raises(DataError, match="UTF-16"):
        read_table(path)


def test_non_utf8_jsonl(tmp_path: Path) -> None:
    path = write_bytes(tmp_path, "d.jsonl", b'{"text": "a\xfe"}\n')
    with pytest.raises(DataError, match=r"not valid UTF-8.*line 1"):
        read_table(path)


@pytest.mark.parametrize("data", [b"", b"\n\n  \n", b"\xef\xbb\xbf"])
@pytest.mark.parametrize("ext", ["csv", "jsonl"])
def test_empty_file(tmp_path: Path, data: bytes, ext: str) -> None:
    with pytest.raises(DataError, match="empty"):
        read_table(write_bytes(tmp_path, f"d.{ext}", data))


def test_excel_delimiter_line_above_the_header(tmp_path: Path) -> None:
    frame = read_table(write_csv(tmp_path, "d.csv", "sep=,\r\ntext,label\r\na,x\r\nb,y\r\n"))
    assert list(frame.columns) == ["text", "label"] and frame["label"].tolist() == ["x", "y"]
    with pytest.raises(DataError, match=r"malformed CSV: row 1 \(line 3\)"):
        read_table(write_csv(tmp_path, "e.csv", "sep=,\ntext,label\na,x,z\n"))
    with pytest.raises(DataError, match="Excel's 'sep=;' line: its delimiter is ';'"):
        read_table(write_csv(tmp_path, "f.csv", "sep=;\ntext;label\na;x\n"))
    with pytest.raises(DataError, match="its delimiter is '\\\\t'"):
        read_table(write_csv(tmp_path, "g.csv", "sep=\t\r\ntext\tlabel\r\na\tx\r\n"))


def test_empty_parquet_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="empty"):
        read_table(write_bytes(tmp_path, "d.parquet", b""))


def test_header_only(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="header but no data rows"):
        read_table(write_csv(tmp_path, "d.csv", "text,label\n"))


def test_parquet_without_rows(tmp_path: Path) -> None:
    table = pa.table({"text": pa.array([], pa.string()), "label": pa.array([], pa.string())})
    with pytest.raises(DataError, match="no rows"):
        read_table(write_parquet(tmp_path, "d.parquet", table))


def test_duplicate_csv_header(tmp_path: Path) -> None:
    # pandas would silently rename the second one to 'label.1'
    with pytest.raises(DataError, match="appears 2 times in the header") as info:
        read_table(write_csv(tmp_path, "d.csv", "text,label,label\na,b,c\n"))
    assert info.value.column == "label"
    assert "column 'label'" in str(info.value)


def test_duplicate_jsonl_keys(tmp_path: Path) -> None:
    path = write_bytes(
        tmp_path, "d.jsonl", b'{"text": "a", "y": 1}\n{"text": "b", "y": 1, "y": 2}\n'
    )
    with pytest.raises(DataError, match=r"more than once.*line 2") as info:
        read_table(path)
    assert info.value.column == "y"


@pytest.mark.parametrize(
    ("line", "match"),
    [
        ('{"text": "a", "y": ' + "9" * 5000 + "}", r"line 2 cannot be read as JSON \(.*digit"),
        ("[" * 200_000 + "]" * 200_000, "line 2 cannot be read as JSON: .*nested too deeply"),
    ],
)
def test_jsonl_values_json_cannot_hold(tmp_path: Path, line: str, match: str) -> None:
    path = write_bytes(tmp_path, "d.jsonl", ('{"text": "a", "y": 1}\n' + line + "\n").encode())
    with pytest.raises(DataError, match=match):
        read_table(path)


def test_duplicate_parquet_fields(tmp_path: Path) -> None:
    table = pa.Table.from_arrays(
        [pa.array(["a", "b"]), pa.array(["x", "y"]), pa.array(["u", "v"])],
        names=["text", "label", "label"],
    )
    with pytest.raises(DataError, match="appears 2 times") as info:
        read_table(write_parquet(tmp_path, "d.parquet", table))
    assert info.value.column == "label"


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_column_names_too_long_to_choose_are_refused(tmp_path: Path, fmt: str) -> None:
    # The API names a column in at most MAX_COLUMN_NAME characters: a longer one could be
    # stored but never picked as a text column or a task.
    long = "L" * (MAX_COLUMN_NAME + 1)
    fits = "F" * MAX_COLUMN_NAME
    if fmt == "csv":
        path = write_csv(tmp_path, "d.csv", f"text,{fits},{long}\na,b,c\n")
    elif fmt == "jsonl":
        line = json.dumps({"text": "a", fits: "b", long: "c"})
        path = write_bytes(tmp_path, "d.jsonl", line.encode())
    else:
        table = pa.Table.from_arrays(
            [pa.array(["a"]), pa.array(["b"]), pa.array(["c"])], names=["text", fits, long]
        )
        path = write_parquet(tmp_path, "d.parquet", table)
    with pytest.raises(DataError, match=rf"column 3's name is {MAX_COLUMN_NAME + 1} characters"):
        read_table(path)


@pytest.mark.parametrize("key", ["", "   "])
def test_blank_jsonl_key_and_parquet_field_are_refused(tmp_path: Path, key: str) -> None:
    path = write_bytes(tmp_path, "d.jsonl", json.dumps({"text": "a", key: "b"}).encode())
    with pytest.raises(DataError, match="column 2 has a blank name") as info:
        read_table(path)
    assert "d.jsonl" in str(info.value)
    table = pa.Table.from_arrays([pa.array(["a"]), pa.array(["b"])], names=[key, "label"])
    with pytest.raises(DataError, match="column 1 has a blank name"):
        read_table(write_parquet(tmp_path, "d.parquet", table))


def test_blank_csv_header_cell_is_still_named_like_pandas(tmp_path: Path) -> None:
    frame = read_table(write_csv(tmp_path, "d.csv", "text, ,label\na,b,c\n"))
    assert list(frame.columns) == ["text", "Unnamed: 1", "label"]


def test_not_parquet(tmp_path: Path) -> None:
    path = write_csv(tmp_path, "d.parquet", "text,label\na,b\n")
    with pytest.raises(DataError, match="not a Parquet file") as info:
        read_table(path)
    assert info.value.dataset == "d.parquet"


def test_truncated_parquet(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    pq.write_table(pa.table({"text": ["a", "b"]}), buffer)
    data = buffer.getvalue()
    broken = data[:4] + b"\x00" * 8 + data[-4:]
    with pytest.raises(DataError, match="Parquet"):
        read_table(broken, fmt="parquet")


def test_ragged_csv_rows(tmp_path: Path) -> None:
    path = write_csv(tmp_path, "d.csv", "text,label\na,b\nc,d,e\n")
    with pytest.raises(DataError, match=r"row 2 \(line 3\) has 3 fields but the header has 2"):
        read_table(path)
    short = write_csv(tmp_path, "s.csv", "text,label,other\na,b,c\nd,e\n")
    with pytest.raises(DataError, match=r"row 2 .* 2 fields"):
        read_table(short)


def test_unclosed_quote(tmp_path: Path) -> None:
    path = write_csv(tmp_path, "d.csv", 'text,label\na,b\n"never closed,c\nd,e\n')
    with pytest.raises(DataError, match="starting on line 3 is never closed"):
        read_table(path)


def test_stray_quote_after_quoted_field(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="malformed CSV on line 2"):
        read_table(write_csv(tmp_path, "d.csv", 'text,label\n"quoted"tail,b\n'))


@pytest.mark.parametrize(("sep", "word"), [(";", "semicolon"), ("\t", "tab")])
def test_wrong_delimiter_hint(tmp_path: Path, sep: str, word: str) -> None:
    path = write_csv(tmp_path, "d.csv", f"text{sep}label\nhello{sep}a\n")
    with pytest.raises(DataError, match=f"{word}.*delimiter looks wrong") as info:
        read_table(path)
    assert info.value.column == f"text{sep}label"


def test_max_rows(tmp_path: Path) -> None:
    body = "text,label\n" + "".join(f"t{i},a\n" for i in range(5))
    path = write_csv(tmp_path, "d.csv", body)
    assert len(read_table(path, max_rows=5)) == 5
    with pytest.raises(DataError, match="more than 4 data rows"):
        read_table(path, max_rows=4)
    jsonl = write_jsonl(tmp_path, "d.jsonl", [{"text": f"t{i}"} for i in range(5)])
    with pytest.raises(DataError, match="more than 3"):
        read_table(jsonl, max_rows=3)
    parquet = write_parquet(tmp_path, "d.parquet", pa.table({"text": [f"t{i}" for i in range(5)]}))
    with pytest.raises(DataError, match="more than the limit of 2"):
        read_table(parquet, max_rows=2)


def test_jsonl_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="line 2 is not valid JSON"):
        read_table(write_bytes(tmp_path, "a.jsonl", b'{"text": "a"}\n{"text": \n'))
    with pytest.raises(DataError, match=r"line 1 holds a JSON list.*JSON array"):
        read_table(write_bytes(tmp_path, "b.jsonl", b'[{"text": "a"}]\n'))
    with pytest.raises(DataError, match="one whole JSON object per line"):
        read_table(write_bytes(tmp_path, "c.jsonl", b'{\n  "text": "a"\n}\n'))
    with pytest.raises(DataError, match="line 1 holds a JSON string"):
        read_table(write_bytes(tmp_path, "d.jsonl", b'"just text"\n'))


def test_jsonl_union_of_keys_and_types(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path,
        "d.jsonl",
        [{"text": "a", "y": 1}, {"text": "b", "z": "q"}, {"text": "c", "y": None, "z": True}],
    )
    frame = read_table(path)
    assert list(frame.columns) == ["text", "y", "z"]
    assert frame["y"].tolist() == [1, None, None]
    assert frame["z"].tolist() == [None, "q", True]
    assert isinstance(frame["text"].dtype, pd.StringDtype)


def test_three_formats_give_the_same_frame(tmp_path: Path) -> None:
    records: list[dict[str, object]] = [
        {"text": "first, with comma", "a": "x", "b": "yes"},
        {"text": 'a "quoted" word', "a": None, "b": "no"},
        {"text": "line\nbreak", "a": "z", "b": None},
    ]
    reference = pd.DataFrame(records)
    csv_path = tmp_path / "d.csv"
    reference.to_csv(csv_path, index=False)
    jsonl_path = write_jsonl(tmp_path, "d.jsonl", records)
    parquet_path = write_parquet(tmp_path, "d.parquet", pa.Table.from_pylist(records))
    from_csv = read_table(csv_path)
    from_jsonl = read_table(jsonl_path)
    from_parquet = read_table(parquet_path)
    pd.testing.assert_frame_equal(from_csv, from_jsonl)
    pd.testing.assert_frame_equal(from_csv, from_parquet)
    pd.testing.assert_frame_equal(from_csv, reference.astype("str"))


def test_parquet_named_index_becomes_column(tmp_path: Path) -> None:
    frame = pd.DataFrame({"text": ["a", "b"]}, index=pd.Index([5, 6], name="id"))
    path = tmp_path / "d.parquet"
    frame.to_parquet(path)
    read = read_table(path)
    assert list(read.columns) == ["id", "text"]
    assert list(read.index) == [0, 1]


@pytest.mark.parametrize("levels", [["id"], ["id", "k"]])
def test_parquet_index_that_repeats_a_column_is_dropped(tmp_path: Path, levels: list[str]) -> None:
    """``set_index(col, drop=False)``: the index repeats a column; the column is kept once, and
    a named level that repeats none becomes a column as usual."""
    frame = pd.DataFrame({"id": [5, 6], "k": [1, 2], "text": ["a", "b"]})
    frame = frame.set_index(levels, drop=False)
    frame.index = frame.index.set_names([*levels[:1], *(["other"] if len(levels) > 1 else [])])
    path = tmp_path / "d.parquet"
    frame.to_parquet(path)
    read = read_table(path)
    expected = (["other"] if len(levels) > 1 else []) + ["id", "k", "text"]
    assert list(read.columns) == expected
    assert read["id"].tolist() == [5, 6] and list(read.index) == [0, 1]


def test_parquet_index_named_like_a_column_with_other_values(tmp_path: Path) -> None:
    frame = pd.DataFrame({"id": [1, 2], "text": ["a", "b"]}, index=pd.Index([7, 8], name="id"))
    path = tmp_path / "d.parquet"
    frame.to_parquet(path)
    with pytest.raises(DataError, match="name of a column but other values") as info:
        read_table(path)
    assert info.value.column == "id"


def test_parquet_categorical_and_numeric_columns(tmp_path: Path) -> None:
    table = pa.table(
        {
            "text": ["a", "b", "c"],
            "cat": pa.array(["u", "v", "u"]).dictionary_encode(),
            "num": pa.array([1, None, 0]),
        }
    )
    frame = read_table(write_parquet(tmp_path, "d.parquet", table))
    assert frame["cat"].tolist() == ["u", "v", "u"]
    assert [normalise_label(v) for v in frame["num"].tolist()] == ["1", None, "0"]


_TEXT = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc")) | st.sampled_from(",\"'\n;"),
    min_size=1,
    max_size=30,
).filter(lambda s: s.strip() != "" and s not in NA_STRINGS)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(_TEXT, st.sampled_from(["a", "b", "c"])), min_size=1, max_size=8))
def test_csv_round_trip_property(rows: list[tuple[str, str]]) -> None:
    """Whatever pandas writes (quotes, commas, line breaks, any Unicode) reads back unchanged."""
    reference = pd.DataFrame(rows, columns=["text", "label"])
    buffer = io.StringIO()
    reference.to_csv(buffer, index=False)
    frame = read_table(buffer.getvalue().encode("utf-8"), fmt="csv")
    assert frame["text"].tolist() == [r[0] for r in rows]
    assert frame["label"].tolist() == [r[1] for r in rows]


# ---------------------------------------------------------------------------------------------
# validate_text_column / load_dataset
# ---------------------------------------------------------------------------------------------


def test_missing_text_column_lists_columns() -> None:
    frame = pd.DataFrame({"Text ": ["a"], "label": ["b"]})
    with pytest.raises(DataError) as info:
        validate_text_column(frame, "text", dataset="d.csv")
    message = str(info.value)
    assert info.value.column == "text"
    assert "not found" in message
    assert "'Text '" in message and "'label'" in message
    assert "did you mean 'Text '" in message


def test_empty_texts_are_counted_with_row_numbers() -> None:
    frame = pd.DataFrame({"text": ["ok", "", "  ", None, "fine", " \t"], "y": ["a"] * 6})
    with pytest.raises(DataError) as info:
        validate_text_column(frame, "text", dataset="d.csv")
    message = str(info.value)
    assert info.value.column == "text"
    assert "4 rows of 6 have an empty text" in message
    assert "rows 2, 3, 4, 6" in message


def test_many_empty_texts_are_summarised() -> None:
    frame = pd.DataFrame({"text": [""] * 12})
    with pytest.raises(DataError, match=r"rows 1, 2, 3, 4, 5 and 7 more"):
        validate_text_column(frame, "text")


def test_non_text_values_in_jsonl(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path,
        "d.jsonl",
        [{"text": "ok"}, {"text": 5}, {"text": True}, {"text": {"a": 1}}, {"text": "fine"}],
    )
    frame = read_table(path)
    with pytest.raises(DataError) as info:
        validate_text_column(frame, "text", dataset="d.jsonl")
    message = str(info.value)
    assert info.value.column == "text"
    assert "3 rows of 5 hold non-text values" in message
    assert "rows 2, 3, 4" in message
    assert "number 5" in message


def test_non_text_values_in_parquet(tmp_path: Path) -> None:
    frame = read_table(write_parquet(tmp_path, "d.parquet", pa.table({"text": [1, 2, 3]})))
    with pytest.raises(DataError, match="non-text values"):
        validate_text_column(frame, "text")


def test_texts_are_kept_as_written() -> None:
    frame = pd.DataFrame({"text": ["  padded  ", "x"]})
    validate_text_column(frame, "text")


def test_load_dataset(tmp_path: Path) -> None:
    path = write_csv(tmp_path, "d.csv", "text,a,b\nx,1,2\ny,3,4\n")
    frame = load_dataset(path, text_column="text", label_columns=["a", "b"])
    assert list(frame.columns) == ["text", "a", "b"]
    with pytest.raises(DataError, match="listed 2 times") as info:
        load_dataset(path, text_column="text", label_columns=["a", "a"])
    assert info.value.column == "a"
    with pytest.raises(DataError, match=r"label column was not found.*'text', 'a', 'b'") as info:
        load_dataset(path, text_column="text", label_columns=["c"])
    assert info.value.column == "c"
    assert info.value.dataset == "d.csv"
    with pytest.raises(DataError, match="is the text column"):
        load_dataset(path, text_column="text", label_columns=["text"])
    with pytest.raises(DataError, match="no label column"):
        load_dataset(path, text_column="text", label_columns=[])
    with pytest.raises(DataError, match="text column was not found"):
        load_dataset(path, text_column="body", label_columns=["a"])


# ---------------------------------------------------------------------------------------------
# labels and build_task
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1, "1"),
        (1.0, "1"),
        ("1", "1"),
        (" 1 ", "1"),
        (True, "true"),
        (False, "false"),
        (np.int64(3), "3"),
        (np.float64(2.0), "2"),
        (np.bool_(True), "true"),
        (1.5, "1.5"),
        ("yes", "yes"),
        (None, None),
        (float("nan"), None),
        (pd.NA, None),
        ("", None),
        ("   ", None),
    ],
)
def test_normalise_label(value: object, expected: str | None) -> None:
    assert normalise_label(value) == expected


def test_build_task_basic() -> None:
    frame = labelled_frame({"y": balanced(["b", "a"], 50)})
    data = task(frame, "y")
    assert data.classes == ["a", "b"]
    assert data.n_train + data.n_val == 50
    assert data.n_val == 10
    assert data.set_aside == [] and data.n_missing == 0
    assert (data.name, data.dataset, data.column) == ("y", "d.csv", "y")
    for text, label in zip(data.train_texts, data.train_labels, strict=True):
        row = int(text.split()[-1])
        assert data.classes[label] == frame["y"][row]
    assert sorted(data.train_rows + data.val_rows) == list(range(50))


def test_labels_are_normalised_across_types() -> None:
    frame = labelled_frame({"y": [1, 1.0, "1", " 1", True, 0, 0.0, "0", "0 ", False] * 3})
    data = task(frame, "y", min_class_count=3)
    assert data.classes == ["0", "1", "false", "true"]


def test_label_column_missing() -> None:
    frame = labelled_frame({"y": balanced(["a", "b"], 20)})
    with pytest.raises(DataError) as info:
        task(frame, "label")
    assert info.value.column == "label"
    assert "not found" in str(info.value) and "'text', 'y'" in str(info.value)


def test_label_column_equal_to_text_column() -> None:
    frame = labelled_frame({"y": balanced(["a", "b"], 20)})
    with pytest.raises(DataError, match="is the text column") as info:
        build_task(frame, name="t", text_column="text", label_column="text", dataset="d.csv")
    assert info.value.column == "text"


def test_single_class_is_an_error() -> None:
    frame = labelled_frame({"y": ["yes"] * 20})
    with pytest.raises(DataError, match=r"only 1 class \('yes'\).*at least 2") as info:
        task(frame, "y")
    assert info.value.column == "y"


def test_single_class_left_after_setting_aside() -> None:
    frame = labelled_frame({"stenosis": ["yes"] * 20 + ["no"] * 3 + ["maybe"]})
    with pytest.raises(DataError) as info:
        build_task(
            frame,
            name="stenosis",
            text_column="text",
            label_column="stenosis",
            dataset="reports.csv",
        )
    message = str(info.value)
    assert message.startswith("dataset 'reports.csv', column 'stenosis': only 1 class left ('yes')")
    assert "fewer than 5 examples" in message
    assert "'maybe': 1" in message and "'no': 3" in message
    assert message.endswith("a task needs at least 2")


def test_all_labels_missing() -> None:
    frame = labelled_frame({"y": [None] * 10})
    with pytest.raises(DataError, match="no row has a label"):
        task(frame, "y")


def test_rare_classes_set_aside_and_reported() -> None:
    labels = balanced(["a", "b"], 40) + ["rare"] * 3 + ["odd"]
    frame = labelled_frame({"y": labels})
    data = task(frame, "y")
    assert data.classes == ["a", "b"]
    assert data.set_aside == [ClassSetAside("odd", 1), ClassSetAside("rare", 3)]
    assert data.n_train + data.n_val == 40
    assert "rare" not in {data.classes[i] for i in data.train_labels + data.val_labels}


def test_missing_labels_exclude_the_row_from_that_task_only() -> None:
    n = 60
    y = balanced(["a", "b"], n)
    z = balanced(["u", "v", "w"], n)
    for row in (0, 7, 13):
        y[row] = None
    y[20] = "  "
    z[30] = float("nan")
    frame = labelled_frame({"y": y, "z": z})
    ty, tz = task(frame, "y"), task(frame, "z")
    assert ty.n_missing == 4 and tz.n_missing == 1
    assert ty.n_train + ty.n_val == n - 4
    assert tz.n_train + tz.n_val == n - 1
    assert not {0, 7, 13, 20} & set(ty.train_rows + ty.val_rows)
    assert {0, 7, 13, 20} <= set(tz.train_rows + tz.val_rows)
    assert 30 in ty.train_rows + ty.val_rows


def test_class_too_small_for_both_splits() -> None:
    frame = labelled_frame({"y": [*balanced(["a", "b"], 20), "c"]})
    with pytest.raises(DataError, match=r"class 'c' has only 1 row.*both") as info:
        task(frame, "y", min_class_count=1)
    assert info.value.column == "y"


def test_bad_arguments_are_value_errors() -> None:
    frame = labelled_frame({"y": balanced(["a", "b"], 20)})
    with pytest.raises(ValueError, match="val_fraction"):
        task(frame, "y", val_fraction=1.0)
    with pytest.raises(ValueError, match="min_class_count"):
        task(frame, "y", min_class_count=0)


def test_non_scalar_label() -> None:
    frame = labelled_frame({"y": [["a"], *balanced(["a", "b"], 19)]})
    with pytest.raises(DataError, match="row 1 holds the list") as info:
        task(frame, "y")
    assert info.value.column == "y"


def test_split_is_deterministic_and_seeded() -> None:
    frame = labelled_frame({"y": balanced(["a", "b", "c"], 300)})
    first, again = task(frame, "y", seed=3), task(frame, "y", seed=3)
    assert first.val_rows == again.val_rows and first.train_texts == again.train_texts
    other = task(frame, "y", seed=4)
    assert other.val_rows != first.val_rows


@pytest.mark.parametrize("fraction", [0.1, 0.2, 0.33, 0.5])
def test_split_is_stratified(fraction: float) -> None:
    counts = {"a": 100, "b": 37, "c": 9, "d": 5}
    labels = [c for c, n in counts.items() for _ in range(n)]
    frame = labelled_frame({"y": labels})
    data = task(frame, "y", val_fraction=fraction)
    for cls, (n_train, n_val) in data.class_counts().items():
        assert n_train >= 1 and n_val >= 1
        expected = min(max(int(np.floor(fraction * counts[cls] + 0.5)), 1), counts[cls] - 1)
        assert n_val == expected


def test_two_tasks_on_one_dataset_share_most_validation_rows() -> None:
    rng = np.random.default_rng(0)
    n = 2000
    frame = labelled_frame(
        {
            "y": list(rng.choice(["a", "b"], size=n)),
            "z": list(rng.choice(["u", "v", "w", "x"], size=n)),
        }
    )
    ty, tz = task(frame, "y"), task(frame, "z")
    val_y, val_z = set(ty.val_rows), set(tz.val_rows)
    jaccard = len(val_y & val_z) / len(val_y | val_z)
    assert jaccard > 0.85
    # independent per-task shuffles would give about 0.2 * 0.2 / (0.4 - 0.04) ~ 0.11
    leak = len(val_y & set(tz.train_rows)) / len(val_y)
    assert leak < 0.1


def test_split_column_valid() -> None:
    n = 40
    split = [
        "train" if i % 4 else ["val", "Valid", " TEST ", "dev", "validation"][i % 5]
        for i in range(n)
    ]
    frame = labelled_frame({"y": balanced(["a", "b", "c"], n), "split": split})
    data = task(frame, "y", split_column="split")
    assert data.val_rows == [i for i in range(n) if i % 4 == 0]
    assert data.n_train == 30


def test_split_column_missing() -> None:
    frame = labelled_frame({"y": balanced(["a", "b"], 20)})
    with pytest.raises(DataError, match="split column was not found") as info:
        task(frame, "y", split_column="fold")
    assert info.value.column == "fold"


def test_split_column_bad_values_are_named() -> None:
    split = ["train"] * 10 + ["holdout"] * 3 + ["Val"] * 5 + [None, "x"]
    frame = labelled_frame({"y": balanced(["a", "b"], 20), "split": split})
    with pytest.raises(DataError) as info:
        task(frame, "y", split_column="split")
    message = str(info.value)
    assert info.value.column == "split"
    assert "'holdout' (3 rows)" in message and "'x' (1 row)" in message
    assert "(empty) (1 row)" in message
    assert "'Val'" not in message


def test_split_column_without_validation_rows() -> None:
    frame = labelled_frame({"y": balanced(["a", "b"], 20), "split": ["train"] * 20})
    with pytest.raises(DataError, match="no row in the validation split"):
        task(frame, "y", split_column="split")


def test_split_column_class_only_held_out() -> None:
    labels = ["a"] * 10 + ["b"] * 10
    split = ["train"] * 8 + ["val"] * 2 + ["val"] * 10
    frame = labelled_frame({"y": labels, "split": split})
    with pytest.raises(DataError, match=r"class 'b'.*no row in the training split"):
        task(frame, "y", split_column="split")


# ---------------------------------------------------------------------------------------------
# probe set
# ---------------------------------------------------------------------------------------------


def _task_with_texts(texts: list[str], dataset: str = "d.csv") -> TaskData:
    return TaskData(
        name=dataset,
        dataset=dataset,
        column="y",
        classes=["a", "b"],
        train_texts=texts,
        train_labels=[i % 2 for i in range(len(texts))],
        val_texts=["held out"],
        val_labels=[0],
        set_aside=[],
        n_missing=0,
    )


def test_probe_set_deterministic_and_capped() -> None:
    t = _task_with_texts([f"t{i}" for i in range(100)])
    first = build_probe_set([t], size=32, seed=1)
    assert first == build_probe_set([t], size=32, seed=1)
    assert len(first) == 32 and len(set(first)) == 32
    assert build_probe_set([t], size=32, seed=2) != first
    assert len(build_probe_set([t], size=1000)) == 100


def test_probe_set_union_dedup_and_order_independent() -> None:
    a = _task_with_texts([f"a{i}" for i in range(10)] + ["shared"] * 3, "a.csv")
    b = _task_with_texts([f"b{i}" for i in range(10)] + ["shared"], "b.csv")
    probe = build_probe_set([a, b], size=100)
    assert sorted(probe) == sorted({*a.train_texts, *b.train_texts})
    assert probe == build_probe_set([b, a], size=100)
    assert "held out" not in probe
    assert build_probe_set([a, b], size=5) == build_probe_set([b, a], size=5)


def test_probe_set_too_small() -> None:
    with pytest.raises(DataError, match=r"only 3 distinct texts.*at least 4"):
        build_probe_set([_task_with_texts(["x", "y", "z", "x"])])
    with pytest.raises(ValueError, match="size"):
        build_probe_set([_task_with_texts([f"t{i}" for i in range(10)])], size=2)


def test_probe_set_from_real_tasks() -> None:
    frame = labelled_frame({"y": balanced(["a", "b"], 50), "z": balanced(["u", "v"], 50)})
    tasks = [task(frame, "y"), task(frame, "z")]
    probe = build_probe_set(tasks, size=1024)
    assert set(probe) == set(tasks[0].train_texts) | set(tasks[1].train_texts)


# ---------------------------------------------------------------------------------------------
# describe_labels
# ---------------------------------------------------------------------------------------------


def test_describe_labels() -> None:
    n = 12
    frame = pd.DataFrame(
        {
            "text": [f"t{i}" for i in range(n)],
            "binary": ["yes", "no", "yes"] * 4,
            "numeric": [1, 2.0, "2", None] * 3,
            "constant": ["c"] * n,
            "id": [f"id{i}" for i in range(n)],
            "many": [str(i % 6) for i in range(n)],
            "split": ["train", "val"] * 6,
            "nested": [[1]] * n,
        }
    )
    described = describe_labels(frame, exclude=["text", "split"], max_classes=5)
    assert described == {"binary": {"yes": 8, "no": 4}, "numeric": {"2": 6, "1": 3}}
    assert list(described["binary"]) == ["yes", "no"]
    assert "many" in describe_labels(frame, exclude=["text"], max_classes=6)
