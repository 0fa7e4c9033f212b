"""TLS and SASL/SCRAM to Kafka: the settings, and the whole pipeline against Apache Kafka.

The integration test starts Apache Kafka with a SASL_SSL listener (SCRAM-SHA-512 users made
at format time, PEM key and certificates made here with the openssl CLI), then runs a real
`twin worker` subprocess and the Parquet sink over SASL_SSL: frames produced over SASL_SSL
reach /api/racks and Parquet; a wrong password is refused with a one-line error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from storage.cli_sink import with_prefix
from storage.layout import default_tables, list_parts
from storage.sink import ParquetSink
from streams.brokers.apache import ApacheKafkaBroker, SaslSslListener
from streams.codec import encode_frame
from streams.httpclient import http_get
from streams.kafka_security import (
    KafkaSecurity,
    add_kafka_security_flags,
    kafka_client_kwargs,
    kafka_security_from_args,
)
from streams.producer import FramePublisher
from streams.secret import Secret
from streams.settings import Topics
from streams.topics_admin import ensure_topics
from tests.streams.frames import known_gpu_batch
from tests.streams.workerproc import WorkerProcess
from twin.errors import BrokerError, ConfigError

PASSWORD = "scram-pw-Very-Secret-42"


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_kafka_security_flags(p)
    return p.parse_args(argv)


# --- settings (no broker) --------------------------------------------------------------------


def test_plaintext_is_the_default_and_adds_nothing() -> None:
    assert kafka_client_kwargs(None) == {"security_protocol": "PLAINTEXT"}
    sec = kafka_security_from_args(parse([]), environ={})
    assert sec == KafkaSecurity() and sec.faust_credentials() is None


def test_sasl_ssl_kwargs_and_faust_credentials(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    sec = KafkaSecurity(
        protocol="SASL_SSL",
        mechanism="SCRAM-SHA-256",
        username="twin",
        password=Secret(PASSWORD),
        ca_file=pki.ca,
        cert_file=pki.client_cert,
        key_file=pki.client_key,
    )
    kw = sec.client_kwargs()
    assert kw["security_protocol"] == "SASL_SSL" and kw["sasl_mechanism"] == "SCRAM-SHA-256"
    assert kw["sasl_plain_username"] == "twin" and kw["sasl_plain_password"] == PASSWORD
    ctx = kw["ssl_context"]
    assert isinstance(ctx, ssl.SSLContext) and ctx.check_hostname
    assert ctx.verify_mode == ssl.CERT_REQUIRED
    creds = sec.faust_credentials()
    assert type(creds).__name__ == "SASLCredentials"
    assert creds.protocol.value == "SASL_SSL" and creds.mechanism.value == "SCRAM-SHA-256"
    assert PASSWORD not in repr(creds) and PASSWORD not in repr(sec)
    ssl_only = KafkaSecurity(protocol="SSL", ca_file=pki.ca)
    assert type(ssl_only.faust_credentials()).__name__ == "SSLCredentials"
    assert "sasl_mechanism" not in ssl_only.client_kwargs()
    plain_sasl = KafkaSecurity(protocol="SASL_PLAINTEXT", username="u", password=Secret("p"))
    assert "ssl_context" not in plain_sasl.client_kwargs()


def test_password_from_env_or_file_never_in_errors(tmp_path: Path) -> None:
    base = ["--kafka-security-protocol", "SASL_PLAINTEXT", "--kafka-username", "twin"]
    env = {"TWIN_KAFKA_PASSWORD": PASSWORD}
    sec = kafka_security_from_args(parse(base), environ=env)
    assert sec.password is not None and sec.password.reveal() == PASSWORD
    f = tmp_path / "pw"
    f.write_text("from-file\n")
    sec = kafka_security_from_args(parse([*base, "--kafka-password-file", str(f)]), environ=env)
    assert sec.password is not None and sec.password.reveal() == "from-file"
    # an exported password does not break a PLAINTEXT command
    assert kafka_security_from_args(parse([]), environ=env).password is None
    with pytest.raises(ConfigError, match="needs --kafka-username and a password"):
        kafka_security_from_args(parse(base), environ={})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"protocol": "TLS"}, "must be one of"),
        ({"protocol": "SASL_SSL", "username": "u"}, "needs --kafka-username and a password"),
        ({"protocol": "SASL_SSL", "username": "u", "password": Secret("p"), "mechanism": "PLAIN"},
         "--kafka-sasl-mechanism"),
        ({"username": "u", "password": Secret("p")}, "needs --kafka-security-protocol SASL"),
        ({"protocol": "SASL_PLAINTEXT", "username": "u", "password": Secret("p"),
          "ca_file": Path("ca.pem")}, "need --kafka-security-protocol SSL"),
        ({"protocol": "SSL", "key_file": Path("k.pem")}, "--kafka-key-file needs"),
    ],
)  # fmt: skip
def test_inconsistent_settings_are_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        KafkaSecurity(**kwargs)  # type: ignore[arg-type]
    assert "p'" not in str(info.value)


def test_unreadable_ca_file_is_a_config_error(tmp_path: Path) -> None:
    args = parse(["--kafka-security-protocol", "SSL", "--kafka-ca-file", str(tmp_path / "no")])
    with pytest.raises(ConfigError, match="cannot load --kafka-ca-file"):
        kafka_security_from_args(args, environ={})


# --- certificates made by the test -----------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


#: P-256 keys: generated in milliseconds (RSA 2048 takes about a second here); Kafka's PEM
#: keystore reads EC keys as well.
EC_KEY = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1")


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


def make_pki(d: Path) -> Pki:
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate (PEM)."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl CLI is needed to make test certificates")
    d.mkdir(parents=True, exist_ok=True)
    ca_key, ca = d / "ca.key", d / "ca.pem"
    _openssl("req", "-x509", *EC_KEY, "-nodes", "-keyout", str(ca_key),
             "-out", str(ca), "-days", "2", "-subj", "/CN=dc-twin test CA",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign")  # fmt: skip
    ext = d / "server.ext"
    ext.write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
        "extendedKeyUsage=serverAuth,clientAuth\nbasicConstraints=CA:FALSE\n"
    )
    out = {}
    for name in ("server", "client"):
        key, csr, cert = d / f"{name}.key", d / f"{name}.csr", d / f"{name}.pem"
        _openssl("req", *EC_KEY, "-nodes", "-keyout", str(key), "-out", str(csr),
                 "-subj", f"/CN={name}")  # fmt: skip
        _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
                 "-CAcreateserial", "-out", str(cert), "-days", "2",
                 "-extfile", str(ext))  # fmt: skip
        out[name] = (cert, key)
    return Pki(ca, *out["server"], *out["client"])


# --- Apache Kafka with a SASL_SSL listener ---------------------------------------------------

USER = "twin"


@dataclass
class SecureKafka:
    broker: ApacheKafkaBroker
    pki: Pki
    password_file: Path

    def security(self, password: str = PASSWORD) -> KafkaSecurity:
        return KafkaSecurity(
            protocol="SASL_SSL",
            username=USER,
            password=Secret(password),
            ca_file=self.pki.ca,
            cert_file=self.pki.client_cert,
            key_file=self.pki.client_key,
        )

    def flags(self, password_file: Path | None = None) -> list[str]:
        return [
            "--broker", self.broker.sasl_ssl_url,
            "--kafka-security-protocol", "SASL_SSL",
            "--kafka-username", USER,
            "--kafka-password-file", str(password_file or self.password_file),
            "--kafka-ca-file", str(self.pki.ca),
            "--kafka-cert-file", str(self.pki.client_cert),
            "--kafka-key-file", str(self.pki.client_key),
        ]  # fmt: skip


@pytest.fixture(scope="module")
def secure_kafka(
    apache_kafka_required: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SecureKafka]:
    d = tmp_path_factory.mktemp("secure-kafka")
    pki = make_pki(d / "pki")
    listener = SaslSslListener(
        cert_file=pki.server_cert,
        key_file=pki.server_key,
        ca_file=pki.ca,
        users={USER: PASSWORD},
        mechanism="SCRAM-SHA-512",
        # every client shows the client certificate too (mutual TLS), so that path is tested
        client_auth="required",
    )
    broker = ApacheKafkaBroker(sasl_ssl=listener)
    try:
        broker.start()
    except BrokerError as exc:
        pytest.fail(f"Apache Kafka with SASL_SSL did not start: {exc}", pytrace=False)
    pw = d / "kafka-password"
    pw.write_text(PASSWORD + "\n")
    try:
        yield SecureKafka(broker, pki, pw)
    finally:
        broker.stop()


def twin_cli_all(*argvs: list[str]) -> list[subprocess.CompletedProcess[str]]:
    """Run several ``twin`` commands at once (each as a user types it, no TWIN_* env)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TWIN_")}
    procs = [
        subprocess.Popen([sys.executable, "-m", "streams", *argv], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=clean)
        for argv in argvs
    ]  # fmt: skip
    out = []
    for argv, proc in zip(argvs, procs, strict=True):
        stdout, stderr = proc.communicate(timeout=90)
        out.append(subprocess.CompletedProcess(argv, proc.returncode, stdout, stderr))
    return out


