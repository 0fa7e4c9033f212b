"""Layer 1 of the read-only SQL service: what a query may be, decided by DuckDB's own parser.

An allowlist, not a denylist: a query is accepted only if DuckDB parses it as exactly one
statement of type SELECT that ``json_serialize_sql`` can serialise (which it does for plain
SELECT / WITH / VALUES / set operations and for nothing that runs another statement: EXPLAIN
ANALYZE, PIVOT with its hidden CREATE TYPE, PREPARE, EXECUTE, CALL, SET, COPY, ...), and
whose table functions (``FROM f(...)``) are all in :data:`TABLE_FUNCTIONS`. ``EXPLAIN``
without ANALYZE is accepted when the statement after it passes the same check; the text run
is then ``EXPLAIN`` followed by exactly the checked statement.

Layer 2 (storage/sql_engine.py) does not rely on any of this: it cannot write or read files
even when this check is skipped.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final

import duckdb

from twin.errors import TwinError


class SqlRefused(TwinError):
    """A query was refused or stopped; the message says which rule and what to do."""


class SqlTimeout(SqlRefused):
    """A query was stopped (or never started) because its deadline passed."""


#: Longest query text accepted [characters].
MAX_SQL_CHARS: Final = 100_000

#: Table functions a query may call in FROM: generators and catalogue listings. Everything
#: that reads files (read_parquet, read_csv, glob, ...) or runs SQL text (query,
#: query_table) is absent; the store is reached through its views only.
TABLE_FUNCTIONS: Final = frozenset(
    {
        "range",
        "generate_series",
        "unnest",
        "duckdb_views",
        "duckdb_columns",
        "duckdb_functions",
        "duckdb_types",
        "duckdb_keywords",
    }
)


@dataclass(frozen=True)
class CheckedQuery:
    """A query that passed the check: the text to run and the table names it reads."""

    sql: str
    tables: frozenset[str]


def check_text(sql: object) -> str:
    """Refuse what is not SQL text before any parser sees it (type, size, encoding)."""
    if not isinstance(sql, str):
        raise SqlRefused(f"the query must be text, got {type(sql).__name__}")
    if not sql.strip():
        raise SqlRefused("the query is empty")
    if len(sql) > MAX_SQL_CHARS:
        raise SqlRefused(f"query text longer than {MAX_SQL_CHARS} characters")
    try:
        sql.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise SqlRefused(
            f"the query is not valid Unicode (lone surrogate U+{ord(sql[exc.start]):04X} "
            f"at character {exc.start})"
        ) from None
    nul = sql.find("\x00")
    if nul >= 0:
        raise SqlRefused(f"the query contains a NUL character at {nul}")
    return sql


def _statement_type(sql: str) -> duckdb.StatementType:
    """The type of the one statement in sql (refused if there are more, or none)."""
    try:
        stmts = duckdb.extract_statements(sql)
    except Exception as exc:  # the binding raises ValueError too
        raise SqlRefused("SQL does not parse: " + " ".join(str(exc).split())) from None
    if len(stmts) != 1:
        raise SqlRefused(f"one statement per query, got {len(stmts)}")
    try:
        return stmts[0].type
    except ValueError:  # a type the Python binding has no name for (UPDATE EXTENSIONS)
        raise SqlRefused("only SELECT queries are allowed; this statement is refused") from None


def _serialize(con: duckdb.DuckDBPyConnection, sql: str) -> dict[str, Any]:
    row = con.execute("SELECT json_serialize_sql(?)", [sql]).fetchone()
    doc: dict[str, Any] = json.loads(row[0]) if row else {"error": True}
    if doc.get("error"):
        msg = str(doc.get("error_message", "only plain SELECT statements are allowed"))
        raise SqlRefused("only SELECT queries are allowed: " + " ".join(msg.split()))
    return doc


def _nodes(o: object) -> Iterator[dict[str, Any]]:
    stack = [o]
    while stack:
        cur = stack.pop()
        if isinstance(cur, dict):
            yield cur
            stack.extend(cur.values())
        elif isinstance(cur, list):
            stack.extend(cur)


def _check_select(con: duckdb.DuckDBPyConnection, sql: str) -> CheckedQuery:
    kind = _statement_type(sql)
    if kind != duckdb.StatementType.SELECT:
        name = getattr(kind, "name", str(kind))
        raise SqlRefused(f"only SELECT queries are allowed; {name} statements are refused")
    doc = _serialize(con, sql)
    if len(doc.get("statements", [])) != 1:
        raise SqlRefused("one statement per query")
    tables: set[str] = set()
    for node in _nodes(doc):
        node_type = node.get("type")
        if node_type == "TABLE_FUNCTION":
            fn = node.get("function") or {}
            name = str(fn.get("function_name", "")).lower()
            if name not in TABLE_FUNCTIONS or fn.get("schema") or fn.get("catalog"):
                raise SqlRefused(
                    f"table function {name!r} is not available; query the store's views "
                    f"(allowed table functions: {', '.join(sorted(TABLE_FUNCTIONS))})"
                )
        elif node_type == "BASE_TABLE":
            name = str(node.get("table_name", ""))
            if any(c in name for c in "./\\:") or node.get("catalog_name"):
                # DuckDB reads a quoted file name as a table (a "replacement scan")
                raise SqlRefused(f"{name!r} is not a view of the store; file paths are refused")
            tables.add(name.lower())
    return CheckedQuery(sql, frozenset(tables))


def _explain_target(sql: str) -> str:
    """The statement after EXPLAIN; refuses ANALYZE (it runs the statement) and options."""
    tokens = [(pos, kind) for pos, kind in duckdb.tokenize(sql) if kind.name != "comment"]
    if len(tokens) < 2:
        raise SqlRefused("EXPLAIN needs a statement")
    second = sql[tokens[1][0] :].split(None, 1)[0].upper()
    if second.startswith(("ANALYZE", "ANALYSE")):
        raise SqlRefused("EXPLAIN ANALYZE runs the statement and is refused; use EXPLAIN")
    if not sql[tokens[0][0] :].upper().startswith("EXPLAIN") or second.startswith("("):
        raise SqlRefused("only EXPLAIN <select> is allowed (no options)")
    return sql[tokens[1][0] :]


#: Accepted statements remembered per StatementCheck (least recently used dropped first).
ACCEPTED_CACHE = 256


class StatementCheck:
    """:func:`check_statement` with its own parser connection, reused (thread-safe)."""

    def __init__(self) -> None:
        # only ever asked to serialise SQL text, never to run it; sandboxed all the same
        self._con = duckdb.connect(":memory:", config={"enable_external_access": False})
        self._con.execute("SET lock_configuration = true")
        self._lock = threading.Lock()
        # The verdict depends on the text alone: dashboards repeat the same queries, and a
        # parse costs a few ms of a small query's time (bench/bench_sql.py).
        self._accepted: OrderedDict[str, CheckedQuery] = OrderedDict()

    def __call__(self, sql: object) -> CheckedQuery:
        """Accept one SELECT (or EXPLAIN of one SELECT); raise SqlRefused naming the rule."""
        text = check_text(sql)
        with self._lock:
            hit = self._accepted.get(text)
            if hit is not None:
                self._accepted.move_to_end(text)
                return hit
            if _statement_type(text) == duckdb.StatementType.EXPLAIN:
                inner = _check_select(self._con, _explain_target(text))
                checked = CheckedQuery("EXPLAIN " + inner.sql, inner.tables)
            else:
                checked = _check_select(self._con, text)
            self._accepted[text] = checked
            if len(self._accepted) > ACCEPTED_CACHE:
                self._accepted.popitem(last=False)
            return checked

    def close(self) -> None:
        self._con.close()


def check_statement(sql: object) -> CheckedQuery:
    """Accept one SELECT (or EXPLAIN of one SELECT); raise SqlRefused naming the rule.

    Opens a parser connection per call (~50 ms); services keep a :class:`StatementCheck`.
    """
    check = StatementCheck()
    try:
        return check(sql)
    finally:
        check.close()
