"""How every Kafka client of the twin authenticates: PLAINTEXT, TLS, SASL/SCRAM or both.

One :class:`KafkaSecurity` is read at the entry point (``--kafka-*`` flags, with their
``TWIN_KAFKA_*`` fallbacks filled by streams/config.py) and handed to every client: Faust
(:meth:`KafkaSecurity.faust_credentials`) and every plain aiokafka consumer, producer and
admin client (:func:`kafka_client_kwargs`), so the options are written once. The password
is a :class:`streams.secret.Secret` (never printed) and comes from ``TWIN_KAFKA_PASSWORD`` or
``--kafka-password-file``, never from a flag that ``ps`` would show.

Importable by storage/: nothing here imports Faust at module level.
"""

from __future__ import annotations

import argparse
import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streams.secret import Secret, read_secret_file
from twin.errors import BrokerError, ConfigError

PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
MECHANISMS = ("SCRAM-SHA-256", "SCRAM-SHA-512")


@dataclass(frozen=True)
class KafkaSecurity:
    """The security settings of a Kafka connection (default: PLAINTEXT, no auth).

    ``ca_file`` is the PEM bundle the broker's certificate must chain to (None: the
    system's trust store); ``cert_file``/``key_file`` a client certificate for brokers
    that ask for one (``ssl.client.auth``).
    """

    protocol: str = "PLAINTEXT"
    mechanism: str = "SCRAM-SHA-512"
    username: str | None = None
    password: Secret | None = None
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ConfigError(
                f"--kafka-security-protocol must be one of {', '.join(PROTOCOLS)}, "
                f"got {self.protocol!r}"
            )
        if self.sasl:
            if self.mechanism not in MECHANISMS:
                raise ConfigError(
                    f"--kafka-sasl-mechanism must be one of {', '.join(MECHANISMS)}, "
                    f"got {self.mechanism!r}"
                )
            if not self.username or not self.password:
                raise ConfigError(
                    f"{self.protocol} needs --kafka-username and a password "
                    "(TWIN_KAFKA_PASSWORD or --kafka-password-file)"
                )
        elif self.username or self.password:
            raise ConfigError(
                "a Kafka username or password needs --kafka-security-protocol "
                "SASL_SSL or SASL_PLAINTEXT"
            )
        if not self.tls and (self.ca_file or self.cert_file or self.key_file):
            raise ConfigError(
                "--kafka-ca-file/--kafka-cert-file/--kafka-key-file need "
                "--kafka-security-protocol SSL or SASL_SSL"
            )
        if self.key_file and not self.cert_file:
            raise ConfigError("--kafka-key-file needs --kafka-cert-file")

    @property
    def sasl(self) -> bool:
        """True for SASL_PLAINTEXT and SASL_SSL."""
        return self.protocol.startswith("SASL_")

    @property
    def tls(self) -> bool:
        """True for SSL and SASL_SSL."""
        return self.protocol in ("SSL", "SASL_SSL")

    def ssl_context(self) -> ssl.SSLContext | None:
        """A verifying TLS context (hostname checked) for SSL/SASL_SSL, else None.

        Raises ConfigError when a CA, certificate or key file cannot be loaded.
        """
        if not self.tls:
            return None
        try:
            ctx = ssl.create_default_context(
                cafile=str(self.ca_file) if self.ca_file is not None else None
            )
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"cannot load --kafka-ca-file {self.ca_file}: {_why(exc)}") from None
        if self.cert_file is not None:
            try:
                ctx.load_cert_chain(
                    str(self.cert_file), str(self.key_file) if self.key_file else None
                )
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(
                    f"cannot load --kafka-cert-file {self.cert_file}: {_why(exc)}"
                ) from None
        return ctx

    def client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for AIOKafkaConsumer/AIOKafkaProducer/AIOKafkaAdminClient."""
        kwargs: dict[str, Any] = {"security_protocol": self.protocol}
        if self.tls:
            kwargs["ssl_context"] = self.ssl_context()
        if self.sasl:
            assert self.password is not None  # checked in __post_init__
            kwargs["sasl_mechanism"] = self.mechanism
            kwargs["sasl_plain_username"] = self.username
            kwargs["sasl_plain_password"] = self.password.reveal()
        return kwargs

    def faust_credentials(self) -> Any:
        """Faust's ``broker_credentials`` for this connection (None for PLAINTEXT)."""
        import faust  # here, so that storage/ can import this module without Faust

        if self.sasl:
            assert self.password is not None
            return faust.SASLCredentials(
                username=self.username,
                password=self.password.reveal(),
                ssl_context=self.ssl_context(),  # None for SASL_PLAINTEXT
                mechanism=self.mechanism,
            )
        if self.tls:
            return faust.SSLCredentials(self.ssl_context())
        return None


PLAINTEXT = KafkaSecurity()


def kafka_client_kwargs(security: KafkaSecurity | None) -> dict[str, Any]:
    """aiokafka client keyword arguments for ``security`` (None: PLAINTEXT)."""
    return (security or PLAINTEXT).client_kwargs()


