"""The DLQ reason codes: one fixed set, used by every refusal of the worker's edge."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from streams.app import DLQ_MAX_DETAIL_BYTES, _detail_header
from streams.metrics import render_metrics
from streams.runtime import Counters, TwinRuntime
from streams.schema import DLQ_REASONS, DlqReason
from twin.errors import DecodeError

ROOT = Path(__file__).resolve().parents[2]
#: Modules whose every refusal must name its code explicitly.
EDGE_MODULES = ("streams/codec.py", "streams/codec_batch.py", "streams/ingest_json.py")


def test_codes_are_lowercase_identifiers_and_unique() -> None:
    assert len(DLQ_REASONS) == len(list(DlqReason))
    for code in DLQ_REASONS:
        assert re.fullmatch(r"[a-z][a-z_]*", code), code


def test_decode_error_keeps_reason_and_defaults_to_a_known_code() -> None:
    legacy = DecodeError("something is off")
    assert legacy.reason == "something is off" and legacy.code == "invalid"
    assert legacy.code in DLQ_REASONS
    exc = DecodeError("frame has no rows", DlqReason.EMPTY)
    assert exc.code == "empty" and str(exc) == "frame has no rows"


@pytest.mark.parametrize("module", EDGE_MODULES)
def test_every_refusal_at_the_edge_names_a_code_from_the_set(module: str) -> None:
    tree = ast.parse((ROOT / module).read_text())
    calls = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "DecodeError"
    ]
    assert calls, module
    for call in calls:
        where = f"{module}:{call.lineno}"
        code = call.args[1] if len(call.args) > 1 else None
        if code is None:
            code = next((k.value for k in call.keywords if k.arg == "code"), None)
        assert code is not None, f"{where}: DecodeError without a code"
        if isinstance(code, ast.Constant):
            assert code.value in DLQ_REASONS, f"{where}: {code.value!r} is not a reason code"
        elif isinstance(code, ast.Attribute):  # DlqReason.X or exc.code (a re-raise)
            if isinstance(code.value, ast.Name) and code.value.id == "DlqReason":
                assert code.attr in DlqReason.__members__, where
            else:
                assert code.attr == "code", where
        else:
            raise AssertionError(f"{where}: code must be a literal or DlqReason member")


def test_every_code_is_documented_in_the_dlq_section() -> None:
    text = (ROOT / "docs" / "topics.md").read_text()
    section = text[text.index("## Validation and the dead-letter topic") :]
    section = section[: section.index("\n## ", 1)]
    for code in DLQ_REASONS:
        assert f"`{code}`" in section, code


def test_metrics_label_is_the_code_and_stays_bounded() -> None:
    counters = Counters()
    counters.dead_letter("not_finite")
    counters.dead_letter("not_finite")
    counters.dead_letter("power_w is not finite (nan) for gpu 3")  # a detail, not a code
    assert counters.dlq == {"not_finite": 2, "invalid": 1}
    rt = TwinRuntime(partitions=8)
    rt.counters = counters
    text = render_metrics(rt, {}).decode()
    assert 'twin_frames_dlq_total{reason="not_finite"} 2.0' in text
    assert 'twin_frames_dlq_total{reason="invalid"} 1.0' in text


def test_detail_header_is_cut_to_1_kb_on_a_character_boundary() -> None:
    assert _detail_header("short") == b"short"
    long = "é" * 2000  # 2 bytes a character: 4,000 bytes
    head = _detail_header(long)
    assert len(head) <= DLQ_MAX_DETAIL_BYTES and head.decode() == "é" * 512
    assert _detail_header("lone \ud800 surrogate").decode().startswith("lone \\ud800")
