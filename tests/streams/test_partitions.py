"""The partition count of the keyed topics: a site setting, overridden by --partitions."""

from __future__ import annotations

from pathlib import Path

import pytest

from streams.cli import parse_args
from streams.cli_commands import settings_from_args
from streams.topics_admin import MIGRATION_DOC, partition_mismatch, resolve_partitions
from twin.errors import SiteError
from twin.site import load_site

BROKER = ("--broker", "kafka://127.0.0.1:1")


def _site(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "site.toml"
    path.write_text(body)
    return path


def test_shipped_site_is_sized_for_the_campus() -> None:
    site = load_site()
    # one worker per partition at most: the campus spread over 24 workers is ~52 racks each
    assert site.info.kafka_partitions == 24 == resolve_partitions(None)
    assert site.info.max_racks == 1250


def test_site_file_sets_the_count_and_flags_override(tmp_path: Path) -> None:
    site = _site(tmp_path, "[site]\nkafka_partitions = 3\n")
    assert resolve_partitions(None, site) == 3
    assert resolve_partitions(5, site) == 5
    env: dict[str, str] = {}
    args = parse_args(["worker", *BROKER, "--site", str(site)], env)
    assert settings_from_args(args).partitions == 3
    args = parse_args(["worker", *BROKER, "--site", str(site), "--partitions", "6"], env)
    assert settings_from_args(args).partitions == 6
    args = parse_args(["worker", *BROKER, "--site", str(site)], {"TWIN_PARTITIONS": "7"})
    assert settings_from_args(args).partitions == 7
    config = tmp_path / "twin.toml"
    config.write_text("partitions = 9\n")
    args = parse_args(["worker", *BROKER, "--site", str(site), "--config", str(config)], env)
    assert settings_from_args(args).partitions == 9


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0", "expected a value >= 1"),
        ("2000", "expected a value <= 1024"),
        ('"8"', "expected an integer"),
    ],
)
def test_site_file_refuses_a_bad_count(tmp_path: Path, value: str, expected: str) -> None:
    site = _site(tmp_path, f"[site]\nkafka_partitions = {value}\n")
    with pytest.raises(SiteError, match=r"\[site\] kafka_partitions: " + expected):
        resolve_partitions(None, site)


@pytest.mark.parametrize("bad", ["0", "-1", "x", "1025"])
def test_partitions_flag_refuses_a_bad_count(bad: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        parse_args(["worker", *BROKER, "--partitions", bad], {})
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "expected a partition count 1..1024" in err


def test_mismatch_names_the_topic_the_counts_and_the_doc() -> None:
    assert partition_mismatch({"a": 4, "b": 4}, 4) is None
    line = partition_mismatch({"p.telemetry.gpu": 8, "p.twin.state": 8, "x": 4}, 4)
    assert line is not None and "\n" not in line
    assert line.startswith("topic p.telemetry.gpu has 8 partitions (and 1 more)")
    assert "configured for 4" in line and MIGRATION_DOC in line
