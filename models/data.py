"""Reading datasets and building per-task training and validation data.

Vocabulary
----------
*dataset*
    A table with one text column and one or more label columns (CSV, JSONL or Parquet).
*task*
    One label column of one dataset, binary or multi-class. A job's tasks may come from several
    datasets, each with its own texts.
*missing label*
    ``None``, NaN, an empty string or a whitespace-only string. A row without a label is left out
    of that task only; the other tasks on the same dataset still use it.

Row numbers
-----------
Every message that points at rows uses **1-based data-row numbers**: "row 3" is the third data
row of the table (the header of a CSV file is not counted, nor are blank lines). Messages about
the raw bytes of a file (bad UTF-8, malformed CSV, invalid JSON) also give the 1-based **line**
number in the file, which does count the header.

Errors
------
Every problem with the data is raised as :class:`DataError` (a :class:`ValueError`), whose
message is a full sentence naming the dataset, the column and the problem, so that it can be
shown to the person who uploaded the file as is. Wrong *arguments* (for example a
``val_fraction`` outside ``(0, 1)``) are plain :class:`ValueError`.

This module must stay light: it imports numpy, pandas and pyarrow only (never torch).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pandas as pd

__all__ = [
    "MAX_COLUMN_NAME",
    "NA_STRINGS",
    "SPLIT_HELD_OUT",
    "SPLIT_TRAIN",
    "SUPPORTED_FORMATS",
    "ClassSetAside",
    "DataError",
    "TaskData",
    "build_probe_set",
    "build_task",
    "describe_labels",
    "detect_format",
    "example_path",
    "is_missing",
    "load_dataset",
    "normalise_label",
    "read_table",
    "validate_text_column",
]

SUPPORTED_FORMATS = ("csv", "jsonl", "parquet")

_EXTENSIONS: dict[str, str] = {
    ".csv": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}

#: Cell values that a CSV reader treats as missing: pandas' default ``na_values`` (the
#: ``keep_default_na=True`` semantics of :func:`pandas.read_csv`), empty cells included.
NA_STRINGS: frozenset[str] = frozenset(
    {
        "",
        "#N/A",
        "#N/A N/A",
        "#NA",
        "-1.#IND",
        "-1.#QNAN",
        "-NaN",
        "-nan",
        "1.#IND",
        "1.#QNAN",
        "<NA>",
        "N/A",
        "NA",
        "NULL",
        "NaN",
        "None",
        "n/a",
        "nan",
        "null",
    }
)

#: Values of a split column (compared case-insensitively, after stripping whitespace).
SPLIT_TRAIN = "train"
SPLIT_HELD_OUT: frozenset[str] = frozenset({"val", "valid", "validation", "dev", "test"})

_UTF8_BOM = b"\xef\xbb\xbf"
_PARQUET_MAGIC = b"PAR1"
#: Longest CSV field accepted (the csv module's default of 128 KiB is too small for long texts).
_CSV_FIELD_LIMIT = 64 * 1024 * 1024
#: How many row numbers or values an error message lists before saying "and N more".
_PREVIEW = 5
#: Longest column name a table may have: the API names a column (a text column, a task) in at
#: most this many characters, so a longer one could be uploaded but never used.
MAX_COLUMN_NAME = 1000


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


class DataError(ValueError):
    """One error type for every problem with the uploaded data.

    Attributes:
        problem: What is wrong, as a clause (``"the file is empty"``).
        column: The column concerned, when there is one.
        dataset: The dataset (usually the file name), when known.

    ``str(err)`` is a full sentence naming the dataset, the column and the problem, e.g.
    ``dataset 'reports.csv', column 'stenosis': only 1 class left ('yes') after setting aside
    classes with fewer than 5 examples ('no': 3); a task needs at least 2``.
    """

    def __init__(
        self, problem: str, *, column: str | None = None, dataset: str | None = None
    ) -> None:
        self.problem = problem
        self.column = column
        self.dataset = dataset
        super().__init__(self._message())

    def _message(self) -> str:
        where = []
        if self.dataset is not None:
            where.append(f"dataset {self.dataset!r}")
        if self.column is not None:
            where.append(f"column {self.column!r}")
        if where:
            return f"{', '.join(where)}: {self.problem}"
        return self.problem[:1].upper() + self.problem[1:]

    def __str__(self) -> str:
        return self._message()

    def __reduce__(self) -> tuple[Any, ...]:
        # Keyword-only arguments do not survive the default exception pickling; errors may
        # cross process boundaries (worker -> API), so make them picklable explicitly.
        return (_rebuild_data_error, (self.problem, self.column, self.dataset))

    def with_dataset(self, dataset: str | None) -> DataError:
        """A copy naming ``dataset`` (unless this error already names one)."""
        if self.dataset is not None or dataset is None:
            return self
        return DataError(self.problem, column=self.column, dataset=dataset)


def _rebuild_data_error(problem: str, column: str | None, dataset: str | None) -> DataError:
    return DataError(problem, column=column, dataset=dataset)


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------


def _plural(n: int, word: str, plural: str | None = None) -> str:
    return f"{n} {word if n == 1 else (plural or word + 's')}"


def _preview(items: Sequence[Any], limit: int = _PREVIEW) -> str:
    """``"2, 5, 9"`` or ``"2, 5, 9, 11, 13 and 7 more"``."""
    shown = ", ".join(str(x) for x in items[:limit])
    if len(items) > limit:
        shown += f" and {len(items) - limit} more"
    return shown


def _rows_phrase(positions: Sequence[int]) -> str:
    """1-based row numbers for 0-based positions: ``"row 3"`` or ``"rows 3, 7 and 2 more"``."""
    numbers = [p + 1 for p in positions]
    return ("row " if len(numbers) == 1 else "rows ") + _preview(numbers)


def _quoted(names: Iterable[Any], limit: int = 20) -> str:
    items = [repr(str(n)) for n in names]
    return _preview(items, limit) if items else "(none)"


def is_missing(value: Any) -> bool:
    """Whether a cell value counts as missing (``None``, NaN, NA, NaT)."""
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    if isinstance(value, float | np.floating):
        return bool(math.isnan(value))
    return False


def normalise_label(value: Any) -> str | None:
    """A label value as a class name, or ``None`` when the row has no label.

    * missing values, empty and whitespace-only strings -> ``None``;
    * strings are stripped (``" yes "`` -> ``"yes"``); other strings are kept as written, so
      ``"1.0"`` in a CSV file stays ``"1.0"``;
    * booleans -> ``"true"`` / ``"false"``;
    * integers and integral floats -> decimal integers (``1``, ``1.0``, ``"1"`` all give ``"1"``;
      Parquet stores integer columns with gaps as floats, hence the rule);
    * other floats -> ``repr`` (``1.5`` -> ``"1.5"``); anything else scalar -> ``str(value)``.

    Raises:
        TypeError: for lists, dicts, arrays and bytes (callers turn this into a DataError).
    """
    if is_missing(value):
        return None
    if isinstance(value, str):
        text = value.strip()
        return text or None
    if isinstance(value, bool | np.bool_):
        return "true" if value else "false"
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating):
        number = float(value)
        if number.is_integer():
            return str(int(number))
        return repr(number)
    if isinstance(value, dict | list | tuple | set | np.ndarray | bytes | bytearray):
        raise TypeError(f"{type(value).__name__} is not a label value")
    text = str(value).strip()
    return text or None


def _type_name(value: Any) -> str:
    if isinstance(value, str):
        return "string"
    if value is None:
        return "null"
    if isinstance(value, bool | np.bool_):
        return "boolean"
    if isinstance(value, int | np.integer):
        return "number"
    if isinstance(value, float | np.floating):
        return "number"
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list | tuple | np.ndarray):
        return "list"
    return type(value).__name__


def _short_repr(value: Any, limit: int = 40) -> str:
    text = repr(value.tolist() if isinstance(value, np.ndarray) else value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_text_dtype(series: pd.Series) -> bool:
    """True for pandas string dtypes, whose cells are ``str`` or missing."""
    return isinstance(series.dtype, pd.StringDtype)


def _columns_hint(frame: pd.DataFrame, wanted: str) -> str:
    """``"the columns are 'text', 'label'"``, plus a near-miss suggestion when there is one."""
    columns = [str(c) for c in frame.columns]
    hint = f"the columns are {_quoted(columns)}"
    near = [c for c in columns if c.strip().casefold() == wanted.strip().casefold()]
    if near:
        hint += f" (did you mean {near[0]!r}?)"
    return hint


# --------------------------------------------------------------------------------------------
# Reading tables
# --------------------------------------------------------------------------------------------


def detect_format(path_or_name: str) -> str:
    """The format of a file from its extension (case-insensitive).

    ``.csv`` -> ``"csv"``; ``.jsonl`` / ``.ndjson`` -> ``"jsonl"``; ``.parquet`` / ``.pq`` ->
    ``"parquet"``. Anything else is a :class:`DataError` (the content is never sniffed).
    """
    name = os.path.basename(str(path_or_name))
    suffix = os.path.splitext(name)[1].lower()
    fmt = _EXTENSIONS.get(suffix)
    if fmt is None:
        known = ", ".join(sorted(_EXTENSIONS))
        what = f"extension {suffix!r}" if suffix else "no file extension"
        raise DataError(
            f"cannot tell the file format: {what}; supported extensions are {known}",
            dataset=name or None,
        )
    return fmt


def _source_name(source: object) -> str | None:
    """The base name of a path or of a file object's ``name``, if any."""
    raw: object = source if isinstance(source, str | os.PathLike) else getattr(source, "name", None)
    if isinstance(raw, str | os.PathLike):
        return os.path.basename(os.fspath(raw)) or None
    return None


