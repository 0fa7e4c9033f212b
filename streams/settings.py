"""Settings of a twin worker, read once at the entry point (CLI flags, TWIN_* fallbacks and
the config file, resolved by streams/config.py)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from streams.codec import DEFAULT_LIMITS, Limits
from streams.kafka_security import KafkaSecurity
from streams.schema import (
    DEFAULT_PARTITIONS,
    TOPIC_ALERT_COMMANDS,
    TOPIC_ALERTS,
    TOPIC_DLQ,
    TOPIC_FAULTS,
    TOPIC_GPU,
    TOPIC_INGEST,
    TOPIC_KPI,
    TOPIC_POWER,
    TOPIC_RESIDUALS,
    TOPIC_STATE,
    TOPIC_THERMAL,
)
from streams.secret import Secret
from twin.errors import ConfigError


def parse_broker_url(url: str) -> str:
    """``kafka://host:port[,host:port]`` -> ``host:port[,host:port]`` (aiokafka bootstrap)."""
    if not url.startswith("kafka://"):
        raise ConfigError(f"--broker must look like kafka://host:port, got {url!r}")
    hosts = url.removeprefix("kafka://").strip("/")
    for hp in hosts.split(","):
        host, sep, port = hp.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"--broker must look like kafka://host:port, got {url!r}")
    return hosts


@dataclass(frozen=True)
class Topics:
    """Topic names, with an optional prefix so that several twins (or tests) share a broker."""

    prefix: str = ""

    def _n(self, name: str) -> str:
        return f"{self.prefix}{name}"

    @property
    def gpu(self) -> str:
        """telemetry.gpu"""
        return self._n(TOPIC_GPU)

    @property
    def thermal(self) -> str:
        """telemetry.thermal"""
        return self._n(TOPIC_THERMAL)

    @property
    def power(self) -> str:
        """telemetry.power"""
        return self._n(TOPIC_POWER)

    @property
    def ingest(self) -> str:
        """telemetry.ingest"""
        return self._n(TOPIC_INGEST)

    @property
    def dlq(self) -> str:
        """telemetry.dlq"""
        return self._n(TOPIC_DLQ)

    @property
    def state(self) -> str:
        """twin.state"""
        return self._n(TOPIC_STATE)

    @property
    def faults(self) -> str:
        """twin.faults"""
        return self._n(TOPIC_FAULTS)

    @property
    def kpi(self) -> str:
        """twin.kpi"""
        return self._n(TOPIC_KPI)

    @property
    def residuals(self) -> str:
        """twin.residuals"""
        return self._n(TOPIC_RESIDUALS)

    @property
    def alerts(self) -> str:
        """twin.alerts"""
        return self._n(TOPIC_ALERTS)

    @property
    def alert_commands(self) -> str:
        """twin.alert-commands (acks and shelves, keyed by the alert's owner)"""
        return self._n(TOPIC_ALERT_COMMANDS)


@dataclass(frozen=True)
class Settings:
    """Everything a worker needs; build it with :func:`settings_from` at the entry point."""

    broker: str = "kafka://127.0.0.1:9092"
    app_id: str = "dc-twin"
    topic_prefix: str = ""
    partitions: int = DEFAULT_PARTITIONS
    replication: int = 1
    web_host: str = "127.0.0.1"
    web_port: int = 6066
    #: Worker state (Faust data dir, snapshots).
    state_dir: Path = Path("var/twin")
    #: The Parquet history store (same as the sink's --data-dir), served by POST /api/sql.
    history_dir: Path = Path("data")
    #: How often a changed rack is written to its Faust table (bounded changelog traffic).
    #: A restarted worker resumes from its committed offsets, so the checkpoint only has to
    #: bridge racks that fall silent; at the campus every 2 s was 625 changelog records/s.
    checkpoint_interval_s: float = 10.0
    #: How often changed racks and units are published to twin.state.
    publish_interval_s: float = 2.0
    #: Every how many publications a rack's per-GPU detail goes to twin.state (other
    #: workers' /api/racks/{rack} is that stale at most; the owner's is live).
    detail_every: int = 5
    #: How often a rack's fitted thermal model is written to its table.
    model_checkpoint_interval_s: float = 10.0
    #: Site file (None: the Borlänge default shipped in twin/sites).
    site_path: Path | None = None
    #: Racks of the site (None: the site file's); the facility model is sized by it.
    racks: int | None = None
    #: How often the facility model steps to now [s].
    model_interval_s: float = 5.0
    batch_max: int = 4096
    batch_window_s: float = 0.05
    #: How GPU frames reach the agent: "stream" (Faust's per-message delivery) or "batch"
    #: (each fetch handed over whole, streams/faust_batch.py).
    delivery: str = "stream"
    #: Short group timeouts: the embedded broker holds JoinGroup for about half of them.
    session_timeout_s: float = 10.0
    rebalance_timeout_s: float = 10.0
    heartbeat_interval_s: float = 1.0
    limits: Limits = field(default_factory=lambda: DEFAULT_LIMITS)
    restore_path: Path | None = None
    log_level: str = "warning"
    #: TLS and SASL of every Kafka client of the worker (Faust, twin.state follower).
    kafka_security: KafkaSecurity = field(default_factory=KafkaSecurity)
    #: Bearer token of the state-changing endpoints (None: they refuse every request).
    #: A Secret: its repr, and so this dataclass's, shows ``***``.
    api_token: Secret | None = None
    #: POST /api/sql needs the bearer token too.
    sql_token_required: bool = False
    #: Serve Faust's own /router/ and /table/ views (they expose topology and raw table bytes).
    expose_faust_views: bool = False
    #: Alert rules file (None: the shipped models/rules/default.toml).
    alert_rules_path: Path | None = None
    #: Prometheus Alertmanager base URL (alerts are POSTed to {url}/api/v2/alerts); None: off.
    alertmanager_url: str | None = None
    #: Generic JSON webhook URL for alerts; None: off.
    alert_webhook_url: str | None = None
    #: How often the alert rules are evaluated [s].
    alert_interval_s: float = 1.0
    #: How often firing alerts are re-sent to the sinks [s] (Alertmanager expects it).
    alert_resend_s: float = 60.0
    #: This worker's URL as others reach it, for the generatorURL of alerts (None: from
    #: web_host and web_port).
    public_url: str | None = None
    #: Site mapping of Telegraf/line-protocol metrics, over the shipped one
    #: (streams/ingest_map.py); None: the shipped mapping alone.
    ingest_map_path: Path | None = None

    @property
    def bootstrap(self) -> str:
        """aiokafka bootstrap servers."""
        return parse_broker_url(self.broker)

    @property
    def topics(self) -> Topics:
        """Topic names of this twin."""
        return Topics(self.topic_prefix)

    def with_(self, **changes: object) -> Settings:
        """A copy with some fields changed."""
        return replace(self, **changes)  # type: ignore[arg-type]
