"""One SQL worker process: ``python -m storage.sql_worker --data-dir DIR``.

Started by storage/sql_pool.py, never by hand. It opens the sandboxed engine
(storage/sql_engine.py), then takes away its own ability to write files before it reads
its first request:

- Landlock (Linux >= 5.13): no file may be opened for writing, truncated, created,
  renamed or removed anywhere, for this process and anything it could start;
- ``RLIMIT_FSIZE = 0`` (any file write fails with EFBIG) and no core dumps;
- ``RLIMIT_AS`` = its size after start-up + ``--headroom-mb``: allocations DuckDB's
  memory_limit does not see (aggregate states, Arrow buffers) fail in this process.

Protocol on stdin/stdout, one frame = 4-byte big-endian length + payload: the worker
sends ``{"ready": true, ...}`` once, then for each request ``{"sql", "timeout_s",
"max_rows", "max_bytes", "check"}`` a header ``{"ok", "error", "kind", "rss_bytes",
"recycle"}`` and, when ok, a second frame with the result as an Arrow IPC stream. It exits
on end of input, and after any reply whose query left its resident memory more than
``--recycle-mb`` above its baseline (the pool starts a fresh one).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import resource
import signal
import struct
import sys
from pathlib import Path
from typing import Any, BinaryIO

import pyarrow as pa

from storage.sql_check import SqlRefused, SqlTimeout
from storage.sql_engine import SqlEngine

_HEADER = struct.Struct(">I")
_SYS_LANDLOCK_CREATE_RULESET = 444  # x86_64 and aarch64 share these numbers
_SYS_LANDLOCK_RESTRICT_SELF = 446
_PR_SET_NO_NEW_PRIVS = 38
# LANDLOCK_ACCESS_FS_*: WRITE_FILE, REMOVE_DIR, REMOVE_FILE, MAKE_CHAR .. MAKE_SYM (ABI 1)
_FS_WRITE_ABI1 = (1 << 1) | (1 << 4) | (1 << 5) | sum(1 << b for b in range(6, 13))
_FS_REFER = 1 << 13  # ABI 2: link/rename across directories
_FS_TRUNCATE = 1 << 14  # ABI 3


def rss_bytes() -> int:
    """Resident set size of this process [bytes]."""
    with open("/proc/self/statm", "rb") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def landlock_abi() -> int:
    """The kernel's Landlock ABI version; 0 where there is none (not Linux, too old, off)."""
    if not sys.platform.startswith("linux"):
        return 0
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return max(int(libc.syscall(_SYS_LANDLOCK_CREATE_RULESET, None, ctypes.c_size_t(0), 1)), 0)
    except (OSError, AttributeError):
        return 0


def forbid_file_writes() -> bool:
    """Make every file write of this process fail; True if Landlock enforces it too."""
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of being killed
    abi = landlock_abi()
    if abi < 1:
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        handled = (
            _FS_WRITE_ABI1 | (_FS_REFER if abi >= 2 else 0) | (_FS_TRUNCATE if abi >= 3 else 0)
        )
        attr = ctypes.c_uint64(handled)
        fd = libc.syscall(_SYS_LANDLOCK_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(8), 0)
        if fd < 0:
            return False
        try:
            if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
                return False
            # No rule grants any handled right: writes are denied on every path.
            return bool(libc.syscall(_SYS_LANDLOCK_RESTRICT_SELF, fd, 0) == 0)
        finally:
            os.close(fd)
    except (OSError, AttributeError):
        return False


def send(out: BinaryIO, payload: bytes) -> None:
    out.write(_HEADER.pack(len(payload)) + payload)
    out.flush()


def recv(inp: BinaryIO) -> bytes | None:
    head = inp.read(_HEADER.size)
    if len(head) < _HEADER.size:
        return None
    (n,) = _HEADER.unpack(head)
    data = inp.read(n)
    return data if len(data) == n else None


def _ipc(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    return bytes(sink.getvalue().to_pybytes())


def _vm_size_bytes() -> int:
    with open("/proc/self/statm", "rb") as f:
        return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def limit_address_space(headroom_bytes: int) -> int:
    """Cap this process's address space at its current size + headroom [bytes].

    DuckDB's memory_limit covers its buffer manager only; aggregate states (list(),
    string_agg) and Arrow buffers are allocated beside it. With this cap they fail with
    "Out of Memory" in this process instead of growing the machine's memory without bound.
    """
    cap = _vm_size_bytes() + headroom_bytes
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    return cap


def serve(
    engine: SqlEngine, inp: BinaryIO, out: BinaryIO, recycle_bytes: int, headroom_bytes: int
) -> int:
    """Answer requests until end of input or a recycle; returns the exit status."""
    engine.run("SELECT * FROM rack LIMIT 0", timeout_s=30.0, max_rows=1)  # warm-up
    base = rss_bytes()
    landlock = forbid_file_writes()
    limit_address_space(headroom_bytes)
    send(out, json.dumps({"ready": True, "rss_bytes": base, "landlock": landlock}).encode())
    while (raw := recv(inp)) is not None:
        req: dict[str, Any] = json.loads(raw)
        head: dict[str, Any] = {"ok": False}
        body = b""
        try:
            table = engine.run(
                str(req["sql"]),
                timeout_s=float(req["timeout_s"]),
                max_rows=int(req["max_rows"]),
                max_bytes=int(req["max_bytes"]),
                check=bool(req.get("check", True)),
            )
            body = _ipc(table)
            head["ok"] = True
        except SqlTimeout as exc:
            head.update(error=str(exc), kind="timeout")
        except SqlRefused as exc:
            head.update(error=str(exc), kind="refused")
        except Exception as exc:  # a pyarrow or DuckDB failure outside their error classes
            head.update(error=f"query failed: {type(exc).__name__}: {exc}", kind="failed")
        rss = rss_bytes()
        head.update(rss_bytes=rss, recycle=rss > base + recycle_bytes)
        send(out, json.dumps(head).encode())
        if body:
            send(out, body)
        if head["recycle"]:
            return 0
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="storage.sql_worker")
    p.add_argument("--data-dir", type=Path, required=True)
    p.add_argument("--memory-limit", default="1GB")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--recycle-mb", type=float, default=100.0)
    p.add_argument("--headroom-mb", type=float, default=3072.0)
    args = p.parse_args(argv)
    # The protocol owns the real stdout; anything else printed goes to stderr.
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    engine = SqlEngine(args.data_dir, memory_limit=args.memory_limit, threads=args.threads or None)
    try:
        return serve(
            engine,
            sys.stdin.buffer,
            out,
            int(args.recycle_mb * 2**20),
            int(args.headroom_mb * 2**20),
        )
    finally:
        engine.close()


if __name__ == "__main__":
    sys.exit(main())