def _read_bytes(source: str | os.PathLike[str] | bytes | BinaryIO, name: str | None) -> bytes:
    if isinstance(source, bytes | bytearray | memoryview):
        return bytes(source)
    if isinstance(source, str | os.PathLike):
        try:
            return Path(source).read_bytes()
        except FileNotFoundError:
            raise DataError("the file does not exist", dataset=name) from None
        except IsADirectoryError:
            raise DataError("the path is a directory, not a file", dataset=name) from None
        except OSError as exc:
            raise DataError(
                f"the file cannot be read ({exc.strerror or exc})", dataset=name
            ) from exc
    try:
        data = source.read()
    except (OSError, ValueError) as exc:
        raise DataError(f"the file cannot be read ({exc})", dataset=name) from exc
    if not isinstance(data, bytes | bytearray):
        raise DataError("the file was opened in text mode; open it in binary mode", dataset=name)
    return bytes(data)


def read_table(
    source: str | os.PathLike[str] | bytes | BinaryIO,
    *,
    fmt: str | None = None,
    name: str | None = None,
    max_rows: int | None = None,
) -> pd.DataFrame:
    """Read a CSV, JSONL or Parquet table as data only (nothing is ever unpickled or evaluated).

    Args:
        source: A path, the raw bytes, or a binary file object.
        fmt: ``"csv"``, ``"jsonl"`` or ``"parquet"``; by default detected from the extension of
            ``name`` or of the path (see :func:`detect_format`).
        name: The dataset name used in error messages; defaults to the file's base name.
        max_rows: Reject tables with more data rows than this.

    Returns:
        A frame with a fresh ``RangeIndex`` (position ``i`` is "row ``i + 1``" in messages).

        * CSV: UTF-8 (a leading BOM is stripped), comma-delimited, double-quote quoting. Header
          names are stripped of surrounding whitespace; an empty header cell is named
          ``"Unnamed: <i>"`` like pandas does. Every column is a pandas string column; empty
          cells and pandas' default NA strings (:data:`NA_STRINGS`, e.g. ``NA``, ``null``) are
          missing, as with ``read_csv(dtype=str, keep_default_na=True)``. Blank lines are skipped.
        * JSONL: one JSON object per line (blank lines skipped); the columns are the union of the
          keys in order of first appearance, a key absent from a line is missing. A column whose
          values are all strings (or missing) is a pandas string column; other columns keep the
          JSON values (numbers, booleans, lists, objects) in an ``object`` column.
        * Parquet: read with pyarrow; string columns become pandas string columns, dictionary
          (categorical) columns plain values; a named index stored by pandas becomes a column.

        Hence the same string content gives equal frames in all three formats.

    Raises:
        DataError: unreadable file, unknown format, empty file, no data rows, duplicate column
            names, non-UTF-8 bytes (with byte offset and line), malformed CSV (ragged row,
            unclosed quote, stray quote; a single header column containing ``;`` or a tab is
            reported as a wrong delimiter), invalid JSON or a line that is not an object, a file
            that is not Parquet, more than ``max_rows`` rows, a blank column name (JSONL,
            Parquet) or one longer than :data:`MAX_COLUMN_NAME` characters.
    """
    path_name = _source_name(source)
    if name is None:
        name = path_name
    if fmt is None:
        hints = [h for h in (name, path_name) if h is not None]
        if not hints:
            raise DataError(
                "cannot tell the file format without a file name; pass fmt= "
                f"(one of {', '.join(SUPPORTED_FORMATS)})"
            )
        known = [h for h in hints if os.path.splitext(h)[1].lower() in _EXTENSIONS]
        fmt = detect_format(known[0] if known else hints[0])
    fmt = fmt.lower()
    if fmt not in SUPPORTED_FORMATS:
        raise DataError(
            f"unsupported format {fmt!r}; supported formats are {', '.join(SUPPORTED_FORMATS)}",
            dataset=name,
        )
    if max_rows is not None and max_rows < 1:
        raise ValueError(f"max_rows must be at least 1, got {max_rows}")

    data = _read_bytes(source, name)
    try:
        if fmt == "parquet":
            frame = _read_parquet(data, max_rows)
        else:
            text = _decode_utf8(data)
            frame = _read_csv(text, max_rows) if fmt == "csv" else _read_jsonl(text, max_rows)
        _check_column_names(list(frame.columns))
    except DataError as exc:
        raise exc.with_dataset(name) from exc.__cause__
    return frame


