"""`engage mart export`: each mart table as a CSV or Parquet file, for an analyst's own tools.

One file per table (``mart_events.csv``...), every row in primary-key order, written a chunk
at a time. CSV: a header line, UTC times in ISO 8601, dates as YYYY-MM-DD, booleans as
true/false, null as an empty field. Parquet: typed columns (timestamps in UTC, microseconds).
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Boolean, Date, Float, Uuid, select
from sqlalchemy.orm import Session

from consumers.mart.store import MART_TABLES
from infra.db import UTCDateTime

FORMATS = ("csv", "parquet")
CHUNK = 50_000


@dataclass(frozen=True)
class Exported:
    table: str
    path: Path
    rows: int


def export_mart(session: Session, out: Path, fmt: str) -> list[Exported]:
    """Write every mart table to ``out`` (made if missing) in ``fmt``; what was written."""
    if fmt not in FORMATS:
        raise ValueError(f"format: {fmt!r} is not one of {', '.join(FORMATS)}")
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for model in MART_TABLES:
        table: Any = model.__table__
        path = out / f"{table.name}.{fmt}"
        columns = [c.name for c in table.columns]
        chunks = _chunks(session, model, columns)
        rows = _csv(path, columns, chunks) if fmt == "csv" else _parquet(path, table, chunks)
        written.append(Exported(table.name, path, rows))
    return written


def _chunks(session: Session, model: Any, columns: list[str]) -> Iterator[list[tuple[Any, ...]]]:
    table = model.__table__
    statement = select(*table.columns).order_by(*table.primary_key.columns)
    result = session.execute(statement.execution_options(yield_per=CHUNK))
    for partition in result.partitions():
        yield [tuple(row) for row in partition]


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime | date):
        return value.isoformat()
    return str(value)


def _csv(path: Path, columns: list[str], chunks: Iterator[list[tuple[Any, ...]]]) -> int:
    rows = 0
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for chunk in chunks:
            writer.writerows([_text(v) for v in row] for row in chunk)
            rows += len(chunk)
    return rows


def _arrow_type(column: Any) -> Any:
    import pyarrow as pa

    kind = column.type
    if isinstance(kind, UTCDateTime):
        return pa.timestamp("us", tz="UTC")
    if isinstance(kind, Date):
        return pa.date32()
    if isinstance(kind, Boolean):
        return pa.bool_()
    if isinstance(kind, Float):
        return pa.float64()
    return pa.string()


def _parquet(path: Path, table: Any, chunks: Iterator[list[tuple[Any, ...]]]) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema(
        [pa.field(c.name, _arrow_type(c), nullable=c.nullable) for c in table.columns]
    )
    uuids = [i for i, c in enumerate(table.columns) if isinstance(c.type, Uuid)]
    rows = 0
    with pq.ParquetWriter(path, schema) as writer:
        for chunk in chunks:
            values = [list(column) for column in zip(*chunk, strict=True)]
            for i in uuids:
                values[i] = [None if v is None else str(v) for v in values[i]]
            writer.write_table(pa.Table.from_arrays(values, schema=schema))
            rows += len(chunk)
        if rows == 0:
            writer.write_table(schema.empty_table())
    return rows