@pytest.mark.integration
def test_wrong_password_or_untrusted_broker_is_a_one_line_error(
    secure_kafka: SecureKafka, tmp_path: Path, topic_prefix: str
) -> None:
    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-password\n")
    # no CA given: the broker's certificate does not chain to the system trust store
    untrusted = [f for f in secure_kafka.flags() if f != str(secure_kafka.pki.ca)]
    untrusted.remove("--kafka-ca-file")
    t0 = time.monotonic()
    # no client certificate: the broker asks for one (ssl.client.auth=required)
    no_cert = secure_kafka.flags()[:-4]
    worker, sink, sim, anonymous = twin_cli_all(
        ["worker", *secure_kafka.flags(wrong), "--topic-prefix", topic_prefix,
         "--state-dir", str(tmp_path / "s"), "--data-dir", str(tmp_path / "d")],
        ["sink", *secure_kafka.flags(wrong), "--data-dir", str(tmp_path / "d"),
         "--topic-prefix", topic_prefix, "--group", f"{topic_prefix}-sink"],
        ["sim", *untrusted, "--topic-prefix", topic_prefix, "--duration", "1"],
        ["sim", *no_cert, "--topic-prefix", topic_prefix, "--duration", "1"],
    )  # fmt: skip
    for r, status in ((worker, 1), (sink, 1), (sim, 1), (anonymous, 1)):
        lines = r.stderr.strip().splitlines()
        assert r.returncode == status and len(lines) == 1, r.stderr
        assert "not-the-password" not in r.stderr and PASSWORD not in r.stderr
    assert "refused SCRAM-SHA-512 login of user 'twin'" in worker.stderr
    assert "refused SCRAM-SHA-512 login of user 'twin'" in sink.stderr
    assert "TLS to Kafka" in sim.stderr and "certificate verify failed" in sim.stderr
    assert "refused by the broker: SSLV3_ALERT_BAD_CERTIFICATE" in anonymous.stderr
    # refused at once, not after the 30 s an unreachable broker is retried for
    assert time.monotonic() - t0 < 60


