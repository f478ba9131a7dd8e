"""Brokered HTTP: agents use secrets in outbound requests without ever receiving them (issue 12).

- :mod:`bridge.broker.broker`: :class:`Broker` (the entry point), the request/answer models, the resolver
  callback's types;
- :mod:`bridge.broker.hosts`: ``bridge.allowed_hosts`` entries, destination address classes, DNS;
- :mod:`bridge.broker.client`: the pinned outbound ``aiohttp`` session;
- :mod:`bridge.broker.redact`: redaction of values and their encoded forms (also used by ``exec``).
"""

from __future__ import annotations

from bridge.broker.broker import (
    METHODS,
    Broker,
    BrokerHttpAnswer,
    BrokerHttpBody,
    ResolvedSecret,
    SecretResolver,
    audit_fields,
)
from bridge.broker.hosts import HostResolver, SystemResolver
from bridge.broker.redact import Redactor, StreamRedactor, value_forms

__all__ = ["METHODS", "Broker", "BrokerHttpAnswer", "BrokerHttpBody", "HostResolver", "Redactor", "ResolvedSecret",
           "SecretResolver", "StreamRedactor", "SystemResolver", "audit_fields", "value_forms"]
