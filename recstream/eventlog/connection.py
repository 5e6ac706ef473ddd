"""How every Kafka client of the project connects: the brokers and their security, from one settings section.

The worker (faust), the producer, the reader's publisher, the log readers of the jobs and ``infra``'s
admin client all take their connection from :func:`client_options` (faust through
:func:`faust_credentials`), so SASL and TLS are configured once and no client is left on plaintext.
"""

from __future__ import annotations

import ssl

import faust
from aiokafka.helpers import create_ssl_context

from recstream.contracts.settings import KafkaSettings


def ssl_context(kafka: KafkaSettings) -> ssl.SSLContext | None:
    """The TLS context of SSL / SASL_SSL (hostname checked, the configured CA or the system's), else None."""
    if not kafka.tls:
        return None
    return create_ssl_context(
        cafile=str(kafka.ssl_cafile) if kafka.ssl_cafile else None,
        certfile=str(kafka.ssl_certfile) if kafka.ssl_certfile else None,
        keyfile=str(kafka.ssl_keyfile) if kafka.ssl_keyfile else None,
    )


def client_options(kafka: KafkaSettings) -> dict[str, object]:
    """Keyword arguments for any aiokafka client (producer, consumer, admin).

    >>> client_options(KafkaSettings(bootstrap="b:9092"))
    {'bootstrap_servers': 'b:9092', 'security_protocol': 'PLAINTEXT'}
    >>> sorted(client_options(KafkaSettings(security_protocol="SASL_PLAINTEXT", sasl_username="u", sasl_password="p")))
    ['bootstrap_servers', 'sasl_mechanism', 'sasl_plain_password', 'sasl_plain_username', 'security_protocol']
    """
    options: dict[str, object] = {"bootstrap_servers": kafka.bootstrap, "security_protocol": kafka.security_protocol}
    if kafka.tls:
        options["ssl_context"] = ssl_context(kafka)
    if kafka.security_protocol.startswith("SASL_"):
        assert kafka.sasl_password is not None  # the settings' validator guarantees it
        options |= {
            "sasl_mechanism": kafka.sasl_mechanism,
            "sasl_plain_username": kafka.sasl_username,
            "sasl_plain_password": kafka.sasl_password.get_secret_value(),
        }
    return options


def faust_credentials(kafka: KafkaSettings) -> faust.types.auth.CredentialsT | None:
    """The same connection as faust's ``broker_credentials`` (None: plaintext)."""
    context = ssl_context(kafka)
    if kafka.security_protocol.startswith("SASL_"):
        assert kafka.sasl_password is not None
        return faust.SASLCredentials(
            username=kafka.sasl_username,
            password=kafka.sasl_password.get_secret_value(),
            ssl_context=context,
            mechanism=kafka.sasl_mechanism,
        )
    return faust.SSLCredentials(context) if context is not None else None
