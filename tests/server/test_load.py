"""Bounded load: many concurrent clients on loopback finish with 0 errors and correct vectors."""

from __future__ import annotations

import asyncio
import re
import time

import httpx
import numpy as np
import pytest

from .conftest import MODEL_NAME


async def _client(url: str, texts: list[str], ref: np.ndarray, offset: int, deadline: float, max_requests: int,
                  stats: dict) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=60) as c:
        for n in range(max_requests):
            if time.monotonic() > deadline:
                return
            i = (offset + n) % len(texts)
            try:
                r = await c.post("/v1/embeddings", json={"input": texts[i], "model": MODEL_NAME})
                if r.status_code != 200:
                    stats["errors"].append(f"{r.status_code}: {r.text[:200]}")
                    continue
                got = np.array(r.json()["data"][0]["embedding"], dtype=np.float32)
                if not np.allclose(got, ref[i], atol=1e-5):
                    stats["errors"].append(f"wrong vector for text {i}")
                stats["ok"] += 1
            except httpx.HTTPError as e:
                stats["errors"].append(repr(e))


def _run_load(url: str, texts: list[str], ref: np.ndarray, clients: int, seconds: float, max_requests: int) -> dict:
    stats: dict = {"ok": 0, "errors": []}

    async def main() -> None:
        deadline = time.monotonic() + seconds
        await asyncio.gather(*(_client(url, texts, ref, k * 7, deadline, max_requests, stats)
                               for k in range(clients)))

    asyncio.run(main())
    return stats


def _max_batch_requests(metrics: str) -> float:
    """Requests of the biggest merged batch, read off the histogram (the smallest bucket holding all)."""
    count = float(re.search(r"^m3embed_batch_requests_count (\S+)$", metrics, re.MULTILINE).group(1))
    for le, value in re.findall(r'^m3embed_batch_requests_bucket\{le="([^"]+)"\} (\S+)$', metrics, re.MULTILINE):
        if float(value) == count:
            return float(le)
    return float("inf")


@pytest.mark.parametrize("clients, seconds, max_requests", [
    (32, 3.0, 15),
    pytest.param(32, 30.0, 10_000, marks=pytest.mark.slow),
])
def test_concurrent_clients_no_errors(live_server, m3_model, texts, clients, seconds, max_requests):
    server = live_server()
    ref = m3_model.encode(texts).dense
    stats = _run_load(server.url, texts, ref, clients, seconds, max_requests)
    assert stats["errors"] == [], stats["errors"][:5]
    assert stats["ok"] >= clients  # every client got answers
    metrics = httpx.get(f"{server.url}/metrics").text
    assert _max_batch_requests(metrics) > 1, "concurrent requests were never merged"
