#!/usr/bin/env python3
"""A small userspace link emulator: delay, random loss and a rate limit at the packet level.

This kernel has no sch_netem, so the interop suite joins two network namespaces through two
TUN devices and forwards IP packets between them here. Each direction is a FIFO with a fixed
one-way delay, a serialisation rate (packets wait for the link like on a real bottleneck) and a
bounded queue (tail drop, like a router buffer); a packet may also be lost at random. QUIC and
TCP therefore see a real long, lossy link: retransmissions, congestion control, reordering of
nothing (a plain FIFO never reorders).

Usage (root):
  linkem.py --a NS:DEV --b NS:DEV --params FILE [--ready FILE]

FILE is JSON, re-read on SIGHUP so one emulator serves every scenario:
  {"delay_ms": 300, "loss": 0.01, "rate_mbit": 100, "queue_kb": 4096}
Missing keys mean: no delay, no loss, no rate limit, queue 4 MiB. The devices are created in
the named namespaces (via setns), up, with no address: the caller adds those. The emulator
runs until SIGTERM/SIGINT and prints counters on exit.
"""

import argparse
import collections
import ctypes
import fcntl
import json
import os
import random
import select
import signal
import struct
import sys
import time

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
CLONE_NEWNET = 0x40000000

libc = ctypes.CDLL("libc.so.6", use_errno=True)


def enter_netns(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({path}): {os.strerror(err)}")
    finally:
        os.close(fd)


def open_tun(dev):
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", dev.encode(), IFF_TUN | IFF_NO_PI))
    return fd


class Direction:
    """One way of the link: FIFO of (due time, packet)."""

    def __init__(self, name, out_fd):
        self.name = name
        self.out_fd = out_fd
        self.queue = collections.deque()
        self.queued_bytes = 0
        self.link_free_at = 0.0  # when the last queued packet finishes serialising
        self.stats = collections.Counter()

    def push(self, pkt, now, p):
        self.stats["in"] += 1
        if p["loss"] > 0 and random.random() < p["loss"]:
            self.stats["lost"] += 1
            return
        if self.queued_bytes + len(pkt) > p["queue_bytes"]:
            self.stats["queue_full"] += 1
            return
        start = max(now, self.link_free_at)
        if p["rate_bps"] > 0:
            self.link_free_at = start + len(pkt) * 8 / p["rate_bps"]
        else:
            self.link_free_at = start
        self.queue.append((self.link_free_at + p["delay"], pkt))
        self.queued_bytes += len(pkt)

    def flush(self, now):
        while self.queue and self.queue[0][0] <= now:
            _, pkt = self.queue.popleft()
            self.queued_bytes -= len(pkt)
            try:
                os.write(self.out_fd, pkt)
                self.stats["out"] += 1
            except BlockingIOError:
                self.stats["write_full"] += 1
            except OSError:
                self.stats["write_err"] += 1

    def next_due(self):
        return self.queue[0][0] if self.queue else None


def load_params(path):
    try:
        with open(path) as f:
            raw = json.load(f)
    except (OSError, ValueError) as e:
        print(f"linkem: cannot read {path}: {e}; keeping the old parameters", file=sys.stderr)
        return None
    return {
        "delay": float(raw.get("delay_ms", 0)) / 1000.0,
        "loss": float(raw.get("loss", 0)),
        "rate_bps": float(raw.get("rate_mbit", 0)) * 1e6,
        "queue_bytes": int(float(raw.get("queue_kb", 4096)) * 1024),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--a", required=True, help="NS:DEV of one end")
    ap.add_argument("--b", required=True, help="NS:DEV of the other end")
    ap.add_argument("--params", required=True)
    ap.add_argument("--ready", help="file to create once both devices exist")
    args = ap.parse_args()

    home = f"/proc/self/fd/{os.open('/proc/self/ns/net', os.O_RDONLY)}"
    fds = []
    for end in (args.a, args.b):
        ns, dev = end.split(":", 1)
        enter_netns(f"/var/run/netns/{ns}")
        fds.append(open_tun(dev))
    enter_netns(home)
    a, b = fds
    params = load_params(args.params)
    if params is None:
        sys.exit(2)

    state = {"reload": False, "stop": False}
    signal.signal(signal.SIGHUP, lambda *_: state.update(reload=True))
    signal.signal(signal.SIGTERM, lambda *_: state.update(stop=True))
    signal.signal(signal.SIGINT, lambda *_: state.update(stop=True))

    a_to_b = Direction("a->b", b)
    b_to_a = Direction("b->a", a)
    by_fd = {a: a_to_b, b: b_to_a}
    if args.ready:
        with open(args.ready, "w") as f:
            f.write(str(os.getpid()))

    while not state["stop"]:
        if state["reload"]:
            state["reload"] = False
            new = load_params(args.params)
            if new is not None:
                params = new
                print(f"linkem: parameters now {params}", file=sys.stderr)
        now = time.monotonic()
        dues = [d for d in (a_to_b.next_due(), b_to_a.next_due()) if d is not None]
        timeout = max(0.0, min(dues) - now) if dues else 0.5
        try:
            readable, _, _ = select.select([a, b], [], [], min(timeout, 0.5))
        except InterruptedError:
            continue
        now = time.monotonic()
        for fd in readable:
            d = by_fd[fd]
            # Drain what is there (bounded, so the other direction is never starved).
            for _ in range(256):
                try:
                    pkt = os.read(fd, 65536)
                except BlockingIOError:
                    break
                d.push(pkt, now, params)
        a_to_b.flush(now)
        b_to_a.flush(now)

    for d in (a_to_b, b_to_a):
        print(f"linkem: {d.name} {dict(d.stats)}", file=sys.stderr)


if __name__ == "__main__":
    main()
