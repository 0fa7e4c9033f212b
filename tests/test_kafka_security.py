"""TLS and SASL/SCRAM to Kafka: the settings, and the whole pipeline against Apache Kafka.

The integration test starts Apache Kafka with a SASL_SSL listener (SCRAM-SHA-512 users made
at format time, PEM key and certificates made here with the openssl CLI), then runs a real
`twin worker` subprocess and the Parquet sink over SASL_SSL: frames produced over SASL_SSL
reach /api/racks and Parquet; a wrong password is refused with a one-line error.
"""

from __future__ import annotations

import argparse
import shutil
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from streams.kafka_security import (
    KafkaSecurity,
    add_kafka_security_flags,
    kafka_client_kwargs,
    kafka_security_from_args,
)
from streams.secret import Secret
from twin.errors import ConfigError

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


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


def make_pki(d: Path) -> Pki:
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate (PEM)."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl CLI is needed to make test certificates")
    d.mkdir(parents=True, exist_ok=True)
    ca_key, ca = d / "ca.key", d / "ca.pem"
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key),
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
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr),
                 "-subj", f"/CN={name}")  # fmt: skip
        _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
                 "-CAcreateserial", "-out", str(cert), "-days", "2",
                 "-extfile", str(ext))  # fmt: skip
        out[name] = (cert, key)
    return Pki(ca, *out["server"], *out["client"])
