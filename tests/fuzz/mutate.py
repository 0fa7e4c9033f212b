"""Deterministic mutators: bytes, Arrow frames (value planting), JSON structure, SQL tokens.

Every mutator takes a ``random.Random`` so a case is fully determined by its seed; the
runners seed one generator per case index, so any case can be regenerated on its own.
"""

from __future__ import annotations

import json
import math
import random
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import pyarrow as pa

# ---- bytes -----------------------------------------------------------------------------

_INTERESTING_BYTES: Final = (0x00, 0x01, 0x7F, 0x80, 0xFF, 0xFE, 0x20, 0x41)


def bit_flip(b: bytearray, rng: random.Random) -> None:
    """Flip 1 to 8 random bits."""
    if not b:
        return
    for _ in range(rng.choice((1, 1, 2, 3, 8))):
        i = rng.randrange(len(b))
        b[i] ^= 1 << rng.randrange(8)


def byte_replace(b: bytearray, rng: random.Random) -> None:
    """Overwrite 1 to 4 bytes with random or boundary bytes."""
    if not b:
        return
    for _ in range(rng.randint(1, 4)):
        i = rng.randrange(len(b))
        b[i] = rng.choice(_INTERESTING_BYTES) if rng.random() < 0.5 else rng.randrange(256)


def byte_insert(b: bytearray, rng: random.Random) -> None:
    """Insert 1 to 16 random bytes, or repeat a chunk of the input, at a random position."""
    i = rng.randint(0, len(b))
    if b and rng.random() < 0.3:
        j = rng.randrange(len(b))
        chunk = bytes(b[j : j + rng.randint(1, 64)])
    else:
        chunk = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
    b[i:i] = chunk


def byte_delete(b: bytearray, rng: random.Random) -> None:
    """Delete 1 to 64 bytes at a random position."""
    if not b:
        return
    i = rng.randrange(len(b))
    del b[i : i + rng.choice((1, 1, 2, 4, 8, 64))]


def truncate(b: bytearray, rng: random.Random) -> None:
    """Cut the input at a random length."""
    del b[rng.randint(0, len(b)) :]


def splice(b: bytearray, rng: random.Random, other: bytes) -> None:
    """Head of this input, tail of another valid input."""
    i = rng.randint(0, len(b))
    j = rng.randint(0, len(other))
    b[i:] = other[j:]


BYTE_MUTATIONS: Final = (bit_flip, byte_replace, byte_insert, byte_delete)


def mutate_bytes(
    data: bytes, rng: random.Random, others: Sequence[bytes], rounds: int | None = None
) -> bytes:
    """Apply 1 to 3 random byte-level mutations (truncation and splicing less often)."""
    b = bytearray(data)
    for _ in range(rounds if rounds is not None else rng.choice((1, 1, 1, 2, 3))):
        r = rng.random()
        if r < 0.08:
            truncate(b, rng)
        elif r < 0.16 and others:
            splice(b, rng, rng.choice(others))
        else:
            rng.choice(BYTE_MUTATIONS)(b, rng)
    return bytes(b)


# ---- Arrow frames: boundary values planted where columns live ---------------------------

_F32: Final = (
    math.nan, math.inf, -math.inf, -0.0, 3.4028235e38, -3.4028235e38, 1.4e-45, -1.0,
    5000.0, 5000.001, 150.0, 150.01, 100.0, 100.0001, -40.0, -40.01, 1e30, -500.0,
)  # fmt: skip
_F64: Final = (
    math.nan, math.inf, -math.inf, -0.0, 1e300, -1e300, 5e-324, -1.0, 1.5, 1.5000001,
    150.0, 200.0, 200.1, -60.0, -60.1, 1.7976931348623157e308,
)  # fmt: skip
_YEAR_10000_MS: Final = 253_402_300_800_000
_I64_TS: Final = (
    0, -1, -(2**63), 2**63 - 1, _YEAR_10000_MS - 1, _YEAR_10000_MS, -62_135_596_800_000,
    -62_135_596_800_001, -(10**15), 10**15, 253_402_214_400_000,  # 9999-12-31
    -631_152_000_000,  # 1950-01-01
)  # fmt: skip
_U16: Final = (0, 1, 1023, 1024, 32767, 32768, 65535)
_U32: Final = (0, 1, 79, 2**31 - 1, 2**31, 2**32 - 1)
_U64: Final = (0, 1, 2**53 + 1, 2**63 - 1, 2**63, 2**64 - 1)
_I32: Final = (-1, 0, 1, 7, 255, 65536, 2**24, 2**31 - 1, -(2**31))
_I64: Final = (-1, 0, 1, 72, 73, 1024, 1025, 2**31, 2**32, 2**40, 2**62, 2**63 - 1, -(2**63))

