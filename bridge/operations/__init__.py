"""The operation registry: every agent operation declared once (:mod:`bridge.operations.spec`), by area
(:mod:`~bridge.operations.kv`, :mod:`~bridge.operations.transit`, :mod:`~bridge.operations.broker`,
:mod:`~bridge.operations.identity`, :mod:`~bridge.operations.resources`, :mod:`~bridge.operations.dynamic`), and
the one pipeline that carries them out (:mod:`bridge.operations.pipeline`). See docs/architecture.md, "Adding an
operation".
"""

from __future__ import annotations

from bridge.operations import broker, dynamic, identity, intake, kv, resources, transit
from bridge.operations.pipeline import Call, Executor
from bridge.operations.spec import AnyOperation, Operation, Param, Registry, RestBinding, hints

__all__ = ["AnyOperation", "Call", "Executor", "Operation", "Param", "Registry", "RestBinding", "default_registry",
           "hints"]


def default_registry() -> Registry:
    """The bridge's operations, in the order of ``tools/list`` and of the OpenAPI document."""
    return Registry([*kv.OPERATIONS, *intake.OPERATIONS, *transit.OPERATIONS, *broker.OPERATIONS,
                     *identity.OPERATIONS, *dynamic.OPERATIONS, *resources.OPERATIONS])
