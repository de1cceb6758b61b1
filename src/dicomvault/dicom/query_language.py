"""The console's query language: boolean expressions over matching keys.

Users who know Dicoogle or Lucene write searches such as::

    PatientName:SMITH* AND Modality:CT AND StudyDate:[20200101 TO 20201231]

Grammar (operators in upper case; terms side by side mean AND)::

    query    := or EOF
    or       := and ("OR" and)*
    and      := unary (["AND"] unary)*
    unary    := ("NOT" | "-") unary | primary
    primary  := "(" or ")" | field ":" value
    field    := a DICOM keyword (PatientName) or a tag as 8 hex digits (00100010)
    value    := word | "quoted phrase" | "[" bound "TO" bound "]"
    bound    := word, or "*" for an open end

A word runs to the next space or special character; a backslash makes the
next character part of the word (``\\:``, ``\\(``, ``\\ ``, ``\\"``). ``*``
and ``?`` inside a value are DICOM wildcards for the VRs that allow them
(PS3.4 C.2.2.2.4) and ordinary characters for the others. Ranges apply to
dates and times (DA, TM, DT). Each term becomes a :class:`Condition` of the
query model in :mod:`dicomvault.dicom.matching`, so a term matches exactly
as the same key in a C-FIND identifier or a QIDO-RS query does.

Errors are :class:`QueryLanguageError` with the 1-based column of the
offending character.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from pydicom import config
from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataelem import DataElement

from dicomvault.dicom.attributes import Level
from dicomvault.dicom.matching import (
    DATE_TIME_VRS,
    Condition,
    MatchOptions,
    Query,
    QueryError,
    ReturnKey,
    parse_condition,
)

SPECIAL = frozenset(' \t\r\n():[]{}"')
OPERATORS = frozenset({"AND", "OR", "NOT", "TO"})
_TAG_RE = re.compile(r"^[0-9A-Fa-f]{8}$")


class QueryLanguageError(ValueError):
    """A query that cannot be parsed or matched; ``column`` is 1-based."""

    def __init__(self, message: str, column: int) -> None:
        super().__init__(f"column {column}: {message}")
        self.reason = message
        self.column = column


@dataclasses.dataclass(frozen=True)
class Token:
    """One token: its kind, its text (escapes resolved) and its 0-based position."""

    kind: str  # "word", "phrase", "(", ")", "[", "]", ":", "-", "operator", "end"
    text: str
    position: int


# --- Expressions --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Term:
    """A matching key with its condition; None is universal matching (``Key:*``)."""

    keyword: str
    condition: Condition | None
    position: int

    def matches(self, record: Mapping[str, Sequence[Any]]) -> bool:
        """Return whether ``record`` matches; a universal term matches any record."""
        return self.condition is None or self.condition.matches(record)


@dataclasses.dataclass(frozen=True)
class And:
    """Every operand matches."""

    operands: tuple[Expression, ...]

    def matches(self, record: Mapping[str, Sequence[Any]]) -> bool:
        """Return whether every operand matches ``record``."""
        return all(operand.matches(record) for operand in self.operands)


@dataclasses.dataclass(frozen=True)
class Or:
    """At least one operand matches."""

    operands: tuple[Expression, ...]

    def matches(self, record: Mapping[str, Sequence[Any]]) -> bool:
        """Return whether some operand matches ``record``."""
        return any(operand.matches(record) for operand in self.operands)


@dataclasses.dataclass(frozen=True)
class Not:
    """The operand does not match."""

    operand: Expression

    def matches(self, record: Mapping[str, Sequence[Any]]) -> bool:
        """Return whether the operand does not match ``record``."""
        return not self.operand.matches(record)


Expression = Term | And | Or | Not


def terms(expression: Expression) -> Iterator[Term]:
    """Yield every term of ``expression``, left to right."""
    if isinstance(expression, Term):
        yield expression
    elif isinstance(expression, Not):
        yield from terms(expression.operand)
    else:
        for operand in expression.operands:
            yield from terms(operand)


def to_query(expression: Expression, level: Level, return_keys: Sequence[ReturnKey] = ()) -> Query:
    """Return a query of ``level`` whose records match ``expression``.

    At STUDY level a term on Modality, a series attribute, matches the
    study's Modalities in Study, as users of a study list expect.
    """
    if level is Level.STUDY:
        expression = _modality_as_study_attribute(expression)
    return Query(
        level,
        conditions=(),
        return_keys=tuple(return_keys),
        expression=expression,
        expression_keywords=frozenset(keywords(expression)),
    )


def _modality_as_study_attribute(expression: Expression) -> Expression:
    if isinstance(expression, Term):
        if expression.keyword != "Modality" or expression.condition is None:
            return expression
        condition = dataclasses.replace(expression.condition, keyword="ModalitiesInStudy")
        return Term("ModalitiesInStudy", condition, expression.position)
    if isinstance(expression, Not):
        return Not(_modality_as_study_attribute(expression.operand))
    operands = tuple(_modality_as_study_attribute(operand) for operand in expression.operands)
    return And(operands) if isinstance(expression, And) else Or(operands)


def keywords(expression: Expression) -> set[str]:
    """Return the keywords whose values matching ``expression`` needs."""
    names = set()
    for term in terms(expression):
        names.add(term.keyword)
        if term.condition is not None and term.condition.time_keyword:
            names.add(term.condition.time_keyword)
    return names


# --- Parsing ------------------------------------------------------------------------------


def parse(text: str, options: MatchOptions | None = None) -> Expression:
    """Parse a query into an expression of conditions.

    Raises
    ------
    QueryLanguageError
        With the column of the problem: a syntax error, an unknown keyword,
        or a value that cannot be matched for the key's VR.
    """
    parser = _Parser(tokenize(text), options or MatchOptions())
    if parser.peek().kind == "end":
        raise QueryLanguageError("the query is empty; write Keyword:value", 1)
    expression = parser.parse_or()
    token = parser.peek()
    if token.kind != "end":
        raise QueryLanguageError(f"unexpected {_describe(token)}", token.position + 1)
    return expression


def tokenize(text: str) -> list[Token]:
    """Split ``text`` into tokens.

    Raises
    ------
    QueryLanguageError
        For an unterminated phrase, a trailing backslash or a brace.
    """
    tokens: list[Token] = []
    position = 0
    while position < len(text):
        char = text[position]
        if char.isspace():
            position += 1
        elif char in "():[]":
            tokens.append(Token(char, char, position))
            position += 1
        elif char in "{}":
            raise QueryLanguageError(
                "ranges with braces (exclusive bounds) are not supported; use [low TO high]",
                position + 1,
            )
        elif char == '"':
            phrase, position = _read_phrase(text, position)
            tokens.append(phrase)
        elif char == "-" and not _after_colon(tokens) and _starts_term(text, position + 1):
            tokens.append(Token("-", char, position))
            position += 1
        else:
            word, position = _read_word(text, position)
            tokens.append(word)
    tokens.append(Token("end", "", len(text)))
    return tokens


def _after_colon(tokens: list[Token]) -> bool:
    """Return whether the previous token is a colon, so that a minus sign starts a value."""
    return bool(tokens) and tokens[-1].kind == ":"


def _starts_term(text: str, position: int) -> bool:
    return position < len(text) and not text[position].isspace()


def _read_phrase(text: str, start: int) -> tuple[Token, int]:
    characters = []
    position = start + 1
    while position < len(text):
        char = text[position]
        if char == "\\":
            if position + 1 >= len(text):
                break
            characters.append(text[position + 1])
            position += 2
        elif char == '"':
            return Token("phrase", "".join(characters), start), position + 1
        else:
            characters.append(char)
            position += 1
    raise QueryLanguageError("the quoted phrase has no closing quote", start + 1)


def _read_word(text: str, start: int) -> tuple[Token, int]:
    characters = []
    escaped = False
    position = start
    while position < len(text):
        char = text[position]
        if char == "\\":
            if position + 1 >= len(text):
                raise QueryLanguageError(
                    "a backslash must be followed by a character", position + 1
                )
            characters.append(text[position + 1])
            escaped = True
            position += 2
        elif char in SPECIAL:
            break
        else:
            characters.append(char)
            position += 1
    word = "".join(characters)
    kind = "operator" if word in OPERATORS and not escaped else "word"
    return Token(kind, word, start), position


def _describe(token: Token) -> str:
    if token.kind == "end":
        return "end of the query"
    if token.kind == "operator":
        return f"operator {token.text}"
    if token.kind in {"word", "phrase"}:
        return f"'{token.text}'"
    return f"'{token.kind}'"


class _Parser:
    """Recursive descent over the tokens, building conditions as terms complete."""

    def __init__(self, tokens: list[Token], options: MatchOptions) -> None:
        self.tokens = tokens
        self.index = 0
        self.options = options

    def peek(self) -> Token:
        return self.tokens[self.index]

    def advance(self) -> Token:
        token = self.tokens[self.index]
        self.index += 1
        return token

    def is_operator(self, name: str) -> bool:
        token = self.peek()
        return token.kind == "operator" and token.text == name

    def parse_or(self) -> Expression:
        operands = [self.parse_and()]
        while self.is_operator("OR"):
            self.advance()
            operands.append(self.parse_and())
        return operands[0] if len(operands) == 1 else Or(tuple(operands))

    def parse_and(self) -> Expression:
        operands = [self.parse_unary()]
        while True:
            if self.is_operator("AND"):
                self.advance()
            elif not self._starts_operand():
                break
            operands.append(self.parse_unary())
        return operands[0] if len(operands) == 1 else And(tuple(operands))

    def _starts_operand(self) -> bool:
        token = self.peek()
        return token.kind in {"word", "(", "-"} or (
            token.kind == "operator" and token.text == "NOT"
        )

    def parse_unary(self) -> Expression:
        if self.is_operator("NOT") or self.peek().kind == "-":
            self.advance()
            return Not(self.parse_unary())
        return self.parse_primary()

    def parse_primary(self) -> Expression:
        token = self.advance()
        if token.kind == "(":
            expression = self.parse_or()
            closing = self.advance()
            if closing.kind != ")":
                raise QueryLanguageError(
                    f"expected ')' to close the '(' at column {token.position + 1}, "
                    f"found {_describe(closing)}",
                    closing.position + 1,
                )
            return expression
        if token.kind == "word":
            return self.parse_term(token)
        if token.kind == "phrase":
            raise QueryLanguageError(
                'a phrase needs a field: write Keyword:"the phrase"', token.position + 1
            )
        raise QueryLanguageError(
            f"expected a term such as Keyword:value, found {_describe(token)}",
            token.position + 1,
        )

    def parse_term(self, field: Token) -> Term:
        colon = self.advance()
        if colon.kind != ":":
            raise QueryLanguageError(
                f"'{field.text}' needs a field and a value: write Keyword:value",
                field.position + 1,
            )
        keyword, vr = _resolve_field(field)
        value = self.advance()
        if value.kind == "[":
            text = self.parse_range(keyword, vr, field, value)
        elif value.kind in {"word", "phrase"} or (value.kind == "operator" and value.text != "NOT"):
            text = value.text
        elif value.kind == "-":
            word = self.advance()  # a value that starts with '-', such as a range "-2020"
            text = "-" + word.text if word.kind == "word" else "-"
        else:
            raise QueryLanguageError(
                f"{keyword} needs a value after ':', found {_describe(value)}",
                value.position + 1,
            )
        return Term(keyword, self._condition(keyword, vr, text, value), field.position)

    def parse_range(self, keyword: str, vr: str, field: Token, opening: Token) -> str:
        if vr not in DATE_TIME_VRS:
            raise QueryLanguageError(
                f"ranges apply to dates and times (DA, TM, DT); {keyword} is {vr}",
                opening.position + 1,
            )
        low = self._bound("a lower bound")
        to = self.advance()
        if not (to.kind == "operator" and to.text == "TO"):
            raise QueryLanguageError(
                f"expected TO between the bounds, found {_describe(to)}", to.position + 1
            )
        high = self._bound("an upper bound")
        closing = self.advance()
        if closing.kind != "]":
            raise QueryLanguageError(
                f"expected ']' to close the range, found {_describe(closing)}",
                closing.position + 1,
            )
        lower = "" if low.text == "*" else low.text
        upper = "" if high.text == "*" else high.text
        if not lower and not upper:
            return "*"
        return f"{lower}-{upper}"

    def _bound(self, expected: str) -> Token:
        token = self.advance()
        if token.kind != "word":
            raise QueryLanguageError(
                f"expected {expected} (a value or *), found {_describe(token)}",
                token.position + 1,
            )
        return token

    def _condition(self, keyword: str, vr: str, text: str, value: Token) -> Condition | None:
        if text == "*":
            return None  # universal matching, for every VR
        if "\\" in text and vr != "UI":
            # A backslash separates values in DICOM; in the language, write OR.
            raise QueryLanguageError(
                f"{keyword}: use OR between values instead of a backslash", value.position + 1
            )
        try:
            element = DataElement(keyword, vr, text, validation_mode=config.IGNORE)
            return parse_condition(element, self.options)
        except QueryError as exc:
            raise QueryLanguageError(str(exc), value.position + 1) from None
        except Exception as exc:  # pydicom raises several kinds for values it rejects
            raise QueryLanguageError(
                f"{keyword}: '{text}' is not a valid {vr} value ({exc})", value.position + 1
            ) from None


def _resolve_field(field: Token) -> tuple[str, str]:
    """Return the keyword and VR of a field given as a keyword or a tag."""
    name = field.text
    if _TAG_RE.match(name):
        tag = int(name, 16)
        keyword = keyword_for_tag(tag)
        if not keyword:
            raise QueryLanguageError(
                f"tag {name} is not in the DICOM dictionary", field.position + 1
            )
    else:
        keyword = name
        tag_number = tag_for_keyword(name)
        if tag_number is None:
            raise QueryLanguageError(
                f"'{name}' is not a DICOM keyword (for example PatientName, or a tag as 00100010)",
                field.position + 1,
            )
        tag = tag_number
    vr = dictionary_VR(tag).split(" or ")[0]
    return keyword, vr