#: kind -> (struct format, candidate values)
BOUNDARY: Final[dict[str, tuple[str, tuple[Any, ...]]]] = {
    "f32": ("<f", _F32),
    "f64": ("<d", _F64),
    "ts": ("<q", _I64_TS),
    "u16": ("<H", _U16),
    "u32": ("<I", _U32),
    "u64": ("<Q", _U64),
    "offsets": ("<i", _I32),
    "i64": ("<q", _I64),
}
_KIND_OF: Final = {
    pa.float32(): "f32",
    pa.float64(): "f64",
    pa.uint16(): "u16",
    pa.uint32(): "u32",
    pa.uint64(): "u64",
}
#: Bytes that break UTF-8 in a string column's data: lone continuation, overlong, surrogate.
_BAD_UTF8: Final = (b"\xff", b"\xc0\x80", b"\xed\xa0\x80", b"\x80", b"\x00", b"\xf4\x90\x80\x80")


@dataclass(frozen=True)
class Slot:
    """Where one buffer of one column lies in an encoded frame: byte offset and length."""

    offset: int
    length: int
    kind: str  # a BOUNDARY key, "utf8" for string data, or "validity"
    column: str


@dataclass(frozen=True)
class ArrowSeed:
    """A valid encoded frame and the byte ranges of its metadata and column buffers."""

    data: bytes
    meta_end: int  # bytes before the first buffer: stream header, schema, batch metadata
    slots: tuple[Slot, ...]


def arrow_seed(data: bytes) -> ArrowSeed:
    """Locate every column buffer of a one-batch IPC stream inside its bytes.

    The reader slices buffers out of the message zero-copy, so a buffer's address minus
    the address of ``data`` is its offset in the message.
    """
    buf = pa.py_buffer(data)
    batch = pa.ipc.open_stream(buf).read_next_batch()
    base = buf.address
    slots: list[Slot] = []
    for field, col in zip(batch.schema, batch.columns, strict=True):
        bufs = col.buffers()
        if pa.types.is_string(field.type):
            kinds = ["validity", "offsets", "utf8"]
        elif pa.types.is_timestamp(field.type) or field.type == pa.int64():
            kinds = ["validity", "ts" if pa.types.is_timestamp(field.type) else "i64"]
        else:
            kinds = ["validity", _KIND_OF.get(field.type, "u64")]
        for kind, b in zip(kinds, bufs, strict=False):
            if b is None or b.size == 0:
                continue
            off = b.address - base
            if off >= 0 and off + b.size <= len(data):
                slots.append(Slot(off, b.size, kind, field.name))
    meta_end = min((s.offset for s in slots), default=len(data))
    return ArrowSeed(data, meta_end, tuple(slots))


def plant_value(b: bytearray, rng: random.Random, seed: ArrowSeed) -> None:
    """Write a boundary value of a column's type at a row of that column."""
    slots = [s for s in seed.slots if s.offset + s.length <= len(b)]
    if not slots:
        return
    s = rng.choice(slots)
    if s.kind == "validity":  # clear a validity bit: a null in a non-nullable column
        i = s.offset + rng.randrange(s.length)
        b[i] &= ~(1 << rng.randrange(8)) & 0xFF
        return
    if s.kind == "utf8":
        bad = rng.choice(_BAD_UTF8)
        i = s.offset + rng.randrange(max(1, s.length - len(bad) + 1))
        b[i : i + len(bad)] = bad
        return
    fmt, values = BOUNDARY[s.kind]
    size = struct.calcsize(fmt)
    rows = s.length // size
    if rows == 0:
        return
    i = s.offset + size * rng.randrange(rows)
    b[i : i + size] = struct.pack(fmt, rng.choice(values))


