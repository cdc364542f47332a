"""optbench's side of the load-generator benchmark: ``optbench.load_test`` with the same
settings as the peers, writing the same per-request JSON as ``aiohttp_client.py``.

    python optbench_client.py --url http://127.0.0.1:8000 --model m --concurrency 64 \
        --num-requests 256 --input-tokens 256 --output-tokens 256 --tokenizer tok.json --out r.json [--no-preconnect]
"""

from __future__ import annotations

import argparse
import json

import optbench


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--url", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--concurrency", type=int, required=True)
    p.add_argument("--num-requests", type=int, required=True)
    p.add_argument("--input-tokens", type=int, default=256)
    p.add_argument("--output-tokens", type=int, default=256)
    p.add_argument("--tokenizer", default=None)
    p.add_argument("--no-preconnect", action="store_true", help="start cold: open connections inside the run")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    result = optbench.load_test(
        args.url,
        args.model,
        num_requests=args.num_requests,
        concurrency=args.concurrency,
        input_tokens=args.input_tokens,
        output_tokens=args.output_tokens,
        ignore_eos=True,
        tokenizer=args.tokenizer,
        progress=False,
        preconnect=not args.no_preconnect,
    )
    df = result.requests
    rows = []
    for r in df.itertuples():
        chunks = int(r.num_chunks)
        first, last = r.first_token_ns, r.last_token_ns
        n = int(r.output_tokens) if r.output_tokens == r.output_tokens else 0  # NaN-safe
        rows.append(
            {
                "ttft_ms": None if r.ttft_ms != r.ttft_ms else float(r.ttft_ms),
                "itl_ms": (last - first) / 1e6 / (n - 1) if n > 1 and last == last and first == first else None,
                "e2e_ms": None if r.e2e_ms != r.e2e_ms else float(r.e2e_ms),
                "tokens": n,
                "chunks": chunks,
                # Response headers: the truth server writes them the moment it has read the request.
                "headers_ms": (r.first_byte_ns - r.sent_ns) / 1e6 if r.first_byte_ns == r.first_byte_ns else None,
                "error": None if r.success else f"{r.error_kind}: {r.error_message}",
            }
        )
    with open(args.out, "w") as f:
        json.dump(
            {
                "client": "optbench",
                "wall_s": float(result.summary["duration_s"]),
                "preconnect": result.summary["preconnect"],
                "requests": rows,
            },
            f,
        )


if __name__ == "__main__":
    main()