def _check_column_names(names: list[str]) -> None:
    """Every column must be nameable through the API: a name that is blank, or longer than
    :data:`MAX_COLUMN_NAME` characters, could be stored but never chosen as a text column or a
    task (CSV names a blank header cell ``"Unnamed: <i>"`` before this; a JSONL key or a Parquet
    field has no such convention)."""
    for i, col in enumerate(names):
        if not col.strip():
            raise DataError(
                f"column {i + 1} has a blank name ({col!r}); every column needs a name to be "
                "chosen by (rename the key or field)"
            )
        if len(col) > MAX_COLUMN_NAME:
            raise DataError(
                f"column {i + 1}'s name is {len(col)} characters long, more than the limit of "
                f"{MAX_COLUMN_NAME}; it begins {col[:40]!r}",
            )


def _decode_utf8(data: bytes) -> str:
    skipped = 0
    if data.startswith(_UTF8_BOM):
        data = data[len(_UTF8_BOM) :]
        skipped = len(_UTF8_BOM)
    if not data.strip():
        raise DataError("the file is empty")
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        raise DataError(
            "the file is not UTF-8 text: it starts with a UTF-16 byte-order mark; save it as UTF-8"
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        bad = data[exc.start : exc.start + 1].hex()
        raise DataError(
            f"the file is not valid UTF-8 text: byte 0x{bad} at byte offset {exc.start + skipped} "
            f"(line {line}); save it as UTF-8"
        ) from None


def _read_csv(text: str, max_rows: int | None) -> pd.DataFrame:
    if csv.field_size_limit() < _CSV_FIELD_LIMIT:
        csv.field_size_limit(_CSV_FIELD_LIMIT)
    first, newline, rest = text.partition("\n")
    hint = first.rstrip("\r")  # not strip(): "sep=\t" names a tab
    if len(hint) == 5 and hint.lower().startswith("sep="):
        # Excel's delimiter line, above the header: a comma one is skipped (a blank line keeps
        # the line numbers of error messages right); another delimiter is not read.
        if hint[4] != ",":
            raise DataError(
                f"the file starts with Excel's {hint!r} line: its delimiter is {hint[4]!r}; "
                "save the file as comma-separated CSV"
            )
        text = newline + rest
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    header: list[str] | None = None
    rows: list[list[str]] = []
    record_start = 1
    try:
        for record in reader:
            start, record_start = record_start, reader.line_num + 1
            if not record or (
                len(record) == 1 and not record[0].strip() and (header is None or len(header) > 1)
            ):
                continue  # blank (or whitespace-only) line
            if header is None:
                header = _csv_header(record)
                continue
            if len(record) != len(header):
                raise DataError(
                    f"malformed CSV: row {len(rows) + 1} (line {start}) has "
                    f"{_plural(len(record), 'field')} but the header has {len(header)}; "
                    "quote fields that contain commas or line breaks"
                )
            rows.append(record)
            if max_rows is not None and len(rows) > max_rows:
                raise DataError(f"the file has more than {max_rows} data rows (the limit)")
    except csv.Error as exc:
        message = str(exc)
        if "unexpected end of data" in message:
            raise DataError(
                f"malformed CSV: the quoted field starting on line {record_start} is never "
                "closed (unclosed quote)"
            ) from None
        if "expected after" in message:
            raise DataError(
                f"malformed CSV on line {reader.line_num}: a closing quote must be followed by a "
                'comma or the end of the line (write a quote inside a quoted field as "")'
            ) from None
        raise DataError(f"malformed CSV on line {reader.line_num}: {message}") from None
    if header is None:
        raise DataError("the file is empty")
    if not rows:
        raise DataError("the file has a header but no data rows")
    columns = {
        col: pd.Series(
            [None if row[i] in NA_STRINGS else row[i] for row in rows], dtype="str", name=col
        )
        for i, col in enumerate(header)
    }
    return pd.DataFrame(columns)


def _csv_header(record: list[str]) -> list[str]:
    names = [cell.strip() or f"Unnamed: {i}" for i, cell in enumerate(record)]
    if len(names) == 1:
        for delimiter, label in ((";", "semicolon"), ("\t", "tab")):
            if delimiter in names[0]:
                raise DataError(
                    f"the header has a single column that contains a {label} "
                    f"({delimiter!r}): the delimiter looks wrong; save the file as "
                    "comma-separated CSV",
                    column=names[0],
                )
    counts = Counter(names)
    duplicates = [n for n, c in counts.items() if c > 1]
    if duplicates:
        raise DataError(
            f"the column name appears {counts[duplicates[0]]} times in the header; column "
            "names must be unique"
            + (f" (also duplicated: {_quoted(duplicates[1:])})" if len(duplicates) > 1 else ""),
            column=duplicates[0],
        )
    return names


class _JsonObject(dict[str, Any]):
    """A JSON object that remembers keys it saw more than once."""

    duplicates: list[str]


def _json_object_hook(pairs: list[tuple[str, Any]]) -> _JsonObject:
    obj = _JsonObject()
    duplicates = []
    for key, value in pairs:
        if key in obj:
            duplicates.append(key)
        obj[key] = value
    obj.duplicates = duplicates
    return obj


def _read_jsonl(text: str, max_rows: int | None) -> pd.DataFrame:
    records: list[dict[str, Any]] = []
    columns: dict[str, None] = {}  # ordered set
    for line_no, raw_line in enumerate(text.split("\n"), start=1):
        line = raw_line.strip()
        if not line:
            continue
        try:
            obj = json.loads(line, object_pairs_hook=_json_object_hook)
        except json.JSONDecodeError as exc:
            hint = ""
            if line in ("{", "["):
                hint = "; a JSONL file has one whole JSON object per line"
            raise DataError(
                f"line {line_no} is not valid JSON ({exc.msg} at column {exc.colno}){hint}"
            ) from None
        except ValueError as exc:  # an integer past Python's digit limit
            raise DataError(f"line {line_no} cannot be read as JSON ({exc})") from None
        except RecursionError:
            raise DataError(
                f"line {line_no} cannot be read as JSON: its arrays or objects are nested too "
                "deeply"
            ) from None
        if not isinstance(obj, dict):
            hint = ""
            if isinstance(obj, list) and not records:
                hint = " (the file looks like a JSON array; write one object per line instead)"
            raise DataError(
                f"line {line_no} holds a JSON {_type_name(obj)}, not an object; a JSONL file "
                f"has one JSON object per line{hint}"
            )
        if isinstance(obj, _JsonObject) and obj.duplicates:
            raise DataError(
                f"the key appears more than once in the object on line {line_no}; column names "
                "must be unique",
                column=obj.duplicates[0],
            )
        records.append(obj)
        if max_rows is not None and len(records) > max_rows:
            raise DataError(f"the file has more than {max_rows} data rows (the limit)")
        for key in obj:
            columns.setdefault(key, None)
    if not records:
        raise DataError("the file is empty")
    if not columns:
        raise DataError("the file's objects have no keys, so the table has no columns")
    data: dict[str, pd.Series] = {}
    for col in columns:
        values = [record.get(col) for record in records]
        if all(v is None or isinstance(v, str) for v in values):
            data[col] = pd.Series(values, dtype="str", name=col)
        else:
            series = pd.Series(values, dtype=object, name=col)
            data[col] = series.where(series.notna(), None)  # NaN from JSON -> None
    return pd.DataFrame(data)


def _read_parquet(data: bytes, max_rows: int | None) -> pd.DataFrame:
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not data:
        raise DataError("the file is empty")
    if len(data) < 12 or data[:4] != _PARQUET_MAGIC or data[-4:] != _PARQUET_MAGIC:
        raise DataError("the file is not a Parquet file (its 'PAR1' signature is missing)")
    try:
        parquet = pq.ParquetFile(io.BytesIO(data))
        names = list(parquet.schema_arrow.names)
        num_rows = parquet.metadata.num_rows
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise DataError(f"the file is not a readable Parquet file ({exc})") from None
    counts = Counter(names)
    duplicates = [n for n, c in counts.items() if c > 1]
    if duplicates:
        raise DataError(
            f"the field name appears {counts[duplicates[0]]} times in the Parquet schema; "
            "column names must be unique",
            column=duplicates[0],
        )
    if not names:
        raise DataError("the Parquet file has no columns")
    if num_rows == 0:
        raise DataError("the Parquet file has columns but no rows")
    if max_rows is not None and num_rows > max_rows:
        raise DataError(f"the file has {num_rows} rows, more than the limit of {max_rows}")
    try:
        table = parquet.read()
        frame = table.to_pandas()
    except (pa.ArrowException, OSError, ValueError, TypeError) as exc:
        raise DataError(f"the Parquet file cannot be read ({exc})") from None
    # A named index (pandas writes it to Parquet) becomes a column, unless a column has its name
    # already: ``set_index(col, drop=False)`` keeps the column, and the index repeats it.
    columns = {str(c) for c in frame.columns}
    levels = [n for n in frame.index.names if n is not None and str(n) not in columns]
    for name in frame.index.names:
        if name is None or str(name) not in columns:
            continue
        index_values = frame.index.get_level_values(name)
        column = frame[next(c for c in frame.columns if str(c) == str(name))]
        if not pd.Index(index_values).equals(pd.Index(column)):
            raise DataError(
                "the Parquet file's index has the name of a column but other values; write "
                "it with index=False or rename it",
                column=str(name),
            )
    try:
        if levels:
            frame = frame.reset_index(level=levels)
        frame = frame.reset_index(drop=True)
    except ValueError as exc:  # index levels that share a name among themselves
        raise DataError(f"the Parquet file's index cannot be read as columns ({exc})") from None
    frame.columns = [str(c) for c in frame.columns]
    for col in frame.columns:
        series = frame[col]
        if isinstance(series.dtype, pd.CategoricalDtype):
            series = pd.Series(series.astype(object).tolist(), dtype=object, name=col)
            series = series.where(series.notna(), None)
        if series.dtype == object and all(
            isinstance(v, str) or is_missing(v) for v in series.tolist()
        ):
            series = series.astype("str")
        frame[col] = series
    return frame


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------


def validate_text_column(
    frame: pd.DataFrame, text_column: str, *, dataset: str | None = None
) -> None:
    """Check that ``text_column`` exists and holds a non-empty string on every row.

    A text is kept as written (it is not stripped), but a text that is empty after stripping
    whitespace counts as empty.

    Raises:
        DataError: the column is missing (the message lists the available columns); some rows
            hold non-text values (numbers, booleans, lists, objects, as JSONL or Parquet allow;
            the message gives the count, the first row numbers and an example); some rows have
            a missing or empty text (count and first row numbers).
    """
    if text_column not in frame.columns:
        raise DataError(
            f"the text column was not found; {_columns_hint(frame, text_column)}",
            column=text_column,
            dataset=dataset,
        )
    values = frame[text_column].tolist()
    fast = _is_text_dtype(frame[text_column])
    non_text: list[int] = []
    empty: list[int] = []
    for pos, value in enumerate(values):
        if fast or isinstance(value, str):
            if not isinstance(value, str) or not value.strip():
                empty.append(pos)
        elif is_missing(value):
            empty.append(pos)
        else:
            non_text.append(pos)
    if non_text:
        first = values[non_text[0]]
        raise DataError(
            f"{_plural(len(non_text), 'row')} of {len(values)} "
            f"{'holds' if len(non_text) == 1 else 'hold'} non-text values "
            f"({_rows_phrase(non_text)}; e.g. row {non_text[0] + 1} holds the "
            f"{_type_name(first)} {_short_repr(first)}); every text must be a string",
            column=text_column,
            dataset=dataset,
        )
    if empty:
        raise DataError(
            f"{_plural(len(empty), 'row')} of {len(values)} "
            f"{'has' if len(empty) == 1 else 'have'} an empty text ({_rows_phrase(empty)}); "
            "every row needs a text (remove those rows or fill them in)",
            column=text_column,
            dataset=dataset,
        )


def _normalised_labels(
    frame: pd.DataFrame, column: str, *, dataset: str | None
) -> list[str | None]:
    labels: list[str | None] = []
    for pos, value in enumerate(frame[column].tolist()):
        try:
            labels.append(normalise_label(value))
        except TypeError:
            raise DataError(
                f"row {pos + 1} holds the {_type_name(value)} {_short_repr(value)}, which is not "
                "a label; labels must be strings, numbers or booleans",
                column=column,
                dataset=dataset,
            ) from None
    return labels


# --------------------------------------------------------------------------------------------
# Tasks
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClassSetAside:
    """A class removed from a task because it has fewer rows than ``min_class_count``."""

    label: str
    count: int


@dataclass
class TaskData:
    """One task's training and validation data.

    ``classes`` are the sorted class names kept for training; a label is an index into it.
    ``train_rows`` / ``val_rows`` are the 0-based positions in the dataset frame of the rows
    in each split (in the same order as the texts), for leakage checks and debugging.
    """

    name: str
    dataset: str
    column: str
    classes: list[str]
    train_texts: list[str]
    train_labels: list[int]
    val_texts: list[str]
    val_labels: list[int]
    set_aside: list[ClassSetAside]
    n_missing: int
    train_rows: list[int] = field(default_factory=list)
    val_rows: list[int] = field(default_factory=list)

    @property
    def n_train(self) -> int:
        """Number of training rows."""
        return len(self.train_texts)

    @property
    def n_val(self) -> int:
        """Number of validation rows."""
        return len(self.val_texts)

    @property
    def n_classes(self) -> int:
        """Number of classes kept for training."""
        return len(self.classes)

    def class_counts(self) -> dict[str, tuple[int, int]]:
        """``{class: (n_train, n_val)}``."""
        train = Counter(self.train_labels)
        val = Counter(self.val_labels)
        return {c: (train[i], val[i]) for i, c in enumerate(self.classes)}


def _split_mask(frame: pd.DataFrame, split_column: str, *, dataset: str | None) -> np.ndarray:
    """Boolean array, True for held-out (validation) rows, from a split column."""
    if split_column not in frame.columns:
        raise DataError(
            f"the split column was not found; {_columns_hint(frame, split_column)}",
            column=split_column,
            dataset=dataset,
        )
    held_out = np.zeros(len(frame), dtype=bool)
    bad: Counter[str] = Counter()
    for pos, value in enumerate(frame[split_column].tolist()):
        try:
            key = normalise_label(value)
        except TypeError:
            key = _short_repr(value)
        word = key.lower() if key is not None else None
        if word == SPLIT_TRAIN:
            continue
        if word in SPLIT_HELD_OUT:
            held_out[pos] = True
        else:
            bad["(empty)" if key is None else repr(key)] += 1
    if bad:
        listed = ", ".join(f"{v} ({_plural(n, 'row')})" for v, n in bad.most_common(_PREVIEW))
        if len(bad) > _PREVIEW:
            listed += f" and {len(bad) - _PREVIEW} more values"
        raise DataError(
            f"unexpected split values {listed}; use 'train' for training rows and one of "
            f"{', '.join(repr(s) for s in sorted(SPLIT_HELD_OUT))} for held-out rows",
            column=split_column,
            dataset=dataset,
        )
    return held_out


def _validation_count(n: int, val_fraction: float) -> int:
    """Rows of a class with ``n`` rows that go to validation: round(val_fraction * n) half up,
    clamped to [1, n - 1]."""
    return min(max(math.floor(val_fraction * n + 0.5), 1), n - 1)


def build_task(
    frame: pd.DataFrame,
    *,
    name: str,
    text_column: str,
    label_column: str,
    dataset: str,
    split_column: str | None = None,
    val_fraction: float = 0.2,
    seed: int = 0,
    min_class_count: int = 5,
) -> TaskData:
    """Build one task's training and validation data from a dataset frame.

    Rows without a label for this task are left out of it (counted in ``n_missing``). Classes
    with fewer than ``min_class_count`` labelled rows are set aside: their rows are removed
    from this task and the classes reported in ``set_aside`` (not an error). Classes are
    sorted by name; labels are normalised with :func:`normalise_label`.

    Split
        With ``split_column``, rows whose value is ``train`` are training rows and rows whose
        value is ``val``, ``valid``, ``validation``, ``dev`` or ``test`` (case-insensitive)
        are held out for validation; any other value, or a missing one, is an error.

        Without it, the split is deterministic, seeded and stratified per task, and **shared
        across the tasks of a dataset**: ONE uniform random key is drawn per row of the
        dataset from ``numpy.random.default_rng(seed)`` (independently of the task and of
        which rows this task labels), and for each class with ``n_c`` rows the
        ``round(val_fraction * n_c)`` rows (rounded half up, at least 1, at most ``n_c - 1``)
        with the smallest keys go to validation. A row with a small key is therefore held
        out by every task on the same dataset that labels it, so the validation sets of two
        tasks on a dataset nearly coincide. This limits leakage of texts between tasks when a
        multi-task model is later trained on several tasks (a text validated for one task is
        rarely trained on for another). The same seed gives an identical split.

    Raises:
        DataError: the label column is missing or equal to the text column; the text column is
            invalid (see :func:`validate_text_column`); a label is not a scalar; fewer than 2
            classes are left (the message lists the set-aside classes); a class has too few rows
            to appear in both splits; the training or validation split is empty; the split
            column is missing or holds other values (they are named).
        ValueError: ``val_fraction`` not in ``(0, 1)`` or ``min_class_count`` below 1.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be strictly between 0 and 1, got {val_fraction}")
    if min_class_count < 1:
        raise ValueError(f"min_class_count must be at least 1, got {min_class_count}")
    if label_column not in frame.columns:
        raise DataError(
            f"the label column for task {name!r} was not found; "
            f"{_columns_hint(frame, label_column)}",
            column=label_column,
            dataset=dataset,
        )
    if label_column == text_column:
        raise DataError(
            "the label column is the text column; choose a column that holds labels",
            column=label_column,
            dataset=dataset,
        )
    if split_column is not None and split_column in (label_column, text_column):
        raise DataError(
            "the split column must differ from the text and label columns",
            column=split_column,
            dataset=dataset,
        )
    validate_text_column(frame, text_column, dataset=dataset)
    texts: list[str] = frame[text_column].tolist()
    labels = _normalised_labels(frame, label_column, dataset=dataset)
    held_out = (
        _split_mask(frame, split_column, dataset=dataset) if split_column is not None else None
    )

    n_missing = sum(label is None for label in labels)
    counts = Counter(label for label in labels if label is not None)
    if not counts:
        raise DataError(
            f"no row has a label ({_plural(len(labels), 'row')}, all missing)",
            column=label_column,
            dataset=dataset,
        )
    set_aside = sorted(
        (ClassSetAside(label, n) for label, n in counts.items() if n < min_class_count),
        key=lambda c: c.label,
    )
    classes = sorted(label for label, n in counts.items() if n >= min_class_count)
    if len(classes) < 2:
        aside = ", ".join(f"{c.label!r}: {c.count}" for c in set_aside)
        if set_aside:
            problem = (
                f"only {_plural(len(classes), 'class', 'classes')} left"
                f"{' (' + repr(classes[0]) + ')' if classes else ''} after setting aside "
                f"classes with fewer than {min_class_count} examples ({aside}); "
                "a task needs at least 2"
            )
        else:
            problem = f"only 1 class ({classes[0]!r}) among the labels; a task needs at least 2"
        raise DataError(problem, column=label_column, dataset=dataset)

    index = {c: i for i, c in enumerate(classes)}
    members: dict[str, list[int]] = {c: [] for c in classes}
    for pos, label in enumerate(labels):
        if label is not None and label in index:
            members[label].append(pos)

    is_val = np.zeros(len(frame), dtype=bool)
    if held_out is None:
        keys = np.random.default_rng(seed).random(len(frame))
        for label in classes:
            rows = np.asarray(members[label], dtype=np.int64)
            if len(rows) < 2:
                raise DataError(
                    f"class {label!r} has only {_plural(len(rows), 'row')}, too few to appear "
                    "in both the training and the validation split",
                    column=label_column,
                    dataset=dataset,
                )
            k = _validation_count(len(rows), val_fraction)
            order = np.argsort(keys[rows], kind="stable")
            is_val[rows[order[:k]]] = True
    else:
        is_val = held_out
        for label in classes:
            rows_c = members[label]
            n_val_c = int(held_out[rows_c].sum())
            missing_from = (
                "training" if n_val_c == len(rows_c) else "validation" if n_val_c == 0 else None
            )
            if missing_from is not None:
                raise DataError(
                    f"class {label!r} ({_plural(len(rows_c), 'row')}) has no row in the "
                    f"{missing_from} split of split column {split_column!r}; every class must "
                    "appear in both splits",
                    column=label_column,
                    dataset=dataset,
                )

    train_rows: list[int] = []
    val_rows: list[int] = []
    train_labels: list[int] = []
    val_labels: list[int] = []
    for pos, label in enumerate(labels):
        if label is None or label not in index:
            continue
        if is_val[pos]:
            val_rows.append(pos)
            val_labels.append(index[label])
        else:
            train_rows.append(pos)
            train_labels.append(index[label])
    if not val_rows:
        raise DataError(
            "the validation split is empty", column=split_column or label_column, dataset=dataset
        )
    if not train_rows:
        raise DataError(
            "the training split is empty", column=split_column or label_column, dataset=dataset
        )
    return TaskData(
        name=name,
        dataset=dataset,
        column=label_column,
        classes=classes,
        train_texts=[texts[p] for p in train_rows],
        train_labels=train_labels,
        val_texts=[texts[p] for p in val_rows],
        val_labels=val_labels,
        set_aside=set_aside,
        n_missing=n_missing,
        train_rows=train_rows,
        val_rows=val_rows,
    )


def build_probe_set(tasks: Sequence[TaskData], *, size: int = 1024, seed: int = 0) -> list[str]:
    """Texts on which every task model's representations are compared (for CKA).

    The texts are drawn from the union of the tasks' **training** texts: the distinct texts
    are sorted, permuted with ``numpy.random.default_rng(seed)`` and the first ``size`` kept.
    The result depends only on the set of texts, ``size`` and ``seed``, not on the order of
    the tasks. Fewer than ``size`` texts are returned when the union is smaller.

    Raises:
        DataError: the union holds fewer than 4 distinct texts (CKA needs at least 4).
        ValueError: ``size`` below 4.
    """
    if size < 4:
        raise ValueError(f"size must be at least 4, got {size}")
    union = sorted({text for task in tasks for text in task.train_texts})
    if len(union) < 4:
        raise DataError(
            f"the tasks' training texts hold only {_plural(len(union), 'distinct text')}; "
            "comparing representations needs at least 4"
        )
    order = np.random.default_rng(seed).permutation(len(union))[:size]
    return [union[i] for i in order]


# --------------------------------------------------------------------------------------------
# Convenience
# --------------------------------------------------------------------------------------------


def load_dataset(
    path: str | os.PathLike[str] | bytes | BinaryIO,
    *,
    text_column: str,
    label_columns: Sequence[str],
    name: str | None = None,
    fmt: str | None = None,
    max_rows: int | None = None,
) -> pd.DataFrame:
    """Read a dataset and check it can serve the given tasks.

    :func:`read_table`, then :func:`validate_text_column`, then checks that
    ``label_columns`` is non-empty, has no duplicates (a task name appears once), does not
    contain the text column and names existing columns. Labels themselves are checked by
    :func:`build_task`.
    """
    frame = read_table(path, fmt=fmt, name=name, max_rows=max_rows)
    if name is None:
        name = _source_name(path)
    validate_text_column(frame, text_column, dataset=name)
    if isinstance(label_columns, str):
        raise TypeError("label_columns must be a sequence of column names, not a string")
    if not label_columns:
        raise DataError("no label column given; a dataset needs at least one task", dataset=name)
    counts = Counter(label_columns)
    for column, n in counts.items():
        if n > 1:
            raise DataError(
                f"the label column is listed {n} times; each task must appear once",
                column=column,
                dataset=name,
            )
    for column in label_columns:
        if column == text_column:
            raise DataError(
                "the label column is the text column; choose a column that holds labels",
                column=column,
                dataset=name,
            )
        if column not in frame.columns:
            raise DataError(
                f"the label column was not found; {_columns_hint(frame, column)}",
                column=column,
                dataset=name,
            )
    return frame


def describe_labels(
    frame: pd.DataFrame, *, exclude: Sequence[str], max_classes: int = 50
) -> dict[str, dict[str, int]]:
    """Candidate label columns with their classes and counts.

    A column is a candidate when it is not in ``exclude`` (pass the text column, and a split
    column if any), every non-missing value is a scalar, it has between 2 and ``max_classes``
    distinct (normalised) values, and at least one value occurs more than once (so an ID
    column is not proposed). Counts are ordered by decreasing count, then class name.
    """
    excluded = set(exclude)
    result: dict[str, dict[str, int]] = {}
    for column in frame.columns:
        if column in excluded:
            continue
        try:
            labels = [normalise_label(v) for v in frame[column].tolist()]
        except TypeError:
            continue
        counts = Counter(label for label in labels if label is not None)
        if not 2 <= len(counts) <= max_classes or max(counts.values()) < 2:
            continue
        result[str(column)] = dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
    return result


def example_path(name: str = "tickets") -> tuple[Path, list[list[str]]]:
    """The bundled example dataset (``models/examples``) and its planted grouping."""
    from importlib.resources import files

    folder = Path(str(files("models") / "examples"))
    planted = json.loads((folder / f"{name}.planted.json").read_text())["grouping"]
    return folder / f"{name}.csv", planted
