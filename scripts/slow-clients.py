#!/usr/bin/env python3
"""Slow clients against a running `biomatch serve` (see scripts/slow-clients.sh).

N slow-body clients (POST /v1/verify announcing a large body, then one byte every
--body-interval s) and N slow-header clients (a request head one byte every --header-interval s)
connect at once, and each reconnects as soon as the server closes it, for as long as the good
client runs; meanwhile one well-behaved client runs verify requests on a keep-alive connection. Prints one JSON object: the good client's p50/p99 latency (ms) and status counts,
and for each kind of slow client how many connections the server closed, when (seconds after
connecting) and with which status.
"""
import argparse
import asyncio
import json
import random
import statistics
import time


def pct(xs, p):
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100.0 * (len(xs) - 1))))]


async def read_response(reader):
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for line in lines[1:]:
        k, _, v = line.partition(":")
        if k.strip().lower() == "content-length":
            length = int(v.strip())
    body = await reader.readexactly(length) if length else b""
    return status, body


async def slow_client(host, port, kind, interval, results):
    t0 = time.monotonic()
    status = None
    try:
        reader, writer = await asyncio.open_connection(host, port)
    except OSError as e:
        results.append({"kind": kind, "closed_after_s": 0.0, "status": "connect-error:" + str(e)})
        return
    if kind == "body":
        head = (
            "POST /v1/verify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            "Content-Length: 100000\r\n\r\n"
        ).encode()
        writer.write(head)
        payload = b"{"
    else:
        payload = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 10000

    async def dribble():
        for i in range(len(payload) if kind == "header" else 100000):
            b = payload[i : i + 1] if i < len(payload) else b" "
            writer.write(b)
            await writer.drain()
            await asyncio.sleep(interval)

    sender = asyncio.ensure_future(dribble())
    try:
        data = await reader.read(65536)
        if data.startswith(b"HTTP/1.1 "):
            status = int(data.split()[1])
            while await reader.read(65536):
                pass
    except (ConnectionError, OSError):
        pass
    closed = time.monotonic() - t0
    sender.cancel()
    try:
        await sender
    except (asyncio.CancelledError, ConnectionError, OSError):
        pass
    writer.close()
    results.append({"kind": kind, "closed_after_s": closed, "status": status})


async def slow_loop(host, port, kind, interval, results, stop):
    while not stop.is_set():
        await slow_client(host, port, kind, interval, results)


async def good_client(host, port, seconds, body, out):
    latencies, statuses, errors = [], {}, 0
    reader = writer = None
    end = time.monotonic() + seconds
    req = (
        "POST /v1/verify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        "Content-Length: %d\r\n\r\n" % len(body)
    ).encode() + body
    while time.monotonic() < end:
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection(host, port)
            t = time.monotonic()
            writer.write(req)
            await writer.drain()
            status, _ = await read_response(reader)
            latencies.append((time.monotonic() - t) * 1000.0)
            statuses[str(status)] = statuses.get(str(status), 0) + 1
        except (ConnectionError, OSError, asyncio.IncompleteReadError) as e:
            errors += 1
            statuses["error:" + type(e).__name__] = statuses.get("error:" + type(e).__name__, 0) + 1
            writer = None
        await asyncio.sleep(0.01)
    out.update(
        requests=len(latencies),
        p50_ms=round(pct(latencies, 50), 2),
        p99_ms=round(pct(latencies, 99), 2),
        max_ms=round(max(latencies), 2),
        statuses=statuses,
    )


def summary(rs):
    times = [r["closed_after_s"] for r in rs]
    st = {}
    for r in rs:
        st[str(r["status"])] = st.get(str(r["status"]), 0) + 1
    return {
        "connections": len(rs),
        "closed_by_server": len(rs),
        "closed_after_s": {
            "min": round(min(times), 2),
            "median": round(statistics.median(times), 2),
            "max": round(max(times), 2),
        },
        "status": st,
    }


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--slow-body", type=int, default=100)
    ap.add_argument("--slow-header", type=int, default=100)
    ap.add_argument("--body-interval", type=float, default=0.5)
    ap.add_argument("--header-interval", type=float, default=1.0)
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--subject", default="SLOW-0001")
    a = ap.parse_args()
    rnd = random.Random(1)
    v = [rnd.gauss(0, 1) for _ in range(128)]
    n = sum(x * x for x in v) ** 0.5
    vec = [x / n for x in v]
    face = {"template": {"model": "synthetic-face@1", "vector": vec}}
    # Enroll the subject the good client verifies against.
    r, w = await asyncio.open_connection(a.host, a.port)
    body = json.dumps({"subject_id": a.subject, "face": face}).encode()
    w.write(
        (
            "POST /v1/subjects HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            "Content-Length: %d\r\n\r\n" % len(body)
        ).encode()
        + body
    )
    await w.drain()
    st, _ = await read_response(r)
    assert st in (200, 201, 409), st
    w.close()
    verify = json.dumps({"subject_id": a.subject, "face": face}).encode()

    results, good, stop = [], {}, asyncio.Event()
    slow = [
        slow_loop(a.host, a.port, "body", a.body_interval, results, stop)
        for _ in range(a.slow_body)
    ] + [
        slow_loop(a.host, a.port, "header", a.header_interval, results, stop)
        for _ in range(a.slow_header)
    ]
    tasks = [asyncio.ensure_future(s) for s in slow]
    await asyncio.sleep(0.5)  # the slow clients are connected and dribbling
    await good_client(a.host, a.port, a.seconds, verify, good)
    stop.set()
    # The connections open now finish their last round (closed by the server, at the latest
    # after its header timeout).
    done, pending = await asyncio.wait(tasks, timeout=30)
    for t in pending:
        t.cancel()
    out = {
        "good_client": good,
        "slow_body": summary([r for r in results if r["kind"] == "body"]),
        "slow_header": summary([r for r in results if r["kind"] == "header"]),
        # Slow connections the server had not closed 30 s after the good client stopped.
        "slow_still_open_30s_after": len(pending),
    }
    print(json.dumps(out))


asyncio.run(main())
