"""Line protocol in: parsing (streams/lineproto.py), the mapping (streams/ingest_map.py) and a
write's conversion into validated frames (streams/lineproto_views.convert_write)."""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.codec import decode_gpu_frame, decode_points_frame
from streams.ingest_json import convert_json
from streams.ingest_map import IngestMap, IngestMapper, Metric, load_map, parse_map
from streams.lineproto import BadBody, BodyTooLarge, gunzip, parse_line_protocol
from streams.lineproto_views import convert_write
from streams.schema import DLQ_REASONS, TOPIC_GPU, TOPIC_POWER, TOPIC_THERMAL
from streams.settings import Settings
from twin.errors import ConfigError, DecodeError

NOW_MS = 1_795_000_000_000
NOW_NS = NOW_MS * 1_000_000
SETTINGS = Settings()

#: nvidia_smi lines as Telegraf writes them (its README's example output, with the rack tag a
#: site adds in [global_tags], the fields of schema v12 and a recent timestamp).
NVIDIA_SMI = "\n".join(
    f"nvidia_smi,compute_mode=Default,host=node7,index={g},name=NVIDIA\\ H100\\ 80GB\\ HBM3,"
    f"pstate=P0,rack=R0042,uuid=GPU-823bc202-6279-6f2c-d729-868a30f14d9{g} "
    f"clocks_current_graphics=1980i,clocks_current_memory=2619i,clocks_current_sm={1980 - g}i,"
    f'clocks_current_video=1755i,driver_version="550.54.15",fan_speed=0i,memory_free=80000i,'
    f"memory_total=81559i,memory_used=1559i,power_draw={650.25 + g},"
    f"temperature_gpu={60 + g}i,utilization_gpu=97i,utilization_memory=45i {NOW_NS}"
    for g in range(4)
)
#: ipmi_sensor, metric_version 2, as its README shows (a remote BMC, server tag).
IPMI = (
    f"ipmi_sensor,entity_id=7.1,host=node7,name=inlet_temp,server=10.20.2.203,status_code=ok,"
    f"status_desc=ok,unit=degrees_c value=24.5 {NOW_NS}\n"
    f"ipmi_sensor,entity_id=10.1,host=node7,name=power_supply_1,server=10.20.2.203,"
    f"status_code=ok,status_desc=presence_detected,unit=watts value=1110 {NOW_NS}\n"
    f"ipmi_sensor,entity_id=23.1,host=node7,name=uid_light,server=10.20.2.203,"
    f"status_code=ok,status_desc=ok value=0 {NOW_NS}\n"
)
#: modbus: fields and device named in telegraf.conf after the twin's points.
MODBUS = (
    f"modbus,host=gw1,name=CDU01,slave_id=1,type=holding_register "
    f"supply_temp_c=32.5,return_temp_c=41.25,flow_kg_s=38.5,pump_power_w=2200 {NOW_NS}\n"
)


def test_telegraf_lines_parse_with_escapes_and_types() -> None:
    good, bad = parse_line_protocol(NVIDIA_SMI.encode())
    assert bad == []
    assert [n for n, _ in good] == [1, 2, 3, 4]
    m = good[0][1]
    assert m.name == "nvidia_smi"
    assert m.tags["name"] == "NVIDIA H100 80GB HBM3"  # escaped spaces
    assert m.fields["temperature_gpu"] == 60 and isinstance(m.fields["temperature_gpu"], int)
    assert m.fields["power_draw"] == 650.25
    assert m.fields["driver_version"] == "550.54.15"
    assert m.ts_ns == NOW_NS


