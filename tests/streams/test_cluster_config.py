"""server.properties of a cluster node: the single node's, with a static quorum and RF 3."""

from __future__ import annotations

from pathlib import Path

import pytest

from streams.brokers.apache import server_properties
from streams.brokers.cluster import KafkaCluster, cluster_properties


def _parse(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines())


def test_node_properties_replace_the_dynamic_quorum(tmp_path: Path) -> None:
    base = server_properties(tmp_path, 19092, 19093)
    voters = "1@127.0.0.1:19093,2@127.0.0.1:29093,3@127.0.0.1:39093"
    props = _parse(cluster_properties(base, node_id=2, voters=voters, replication=3, min_isr=2))
    assert "controller.quorum.bootstrap.servers" in _parse(base)
    assert "controller.quorum.bootstrap.servers" not in props  # excludes the static voters
    assert props["controller.quorum.voters"] == voters
    assert props["node.id"] == "2"
    for key in (
        "default.replication.factor",
        "offsets.topic.replication.factor",
        "transaction.state.log.replication.factor",
        "share.coordinator.state.topic.replication.factor",
    ):
        assert props[key] == "3", key
    for key in (
        "min.insync.replicas",
        "transaction.state.log.min.isr",
        "share.coordinator.state.topic.min.isr",
    ):
        assert props[key] == "2", key
    # the node's own listeners and log dir are kept
    assert props["listeners"] == _parse(base)["listeners"]
    assert props["log.dirs"] == str(tmp_path / "kraft-logs")


def test_cluster_refuses_impossible_replication() -> None:
    with pytest.raises(ValueError, match="min_isr"):
        KafkaCluster(nodes=2, replication=3)
    with pytest.raises(ValueError, match="min_isr"):
        KafkaCluster(nodes=3, replication=3, min_isr=4)
    assert (KafkaCluster(nodes=1).replication, KafkaCluster(nodes=1).min_isr) == (1, 1)
