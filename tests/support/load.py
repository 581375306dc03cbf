"""A steady, bounded load on an endpoint: `python -m tests.support.load URL MODEL`.

Threads send one-row V2 inference requests over keep-alive connections until SIGTERM, the
time limit or the request limit; then one JSON line: requests sent and failed, failures by
kind, when the failed requests were sent (Unix time, the first 100), and how many answers each
model version gave.
"""

from __future__ import annotations

import argparse
import collections
import json
import signal
import threading
import time

import httpx


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("model")
    parser.add_argument("--seconds", type=float, default=120)
    parser.add_argument("--max-requests", type=int, default=100_000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--key")
    parser.add_argument(
        "--rate", type=float, default=0, help="requests/s in all (0: as fast as possible)"
    )
    args = parser.parse_args()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    lock = threading.Lock()
    counts: collections.Counter[str] = collections.Counter()
    versions: collections.Counter[str] = collections.Counter()
    failed_at: list[float] = []
    body = {
        "inputs": [{"name": "pixels", "shape": [1, 64], "datatype": "FP32", "data": [0.5] * 64}]
    }
    headers = {"Authorization": f"Bearer {args.key}"} if args.key else {}
    deadline = time.monotonic() + args.seconds
    pause = args.threads / args.rate if args.rate else 0.0

    def worker() -> None:
        with httpx.Client(base_url=args.url, headers=headers, timeout=10) as client:
            while not stop.is_set() and time.monotonic() < deadline:
                if pause:
                    time.sleep(pause)
                with lock:
                    if counts["sent"] >= args.max_requests:
                        return
                    counts["sent"] += 1
                sent = time.time()
                try:
                    answer = client.post(f"/v2/models/{args.model}/infer", json=body)
                    outcome = "ok" if answer.status_code == 200 else f"http {answer.status_code}"
                    version = answer.json().get("model_version") if outcome == "ok" else None
                except (httpx.HTTPError, ValueError) as e:
                    outcome, version = type(e).__name__, None
                with lock:
                    counts[outcome] += 1
                    if version:
                        versions[version] += 1
                    if outcome != "ok" and len(failed_at) < 100:
                        failed_at.append(round(sent, 3))

    threads = [threading.Thread(target=worker) for _ in range(args.threads)]
    for t in threads:
        t.start()
    print("started", flush=True)
    for t in threads:
        t.join()
    failures = {k: v for k, v in counts.items() if k not in ("sent", "ok")}
    print(
        json.dumps(
            {
                "sent": counts["sent"],
                "ok": counts["ok"],
                "failed": sum(failures.values()),
                "failures": failures,
                "failed_at": sorted(failed_at),
                "versions": dict(versions),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
