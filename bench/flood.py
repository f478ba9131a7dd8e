"""A flooding agent that keeps to its rate limit: ``conc`` loops POST the same body as fast as they are answered,
and after a 429 each loop waits exactly its ``Retry-After``. (wrk cannot honour Retry-After; bench/run.py uses
this for scenario (v)'s "flood at its limit" and wrk for the flood that ignores every 429.)

Usage: ``python -m bench.flood URL API_KEY BODY_FILE CONCURRENCY SECONDS``; prints one JSON line
``{"requests", "served", "refused", "seconds"}``.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

import aiohttp


async def flood(url: str, key: str, body: bytes, conc: int, seconds: float) -> dict[str, float]:
    counts = {"requests": 0, "served": 0, "refused": 0}
    deadline = time.monotonic() + seconds
    headers = {"X-API-Key": key, "Content-Type": "application/json"}

    async def loop(session: aiohttp.ClientSession) -> None:
        while time.monotonic() < deadline:
            async with session.post(url, data=body, headers=headers) as resp:
                await resp.read()
                counts["requests"] += 1
                if resp.status == 429:
                    counts["refused"] += 1
                    wait = float(resp.headers.get("Retry-After", "1"))
                    await asyncio.sleep(min(wait, max(0.0, deadline - time.monotonic())))
                elif resp.status < 300:
                    counts["served"] += 1

    started = time.monotonic()
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        await asyncio.gather(*(loop(session) for _ in range(conc)))
    return {**counts, "seconds": round(time.monotonic() - started, 2)}


def main(argv: list[str]) -> int:
    url, key, body_file, conc, seconds = argv
    result = asyncio.run(flood(url, key, Path(body_file).read_bytes(), int(conc), float(seconds)))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
