"""Run a :class:`~dicomvault.dicom.matching.Query` against the index.

Conditions on column attributes become SQL that selects a superset of the
matches. Every candidate is then checked with ``Query.matches``, which
applies the exact rules. Results are read in pages of ``page_size`` rows, so a large
result never sits in memory and no transaction stays open while the caller
sends responses.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from pydicom.datadict import tag_for_keyword
from sqlalchemy import (
    ColumnElement,
    Engine,
    FromClause,
    Select,
    and_,
    exists,
    false,
    func,
    literal,
    or_,
    select,
)

from dicomvault.dicom.attributes import (
    COLUMN_ATTRIBUTES,
    COLUMN_BY_KEYWORD,
    COMPUTED_ATTRIBUTES,
    CONTROL_KEYWORDS,
    ColumnAttribute,
    Level,
)
from dicomvault.dicom.matching import (
    Condition,
    MatchKind,
    Query,
    fold_case,
    has_wildcard,
    json_element_values,
)
from dicomvault.dicom.query_language import And, Or, Term
from dicomvault.index.schema import instances, patients, series, studies

LOGGER = logging.getLogger(__name__)

DEFAULT_PAGE_SIZE = 500
# The LIKE pattern of person names with component groups, as in the
# predicate of the partial index ix_patients_patient_name_groups.
_HAS_GROUPS = "%=%"
_LEVEL_TABLES = {
    Level.PATIENT: patients,
    Level.STUDY: studies,
    Level.SERIES: series,
    Level.IMAGE: instances,
}
_PK_LABELS = {
    Level.PATIENT: "_patient_pk",
    Level.STUDY: "_study_pk",
    Level.SERIES: "_series_pk",
    Level.IMAGE: "_instance_pk",
}


@dataclasses.dataclass
class SearchResult:
    """One matching entity.

    Attributes
    ----------
    level : Level
        The level of the entity.
    record : dict
        Keyword to values: strings, or DICOM JSON items for sequences.
    elements : dict
        Tag to DICOM JSON element, for attributes that are not index columns,
        read from the entity's instance (a representative one above IMAGE).
    pks : dict
        Primary keys of the entity and its parents by level.
    storage_key : str
        The stored file, for IMAGE level results.
    transfer_syntax_uid : str
        The transfer syntax of the stored file, for IMAGE level results.
    size : int
        The size of the stored file in bytes, for IMAGE level results.
    """

    level: Level
    record: dict[str, list[Any]]
    elements: dict[int, dict[str, Any]]
    pks: dict[Level, int]
    storage_key: str = ""
    transfer_syntax_uid: str = ""
    size: int = 0


class IndexSearch:
    """Finds entities of the index matching a query."""

    def __init__(self, engine: Engine, page_size: int = DEFAULT_PAGE_SIZE) -> None:
        self.engine = engine
        self.page_size = page_size

    def search(self, query: Query) -> Iterator[SearchResult]:
        """Yield the entities matching ``query``, in insertion order.

        The generator reads the next page only when the previous one is used
        up; stop iterating to end the search early.
        """
        level = query.level
        main_table = _LEVEL_TABLES[level]
        needed = query.keywords
        statement = self._base_select(level)
        prefilters = [
            sql for c in query.conditions if (sql := _condition_sql(c, level)) is not None
        ]
        if query.expression is not None:
            expression_sql = _expression_sql(query.expression, level)
            if expression_sql is not None:
                prefilters.append(expression_sql)
        if prefilters:
            statement = statement.where(and_(*prefilters))

        last_pk = 0
        while True:
            page_statement = (
                statement.where(main_table.c.pk > last_pk)
                .order_by(main_table.c.pk)
                .limit(self.page_size)
            )
            with self.engine.connect() as connection:
                rows = [row._asdict() for row in connection.execute(page_statement)]
                if not rows:
                    return
                last_pk = rows[-1][_PK_LABELS[level]]
                results = [self._result(level, row) for row in rows]
                self._add_computed(connection, level, results, needed)
                self._add_header_values(connection, level, results, needed)
            for result in results:
                if query.matches(result.record):
                    yield result
            if len(rows) < self.page_size:
                return

    def headers(self, level: Level, pks: Iterable[int]) -> dict[int, dict[str, Any]]:
        """Return the stored DICOM JSON header describing each entity, by primary key.

        At IMAGE level this is the instance's own header; above it, the header
        of the most recently stored instance of the entity.
        """
        with self.engine.connect() as connection:
            return _representative_headers(connection, level, pks)

    def _base_select(self, level: Level) -> Select[Any]:
        columns: list[Any] = []
        from_clause: FromClause = patients
        for current in Level:
            if current > level:
                break
            table = _LEVEL_TABLES[current]
            columns.append(table.c.pk.label(_PK_LABELS[current]))
            for attribute in COLUMN_ATTRIBUTES:
                if attribute.level is current:
                    columns.append(table.c[attribute.column].label(attribute.keyword))
            if current is Level.STUDY:
                from_clause = from_clause.join(studies, studies.c.patient_pk == patients.c.pk)
            elif current is Level.SERIES:
                from_clause = from_clause.join(series, series.c.study_pk == studies.c.pk)
            elif current is Level.IMAGE:
                from_clause = from_clause.join(instances, instances.c.series_pk == series.c.pk)
                columns.append(instances.c.storage_key.label("_storage_key"))
                columns.append(instances.c.transfer_syntax_uid.label("_transfer_syntax_uid"))
                columns.append(instances.c.size.label("_size"))
        return select(*columns).select_from(from_clause)

    @staticmethod
    def _result(level: Level, row: dict[str, Any]) -> SearchResult:
        record: dict[str, list[Any]] = {}
        for attribute in COLUMN_ATTRIBUTES:
            if attribute.keyword in row:
                value = row[attribute.keyword] or ""
                record[attribute.keyword] = _split_values(value, attribute.vr)
        pks = {lvl: row[label] for lvl, label in _PK_LABELS.items() if label in row}
        return SearchResult(
            level,
            record,
            {},
            pks,
            row.get("_storage_key", ""),
            row.get("_transfer_syntax_uid", ""),
            row.get("_size", 0),
        )

    def _add_computed(
        self, connection: Any, level: Level, results: list[SearchResult], needed: set[str]
    ) -> None:
        wanted = [k for k in needed if k in COMPUTED_ATTRIBUTES and COMPUTED_ATTRIBUTES[k] <= level]
        from_series = [k for k in wanted if k in SERIES_SUMMARY_KEYWORDS]
        if len(from_series) > 1:
            # One statement for all of them instead of one each, because QIDO-RS
            # returns the three by default and each statement costs about 0.1 ms.
            study_pks = sorted({r.pks[Level.STUDY] for r in results})
            summaries = _study_summaries(connection, study_pks)
            for result in results:
                summary = summaries.get(result.pks[Level.STUDY], {})
                for keyword in from_series:
                    result.record[keyword] = summary.get(keyword, _empty(keyword))
            wanted = [k for k in wanted if k not in from_series]
        for keyword in wanted:
            entity_level = COMPUTED_ATTRIBUTES[keyword]
            pks = sorted({r.pks[entity_level] for r in results})
            values = _computed_values(connection, keyword, pks)
            for result in results:
                result.record[keyword] = values.get(result.pks[entity_level], _empty(keyword))

    def _add_header_values(
        self, connection: Any, level: Level, results: list[SearchResult], needed: set[str]
    ) -> None:
        from_header = [
            k
            for k in needed
            if k not in COLUMN_BY_KEYWORD
            and k not in COMPUTED_ATTRIBUTES
            and k not in CONTROL_KEYWORDS
        ]
        if not from_header:
            return
        headers = _representative_headers(connection, level, [r.pks[level] for r in results])
        for result in results:
            header = headers.get(result.pks[level], {})
            for keyword in from_header:
                tag_text = _tag_text(keyword)
                if tag_text is None:
                    continue
                element = header.get(tag_text)
                if element is None:
                    continue
                result.elements[int(tag_text, 16)] = element
                result.record[keyword] = json_element_values(element)


def _split_values(value: str, vr: str) -> list[str]:
    if not value:
        return []
    if vr in {"LT", "ST", "UT"}:
        return [value]
    return value.split("\\")


def _empty(keyword: str) -> list[str]:
    return [] if keyword in {"ModalitiesInStudy", "SOPClassesInStudy"} else ["0"]


def _tag_text(keyword: str) -> str | None:
    """Return the 8-digit hex tag used in DICOM JSON for a keyword or '(gggg,eeee)'."""
    tag = tag_for_keyword(keyword)
    if tag is None:
        text = keyword.strip("()").replace(",", "")
        return text.upper() if len(text) == 8 else None
    return f"{tag:08X}"


def _computed_values(connection: Any, keyword: str, pks: Sequence[int]) -> dict[int, list[str]]:
    """Return the values of a computed attribute for entities ``pks`` of its level."""
    if not pks:
        return {}
    if keyword == "NumberOfPatientRelatedStudies":
        statement = (
            select(studies.c.patient_pk, func.count())
            .where(studies.c.patient_pk.in_(pks))
            .group_by(studies.c.patient_pk)
        )
    elif keyword == "NumberOfPatientRelatedSeries":
        statement = (
            select(studies.c.patient_pk, func.count())
            .select_from(series.join(studies, series.c.study_pk == studies.c.pk))
            .where(studies.c.patient_pk.in_(pks))
            .group_by(studies.c.patient_pk)
        )
    elif keyword == "NumberOfPatientRelatedInstances":
        statement = (
            select(studies.c.patient_pk, func.count())
            .select_from(
                instances.join(series, instances.c.series_pk == series.c.pk).join(
                    studies, series.c.study_pk == studies.c.pk
                )
            )
            .where(studies.c.patient_pk.in_(pks))
            .group_by(studies.c.patient_pk)
        )
    elif keyword == "NumberOfStudyRelatedSeries":
        statement = (
            select(series.c.study_pk, func.count())
            .where(series.c.study_pk.in_(pks))
            .group_by(series.c.study_pk)
        )
    elif keyword == "NumberOfStudyRelatedInstances":
        statement = (
            select(series.c.study_pk, func.count())
            .select_from(instances.join(series, instances.c.series_pk == series.c.pk))
            .where(series.c.study_pk.in_(pks))
            .group_by(series.c.study_pk)
        )
    elif keyword == "NumberOfSeriesRelatedInstances":
        statement = (
            select(instances.c.series_pk, func.count())
            .where(instances.c.series_pk.in_(pks))
            .group_by(instances.c.series_pk)
        )
    elif keyword == "ModalitiesInStudy":
        return _distinct_values(
            connection,
            select(series.c.study_pk, series.c.modality)
            .distinct()
            .where(series.c.study_pk.in_(pks), series.c.modality != ""),
        )
    elif keyword == "SOPClassesInStudy":
        return _distinct_values(
            connection,
            select(series.c.study_pk, instances.c.sop_class_uid)
            .distinct()
            .select_from(instances.join(series, instances.c.series_pk == series.c.pk))
            .where(series.c.study_pk.in_(pks)),
        )
    else:
        raise AssertionError(keyword)
    return {pk: [str(count)] for pk, count in connection.execute(statement)}


# Study attributes computed from the study's series and their instance counts.
SERIES_SUMMARY_KEYWORDS = frozenset(
    {"NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances", "ModalitiesInStudy"}
)


def _study_summaries(connection: Any, study_pks: Sequence[int]) -> dict[int, dict[str, list[str]]]:
    """Return the series count, instance count and modalities of each study, by primary key."""
    if not study_pks:
        return {}
    statement = (
        select(series.c.study_pk, series.c.modality, func.count(instances.c.pk))
        .select_from(series.join(instances, instances.c.series_pk == series.c.pk))
        .where(series.c.study_pk.in_(study_pks))
        .group_by(series.c.study_pk, series.c.pk, series.c.modality)
    )
    series_counts: dict[int, int] = defaultdict(int)
    instance_counts: dict[int, int] = defaultdict(int)
    modalities: dict[int, set[str]] = defaultdict(set)
    for study_pk, modality, count in connection.execute(statement):
        series_counts[study_pk] += 1
        instance_counts[study_pk] += count
        if modality:
            modalities[study_pk].add(modality)
    return {
        pk: {
            "NumberOfStudyRelatedSeries": [str(series_counts[pk])],
            "NumberOfStudyRelatedInstances": [str(instance_counts[pk])],
            "ModalitiesInStudy": sorted(modalities[pk]),
        }
        for pk in series_counts
    }


def _distinct_values(connection: Any, statement: Select[Any]) -> dict[int, list[str]]:
    values: dict[int, list[str]] = defaultdict(list)
    for pk, value in connection.execute(statement):
        if value not in values[pk]:
            values[pk].append(value)
    return {pk: sorted(items) for pk, items in values.items()}


def _representative_headers(
    connection: Any, level: Level, pks: Iterable[int]
) -> dict[int, dict[str, Any]]:
    """Return the DICOM JSON header describing each entity.

    At IMAGE level this is the instance's own header. Above it, the header
    of the most recently inserted instance stands for the patient, study or
    series, which the writer also uses to update their columns.
    """
    pk_list = list(pks)
    if not pk_list:
        return {}
    if level is Level.IMAGE:
        statement = select(instances.c.pk, instances.c.header).where(instances.c.pk.in_(pk_list))
        return {pk: header for pk, header in connection.execute(statement)}

    entity_column = {
        Level.SERIES: series.c.pk,
        Level.STUDY: studies.c.pk,
        Level.PATIENT: studies.c.patient_pk,
    }[level]
    newest = (
        select(entity_column.label("entity_pk"), func.max(instances.c.pk).label("instance_pk"))
        .select_from(
            instances.join(series, instances.c.series_pk == series.c.pk).join(
                studies, series.c.study_pk == studies.c.pk
            )
        )
        .where(entity_column.in_(pk_list))
        .group_by(entity_column)
        .subquery()
    )
    statement = select(newest.c.entity_pk, instances.c.header).join(
        newest, instances.c.pk == newest.c.instance_pk
    )
    return {pk: header for pk, header in connection.execute(statement)}


# --- SQL prefilters ----------------------------------------------------------------------


def _condition_sql(condition: Condition, level: Level) -> Any:
    """Return SQL selecting a superset of the rows matching ``condition``, or None."""
    if condition.keyword == "ModalitiesInStudy" and level >= Level.STUDY:
        return _modalities_sql(condition)
    attribute = COLUMN_BY_KEYWORD.get(condition.keyword)
    if attribute is None or attribute.level > level:
        return None
    table = _LEVEL_TABLES[attribute.level]
    if condition.kind is MatchKind.DATE_TIME_RANGE:
        return _date_range_sql(table.c[attribute.column], condition.low, condition.high)
    if condition.kind is MatchKind.RANGE:
        return _range_sql(attribute, table, condition)
    if condition.kind is MatchKind.SEQUENCE:
        return None
    items = condition.values if condition.kind is MatchKind.LIST else (condition.value,)
    return or_(*(_value_sql(attribute, table, item) for item in items))


def _expression_sql(expression: Any, level: Level) -> Any:
    """Return SQL selecting a superset of the rows matching a query language expression.

    None means no restriction: a term on an attribute without a column, or
    a NOT, whose superset is every row.
    """
    if isinstance(expression, Term):
        if expression.condition is None:
            return None
        return _condition_sql(expression.condition, level)
    if isinstance(expression, And):
        parts = [_expression_sql(operand, level) for operand in expression.operands]
        restricting = [part for part in parts if part is not None]
        return and_(*restricting) if restricting else None
    if isinstance(expression, Or):
        parts = [_expression_sql(operand, level) for operand in expression.operands]
        if any(part is None for part in parts):
            return None
        return or_(*parts)
    return None


def _value_sql(attribute: ColumnAttribute, table: Any, value: str) -> Any:
    if attribute.vr == "PN":
        column = table.c[attribute.match_column]
        pattern = _like_pattern(fold_case(value))
        # A name without '=' may match any component group of the stored name.
        if "=" in value:
            return column.like(pattern, escape="\\")
        # The whole name and its first group can be found through the index
        # when the pattern starts with literal characters. Later groups are
        # searched only in names that have groups. The condition repeats the
        # predicate of the partial index ix_patients_patient_name_groups, so
        # that PostgreSQL reads those names from it.
        return or_(
            column.like(pattern, escape="\\"),
            column.like(pattern + "=%", escape="\\"),
            and_(
                column.like(_HAS_GROUPS),
                or_(
                    column.like("%=" + pattern, escape="\\"),
                    column.like("%=" + pattern + "=%", escape="\\"),
                ),
            ),
        )
    column = table.c[attribute.column]
    if has_wildcard(value):
        return column.like(_like_pattern(value), escape="\\")
    return column == value


def _like_pattern(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%").replace("?", "_")


def _range_sql(attribute: ColumnAttribute, table: Any, condition: Condition) -> Any:
    if attribute.vr == "DA":
        return _date_range_sql(table.c[attribute.column], condition.low, condition.high)
    column = table.c[attribute.match_column or attribute.column]
    low, high = condition.low, condition.high
    # A stored value with reduced precision matches when its interval
    # overlaps the range, so the lower bound compares only the component
    # every stored value has (hours for TM, the year for DT).
    prefix = 2 if attribute.vr == "TM" else 4
    clauses = [column != ""]
    if low is not None:
        clauses.append(column >= low[:prefix])
    if high is not None:
        clauses.append(column <= high)
    return and_(*clauses)


def _date_range_sql(column: Any, low: str | None, high: str | None) -> ColumnElement[bool]:
    clauses = [column != ""]
    if low is not None:
        clauses.append(column >= low[:8])
    if high is not None:
        clauses.append(column <= high[:8])
    return and_(*clauses)


def _modalities_sql(condition: Condition) -> Any:
    if condition.kind is MatchKind.SINGLE:
        items: tuple[str, ...] = (condition.value,)
    elif condition.kind is MatchKind.LIST:
        items = condition.values
    else:
        return None
    if any(has_wildcard(item) for item in items):
        return None
    # An alias keeps the subquery from correlating with the outer query's
    # own series table at SERIES and IMAGE level.
    study_series = series.alias("study_series")
    inner = (
        select(literal(1))
        .select_from(study_series)
        .where(study_series.c.study_pk == studies.c.pk, study_series.c.modality.in_(items))
    )
    return exists(inner) if items else false()


__all__ = ["IndexSearch", "SearchResult"]
