"""Taking a secret in without the model seeing it (issue 12): one-time intake links and their HTML form.

- :mod:`bridge.intake.token`: signed links bound to agent, path, expected version and expiry; CSRF tokens;
- :mod:`bridge.intake.store`: the consumed-nonce record that makes a link single-use across replicas;
- :mod:`bridge.intake.flow`: request, open, submit (validate, claim, write through the wiring's callback);
- :mod:`bridge.intake.routes`: the pages (``setup_intake_routes``; imported on its own, it needs ``bridge.keys``).
"""

from __future__ import annotations

from bridge.intake.flow import IntakeFlow, IntakeStatus, IntakeStored, IntakeSubmission, IntakeWriter
from bridge.intake.store import IntakeRecord, IntakeStore, MemoryIntakeStore, record_path
from bridge.intake.token import IntakeCodec, IntakeField, IntakeRef, IntakeTicket

__all__ = ["IntakeCodec", "IntakeField", "IntakeFlow", "IntakeRecord", "IntakeRef", "IntakeStatus", "IntakeStore",
           "IntakeStored", "IntakeSubmission", "IntakeTicket", "IntakeWriter", "MemoryIntakeStore", "record_path"]
