"""How to keep the lease records (issue 13): one KV document per agent changed with check-and-set (what the bridge
does, :class:`bridge.leases.LeaseBook`), or one KV document per lease. Measured against an OpenBao dev server (in
memory: the relative costs count, not the absolute times) with the bridge's own code for each access pattern.

Per design, for an agent holding N leases: recording one more lease (one at a time, and 8 at once for one agent:
the contended case), listing the agent's leases, and the ownership check of a renew or revoke. The results are
quoted in docs/dynamic.md ("Lease records").

Usage: ``python -m bench.lease_records [--leases 10,50] [--rounds 30]``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import secrets
import statistics
import time
from collections.abc import Awaitable, Callable

from bridge.leases import LeaseBook, LeaseRecord
from bridge.vault.client import VaultClient
from bridge.vault.state import BridgeState
from devtools.devvault import provision_demo, start_dev_vault


class Fixed:
    def __init__(self, token: str) -> None:
        self.token = token

    async def acquire(self, agent: str, auth_method: str) -> Fixed:
        return self

    def release(self, handle: Fixed) -> None:
        return None

    async def rejected(self, handle: Fixed) -> bool:
        return False


def record(n: int) -> LeaseRecord:
    now = time.time()
    return LeaseRecord(kind="database", role="ro", issued_at=now, expires_at=now + 3600, renewable=True,
                       lease_id=f"database/creds/mcp.alice.ro/{secrets.token_urlsafe(18)}{n}", token="accessor",
                       details={"username": f"v-token-mcp-lease-alice-ro-{secrets.token_hex(10)}"})


def per_lease_name(lease_id: str) -> str:
    return "leases-by-id/alice/" + hashlib.sha256(lease_id.encode()).hexdigest()[:32]


async def timed(runs: int, job: Callable[[], Awaitable[object]]) -> float:
    """The median of ``runs`` runs of ``job``, in milliseconds."""
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        await job()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


async def measure(addr: str, token: str, leases: int, rounds: int) -> dict[str, dict[str, float]]:
    async with VaultClient(addr) as vault:
        state = BridgeState(vault, Fixed(token), mount="secret", prefix="bench" + secrets.token_hex(4))
        book = LeaseBook(state, limit=10_000)
        ids = []
        for i in range(leases):  # the agent holds N leases already, in both designs
            r = record(i)
            ids.append(r.lease_id or "")
            await book.add("alice", r)
            await state.write(per_lease_name(r.lease_id or ""), r.to_data())
        one = {
            "add one": await timed(rounds, lambda: book.add("alice", record(0))),
            "add 8 at once (per call)": await timed(max(3, rounds // 5), lambda: asyncio.gather(
                *(book.add("alice", record(i)) for i in range(8)))) / 8,
            "list": await timed(rounds, lambda: book.read("alice")),
            "ownership check": await timed(rounds, lambda: book.find("alice", ids[0])),
        }

        async def add_per_lease() -> None:
            r = record(0)
            await state.write(per_lease_name(r.lease_id or ""), r.to_data())

        async def add_8_per_lease() -> None:
            await asyncio.gather(*(add_per_lease() for _ in range(8)))

        async def list_per_lease() -> None:
            names = await state.names("leases-by-id/alice")
            await asyncio.gather(*(state.read(f"leases-by-id/alice/{n}") for n in names))

        per = {
            "add one": await timed(rounds, add_per_lease),
            "add 8 at once (per call)": await timed(max(3, rounds // 5), add_8_per_lease) / 8,
            "list": await timed(max(3, rounds // 5), list_per_lease),
            "ownership check": await timed(rounds, lambda: state.read(per_lease_name(ids[0]))),
        }
        return {"one document per agent (CAS)": one, "one document per lease": per}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leases", default="10,50")
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    vault = start_dev_vault()
    try:
        asyncio.run(provision_demo(vault.addr, vault.root_token, ["alice"]))
        for n in (int(x) for x in args.leases.split(",")):
            results = asyncio.run(measure(vault.addr, vault.root_token, n, args.rounds))
            print(f"\nan agent holding {n} leases (median ms)")
            print(f"{'':32}" + "".join(f"{k:>28}" for k in results))
            for metric in next(iter(results.values())):
                print(f"{metric:32}" + "".join(f"{results[d][metric]:>28.2f}" for d in results))
    finally:
        vault.stop()


if __name__ == "__main__":
    main()
