#!/usr/bin/env bash
# Every network (root): the relay in namespace `vps`, the agent and the recorder in `home`
# behind a NAT, visitors in `visitor`, the home uplink through a userspace link emulator.
# Scenarios: CGNAT (no inbound connections), NAT rebinding during a 256 MiB transfer, UDP
# blocked (TCP fallback and back to QUIC), a satellite link (300 ms each way, 1 % loss), and
# the relay killed with -9 during traffic. Run by tests/interop.sh; alone: `bash tests/netns/run.sh`.
# Every wait is bounded; the namespaces and processes are removed on exit, failed or not.
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=tests/netns/lib.sh
source tests/netns/lib.sh
ns_need_tools

BIN=${BIN:-$PWD/target/release/periscope}
[ -x "$BIN" ] || cargo build --release --locked --bin periscope
WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  ns_down
  rm -rf "$WORK"
}
trap cleanup EXIT
fail() { echo "netns: FAIL: $*" >&2; for f in "$WORK"/*.log; do echo "--- $f"; tail -n 25 "$f"; done >&2; exit 1; }
pass=0
ok() { echo "netns: ok: $*"; pass=$((pass + 1)); }

ns_up || fail "could not build the namespaces"

# The recorder at home: a web server with a 256 MiB file and MJPEG, and a TCP echo.
mkdir -p "$WORK/www" && echo "hello from home" >"$WORK/www/hello.txt"
head -c $((256 << 20)) /dev/urandom >"$WORK/www/big.bin"
BIG_SUM=$(sha256sum "$WORK/www/big.bin" | cut -d' ' -f1)
ip netns exec "$NS_HOME" python3 tests/interop/recorder.py 8000 "$WORK/www" >"$WORK/web.log" 2>&1 &
PIDS+=($!)
ip netns exec "$NS_HOME" python3 tests/interop/echo.py 7001 >"$WORK/echo.log" 2>&1 &
PIDS+=($!)
ip netns exec "$NS_HOME" python3 tests/interop/udp_echo.py 7003 >"$WORK/udp-echo.log" 2>&1 &
PIDS+=($!)

ns_start_relay '[[port_access]]
ports = "7000-7002"
mode = "open"' || fail "relay printed no fingerprint"
TOKEN=$("$BIN" token issue --config "$WORK/relay.toml" --agent home --tcp-port 7000 --udp-port 7002 --host cam.relay.test --ttl 1h 2>/dev/null)
ADMIN_TOKEN=$("$BIN" admin-token --config "$WORK/relay.toml")
cat "$WORK/data/dev-ca.crt" "$WORK/data/self-signed.crt" >"$WORK/trust.pem"

# start_agent [CONGESTION]: (re)start the agent at home (congestion control default bbr).
AGENT=
start_agent() {
  if [ -n "$AGENT" ]; then kill "$AGENT" 2>/dev/null || true; wait "$AGENT" 2>/dev/null || true; fi
  echo "$TOKEN" >"$WORK/agent.token"
  cat >"$WORK/agent.toml" <<TOML
relay = "$VPS_UPLINK:4433"
relay_https = "$VPS_UPLINK:8443"
quic_probe_interval = "2s"
token_file = "$WORK/agent.token"
fingerprint = "$FP"
[quic]
congestion = "${1:-bbr}"
[[tunnel]]
name = "echo"
type = "tcp"
target = "127.0.0.1:7001"
remote_port = 7000
[[tunnel]]
name = "cam"
type = "http"
target = "127.0.0.1:8000"
[[tunnel]]
name = "rtp"
type = "udp"
target = "127.0.0.1:7003"
remote_port = 7002
TOML
  ip netns exec "$NS_HOME" "${AGENT_WRAP[@]}" "$BIN" agent --config "$WORK/agent.toml" 2>>"$WORK/agent.log" &
  AGENT=$!; PIDS+=("$AGENT")
}
# A command the agent runs under (e.g. an old kernel's uname); exec's, so $! is the agent.
AGENT_WRAP=(env)
CURL=(ip netns exec "$NS_VISITOR" curl -sS --cacert "$WORK/trust.pem" --resolve "cam.relay.test:8443:$VPS_PUBLIC")
URL="https://cam.relay.test:8443"
admin() { in_ns "$NS_VPS" curl -sS --max-time 5 -H "Authorization: Bearer $ADMIN_TOKEN" "http://127.0.0.1:9090$1"; }
# agents_field KEY: that field of the first agent in the admin API.
agent_field() { admin /api/agents | python3 -c "import json,sys; a=json.load(sys.stdin); print(a[0]['$1'] if a else '')"; }
# until_web SECONDS [START]: until the hello page answers through the tunnel; prints the
# seconds since START (a `date +%s.%N`), default now.
until_web() {
  local t0 t
  t0=${2:-$(date +%s.%N)}
  while :; do
    if "${CURL[@]}" --max-time 3 "$URL/hello.txt" 2>/dev/null | grep -q "hello from home"; then
      t=$(date +%s.%N); python3 -c "print('%.2f' % ($t - $t0))"; return 0
    fi
    python3 -c "import sys; sys.exit(0 if $(date +%s.%N) - $t0 < $1 else 1)" || return 1
    sleep 0.1
  done
}
# echo_roundtrip: 1 MB through the tcp tunnel from the visitor, byte-exact.
echo_roundtrip() {
  in_ns "$NS_VISITOR" python3 - "$VPS_PUBLIC" <<'PY'
import os, socket, sys, threading
s = socket.create_connection((sys.argv[1], 7000), timeout=20)
msg = os.urandom(1 << 20)
threading.Thread(target=lambda: (s.sendall(msg), s.shutdown(socket.SHUT_WR)), daemon=True).start()
got = bytearray()
while True:
    d = s.recv(65536)
    if not d: break
    got += d
sys.exit(0 if bytes(got) == msg else 1)
PY
}

# udp_roundtrip: a datagram through the udp tunnel comes back.
udp_roundtrip() {
  in_ns "$NS_VISITOR" python3 - "$VPS_PUBLIC" <<'PY'
import os, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(1)
for _ in range(10):
    msg = os.urandom(1000)
    s.sendto(msg, (sys.argv[1], 7002))
    try:
        if s.recvfrom(2048)[0] == msg: sys.exit(0)
    except OSError:
        pass
sys.exit(1)
PY
}
# ws_roundtrip: a WebSocket upgrade through the edge (101 with the right accept key), then
# bytes both ways over the upgraded connection.
ws_roundtrip() {
  in_ns "$NS_VISITOR" python3 - "$VPS_PUBLIC" <<'PY'
import base64, hashlib, os, socket, ssl, sys
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
ctx.set_alpn_protocols(["http/1.1"])
s = ctx.wrap_socket(socket.create_connection((sys.argv[1], 8443), timeout=10), server_hostname="cam.relay.test")
key = base64.b64encode(os.urandom(16)).decode()
s.sendall(("GET /ws HTTP/1.1\r\nHost: cam.relay.test:8443\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: %s\r\n\r\n" % key).encode())
head = b""
while b"\r\n\r\n" not in head:
    d = s.recv(4096)
    if not d: sys.exit("closed before the 101")
    head += d
want = base64.b64encode(hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()).decode()
if not head.startswith(b"HTTP/1.1 101") or want.encode() not in head: sys.exit("bad upgrade: %r" % head)
s.sendall(b"hello over the websocket")
got = head.split(b"\r\n\r\n", 1)[1]
while len(got) < 24:
    d = s.recv(4096)
    if not d: break
    got += d
sys.exit(0 if got == b"hello over the websocket" else 1)
PY
}
# until_transport KIND SECONDS [START]: until the relay sees the agent on KIND; prints seconds.
until_transport() {
  local t0=${3:-$(date +%s.%N)}
  while :; do
    [ "$(agent_field transport 2>/dev/null)" = "$1" ] && { python3 -c "print('%.2f' % ($(date +%s.%N) - $t0))"; return 0; }
    python3 -c "import sys; sys.exit(0 if $(date +%s.%N) - $t0 < $2 else 1)" || return 1
    sleep 0.1
  done
}

# 1. CGNAT: home can open connections out, nothing can come in; everything still works.
start_agent
until_web 15 >/dev/null || fail "the http tunnel did not come up from behind the NAT"
echo_roundtrip || fail "tcp tunnel round trip from behind the NAT"
udp_roundtrip || fail "udp tunnel round trip from behind the NAT"
ws_roundtrip || fail "WebSocket through the edge from behind the NAT"
remote=$(agent_field remote)
case "$remote" in "$NAT_UPLINK":*) ;; *) fail "the relay sees the agent at '$remote', not at the NAT's address $NAT_UPLINK" ;; esac
if in_ns "$NS_VPS" timeout 2 bash -c "exec 3<>/dev/tcp/10.99.3.2/8000" 2>/dev/null; then
  fail "the vps reached the home network directly (the NAT lets connections in)"
fi
ok "behind NAT: http, WebSocket, tcp and udp tunnels work, the relay sees the NAT's address ($remote), nothing gets in"

# 2. NAT rebinding in the middle of a 256 MiB download: QUIC migrates, the bytes are exact.
session=$(agent_field session)
"${CURL[@]}" --max-time 180 "$URL/big.bin" 2>"$WORK/curl-big.log" | sha256sum | cut -d' ' -f1 >"$WORK/big.sum" &
DL=$!; PIDS+=("$DL")
sleep 1
ns_rebind_nat
wait "$DL" || fail "256 MiB download across a NAT rebinding: $(cat "$WORK/curl-big.log")"
[ "$(cat "$WORK/big.sum")" = "$BIG_SUM" ] || fail "256 MiB download across a NAT rebinding is not byte-exact"
new_remote=$(agent_field remote)
[ "$new_remote" != "$remote" ] || fail "the NAT did not rebind (relay still sees $remote)"
[ "$(agent_field session)" = "$session" ] || fail "the agent reconnected instead of migrating"
ok "NAT rebinding during a 256 MiB download: byte-exact, same session, relay now sees $new_remote"

# 3. UDP blocked by the home router. A new agent (transport auto) falls back to TLS over TCP
#    on the relay's https port; every kind of tunnel works; when UDP is let through again the
#    agent moves back to QUIC by itself (it re-probes every 2 s here, 5 min by default). Then
#    UDP is blocked under a connected QUIC agent: it notices (idle timeout) and falls back.
ns_block_udp
t0=$(date +%s.%N)
start_agent
t=$(until_web 20 "$t0") || fail "nothing served with UDP blocked (no TCP fallback)"
[ "$(agent_field transport)" = tcp ] || fail "with UDP blocked the relay sees the agent on $(agent_field transport)"
echo_roundtrip || fail "tcp tunnel over the TCP fallback"
udp_roundtrip || fail "udp tunnel over the TCP fallback"
ws_roundtrip || fail "WebSocket over the TCP fallback"
grep -q "UDP may be blocked" "$WORK/agent.log" || fail "the agent log does not say why it uses TCP"
ok "UDP blocked: serving over the TLS+TCP fallback ${t}s after the agent started; http, WebSocket, tcp and udp tunnels work"
ns_unblock_udp
t0=$(date +%s.%N)
back=$(until_transport quic 15 "$t0") || fail "the agent did not move back to QUIC after UDP was unblocked"
until_web 5 >/dev/null || fail "nothing served after moving back to QUIC"
udp_roundtrip || fail "udp tunnel after moving back to QUIC"
ok "UDP unblocked: back on QUIC ${back}s later (re-probe every 2 s), serving"
t0=$(date +%s.%N)
ns_block_udp
fell=$(until_transport tcp 10 "$t0") || fail "a connected QUIC agent did not fall back within 10 s when UDP was blocked"
until_web 5 >/dev/null || fail "nothing served after falling back"
grep -q "the relay stopped answering pings" "$WORK/agent.log" || fail "the agent log does not say why it left QUIC"
ns_unblock_udp
# Only home→relay is blocked, so the relay's keep-alives still reach the agent and would hold
# its QUIC idle timer open (~20 s before the control-stream heartbeat); unanswered pings end it.
ok "UDP blocked under a connected QUIC agent: on the TCP fallback ${fell}s later (control-stream pings unanswered)"
until_transport quic 15 >/dev/null || fail "the agent did not return to QUIC"

# 4. Satellite: 300 ms each way, 1 % loss each way, 100 Mbit/s; the agent on BBR (the
#    default; CUBIC backs off at every random loss: ~0.6 Mbit/s here). The tunnel serves, pages and a
#    16 MiB file arrive intact, the first MJPEG frame arrives.
ns_link 300 0.01 100
start_agent bbr
t=$(until_web 30) || fail "nothing served over the satellite link"
head -c $((16 << 20)) "$WORK/www/big.bin" >"$WORK/www/16m.bin"
t0=$(date +%s.%N)
sum=$("${CURL[@]}" --max-time 120 "$URL/16m.bin" | sha256sum | cut -d' ' -f1)
secs=$(python3 -c "print('%.1f' % ($(date +%s.%N) - $t0))")
[ "$sum" = "$(sha256sum "$WORK/www/16m.bin" | cut -d' ' -f1)" ] || fail "16 MiB over the satellite link is not byte-exact"
frame=$("${CURL[@]}" --max-time 20 -N "$URL/mjpeg" 2>/dev/null | head -c 2200 | grep -c 'Content-Type: image/jpeg' || true)
[ "$frame" -ge 1 ] || fail "no MJPEG frame over the satellite link"
echo_roundtrip || fail "tcp tunnel round trip over the satellite link"
ok "satellite link (600 ms RTT, 1 % loss): page in ${t}s, 16 MiB byte-exact in ${secs}s, MJPEG frames, tcp tunnel"
ns_link 0 0 0

# 5. The relay killed with -9 while a live stream runs, then started again: the agent is back.
"${CURL[@]}" --max-time 60 -N "$URL/mjpeg" >/dev/null 2>&1 &
VIEW=$!; PIDS+=("$VIEW")
sleep 1
kill -9 "$RELAY"; wait "$RELAY" 2>/dev/null || true
t0=$(date +%s.%N)
ns_restart_relay
back=$(until_web 20 "$t0") || fail "the agent did not come back after the relay was killed"
echo_roundtrip || fail "tcp tunnel after the relay restart"
kill "$VIEW" 2>/dev/null || true
ok "relay killed -9 during a live stream and restarted: serving again after ${back}s"

# 6. An old router kernel without UDP GSO: quinn-udp decides from uname (GSO needs 4.18), so
#    the agent runs under `setarch --uname-2.6` and must work the same, and say so.
AGENT_WRAP=(setarch "$(uname -m)" --uname-2.6)
: >"$WORK/agent.log"
start_agent
t=$(until_web 20) || fail "nothing served by an agent on a kernel without GSO"
[ "$(agent_field transport)" = quic ] || fail "the agent without GSO is not on QUIC"
sum=$("${CURL[@]}" --max-time 60 "$URL/16m.bin" | sha256sum | cut -d' ' -f1)
[ "$sum" = "$(sha256sum "$WORK/www/16m.bin" | cut -d' ' -f1)" ] || fail "16 MiB without GSO is not byte-exact"
udp_roundtrip || fail "udp tunnel without GSO"
grep -q "no UDP GSO" "$WORK/agent.log" || fail "the agent does not say the kernel lacks GSO"
ok "kernel without UDP GSO (uname 2.6): QUIC serves in ${t}s, 16 MiB byte-exact, udp tunnel, the log says why"
AGENT_WRAP=(env)

echo "netns: $pass passed, 0 failed"
