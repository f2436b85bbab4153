#!/usr/bin/env bash
# Satellite bench (root): the network of tests/netns (visitor, vps, nat, home) with the home
# uplink at 300 ms each way, 1 % loss each way, 100 Mbit/s, through the userspace link
# emulator. Same run, same link, for each system:
#   direct       a port forward on the home router, no tunnel (plain HTTP)
#   rathole      rathole's TCP transport (plain), when installed (RATHOLE=/path or on PATH)
#   periscope    QUIC with CUBIC and with BBR, and the TLS+TCP fallback (transport = tcp)
# measures: single-stream Mbit/s over 20 s, 8 parallel 2 MiB fetches (all done, median first
# byte), 8 MJPEG viewers for 15 s (frames, stalls > 1 s, median first frame), and the
# seconds from relay kill -9 to serving again. REPS runs each (default 3); medians printed as
# a markdown table. TCP uses BBR in every namespace.
#   bash benches/satellite.sh            (builds the release binary if needed)
#   ONLY='bbr|fallback' REPS=1 bash benches/satellite.sh   (the direct row and the systems
#                                        whose names match the regex: for quick checks)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=tests/netns/lib.sh
source tests/netns/lib.sh
ns_need_tools
REPS=${REPS:-3}
BIN=${BIN:-$PWD/target/release/periscope}
[ -x "$BIN" ] || cargo build --release --locked --bin periscope
RATHOLE=${RATHOLE:-$(command -v rathole || { [ -x /tmp/rathole-inst/bin/rathole ] && echo /tmp/rathole-inst/bin/rathole; } || true)}
WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  ns_down
  rm -rf "$WORK"
}
trap cleanup EXIT
stop() { kill "$@" 2>/dev/null || true; wait "$@" 2>/dev/null || true; }
want() { [ -z "${ONLY:-}" ] || [[ "$1" =~ $ONLY ]]; }

ns_up
for ns in "${NS_ALL[@]}"; do in_ns "$ns" sysctl -qw net.ipv4.tcp_congestion_control=bbr; done
# The port forward for the direct row: visitor → vps → nat → home:8000.
in_ns "$NS_VISITOR" ip route add default via "$VPS_PUBLIC"
in_ns "$NS_VPS" sysctl -qw net.ipv4.ip_forward=1
in_ns "$NS_NAT" ip route add 10.99.1.0/24 via "$VPS_UPLINK"
in_ns "$NS_NAT" iptables -t nat -A PREROUTING -i em-nat -p tcp --dport 8000 -j DNAT --to-destination 10.99.3.2:8000
in_ns "$NS_NAT" iptables -I FORWARD -i em-nat -p tcp -d 10.99.3.2 --dport 8000 -j ACCEPT

mkdir -p "$WORK/www"
head -c $((256 << 20)) /dev/urandom >"$WORK/www/big.bin"
head -c $((2 << 20)) /dev/urandom >"$WORK/www/f2m.bin"
echo "hello from home" >"$WORK/www/hello.txt"
ip netns exec "$NS_HOME" python3 tests/interop/recorder.py 8000 "$WORK/www" 0.0.0.0 >"$WORK/web.log" 2>&1 &
PIDS+=($!)

ns_start_relay "${RELAY_EXTRA:-}" || { echo "relay printed no fingerprint" >&2; exit 1; }
"$BIN" token issue --config "$WORK/relay.toml" --agent home --host cam.relay.test --ttl 1h >"$WORK/agent.token" 2>/dev/null

# agent_conf CONGESTION TRANSPORT
agent_conf() {
  cat >"$WORK/agent.toml" <<TOML
relay = "$VPS_UPLINK:4433"
relay_https = "$VPS_UPLINK:8443"
token_file = "$WORK/agent.token"
fingerprint = "$FP"
transport = "$2"
[quic]
congestion = "$1"
[[tunnel]]
name = "cam"
type = "http"
target = "127.0.0.1:8000"
TOML
}
PSC_URL=(--resolve "cam.relay.test:$VPS_PUBLIC" "https://cam.relay.test:8443")
wait_url() { # wait_url SECONDS ARGS... : until /hello.txt answers; prints seconds
  local secs=$1; shift
  in_ns "$NS_VISITOR" python3 - "$secs" "$@" <<'PY'
import subprocess, sys, time
secs, args = float(sys.argv[1]), sys.argv[2:]
t0 = time.time()
while time.time() - t0 < secs:
    try:
        out = subprocess.run([sys.executable, "-c", """
import sys; sys.path.insert(0, 'benches/satellite'); import client
args = sys.argv[1:]; res = {}
while args[0] == '--resolve': h, ip = args[1].split(':', 1); res[h] = ip; args = args[2:]
_, r = client.get(args[0], res, '/hello.txt'); sys.exit(0 if b'hello from home' in r.read() else 1)
""", *args], timeout=5).returncode
        if out == 0:
            print("%.2f" % (time.time() - t0)); sys.exit(0)
    except subprocess.TimeoutExpired:
        pass
    time.sleep(0.1)
sys.exit(1)
PY
}
measure() { # measure NAME URL-ARGS...
  local name=$1; shift
  for r in $(seq "$REPS"); do
    for m in "single 20" "fetch 8 2" "mjpeg 8 15"; do
      # shellcheck disable=SC2086
      res=$(in_ns "$NS_VISITOR" timeout 120 python3 benches/satellite/client.py "$@" $m) || res='{"error": "timeout"}'
      echo "{\"system\": \"$name\", \"rep\": $r, \"what\": \"${m%% *}\", \"res\": $res}" >>"$WORK/results.jsonl"
      echo "satellite: $name #$r ${m%% *}: $res" >&2
    done
  done
}

