"""Topic names and Arrow schemas of the telemetry contracts (docs/topics.md).

Pure pyarrow: no Faust or Kafka import, so the simulator, the collectors and the Parquet
store share one definition of every frame.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final

import pyarrow as pa

TOPIC_GPU: Final = "telemetry.gpu"
TOPIC_THERMAL: Final = "telemetry.thermal"
TOPIC_POWER: Final = "telemetry.power"
TOPIC_INGEST: Final = "telemetry.ingest"
TOPIC_DLQ: Final = "telemetry.dlq"
TOPIC_STATE: Final = "twin.state"
TOPIC_FAULTS: Final = "twin.faults"
TOPIC_KPI: Final = "twin.kpi"
TOPIC_RESIDUALS: Final = "twin.residuals"
TOPIC_ALERTS: Final = "twin.alerts"
#: Operator actions on alerts (ack, shelve) for the worker owning the alert. Key: owner.
TOPIC_ALERT_COMMANDS: Final = "twin.alert-commands"

TELEMETRY_TOPICS: Final = (TOPIC_GPU, TOPIC_THERMAL, TOPIC_POWER)


class DlqReason(StrEnum):
    """Why a message went to telemetry.dlq: the ``dlq.reason`` header and the ``/metrics``
    label, a fixed set so the label stays bounded (docs/topics.md lists each). The human
    detail goes to the ``dlq.detail`` header."""

    OVERSIZED = "oversized"  # payload larger than --max-message-bytes
    EMPTY = "empty"  # zero bytes, a frame without rows, an empty list of readings
    NOT_ARROW = "not_arrow"  # not an Arrow IPC stream holding exactly one record batch
    CORRUPT = "corrupt"  # an IPC batch that fails Arrow's full validation (offsets, UTF-8)
    SCHEMA = "schema"  # missing, unexpected or mistyped fields
    TOO_MANY_ROWS = "too_many_rows"  # more GPUs (or JSON readings) than one message may hold
    NULL_VALUE = "null_value"  # a null in a non-nullable column
    MIXED_KEY = "mixed_key"  # more than one rack (or unit) in one frame
    KEY_MISMATCH = "key_mismatch"  # the message key differs from the frame's rack or unit
    NOT_FINITE = "not_finite"  # NaN or infinity
    OUT_OF_RANGE = "out_of_range"  # a value outside its plausible range or its integer type
    DUPLICATE = "duplicate"  # a GPU index or point name twice in one frame
    TS_FUTURE = "ts_future"  # stamped further ahead of now than the allowed clock skew
    TS_TOO_OLD = "ts_too_old"  # older than the live window and not marked as a replay
    NOT_JSON = "not_json"  # telemetry.ingest: not UTF-8 JSON
    TOO_DEEP = "too_deep"  # telemetry.ingest: JSON nested deeper than a reading can be
    BAD_FIELD = "bad_field"  # a reading's field missing or of the wrong type, a bad name
    UNKNOWN_KIND = "unknown_kind"  # telemetry.ingest: kind is not gpu, thermal or power
    BAD_LINE = "bad_line"  # POST /api/v2/write: a line that is not line protocol
    INVALID = "invalid"  # refused by a check that gives no finer code (legacy callers)
    INTERNAL_ERROR = "internal_error"  # processing raised an unexpected exception
    CRASHED = "crashed"  # the process died while processing this message alone


#: Every reason code, for bounded metric labels and checks.
DLQ_REASONS: Final = frozenset(r.value for r in DlqReason)

#: Partitions of every keyed topic. Faust needs source and changelog topics co-partitioned;
#: 8 lets up to 8 workers share a site.
DEFAULT_PARTITIONS: Final = 8

TS_TYPE: Final = pa.timestamp("ms", tz="UTC")

#: telemetry.gpu/v1 columns: one message = one rack's GPUs at one instant, one row per GPU.
#: Fields mirror NVML / DCGM (docs/sources.md S7). Key: rack id (utf-8).
_GPU_V1_FIELDS: Final = [
    pa.field("ts", TS_TYPE, nullable=False),  # sample instant [ms since epoch, UTC]
    pa.field("rack", pa.string(), nullable=False),  # rack id, same as the message key
    pa.field("gpu", pa.uint16(), nullable=False),  # GPU index within the rack [0, n)
    pa.field("power_w", pa.float32(), nullable=False),  # board power [W] (NVML mW / 1000)
    pa.field("energy_mj", pa.uint64(), nullable=False),  # energy counter since driver load [mJ]
    pa.field("temp_gpu_c", pa.float32(), nullable=False),  # GPU die temperature [C]
    pa.field("temp_mem_c", pa.float32(), nullable=False),  # HBM temperature [C]
    pa.field("sm_clock_mhz", pa.uint16(), nullable=False),  # SM clock [MHz]
    pa.field("util_pct", pa.float32(), nullable=False),  # GPU utilisation [%] 0..100
    pa.field("clock_event_reasons", pa.uint64(), nullable=False),  # NVML bitmask
    pa.field("xid", pa.uint32(), nullable=False),  # last XID error, 0 = none
    pa.field("power_limit_w", pa.float32(), nullable=False),  # enforced power limit [W]
]

#: The columns telemetry.gpu/v2 adds (docs/topics.md: NVML call and DCGM field of each).
#: Declared nullable so that a store holding rows from before v2 keeps one schema (those
#: rows read NULL: not measured); a frame on the wire must still not hold a null
#: (``null_value``).
_GPU_V2_FIELDS: Final = [
    pa.field("ecc_corrected", pa.uint64(), nullable=True),  # volatile corrected ECC errors
    pa.field("ecc_uncorrected", pa.uint64(), nullable=True),  # volatile uncorrected ECC errors
    pa.field("remapped_rows", pa.uint32(), nullable=True),  # HBM rows remapped (corr. + unc.)
    pa.field("row_remap_flags", pa.uint8(), nullable=True),  # 0x1 pending, 0x2 failure occurred
    pa.field("nvlink_errors", pa.uint64(), nullable=True),  # NVLink CRC+replay+recovery errors
    pa.field("thermal_margin_k", pa.float32(), nullable=True),  # slowdown temp - die temp [K]
]

#: telemetry.gpu/v1: still accepted; decoders fill the v2 columns (:data:`GPU_V2_DEFAULTS`).
GPU_SCHEMA_V1: Final = pa.schema(_GPU_V1_FIELDS, metadata={"contract": "telemetry.gpu/v1"})

#: telemetry.gpu: one message = one rack's GPUs at one instant, one row per GPU.
GPU_SCHEMA: Final = pa.schema(
    _GPU_V1_FIELDS + _GPU_V2_FIELDS, metadata={"contract": "telemetry.gpu/v2"}
)

#: Names of the columns v2 added, in order.
GPU_V2_COLUMNS: Final = tuple(f.name for f in _GPU_V2_FIELDS)

#: Slowdown temperature [C] assumed where a frame carries no thermal margin (a v1 frame, a
#: JSON reading without it): the reference GPU's 89 C (docs/sources.md S2).
DEFAULT_SLOWDOWN_C: Final = 89.0

#: Row-remap flag bits (nvmlDeviceGetRemappedRows: isPending, failureOccurred).
ROW_REMAP_PENDING: Final = 0x1
ROW_REMAP_FAILURE: Final = 0x2

#: Float columns of GPU_SCHEMA that must be finite.
GPU_FLOAT_FIELDS: Final = (
    "power_w",
    "temp_gpu_c",
    "temp_mem_c",
    "util_pct",
    "power_limit_w",
    "thermal_margin_k",
)

#: telemetry.thermal and telemetry.power: one message = one plant unit at one instant, long
#: format (one row per point). Point names carry their unit suffix (``supply_temp_c``,
#: ``flow_kg_s``, ``power_w``); docs/topics.md lists them. Key: unit id (utf-8).
POINTS_SCHEMA: Final = pa.schema(
    [
        pa.field("ts", TS_TYPE, nullable=False),
        pa.field("unit", pa.string(), nullable=False),  # plant unit id, same as the key
        pa.field("point", pa.string(), nullable=False),  # point name with unit suffix
        pa.field("value", pa.float64(), nullable=False),  # reading in the point's SI unit
    ],
    metadata={"contract": "telemetry.points/v1"},
)

#: twin.kpi: facility KPIs, one row per (scope, name) at an instant. Key: scope.
KPI_SCHEMA: Final = pa.schema(
    [
        pa.field("ts", TS_TYPE, nullable=False),
        pa.field("scope", pa.string(), nullable=False),  # "site", a hall or a rack id
        pa.field("name", pa.string(), nullable=False),  # KPI name with unit suffix (pue_frac)
        pa.field("value", pa.float64(), nullable=False),
    ]
)

#: twin.residuals: measured minus the model's expectation, per sensor. Key: rack or unit.
RESIDUAL_SCHEMA: Final = pa.schema(
    [
        pa.field("ts", TS_TYPE, nullable=False),
        pa.field("entity", pa.string(), nullable=False),  # rack, CDU or plant unit id
        pa.field("quantity", pa.string(), nullable=False),  # name with unit suffix
        pa.field("measured", pa.float64(), nullable=True),  # reading [unit of quantity]
        pa.field("expected", pa.float64(), nullable=True),  # model estimate [same unit]
        pa.field("residual", pa.float64(), nullable=False),  # measured - expected
    ]
)

#: twin.alerts: alert lifecycle events. Key: entity.
ALERT_SCHEMA: Final = pa.schema(
    [
        pa.field("ts", TS_TYPE, nullable=False),
        pa.field("entity", pa.string(), nullable=False),
        pa.field("alert_id", pa.string(), nullable=True),
        pa.field("kind", pa.string(), nullable=True),
        pa.field("severity", pa.string(), nullable=True),
        # ISA-18.2 state (NORM, UNACK, ACKED, RTNUN, SHLVD, DSUPR, OOSRV) or, for an event,
        # EVENT_RAISED / EVENT_CLEARED (docs/alerts.md); kind is the rule name
        pa.field("state", pa.string(), nullable=True),
        pa.field("message", pa.string(), nullable=True),
    ]
)

#: Clock-event (throttle) reason bits of NVML (docs/sources.md S7).
CLOCK_EVENT_GPU_IDLE: Final = 0x1
CLOCK_EVENT_SW_POWER_CAP: Final = 0x4
CLOCK_EVENT_HW_SLOWDOWN: Final = 0x8
CLOCK_EVENT_SW_THERMAL: Final = 0x20
CLOCK_EVENT_HW_THERMAL: Final = 0x40
CLOCK_EVENT_HW_POWER_BRAKE: Final = 0x80
#: Clock-event bits by what they mean to an operator (docs/topics.md, twin.state): power
#: capping is normal under a power limit; thermal and hardware slowdown are not.
CLOCK_EVENTS_POWER_CAP: Final = CLOCK_EVENT_SW_POWER_CAP
CLOCK_EVENTS_THERMAL: Final = CLOCK_EVENT_SW_THERMAL | CLOCK_EVENT_HW_THERMAL
CLOCK_EVENTS_HW_SLOWDOWN: Final = CLOCK_EVENT_HW_SLOWDOWN | CLOCK_EVENT_HW_POWER_BRAKE

#: XID classes (NVIDIA XID catalogue): critical ones take the GPU (or its job) down, the
#: warnings are trended. 48 double-bit ECC, 64 row-remapper/page-retirement failure, 74
#: NVLink error, 79 fallen off the bus, 94 contained ECC error, 95 uncontained ECC error;
#: 63 row remap / page retirement recorded, 92 high single-bit ECC rate.
XID_CRITICAL: Final = frozenset({48, 64, 74, 79, 94, 95})
XID_WARNING: Final = frozenset({63, 92})

#: Suffix of a point name -> unit, for docs and validation of plant points.
POINT_UNIT_SUFFIXES: Final = {
    "_c": "C",
    "_k": "K",
    "_w": "W",
    "_kg_s": "kg/s",
    "_m3_s": "m3/s",
    "_pct": "%",
    "_frac": "1",
    "_pa": "Pa",
    "_rpm": "1/min",
    "_j": "J",
    "_bool": "0/1",
    "_s": "s",
    "_v": "V",
    "_a": "A",
}