def plant_meta_int(b: bytearray, rng: random.Random, seed: ArrowSeed) -> None:
    """Write a boundary int32/int64 at an aligned position of the stream's metadata.

    Lengths, null counts and buffer offsets of the flatbuffer metadata are 8-byte
    integers at 8-aligned positions; flatbuffer offsets and the message length are int32.
    """
    end = min(seed.meta_end, len(b))
    if end < 8:
        return
    if rng.random() < 0.5:
        i = 8 * rng.randrange(end // 8)
        b[i : i + 8] = struct.pack("<q", rng.choice(_I64))
    else:
        i = 4 * rng.randrange(end // 4)
        b[i : i + 4] = struct.pack("<i", rng.choice(_I32))


def mutate_arrow(seed: ArrowSeed, rng: random.Random, others: Sequence[bytes]) -> bytes:
    """One mutated frame: value planting, metadata ints, bytes, or a mix of them."""
    b = bytearray(seed.data)
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        r = rng.random()
        if r < 0.3:
            plant_value(b, rng, seed)
        elif r < 0.45:
            plant_meta_int(b, rng, seed)
        elif r < 0.55 and seed.meta_end > 0:  # bit flips in the metadata, where decoders break
            i = rng.randrange(min(seed.meta_end, len(b)) or 1)
            if i < len(b):
                b[i] ^= 1 << rng.randrange(8)
        elif r < 0.6:
            truncate(b, rng)
        elif r < 0.67 and others:
            splice(b, rng, rng.choice(others))
        else:
            rng.choice(BYTE_MUTATIONS)(b, rng)
    return bytes(b)


# ---- JSON: structure-aware -------------------------------------------------------------


@dataclass(frozen=True)
class Raw:
    """A JSON token written as is (huge numbers, NaN, bad escapes, deep nesting)."""

    text: str


@dataclass(frozen=True)
class Nest:
    """``value`` wrapped in ``depth`` lists (or objects), written without recursion."""

    depth: int
    value: Any
    objects: bool = False


_RAW_TOKENS: Final = (
    "NaN", "Infinity", "-Infinity", "1e400", "-1e400", "1e-400", "2e308", "-0", "-0.0",
    "1" + "0" * 30, "1" + "0" * 400, "9" * 5000, "1180591620717411303424",  # 2**70
    "18446744073709551616", "18446744073709551615", "-9223372036854775809",
    "9223372036854775808", "1e15", "-1e15", "1e300", "-1e300", "4.9e-324",
    '"\\ud800"', '"\\udc00\\ud800"', '"\\u0000"', '"\\uffff"', "0x10", "01", "1.", ".5", "+1",
    '"' + "A" * 70_000 + '"',
)  # fmt: skip
_VALUES: Final[tuple[Any, ...]] = (
    None, True, False, 0, -1, 1, 65535, 65536, -(2**63), 2**64, 2**70, 0.5, 1e9, 1e30,
    math.nan, math.inf, -math.inf, "", "x", "R0001", "R0002", "\ud800", "é", "\u202e",
    "\x00", "2026-11-28T12:00:00Z", "2026-11-28T12:00:00", "9999-12-31T23:59:59Z",
    "0001-01-01T00:00:00+14:00", "1950-01-01T00:00:00Z", "2300-01-01T00:00:00+00:00",
    "yesterday", [], {}, [1, 2], {"a": 1},
)  # fmt: skip
_KEYS: Final = (
    "kind", "rack", "gpu", "ts", "unit", "point", "value", "power_w", "energy_mj",
    "temp_gpu_c", "temp_mem_c", "sm_clock_mhz", "util_pct", "xid", "clock_event_reasons",
    "power_limit_w", "entity", "scope", "name", "quantity", "measured", "expected",
    "residual", "alert_id", "severity", "state", "message", "payload", "", "\ud800",
)  # fmt: skip
_DEPTHS: Final = (2, 10, 100, 1_000, 10_000, 100_000)


def _interesting(rng: random.Random) -> Any:
    r = rng.random()
    if r < 0.35:
        return Raw(rng.choice(_RAW_TOKENS))
    if r < 0.45:
        return Nest(rng.choice(_DEPTHS), rng.choice((0, {}, "x")), objects=rng.random() < 0.3)
    return rng.choice(_VALUES)


def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a value inside ``doc`` (lists and dicts of plain JSON values)."""
    out = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out.extend(_paths(v, (*prefix, k)))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out.extend(_paths(v, (*prefix, i)))
    return out


def _get(doc: Any, path: tuple[Any, ...]) -> Any:
    for p in path:
        doc = doc[p]
    return doc


def _copy(doc: Any) -> Any:
    if isinstance(doc, dict):
        return {k: _copy(v) for k, v in doc.items()}
    if isinstance(doc, list):
        return [_copy(v) for v in doc]
    return doc


def mutate_json_doc(doc: Any, rng: random.Random) -> Any:
    """One structure-aware mutation of a parsed JSON document (returns a new document)."""
    doc = _copy(doc)
    r = rng.random()
    paths = _paths(doc)
    path = rng.choice(paths)
    if r < 0.4:  # replace a value
        if not path:
            return _interesting(rng)
        _get(doc, path[:-1])[path[-1]] = _interesting(rng)
        return doc
    parent_paths = [p for p in paths if isinstance(_get(doc, p), dict | list)]
    target = _get(doc, rng.choice(parent_paths)) if parent_paths else None
    if r < 0.55 and isinstance(target, dict) and target:  # drop a key
        del target[rng.choice(list(target))]
    elif r < 0.7 and isinstance(target, dict):  # add a key
        target[rng.choice(_KEYS)] = _interesting(rng)
    elif r < 0.8:  # many readings: duplicates, frames beyond the GPU limit
        items = doc if isinstance(doc, list) else [doc]
        n = rng.choice((2, 2, 3, 3, 10, 10, 100, 100, 1_025, 3_000)) if rng.random() < 0.3 else 2
        each = approx_len(doc) / max(1, len(items))
        n = max(1, min(n, int(MAX_INPUT_BYTES // max(each, 1.0))))  # stay near Kafka's limit
        # shared references: no later round mutates a list this long (see mutate_json)
        return [items[i % len(items)] for i in range(n)] if items else []
    elif r < 0.87:  # change a number's type, or a string's
        if path:
            v = _get(doc, path)
            new: Any = str(v) if isinstance(v, int | float) else rng.choice((1, 1.5, None))
            _get(doc, path[:-1])[path[-1]] = new
    elif r < 0.93:
        return Nest(rng.choice(_DEPTHS), doc, objects=rng.random() < 0.3)
    else:
        return rng.choice(([], {}, [[]], [{}], None, 0, "", [doc, 7]))
    return doc


#: Inputs stay below this size (a little above Kafka's default max.message.bytes, 1 MiB),
#: so the oversize rule is tried without building messages no broker would carry.
MAX_INPUT_BYTES: Final = 3 << 19


def approx_len(doc: Any) -> int:
    """Length of ``doc`` written as JSON, roughly (Nest wrappers without expanding them)."""
    if isinstance(doc, Nest):
        return doc.depth * (5 if doc.objects else 2) + approx_len(doc.value)
    if isinstance(doc, Raw):
        return len(doc.text)
    if isinstance(doc, dict):
        return 2 + sum(len(str(k)) + 4 + approx_len(v) for k, v in doc.items())
    if isinstance(doc, list):
        return 2 + sum(1 + approx_len(v) for v in doc)
    return len(str(doc)) + 2


def dump_json(doc: Any, ascii_only: bool = False) -> bytes:
    """Serialise a (mutated) document; Raw tokens and Nest wrappers are written as is.

    The document goes through the C encoder with a placeholder string for each Raw and Nest
    value, which is then replaced by its text. Lone surrogates are written as the invalid
    UTF-8 bytes a buggy producer sends (or, with ``ascii_only``, as ``\\ud800`` escapes).
    """
    raws: list[str] = []
    seen: dict[int, Any] = {}  # repeated readings are one shared object: swap it once

    def swap(x: Any) -> Any:
        if not isinstance(x, Raw | Nest | dict | list):
            return x
        if id(x) in seen:
            return seen[id(x)]
        if isinstance(x, Raw | Nest):
            raws.append(_raw_text(x, ascii_only))
            out: Any = f"@@fuzz{len(raws) - 1}@@"
        elif isinstance(x, dict):
            out = {k: swap(v) for k, v in x.items()}
        else:
            out = [swap(v) for v in x]
        seen[id(x)] = out
        return out

    text = json.dumps(swap(doc), ensure_ascii=ascii_only, separators=(",", ":"))
    if raws:
        text = _PLACEHOLDER.sub(lambda m: raws[int(m.group(1))], text)
    return text.encode("utf-8", "surrogatepass")


_PLACEHOLDER: Final = re.compile(r'"@@fuzz(\d+)@@"')


def _raw_text(x: Raw | Nest, ascii_only: bool) -> str:
    if isinstance(x, Raw):
        return x.text
    o, c = ('{"a":', "}") if x.objects else ("[", "]")
    inner = dump_json(x.value, ascii_only).decode("utf-8", "surrogatepass")
    return o * x.depth + inner + c * x.depth


def mutate_json(docs: Sequence[Any], rng: random.Random, others: Sequence[bytes]) -> bytes:
    """A mutated JSON message: structure-aware, then sometimes byte-level on the text."""
    doc = rng.choice(docs)
    for _ in range(rng.choice((1, 1, 2, 3))):
        if isinstance(doc, Raw | Nest) or (isinstance(doc, list) and len(doc) > 50):
            break  # mutating thousands of copies costs more than it finds
        doc = mutate_json_doc(doc, rng)
    data = dump_json(doc, ascii_only=rng.random() < 0.5)[:MAX_INPUT_BYTES]
    if rng.random() < 0.25:
        data = mutate_bytes(data, rng, others)
    return data


# ---- SQL: token-level ------------------------------------------------------------------

_TOKEN: Final = re.compile(
    r"\s+|'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|\d+(?:\.\d+)?(?:[eE][+-]?\d+)?|\w+|::|<=|>=|<>|!=|\|\||.",
    re.S,
)
SQL_KEYWORDS: Final = (
    "SELECT", "FROM", "WHERE", "GROUP", "BY", "ORDER", "LIMIT", "WITH", "AS", "JOIN", "ASOF",
    "UNION", "ALL", "COPY", "TO", "ATTACH", "DETACH", "INSERT", "INTO", "UPDATE", "DELETE",
    "CREATE", "OR", "REPLACE", "VIEW", "TABLE", "MACRO", "DROP", "ALTER", "PIVOT", "UNPIVOT",
    "EXPLAIN", "ANALYZE", "PRAGMA", "SET", "RESET", "CALL", "EXPORT", "IMPORT", "DATABASE",
    "INSTALL", "LOAD", "PREPARE", "EXECUTE", "DEALLOCATE", "DESCRIBE", "SUMMARIZE", "SHOW",
    "USE", "CHECKPOINT", "VACUUM", "BEGIN", "COMMIT", "ROLLBACK", "SECRET", "TEMP", "VALUES",
    "RECURSIVE", "QUALIFY", "FILTER", "OVER", "LATERAL", "UNNEST", "CAST", "TRY_CAST",
)  # fmt: skip
#: Ways to wrap a statement so that a parser sees a harmless outer statement.
SQL_WRAPPERS: Final = (
    "EXPLAIN {}", "EXPLAIN ANALYZE {}", "PREPARE p AS {}", "PIVOT ({}) ON rack USING count(*)",
    "UNPIVOT ({}) ON COLUMNS(*) INTO NAME k VALUE v", "DESCRIBE {}", "SUMMARIZE {}",
    "WITH t AS ({}) SELECT * FROM t", "SELECT * FROM ({})", "({})", "FROM ({})",
    "COPY ({}) TO 'out.parquet'", "CREATE VIEW v AS {}", "CREATE OR REPLACE VIEW gpu AS {}",
    "CREATE MACRO m() AS TABLE {}", "INSERT INTO gpu {}", "{} UNION ALL {}",
    "SELECT * FROM query('{}')", "EXPLAIN (FORMAT json) {}", "EXPLAIN ANALYZE EXPLAIN {}",
    "/* x */ {}", "{} -- x", "{};", ";{}", "{}; COPY gpu TO '{{STORE}}/gpu/x.parquet'",
)  # fmt: skip
SQL_TABLE_FUNCS: Final = (
    "read_parquet('/etc/passwd')", "read_csv_auto('/etc/passwd')", "read_text('{SECRET}')",
    "read_blob('{SECRET}')", "read_text('{STORE}/../secret.txt')", "glob('/*')",
    "glob('{STORE}/**')", "read_parquet('{STORE}/gpu/*/*.parquet')", "duckdb_settings()",
    "duckdb_extensions()", "duckdb_secrets()", "pragma_database_list()", "duckdb_views()",
    "range(1000)", "generate_series(1, 10)", "read_json_auto('{SECRET}')",
    "parquet_metadata('{STORE}/gpu/*/*.parquet')", "sniff_csv('{SECRET}')",
)  # fmt: skip
_SQL_LITERALS: Final = (
    "0", "-1", "9223372036854775808", "1e308", "1e1000", "NULL", "''", "'%'", "'\x00'",
    "'{SECRET}'", "'\ud800'", "X'00FF'", "INTERVAL 1000000 YEAR", "'infinity'::TIMESTAMP",
    "NaN", "'NaN'::DOUBLE", "[1, 2]", "{'a': 1}",
)  # fmt: skip


def sql_text(data: bytes) -> str:
    """Bytes of a case -> the SQL string a client sends (lone surrogates kept as such)."""
    try:
        return data.decode("utf-8", "surrogatepass")
    except UnicodeDecodeError:
        return data.decode("utf-8", "surrogateescape")


def sql_bytes(sql: str) -> bytes:
    """A SQL string -> the bytes of a case (inverse of :func:`sql_text` for UTF-8 text)."""
    return sql.encode("utf-8", "surrogatepass")


def sql_tokens(sql: str) -> list[str]:
    """Tokens of a SQL text (whitespace, strings, numbers, words, punctuation)."""
    return _TOKEN.findall(sql)


def mutate_sql(texts: Sequence[str], rng: random.Random, attacks: Sequence[str]) -> bytes:
    """A mutated SQL text (UTF-8; invalid bytes from byte-level mutations are kept)."""
    sql = rng.choice(texts)
    for _ in range(rng.choice((1, 1, 2, 3))):
        toks = sql_tokens(sql)
        words = [i for i, t in enumerate(toks) if t[:1].isalpha() or t[:1] == "_"]
        lits = [i for i, t in enumerate(toks) if t[:1].isdigit() or t[:1] == "'"]
        r = rng.random()
        if r < 0.2 and words:
            toks[rng.choice(words)] = rng.choice(SQL_KEYWORDS)
        elif r < 0.4:
            sql = rng.choice(SQL_WRAPPERS).replace("{}", sql.rstrip().rstrip(";"))
            continue
        elif r < 0.5:
            a = rng.choice(attacks)
            sql = f"{sql}; {a}" if rng.random() < 0.5 else f"{a}; {sql}"
            continue
        elif r < 0.62 and words:
            toks[rng.choice(words)] = rng.choice(SQL_TABLE_FUNCS)
        elif r < 0.72 and lits:
            toks[rng.choice(lits)] = rng.choice(_SQL_LITERALS)
        elif r < 0.8 and toks:
            del toks[rng.randrange(len(toks))]
        elif r < 0.86 and toks:
            i = rng.randrange(len(toks))
            toks.insert(i, toks[i])
        elif r < 0.9 and len(toks) > 1:
            i = rng.randrange(len(toks) - 1)
            toks[i], toks[i + 1] = toks[i + 1], toks[i]
        else:
            sql = sql_text(mutate_bytes(sql_bytes(sql), rng, []))
            continue
        sql = "".join(toks)
    return sql_bytes(sql)