ns_link 300 0.01 100

# direct
wait_url 30 "http://10.99.2.2:8000" >/dev/null || { echo "direct path does not work" >&2; exit 1; }
measure "direct (port forward, no tunnel)" "http://10.99.2.2:8000"

# rathole (TCP transport, plaintext)
if [ -n "$RATHOLE" ] && want "rathole (tcp transport)"; then
  cat >"$WORK/rh-server.toml" <<TOML
[server]
bind_addr = "$VPS_UPLINK:2333"
[server.transport]
type = "tcp"
[server.services.cam]
token = "t"
bind_addr = "$VPS_PUBLIC:9000"
TOML
  cat >"$WORK/rh-client.toml" <<TOML
[client]
remote_addr = "$VPS_UPLINK:2333"
[client.transport]
type = "tcp"
[client.services.cam]
token = "t"
local_addr = "127.0.0.1:8000"
TOML
  ip netns exec "$NS_VPS" "$RATHOLE" --server "$WORK/rh-server.toml" >"$WORK/rathole-server.log" 2>&1 &
  RHS=$!; PIDS+=("$RHS")
  sleep 0.5
  ip netns exec "$NS_HOME" "$RATHOLE" --client "$WORK/rh-client.toml" >"$WORK/rathole-client.log" 2>&1 &
  RHC=$!; PIDS+=("$RHC")
  wait_url 30 "http://$VPS_PUBLIC:9000" >/dev/null || { echo "rathole path does not work" >&2; exit 1; }
  measure "rathole (tcp transport)" "http://$VPS_PUBLIC:9000"
  stop "$RHC" "$RHS"
else
  echo "satellite: rathole not found (RATHOLE=/path/to/rathole): no rathole row" >&2
fi

# periscope
RESTART=()
run_periscope() { # run_periscope NAME CONGESTION TRANSPORT
  want "$1" || return 0
  agent_conf "$2" "$3"
  ip netns exec "$NS_HOME" "$BIN" agent --config "$WORK/agent.toml" 2>>"$WORK/agent.log" &
  AGENT=$!; PIDS+=("$AGENT")
  wait_url 60 "${PSC_URL[@]}" >/dev/null || { echo "periscope ($1) does not serve" >&2; exit 1; }
  measure "$1" "${PSC_URL[@]}"
  # Relay killed with -9 and started again: seconds until a visitor is served.
  for _ in $(seq "$REPS"); do
    kill -9 "$RELAY"; wait "$RELAY" 2>/dev/null || true
    t0=$(date +%s.%N)
    ns_restart_relay
    wait_url 60 "${PSC_URL[@]}" >/dev/null || { echo "periscope ($1) did not come back" >&2; exit 1; }
    back=$(python3 -c "print('%.2f' % ($(date +%s.%N) - $t0))")
    echo "{\"system\": \"$1\", \"what\": \"restart\", \"res\": {\"back_s\": $back}}" >>"$WORK/results.jsonl"
    echo "satellite: $1 back after relay kill -9: ${back}s" >&2
    sleep 3
  done
  stop "$AGENT"
}
run_periscope "periscope QUIC (cubic)" cubic quic
run_periscope "periscope QUIC (bbr)" bbr quic
run_periscope "periscope TLS+TCP fallback (kernel BBR)" bbr tcp

python3 - "$WORK/results.jsonl" <<'PY'
import json, statistics, sys
rows = {}
for line in open(sys.argv[1]):
    r = json.loads(line)
    rows.setdefault(r["system"], {}).setdefault(r["what"], []).append(r["res"])
def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None
def f(x, fmt="{:.2f}"):
    return "–" if x is None else fmt.format(x)
base = None
print("| system | single stream Mbit/s (× direct) | first byte s | 8 × 2 MiB all done s | 8 × 2 MiB first byte s | 8 MJPEG frames in 15 s | stalls > 1 s | first frame s | back after relay kill -9 s |")
print("|---|---|---|---|---|---|---|---|---|")
for name, m in rows.items():
    single = med([x.get("mbit_s") for x in m.get("single", [])])
    if base is None:
        base = single
    ratio = f" ({single / base:.2f}×)" if single and base else ""
    print("| {} | {}{} | {} | {} | {} | {} | {} | {} | {} |".format(
        name, f(single), ratio,
        f(med([x.get("first_byte_s") for x in m.get("single", [])])),
        f(med([x.get("all_done_s") for x in m.get("fetch", [])])),
        f(med([x.get("first_byte_median_s") for x in m.get("fetch", [])])),
        f(med([x.get("frames") for x in m.get("mjpeg", [])]), "{:.0f}"),
        f(med([x.get("stalls") for x in m.get("mjpeg", [])]), "{:.0f}"),
        f(med([x.get("first_frame_median_s") for x in m.get("mjpeg", [])])),
        f(med([x.get("back_s") for x in m.get("restart", [])])),
    ))
PY
