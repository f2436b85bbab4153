#!/usr/bin/env python3
"""Visitor side of the satellite bench: one measurement against one base URL, as JSON.

  client.py BASE_URL single SECONDS      bytes of /big.bin read in SECONDS -> Mbit/s
  client.py BASE_URL fetch N SIZE_MIB    N parallel GETs of /f2m.bin -> all-done time, first bytes
  client.py BASE_URL mjpeg N SECONDS     N parallel /mjpeg viewers -> frames, stalls, first frame

BASE_URL is http://host:port or https://host:port (certificates are not checked here: the
bench measures time, the tests check trust). --resolve HOST:IP maps a name to an address
(the relay routes by SNI/Host). A stall is a gap of more than 1 s between two frames of one
viewer (the recorder sends 10 frames/s).
"""

import http.client
import json
import socket
import ssl
import statistics
import sys
import threading
import time
import urllib.parse

STALL = 1.0


def connect(base, resolve):
    u = urllib.parse.urlsplit(base)
    host, port = u.hostname, u.port or (443 if u.scheme == "https" else 80)
    addr = resolve.get(host, host)
    if u.scheme == "https":
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.set_alpn_protocols(["http/1.1"])
        raw = socket.create_connection((addr, port), timeout=60)
        sock = ctx.wrap_socket(raw, server_hostname=host)
        conn = http.client.HTTPConnection(host, port, timeout=60)
        conn.sock = sock
    else:
        conn = http.client.HTTPConnection(addr, port, timeout=60)
    conn.host_header = f"{host}:{port}"
    return conn


def get(base, resolve, path):
    conn = connect(base, resolve)
    conn.putrequest("GET", path, skip_host=True)
    conn.putheader("Host", conn.host_header)
    conn.endheaders()
    return conn, conn.getresponse()


def single(base, resolve, seconds):
    t0 = time.monotonic()
    _, r = get(base, resolve, "/big.bin")
    first = time.monotonic() - t0
    n = 0
    t1 = time.monotonic()
    while time.monotonic() - t1 < seconds:
        d = r.read1(1 << 16)
        if not d:
            break
        n += len(d)
    dt = time.monotonic() - t1
    return {"mbit_s": round(n * 8 / dt / 1e6, 2), "bytes": n, "first_byte_s": round(first, 3)}


def fetch(base, resolve, n, _size):
    out = [None] * n

    def one(i):
        t0 = time.monotonic()
        try:
            _, r = get(base, resolve, "/f2m.bin")
            first = None
            total = 0
            while True:
                d = r.read1(1 << 16)
                if first is None:
                    first = time.monotonic() - t0
                if not d:
                    break
                total += len(d)
            out[i] = {"first": first, "done": time.monotonic() - t0, "bytes": total}
        except OSError as e:
            out[i] = {"error": str(e)}

    t0 = time.monotonic()
    ts = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    ok = [o for o in out if o and "done" in o]
    return {
        "all_done_s": round(time.monotonic() - t0, 2),
        "first_byte_median_s": round(statistics.median(o["first"] for o in ok), 3) if ok else None,
        "bytes": [o.get("bytes") for o in out],
        "errors": [o["error"] for o in out if o and "error" in o],
    }


def mjpeg(base, resolve, n, seconds):
    out = [None] * n
    marker = b"Content-Type: image/jpeg"

    def one(i):
        t0 = time.monotonic()
        frames, stalls, first, last = 0, 0, None, None
        try:
            _, r = get(base, resolve, "/mjpeg")
            buf = b""
            while time.monotonic() - t0 < seconds:
                d = r.read1(1 << 16)
                if not d:
                    break
                buf += d
                k = buf.count(marker)
                if k:
                    now = time.monotonic()
                    if first is None:
                        first = now - t0
                    if last is not None and now - last > STALL:
                        stalls += 1
                    last = now
                    frames += k
                    buf = buf[buf.rfind(marker) + len(marker):]
            out[i] = {"frames": frames, "stalls": stalls, "first": first}
        except OSError as e:
            out[i] = {"error": str(e), "frames": frames, "stalls": stalls, "first": first}

    ts = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    firsts = [o["first"] for o in out if o["first"] is not None]
    return {
        "frames": sum(o["frames"] for o in out),
        "stalls": sum(o["stalls"] for o in out),
        "first_frame_median_s": round(statistics.median(firsts), 3) if firsts else None,
        "errors": [o["error"] for o in out if "error" in o],
    }


def main():
    args = sys.argv[1:]
    resolve = {}
    while args and args[0] == "--resolve":
        host, ip = args[1].split(":", 1)
        resolve[host] = ip
        args = args[2:]
    base, what = args[0], args[1]
    if what == "single":
        res = single(base, resolve, float(args[2]))
    elif what == "fetch":
        res = fetch(base, resolve, int(args[2]), float(args[3]))
    elif what == "mjpeg":
        res = mjpeg(base, resolve, int(args[2]), float(args[3]))
    else:
        sys.exit(f"unknown measurement {what}")
    print(json.dumps(res))


if __name__ == "__main__":
    main()
