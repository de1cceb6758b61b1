"""Insert or update many rows of one table with one statement, for bulk indexing.

SQLAlchemy's ``Connection.execute(statement, rows)`` builds the parameters of
every row in Python: it looks up each bind parameter and runs each column
type's bind processor. On SQLite, :class:`BulkUpsert` compiles the statement
once and hands the rows to the driver's ``executemany`` as tuples, running
only the bind processors that exist (dates and JSON). In the 20,000-file
indexing benchmark this cut the CPU time of the indexing process from about
3.2 to 3.0 s. Other back-ends keep SQLAlchemy's path, which batches rows
into multi-row statements for PostgreSQL.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sqlalchemy import Connection, Engine, Table
from sqlalchemy.dialects import postgresql, sqlite


class BulkUpsert:
    """An ``INSERT ... ON CONFLICT (key) DO UPDATE`` of fixed columns, run for many rows.

    Parameters
    ----------
    engine : Engine
        The index engine; its dialect decides how rows are sent.
    table : Table
        The table written.
    key : str
        The column with the unique constraint that decides between insert
        and update; every other column is updated on a conflict.
    columns : sequence of str
        The columns of every row, ``key`` included.
    """

    def __init__(self, engine: Engine, table: Table, key: str, columns: Sequence[str]) -> None:
        self.columns = tuple(columns)
        insert = (postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert)(
            table
        )
        self.statement = insert.on_conflict_do_update(
            index_elements=[key],
            set_={name: insert.excluded[name] for name in self.columns if name != key},
        )
        self._driver_sql: str | None = None
        if engine.dialect.name == "sqlite":
            compiled = self.statement.compile(dialect=engine.dialect, column_keys=self.columns)
            order = compiled.positiontup
            if order is not None and set(order) == set(self.columns):
                self._driver_sql = compiled.string
                self._pick = operator.itemgetter(*order)
                self._processors = _bind_processors(engine, table, order)

    def execute(self, connection: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
        """Write ``rows`` in the caller's transaction; each row has exactly ``columns``."""
        if not rows:
            return
        if self._driver_sql is None:
            connection.execute(self.statement, list(rows))
            return
        pick = self._pick
        values = [pick(row) for row in rows]
        if self._processors:
            values = [_process(row, self._processors) for row in values]
        connection.exec_driver_sql(self._driver_sql, values)


_Processor = Callable[[Any], Any]


def _bind_processors(
    engine: Engine, table: Table, order: Sequence[str]
) -> list[tuple[int, _Processor]]:
    """Return (position, processor) for the columns whose type converts values for the driver."""
    processors: list[tuple[int, _Processor]] = []
    for position, name in enumerate(order):
        processor = table.c[name].type.bind_processor(engine.dialect)
        if processor is not None:
            processors.append((position, _reusing_last(processor)))
    return processors


def _reusing_last(processor: _Processor) -> _Processor:
    """Wrap ``processor`` to return the last result again for the same value object.

    The rows of a batch share one timestamp object, so the text of the
    timestamp is built once per batch instead of once per row.
    """
    last: list[tuple[Any, Any]] = [(object(), None)]

    def process(value: Any) -> Any:
        previous = last[0]  # read once: another thread may replace it
        if previous[0] is value:
            return previous[1]
        result = processor(value)
        last[0] = (value, result)
        return result

    return process


def _process(row: tuple[Any, ...], processors: list[tuple[int, _Processor]]) -> tuple[Any, ...]:
    values = list(row)
    for position, processor in processors:
        values[position] = processor(values[position])
    return tuple(values)