def _post(url: str, body: bytes, token: str | None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, method="POST")
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return int(resp.status), resp.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()


def _gpu_rows(data_dir: Path) -> int:
    for _ in range(20):  # a listed file may be compacted away while we read
        try:
            return sum(pq.read_metadata(p).num_rows for p in list_parts(data_dir / "gpu"))
        except FileNotFoundError:
            continue
    return 0


@pytest.mark.integration
@pytest.mark.slow
async def test_worker_and_sink_over_sasl_ssl(
    secure_kafka: SecureKafka, tmp_path: Path, topic_prefix: str
) -> None:
    sec = secure_kafka.security()
    bootstrap = secure_kafka.broker.sasl_ssl_bootstrap
    topics = Topics(topic_prefix)
    await ensure_topics(bootstrap, topics, 8, security=sec)
    token = "api-token-for-the-secure-test-0123"
    token_file = tmp_path / "api-token"
    token_file.write_text(token + "\n")
    extra = secure_kafka.flags()[2:]  # WorkerProcess gives --broker itself
    extra += ["--api-token-file", str(token_file), "--sql-token-required"]
    extra += ["--log-level", "info"]  # more to search for a leaked secret
    worker = WorkerProcess(secure_kafka.broker.sasl_ssl_url, topic_prefix, tmp_path,
                           extra=tuple(extra))  # fmt: skip
    history = tmp_path / "history"
    sink = ParquetSink(
        bootstrap, history, [topics.gpu], f"{topic_prefix}-sink", 1000, 0.5,
        tables=with_prefix(default_tables(), topic_prefix), security=sec,
    )  # fmt: skip
    stop = asyncio.Event()
    sink_task = asyncio.create_task(sink.run(stop))
    try:
        await asyncio.to_thread(worker.wait_healthy, 120.0)
        racks = [f"R{i:04d}" for i in range(1, 4)]
        ts = time.time_ns() // 1_000_000
        async with FramePublisher(bootstrap, security=sec) as pub:
            futs = [
                await pub.send(topics.gpu, rack, encode_frame(known_gpu_batch(rack, ts + k * 1000)))
                for k in range(2)
                for rack in racks
            ]
            await pub.flush()
            for fut in futs:
                await fut
        expected_rows = 2 * len(racks) * 72
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            status, body = await asyncio.to_thread(http_get, f"{worker.url}/api/racks/R0003")
            if status == 200 and _gpu_rows(history) >= expected_rows:
                break
            await asyncio.sleep(0.3)
        assert status == 200, worker.log_tail()
        doc = json.loads(body)
        # the latest frame of the rack, every GPU of it
        assert [g["gpu"] for g in doc["gpus"]] == list(range(72))
        assert {g["ts_ms"] for g in doc["gpus"]} == {ts + 1000}
        assert _gpu_rows(history) == expected_rows
        # the API's own gate, through the real worker: SQL needs the token, Faust views off
        sql = b'{"sql": "SELECT count(*) AS n FROM gpu"}'
        assert (await asyncio.to_thread(_post, f"{worker.url}/api/sql", sql, None))[0] == 401
        wrong = await asyncio.to_thread(_post, f"{worker.url}/api/sql", sql, token + "x")
        assert wrong[0] == 403
        ok, answer = await asyncio.to_thread(_post, f"{worker.url}/api/sql", sql, token)
        assert ok == 200, answer
        assert json.loads(answer)["rows"] == [{"n": expected_rows}]
        for path in ("/router/", "/table/", "/table/rack-model/R0001/"):
            assert (await asyncio.to_thread(http_get, worker.url + path))[0] == 404
        assert token not in worker.log_tail(100_000) and PASSWORD not in worker.log_tail(100_000)
    finally:
        stop.set()
        await asyncio.wait_for(sink_task, 60)
        worker.stop()