def _ssl_cause(exc: BaseException) -> ssl.SSLError | None:
    """The TLS error behind a client error (aiokafka wraps it in KafkaConnectionError)."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, ssl.SSLError):
            return cur
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return None


def _why(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _env(environ: Mapping[str, str] | None, name: str, default: str = "") -> str:
    env = os.environ if environ is None else environ
    return env.get(f"TWIN_{name.upper()}", default)


def add_kafka_security_flags(p: argparse.ArgumentParser) -> None:
    """The ``--kafka-*`` flags of every command that talks to Kafka."""
    g = p.add_argument_group("Kafka security")
    g.add_argument(
        "--kafka-security-protocol",
        default="PLAINTEXT",
        choices=PROTOCOLS,
        help="PLAINTEXT (default), SSL, SASL_PLAINTEXT or SASL_SSL",
    )
    g.add_argument(
        "--kafka-sasl-mechanism",
        default="SCRAM-SHA-512",
        choices=MECHANISMS,
        help="SASL mechanism (default SCRAM-SHA-512)",
    )
    g.add_argument(
        "--kafka-username",
        default=None,
        help="SASL user (default: none); the password comes from TWIN_KAFKA_PASSWORD or "
        "--kafka-password-file",
    )
    g.add_argument(
        "--kafka-password-file",
        type=Path,
        default=None,
        help="file whose first line is the SASL password (default: none)",
    )
    g.add_argument(
        "--kafka-ca-file",
        type=Path,
        default=None,
        help="PEM CA bundle the broker certificate must chain to (default: the system trust store)",
    )
    g.add_argument(
        "--kafka-cert-file",
        type=Path,
        default=None,
        help="PEM client certificate, for brokers that require one (default: none)",
    )
    g.add_argument(
        "--kafka-key-file",
        type=Path,
        default=None,
        help="PEM key of --kafka-cert-file (default: none)",
    )


def kafka_security_from_args(
    args: argparse.Namespace, environ: Mapping[str, str] | None = None
) -> KafkaSecurity:
    """The KafkaSecurity of parsed ``--kafka-*`` flags; the password from TWIN_KAFKA_PASSWORD
    or ``--kafka-password-file`` (the file wins). Raises ConfigError, never echoing secrets."""
    protocol = getattr(args, "kafka_security_protocol", "PLAINTEXT")
    password: Secret | None = None
    path = getattr(args, "kafka_password_file", None)
    if path is not None:
        password = read_secret_file(Path(path), "Kafka password")
    elif _env(environ, "kafka_password"):
        password = Secret(_env(environ, "kafka_password"))
    sasl = protocol.startswith("SASL_")
    security = KafkaSecurity(
        protocol=protocol,
        mechanism=getattr(args, "kafka_sasl_mechanism", "SCRAM-SHA-512"),
        username=getattr(args, "kafka_username", None),
        # An exported TWIN_KAFKA_PASSWORD must not break a PLAINTEXT command.
        password=password if sasl else None,
        ca_file=getattr(args, "kafka_ca_file", None),
        cert_file=getattr(args, "kafka_cert_file", None),
        key_file=getattr(args, "kafka_key_file", None),
    )
    security.ssl_context()  # load the files now: a bad path is a one-line error at start
    return security


async def check_access(bootstrap: str, security: KafkaSecurity | None) -> None:
    """Fail fast, in one line, when the broker refuses our TLS handshake or credentials.

    aiokafka turns such a refusal into "Unable to bootstrap" after logging the cause, and
    callers would retry it like an unreachable broker. This opens one connection to each
    bootstrap server in turn: a TLS verification or SASL authentication failure raises
    BrokerError at once. First, no server accepting a TCP connection within a few seconds
    is a one-line BrokerError too (streams/kafka_reach.py).
    """
    from streams.kafka_reach import require_reachable

    await require_reachable(bootstrap)
    if security is None or security.protocol == "PLAINTEXT":
        return
    from aiokafka.conn import create_conn
    from aiokafka.errors import KafkaError

    kwargs = security.client_kwargs()
    for hp in bootstrap.split(","):
        host, _, port = hp.rpartition(":")
        try:
            conn = await create_conn(host, int(port), request_timeout_ms=10_000, **kwargs)
        except ssl.SSLCertVerificationError as exc:
            raise BrokerError(
                f"TLS to Kafka at {hp} failed: certificate verify failed: {exc.verify_message} "
                "(--kafka-ca-file)"
            ) from None
        except ssl.SSLError as exc:
            raise BrokerError(f"TLS to Kafka at {hp} failed: {exc.reason or exc}") from None
        except KafkaError as exc:
            tls = _ssl_cause(exc)
            if tls is not None:
                # e.g. the broker's "bad certificate" alert: it wants a client certificate
                # (ssl.client.auth=required) that we did not show or that it does not trust.
                raise BrokerError(
                    f"TLS to Kafka at {hp} refused by the broker: {tls.reason or tls} "
                    "(--kafka-cert-file/--kafka-key-file)"
                ) from None
            if "auth" in type(exc).__name__.lower() or "sasl" in type(exc).__name__.lower():
                raise BrokerError(
                    f"Kafka at {hp} refused {security.mechanism} login of user "
                    f"{security.username!r} ({type(exc).__name__})"
                ) from None
            continue
        except (TimeoutError, OSError):
            continue
        conn.close()
        return