@pytest.mark.parametrize(
    ("line", "fields", "tags"),
    [
        ('m,t\\,x=a\\=b\\ c f="q \\"x\\" \\\\",g=1u,h=-5i,b=t,c=FALSE', None, {"t,x": "a=b c"}),
        ("m f=18446744073709551615u", {"f": 2**64 - 1}, {}),
        ("m f=1.5e3,g=-.5", {"f": 1500.0, "g": -0.5}, {}),
        ("m f=true,g=F,h=True", {"f": True, "g": False, "h": True}, {}),
    ],
)
def test_field_types(line: str, fields: dict[str, object] | None, tags: dict[str, str]) -> None:
    (number, m), *_ = parse_line_protocol(line.encode())[0]
    assert number == 1 and m.tags == tags and m.ts_ns is None  # no timestamp: now
    if fields is None:
        assert m.fields == {"f": 'q "x" \\', "g": 1, "h": -5, "b": True, "c": False}
    else:
        assert m.fields == fields


@pytest.mark.parametrize(
    ("precision", "ts", "ns"),
    [("ns", NOW_NS, NOW_NS), ("us", NOW_NS // 1000, NOW_NS), ("ms", NOW_MS, NOW_NS),
     ("s", NOW_MS // 1000, NOW_NS)],
)  # fmt: skip
def test_precision_names_the_timestamp_unit(precision: str, ts: int, ns: int) -> None:
    [(_, m)], bad = parse_line_protocol(f"m f=1 {ts}".encode(), precision)
    assert not bad and m.ts_ns == ns


def test_bad_lines_are_numbered_and_the_rest_kept() -> None:
    body = (
        b"# a comment\n\nm f=1 1\r\n"
        b"m f=\n"
        b"m f=1 99999999999999999999999\n"
        b"m f=1i,g=2 -5\n"
        b"m,t=\xff f=1\n"
        b"m f=1\x00x\n"
        b"m f=2 2\n"
    )
    good, bad = parse_line_protocol(body)
    assert [n for n, _ in good] == [3, 9]
    assert [(b.number, b.code) for b in bad] == [
        (4, "bad_line"),
        (5, "bad_line"),
        (6, "ts_too_old"),
        (7, "bad_line"),
        (8, "bad_line"),
    ]
    assert all(b.code in DLQ_REASONS for b in bad)
    with pytest.raises(ValueError, match="precision"):
        parse_line_protocol(b"m f=1", "h")


def test_gzip_is_bounded() -> None:
    assert gunzip(gzip.compress(b"m f=1\n"), 100) == b"m f=1\n"
    bomb = gzip.compress(b"0" * (10 << 20))  # 10 MB in about 10 kB
    with pytest.raises(BodyTooLarge):
        gunzip(bomb, 1 << 20)
    with pytest.raises(BadBody):
        gunzip(b"not gzip", 100)
    with pytest.raises(BadBody):
        gunzip(gzip.compress(b"m f=1\n")[:-12], 100)


# a tab is whitespace between the parts of a line, as in InfluxDB's own parser: no names
NAMES = st.text(st.characters(codec="utf-8", exclude_characters="\n\r\t\x00\\"), min_size=1)
VALUES = (
    st.integers(-(2**63), 2**63 - 1)
    # a subnormal float (below 2.2e-308) is refused as a bad line: the C parser's strtod
    # reports the underflow (test_subnormal_floats_are_refused_not_misread)
    | st.floats(allow_nan=False, allow_infinity=False, allow_subnormal=False)
    | st.booleans()
    | st.text(st.characters(codec="utf-8", exclude_characters="\n\r\x00"), max_size=20)
)


def test_subnormal_floats_are_refused_not_misread() -> None:
    good, [bad] = parse_line_protocol(b"m f=1\nm f=2.2e-309")
    assert [n for n, _ in good] == [1] and (bad.number, bad.code) == (2, "bad_line")


def _escape(text: str, specials: str) -> str:
    for ch in specials:
        text = text.replace(ch, "\\" + ch)
    return text


def _value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return f"{v}i"
    if isinstance(v, float):
        return repr(v)
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'


@settings(max_examples=150, deadline=None)
@given(
    name=NAMES.filter(lambda s: not s.startswith("#") and s.strip() == s),
    tags=st.dictionaries(NAMES, NAMES, max_size=3),
    fields=st.dictionaries(NAMES, VALUES, min_size=1, max_size=4),
    ts=st.integers(0, 2**62) | st.none(),
)
def test_what_a_serializer_writes_parses_back(
    name: str, tags: dict[str, str], fields: dict[str, object], ts: int | None
) -> None:
    line = _escape(name, ", ")
    for k, v in sorted(tags.items()):
        line += f",{_escape(k, ',= ')}={_escape(v, ',= ')}"
    line += " " + ",".join(f"{_escape(k, ',= ')}={_value(v)}" for k, v in fields.items())
    if ts is not None:
        line += f" {ts}"
    good, bad = parse_line_protocol(line.encode())
    assert not bad, (line, bad)
    [(_, m)] = good
    assert (m.name, m.tags, m.ts_ns) == (name, tags, ts)
    for k, v in fields.items():
        got = m.fields[k]
        assert got == v or (isinstance(v, float) and math.isclose(got, v)), (k, v, got)


@settings(max_examples=150, deadline=None)
@given(body=st.binary(max_size=300) | st.text(max_size=200).map(str.encode))
def test_any_body_is_lines_or_numbered_refusals(body: bytes) -> None:
    good, bad = parse_line_protocol(body)
    numbers = [n for n, _ in good] + [b.number for b in bad]
    assert len(numbers) == len(set(numbers))
    assert all(b.code in DLQ_REASONS and b.reason for b in bad)


def _mapper() -> IngestMapper:
    return IngestMapper(load_map())


def test_a_telegraf_write_becomes_validated_frames() -> None:
    body = NVIDIA_SMI + "\n" + IPMI + MODBUS + f"cpu,host=node7 usage_idle=97.5 {NOW_NS}\n"
    mapper = _mapper()
    result = convert_write(body.encode(), "ns", mapper, now_ms=NOW_MS, settings=SETTINGS)
    assert result.refused == []
    by_topic = {(f.topic, f.key): f for f in result.frames}
    gpu = decode_gpu_frame(by_topic[(TOPIC_GPU, "R0042")].value, key=b"R0042", now_ms=NOW_MS)
    assert gpu.batch.column("gpu").to_pylist() == [0, 1, 2, 3]
    assert gpu.batch.column("temp_gpu_c").to_pylist() == [60, 61, 62, 63]
    assert gpu.batch.column("sm_clock_mhz").to_pylist() == [1980, 1979, 1978, 1977]
    assert gpu.batch.column("temp_mem_c").to_pylist() == [60, 61, 62, 63]  # not reported
    cdu = decode_points_frame(by_topic[(TOPIC_THERMAL, "CDU01")].value, key=b"CDU01", now_ms=NOW_MS)
    assert dict(zip(cdu.points, cdu.values.tolist(), strict=True)) == {
        "supply_temp_c": 32.5, "return_temp_c": 41.25, "flow_kg_s": 38.5, "pump_power_w": 2200,
    }  # fmt: skip
    bmc_thermal = by_topic[(TOPIC_THERMAL, "10.20.2.203")].batch.to_pydict()
    assert (bmc_thermal["point"], bmc_thermal["value"]) == (["inlet_temp_c"], [24.5])
    bmc_power = by_topic[(TOPIC_POWER, "10.20.2.203")].batch.to_pydict()
    assert (bmc_power["point"], bmc_power["value"]) == (["power_supply_1_w"], [1110.0])
    report = mapper.stats.report()
    assert report["unmapped_measurements"] == {"cpu": 1}
    assert report["unmapped_fields"] == {"ipmi_sensor.(no unit)": 1}  # uid_light
    # cpu (unmapped) and uid_light (no unit) are counted, not written
    assert result.written_lines == 4 + 2 + 1


def test_an_snmp_ups_maps_by_ups_mib_names_and_suffixes() -> None:
    # inputs.snmp with agent_host_tag = "source", fields named after UPS-MIB objects
    body = (
        f"snmp,agent_host=10.0.9.2,source=UPS01 upsBatteryTemperature=31i,"
        f"upsEstimatedChargeRemaining=97i,upsSecondsOnBattery=0i,sysUpTime=123456i,"
        f"output_power_w=41250.5 {NOW_NS}\n"
    )
    mapper = _mapper()
    [frame] = convert_write(body.encode(), "ns", mapper, now_ms=NOW_MS, settings=SETTINGS).frames
    assert (frame.topic, frame.key) == (TOPIC_POWER, "UPS01")
    batch = frame.batch.to_pydict()
    got = dict(zip(batch["point"], batch["value"], strict=True))
    assert got == {
        "battery_temp_c": 31.0,
        "battery_soc_frac": 0.97,
        "seconds_on_battery_s": 0.0,
        "output_power_w": 41250.5,
    }
    assert mapper.stats.fields_unmapped == 0  # sysUpTime is ignored, not unmapped


def test_energy_is_integrated_from_power_between_writes() -> None:
    mapper = _mapper()
    line = "nvidia_smi,rack=R1,index=0 power_draw=500,temperature_gpu=50i,utilization_gpu=9i,"
    line += "clocks_current_sm=1500i {}"
    energies = []
    for t_s in (0, 1, 3):
        body = line.format(NOW_NS + t_s * 10**9).encode()
        [frame] = convert_write(body, "ns", mapper, now_ms=NOW_MS, settings=SETTINGS).frames
        energies.append(frame.batch.column("energy_mj")[0].as_py())
    assert energies == [0, 500_000, 1_500_000]  # 500 W x 1 s = 500 J = 500,000 mJ


def test_the_energy_integrals_stay_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    import streams.ingest_map as ingest_map

    monkeypatch.setattr(ingest_map, "MAX_INTEGRATED_GPUS", 3)
    mapper = _mapper()
    fields = {"power_draw": 100.0, "temperature_gpu": 50, "utilization_gpu": 9}
    fields["clocks_current_sm"] = 1500
    for t_s, rack in enumerate(["R1", "R2", "R3", "R4", "R1"]):
        metric = Metric("nvidia_smi", {"rack": rack, "index": "0"}, fields, t_s * 10**9)
        [reading] = mapper.readings(metric, 0)
    assert reading["energy_mj"] == 0  # R1 was forgotten when R4 came: integrated anew
    assert len(mapper._energy) == 3


def test_refused_lines_carry_the_check_s_code_and_good_ones_still_go() -> None:
    body = "\n".join(
        [
            f"nvidia_smi,rack=R1,index=0 power_draw=1e9,temperature_gpu=50i,"
            f"utilization_gpu=9i,clocks_current_sm=1500i {NOW_NS}",  # 1 GW: out of range
            f"nvidia_smi,index=0 power_draw=5,temperature_gpu=50i,utilization_gpu=9i,"
            f"clocks_current_sm=1500i {NOW_NS}",  # no rack tag
            f'modbus,name=CDU02 supply_temp_c="hot" {NOW_NS}',  # a string
            "nvidia_smi,rack=R1,index=0 power_draw=5 x",  # not line protocol
            f"modbus,name=CDU02 supply_temp_c=30 {NOW_NS - 3 * 86_400 * 10**9}",  # 3 days old
            f"modbus,name=CDU03 supply_temp_c=30 {NOW_NS}",  # good
        ]
    )
    result = convert_write(body.encode(), "ns", _mapper(), now_ms=NOW_MS, settings=SETTINGS)
    assert [(b.number, b.code) for b in result.refused] == [
        (1, "out_of_range"),
        (2, "bad_field"),
        (3, "bad_field"),
        (4, "bad_line"),
        (5, "ts_too_old"),
    ]
    assert [(f.topic, f.key) for f in result.frames] == [(TOPIC_THERMAL, "CDU03")]
    assert result.written_lines == 1


def test_a_line_without_timestamp_is_stamped_now() -> None:
    body = b"modbus,name=CDU01 supply_temp_c=30"
    [frame] = convert_write(body, "ns", _mapper(), now_ms=NOW_MS, settings=SETTINGS).frames
    assert frame.batch.column("ts").cast("int64")[0].as_py() == NOW_MS


def test_telegraf_json_is_read_in_its_timestamp_unit() -> None:
    metric = {
        "name": "nvidia_smi",
        "tags": {"rack": "R0007", "index": "2", "gpu_offset": "4"},
        "fields": {
            "power_draw": 612.5, "temperature_gpu": 58, "utilization_gpu": 99,
            "clocks_current_sm": 1905, "memory_used": 1200,
        },
        "timestamp": NOW_MS // 1000,  # json_timestamp_units = 1s, Telegraf's default
    }  # fmt: skip
    for doc in (metric, {"metrics": [metric, {**metric, "name": "cpu"}]}):
        [frame] = convert_json(json.dumps(doc).encode(), now_ms=NOW_MS)
        assert (frame.topic, frame.key) == (TOPIC_GPU, "R0007")
        assert frame.batch.column("gpu").to_pylist() == [6]
        assert frame.batch.column("ts").cast("int64")[0].as_py() == NOW_MS // 1000 * 1000
    # the same number read as ms (the old rule) is 1970: refused, as it was for every
    # Telegraf JSON metric before; a site whose Telegraf sends ms says so in its mapping
    ms_map = IngestMapper(parse_map({"telegraf_json": {"timestamp_units": "1ms"}}, "t", load_map()))
    with pytest.raises(DecodeError) as info:
        convert_json(json.dumps(metric).encode(), now_ms=NOW_MS, mapper=ms_map)
    assert info.value.code == "ts_too_old"
    ms_metric = {**metric, "timestamp": NOW_MS}
    assert convert_json(json.dumps(ms_metric).encode(), now_ms=NOW_MS, mapper=ms_map)
    # json_timestamp_format = "2006-01-02T15:04:05Z07:00": RFC 3339 text
    iso_metric = {**metric, "timestamp": "2026-11-18T11:06:40Z"}
    [frame] = convert_json(json.dumps(iso_metric).encode(), now_ms=NOW_MS)
    assert frame.batch.column("ts").cast("int64")[0].as_py() == NOW_MS


@pytest.mark.parametrize(
    ("metric", "code"),
    [
        ({"name": "", "fields": {}}, "bad_field"),
        ({"name": "m", "fields": {"a": [1]}, "timestamp": 1}, "bad_field"),
        ({"name": "m", "tags": {"a": 1}, "fields": {}, "timestamp": 1}, "bad_field"),
        ({"name": "m", "fields": {}}, "bad_field"),
        ({"name": "m", "fields": {}, "timestamp": "soon"}, "bad_field"),
        ({"name": "m", "fields": {}, "timestamp": -1}, "ts_too_old"),
        ({"name": "m", "fields": {}, "timestamp": 1e300}, "ts_future"),
    ],
)
def test_bad_telegraf_json_is_refused_with_a_code(metric: dict[str, object], code: str) -> None:
    with pytest.raises(DecodeError) as info:
        convert_json(json.dumps(metric).encode(), now_ms=NOW_MS)
    assert info.value.code == code


def test_a_site_map_adds_and_replaces_measurements(tmp_path: Path) -> None:
    site = tmp_path / "site.toml"
    site.write_text(
        '[measurements.bms_chiller]\nkind = "thermal"\nunit_tags = ["plant"]\n'
        '[measurements.bms_chiller.fields]\nchw_supply = "supply_temp_c"\n'
        'kw = { to = "power_w", scale = 1000.0, kind = "power" }\n'
    )
    mapping = load_map(site)
    assert {"nvidia_smi", "ipmi_sensor", "modbus", "snmp", "bms_chiller"} <= set(
        mapping.measurements
    )
    readings = IngestMapper(mapping).readings(
        Metric("bms_chiller", {"plant": "CH01"}, {"chw_supply": 12.5, "kw": 310.0}, NOW_NS), 0
    )
    assert [(r["kind"], r["point"], r["value"]) for r in readings] == [
        ("thermal", "supply_temp_c", 12.5),
        ("power", "power_w", 310_000.0),
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[measurements.x]\nkind = 'gas'\n", "kind: expected one of gpu, thermal, power"),
        ("[measurements.x]\nkind = 'gpu'\n", "no field feeds power_w"),
        ("[measurements.x]\nkind = 'thermal'\nfields = {a = 'b'}\n", "unit_tags"),
        ("[measurements.x]\nkind = 'gpu'\nfields = {a = 'watts'}\n", "not a telemetry.gpu column"),
        ("[measurements.x]\nkind = 'thermal'\nunit_tags = ['u']\ncolour = 1\n", "unknown keys"),
        ("[telegraf_json]\ntimestamp_units = '1h'\n", "1ns, 1us"),
        ("[measurements.x\n", "not TOML"),
    ],
)
def test_a_bad_site_map_is_one_clear_line(tmp_path: Path, text: str, message: str) -> None:
    site = tmp_path / "bad.toml"
    site.write_text(text)
    with pytest.raises(ConfigError, match=message) as info:
        load_map(site)
    assert str(site) in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="cannot read"):
        load_map(tmp_path / "missing.toml")


def test_the_unmapped_report_stays_bounded(caplog: pytest.LogCaptureFixture) -> None:
    mapper = IngestMapper(IngestMap({}))
    for i in range(1000):
        assert mapper.readings(Metric(f"m{i}", {}, {"f": 1.0}), 0) == []
    assert mapper.readings(Metric("m0", {}, {"f": 1.0}), 0) == []
    assert len([r for r in caplog.records if "has no mapping" in r.message]) == 200
    report = mapper.stats.report()
    assert report["metrics_unmapped"] == 1001
    assert len(report["unmapped_measurements"]) == 201  # 200 names and "(other)"


def test_influx_clients_authenticate_with_token_or_bearer() -> None:
    from types import SimpleNamespace

    from streams.lineproto_views import influx_auth
    from streams.secret import Secret

    token = "lineproto-unit-token-0123456789"
    with_token = Settings(api_token=Secret(token))

    def status(settings: Settings, header: str | None) -> int | None:
        headers = {} if header is None else {"Authorization": header}
        refused = influx_auth(SimpleNamespace(headers=headers), settings)
        if refused is not None:
            assert set(json.loads(refused.body)) == {"code", "message"}  # InfluxDB's shape
        return None if refused is None else int(refused.status)

    assert status(with_token, f"Token {token}") is None
    assert status(with_token, f"Bearer {token}") is None
    assert status(with_token, f"token  {token} ") is None
    assert status(with_token, None) == 401
    assert status(with_token, "Token wrong-token-0123456789") == 403
    assert status(with_token, f"Basic {token}") == 401
    assert status(Settings(), f"Token {token}") == 403  # none configured: writes refused


def test_the_worker_flag_refuses_a_bad_map_in_one_line(tmp_path: Path) -> None:
    import argparse
    import subprocess
    import sys

    from streams.ingest_map import ingest_map_arg

    bad = tmp_path / "bad.toml"
    bad.write_text("[measurements.x]\nkind = 'gas'\n")
    argv = [sys.executable, "-m", "streams", "worker", "--broker", "kafka://127.0.0.1:1"]
    done = subprocess.run(
        [*argv, "--ingest-map", str(bad)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2, done.stderr
    [line] = done.stderr.strip().splitlines()
    assert f"--ingest-map: {bad}: measurements.x.kind" in line
    with pytest.raises(argparse.ArgumentTypeError, match=r"missing\.toml: cannot read"):
        ingest_map_arg(str(tmp_path / "missing.toml"))
    empty = tmp_path / "empty.toml"  # no measurements of its own: the shipped ones
    empty.write_text("")
    assert ingest_map_arg(str(empty)) == empty
