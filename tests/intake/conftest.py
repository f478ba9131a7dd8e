"""Fixtures for the intake tests: an app with only the intake pages, a recording writer, a movable clock."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from bridge.config import Settings
from bridge.errors import BridgeError
from bridge.intake import IntakeCodec, IntakeField, IntakeStored, IntakeSubmission, IntakeTicket, MemoryIntakeStore
from bridge.intake.routes import setup_intake_routes
from bridge.keys import INTAKE, SETTINGS

KEY = b"k" * 32
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
CSRF_RE = re.compile(r'name="csrf" value="([^"]+)"')


@dataclass
class Clock:
    now: float = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Writer:
    """The wiring's writer callback, recorded: what it was given; ``fail`` makes it raise."""

    calls: list[IntakeSubmission] = field(default_factory=list)
    fail: BridgeError | None = None

    async def __call__(self, submission: IntakeSubmission) -> IntakeStored:
        self.calls.append(submission)
        if self.fail is not None:
            raise self.fail
        return IntakeStored(version=submission.ticket.cas + 1)


@dataclass
class IntakeHarness:
    app: web.Application
    store: MemoryIntakeStore
    writer: Writer
    clock: Clock

    def link(self, *, agent: str = "alice", path: str = "app/db", cas: int = 0,
             fields: tuple[IntakeField, ...] = (IntakeField("username"), IntakeField("password")),
             description: str = "Database login for the nightly export") -> IntakeTicket:
        return self.app[INTAKE].request(agent=agent, path=path, cas=cas, fields=fields, description=description)


MakeHarness = Callable[..., IntakeHarness]


@pytest.fixture
def make_harness() -> MakeHarness:
    def make(*, store: MemoryIntakeStore | None = None, clock: Clock | None = None, public_url: str = "",
             ttl: float = 600) -> IntakeHarness:
        clock = clock or Clock()
        store = store if store is not None else MemoryIntakeStore()
        writer = Writer()
        app = web.Application()
        app[SETTINGS] = Settings.from_env({}, intake_public_url=public_url, intake_ttl=ttl)
        setup_intake_routes(app, store=store, writer=writer, codec=IntakeCodec(KEY, ttl, clock=clock))
        return IntakeHarness(app, store, writer, clock)

    return make


@pytest.fixture
async def browser(tmp_path: Path) -> AsyncIterator[Any]:
    """Debian's chromium, headless, JavaScript off, driven by playwright (a persistent context: one profile)."""
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        context = await pw.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
            java_script_enabled=False)
        try:
            yield context
        finally:
            await context.close()
