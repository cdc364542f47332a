"""The baseline Python client: a plain load-test script, written the way such scripts usually are.

aiohttp, an ``asyncio.Semaphore`` for concurrency, streamed ``/v1/completions``, the time of the
first and last content chunk per request taken with ``time.perf_counter`` as each SSE line is
read. It is kept simple on purpose (one session, one task per request, ``json.loads`` per
chunk): it is what a team writes before reaching for a tool.

Writes one JSON object with per-request ``ttft_ms``, ``itl_ms`` (mean gap between content
chunks), ``tokens`` and ``error``.

    python aiohttp_client.py --url http://127.0.0.1:8000 --model m --concurrency 64 \
        --num-requests 256 --input-tokens 256 --output-tokens 256 --out result.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import aiohttp


async def one_request(session: aiohttp.ClientSession, url: str, body: dict, semaphore: asyncio.Semaphore) -> dict:
    async with semaphore:
        start = time.perf_counter()
        first = last = None
        chunks = 0
        error = None
        try:
            async with session.post(url, json=body) as response:
                response.raise_for_status()
                async for raw in response.content:
                    line = raw.decode().strip()
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    event = json.loads(data)
                    choices = event.get("choices") or []
                    if choices and choices[0].get("text"):
                        now = time.perf_counter()
                        if first is None:
                            first = now
                        last = now
                        chunks += 1
        except Exception as e:  # a failed request is a row, not a crash
            error = repr(e)
        end = time.perf_counter()
    return {
        "ttft_ms": (first - start) * 1e3 if first is not None else None,
        "itl_ms": (last - first) * 1e3 / (chunks - 1) if chunks > 1 else None,
        "e2e_ms": (end - start) * 1e3,
        "tokens": chunks,
        "error": error,
    }


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--url", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--concurrency", type=int, required=True)
    p.add_argument("--num-requests", type=int, required=True)
    p.add_argument("--input-tokens", type=int, default=256)
    p.add_argument("--output-tokens", type=int, default=256)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    url = args.url.rstrip("/") + "/v1/completions"
    semaphore = asyncio.Semaphore(args.concurrency)
    connector = aiohttp.TCPConnector(limit=args.concurrency)
    timeout = aiohttp.ClientTimeout(total=None)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        tasks = []
        for i in range(args.num_requests):
            prompt = f"request {i} " + " ".join(["word"] * (args.input_tokens - 2))
            body = {
                "model": args.model,
                "prompt": prompt,
                "max_tokens": args.output_tokens,
                "stream": True,
                "ignore_eos": True,
                "stream_options": {"include_usage": True},
            }
            tasks.append(one_request(session, url, body, semaphore))
        started = time.perf_counter()
        rows = await asyncio.gather(*tasks)
        wall = time.perf_counter() - started
    with open(args.out, "w") as f:
        json.dump({"client": "aiohttp", "wall_s": wall, "requests": rows}, f)


if __name__ == "__main__":
    asyncio.run(main())
