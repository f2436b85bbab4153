#!/usr/bin/env bash
# Interop suite: the release binary as a user runs it, driven by programs we did not write.
# Today: `periscope check` on every example config, a TCP round trip through a relay and an
# agent started as separate processes, curl through the HTTPS edge (HTTP/1.1 and HTTP/2:
# 100 MiB each way with sha256 checks, an endless MJPEG stream read with `curl -N`), kill -9 of
# the relay, token revocation, the relay's graceful shutdown, the admin API, `periscope demo`
# (and its page in headless Chromium), ACME with pebble (http-01, tls-alpn-01, renewal of
# 60-second certificates in a running relay, a failed renewal keeping the old one), coturn behind a
# udp tunnel (STUN binding, TURN allocation and relaying), the edge login in headless
# Chromium, and emulated networks in namespaces (tests/netns/). Every wait is bounded; every process is stopped by PID.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v python3 >/dev/null || need+=(python3)
command -v curl >/dev/null || need+=(curl)
command -v chromium >/dev/null || need+=(chromium)
if [ ${#need[@]} -gt 0 ]; then apt-get update -qq && apt-get install -y -qq "${need[@]}"; fi

echo "interop: building the release binary"
cargo build --release --locked --bin periscope
BIN="$PWD/target/release/periscope"
WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
fail() { echo "interop: FAIL: $*" >&2; for f in "$WORK"/*.log; do echo "--- $f"; tail -n 20 "$f"; done >&2; exit 1; }
pass=0
ok() { echo "interop: ok: $*"; pass=$((pass + 1)); }

# 1. Every example config validates.
for f in deploy/examples/*.toml; do
  "$BIN" check --config "$f" >/dev/null 2>"$WORK/check.log" || fail "periscope check $f: $(cat "$WORK/check.log")"
done
ok "periscope check accepts every file in deploy/examples"
if "$BIN" check --config tests/data/config/invalid/relay-typo.toml 2>"$WORK/check.log"; then
  fail "a config with a typo passed periscope check"
fi
grep -q "relay-typo.toml:4:1" "$WORK/check.log" || fail "typo error does not name file:line: $(cat "$WORK/check.log")"
ok "periscope check names file and line of a typo"

# Ports below the ephemeral range (32768+), so no client socket can squat them.
free_port() {
  python3 - <<'PY'
import random, socket
while True:
    p = random.randint(20000, 32000)
    try:
        t = socket.socket(); t.bind(("127.0.0.1", p))
        u = socket.socket(type=socket.SOCK_DGRAM); u.bind(("127.0.0.1", p))
        print(p); break
    except OSError:
        pass
PY
}
QUIC=$(free_port); PORT=$(free_port); ECHO=$(free_port); HTTPS=$(free_port); WEB=$(free_port); HTTP=$(free_port); ADMIN=$(free_port)

# A web target on python's own http.server: static files (a 100 MiB one among them), an
# upload sink answering the body's sha256, and endless MJPEG (close-delimited, HTTP/1.0).
mkdir -p "$WORK/www" && echo "hello from the recorder" >"$WORK/www/hello.txt"
head -c $((100 << 20)) /dev/urandom >"$WORK/www/big.bin"
BIG_SUM=$(sha256sum "$WORK/www/big.bin" | cut -d' ' -f1)
python3 tests/interop/recorder.py "$WEB" "$WORK/www" >"$WORK/web.log" 2>&1 &
PIDS+=($!)

# A TCP echo target (python, not ours).
python3 tests/interop/echo.py "$ECHO" >"$WORK/echo.log" 2>&1 &
PIDS+=($!)

cat >"$WORK/relay.toml" <<TOML
domain = "relay.localhost"
data_dir = "$WORK/data"
[listen]
https = "127.0.0.1:$HTTPS"
http = "127.0.0.1:$HTTP"
admin = "127.0.0.1:$ADMIN"
quic = "127.0.0.1:$QUIC"
tunnels = "127.0.0.1"
[limits]
# The reconnect timings below probe in tight loops from one address.
new_connections_per_second = 0
[[access]]
host = "cam.relay.localhost"
public = true
# Raw ports open only after a web login by default; this one is for the transport checks.
[[port_access]]
ports = "$PORT"
mode = "open"
TOML

# roundtrip MSG: send, half-close, expect the echo; bounded by a timeout.
roundtrip() {
  python3 - "$PORT" "$1" <<'PY'
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5)
msg = sys.argv[2].encode() * 1000
s.sendall(msg); s.shutdown(socket.SHUT_WR)
got = b""
while True:
    d = s.recv(65536)
    if not d: break
    got += d
sys.exit(0 if got == msg else 1)
PY
}
# wait_serving SECONDS [START]: until a round trip works; prints the seconds since START
# (a `date +%s.%N` taken before the event), default now.
wait_serving() {
  python3 - "$PORT" "$1" "${2:-}" <<'PY'
import socket, sys, time
t0 = float(sys.argv[3]) if sys.argv[3] else time.time()
while time.time() - t0 < float(sys.argv[2]):
    try:
        s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=0.3)
        s.settimeout(0.5); s.sendall(b"x")
        if s.recv(1) == b"x":
            print("%.2f" % (time.time() - t0)); sys.exit(0)
    except OSError:
        time.sleep(0.01)
sys.exit(1)
PY
}

# Started with the common soft open-files limit of 1024: the relay must raise it itself.
start_relay() {
  (ulimit -Sn 1024; exec "$BIN" relay --config "$WORK/relay.toml") 2>>"$WORK/relay.log" &
  RELAY=$!; PIDS+=($RELAY)
}
start_relay
for _ in $(seq 200); do grep -q 'fingerprint sha256:' "$WORK/relay.log" && break; sleep 0.05; done
FP=$(grep -o 'fingerprint sha256:[0-9a-f]*' "$WORK/relay.log" | head -1 | cut -d' ' -f2 || true)
[ -n "$FP" ] || fail "relay printed no fingerprint"
TOKEN=$("$BIN" token issue --config "$WORK/relay.toml" --agent home --tcp-port "$PORT" --host cam.relay.localhost --ttl 1h 2>"$WORK/token.log")
JTI=$(grep -o 'id [0-9a-f]*' "$WORK/token.log" | cut -d' ' -f2)
PERISCOPE_TOKEN="$TOKEN" "$BIN" agent --relay "127.0.0.1:$QUIC" --fingerprint "$FP" \
  --tcp "echo=127.0.0.1:$ECHO:$PORT" --http "cam=127.0.0.1:$WEB" 2>>"$WORK/agent.log" &
AGENT=$!; PIDS+=($AGENT)
wait_serving 10 >/dev/null || fail "tunnel did not come up"
roundtrip "hello" || fail "round trip through the tunnel"
ok "TCP round trip through relay and agent processes"
read -r soft hard < <(awk '/Max open files/ {print $4, $5}' "/proc/$RELAY/limits")
[ "$soft" = "$hard" ] || fail "relay kept a soft open-files limit of $soft (hard $hard)"
ok "relay raised its open-files limit to $hard"
# curl through the HTTPS edge, trusting the relay's development CA (per-host certificates)
# and its self-signed certificate (names nobody claimed).
cat "$WORK/data/dev-ca.crt" "$WORK/data/self-signed.crt" >"$WORK/trust.pem"
CURL=(curl -sS --max-time 10 --cacert "$WORK/trust.pem" --resolve "cam.relay.localhost:$HTTPS:127.0.0.1" --resolve "nobody.relay.localhost:$HTTPS:127.0.0.1")
for v in --http1.1 --http2; do
  out=$("${CURL[@]}" "$v" -w ' %{http_version} %{http_code}' "https://cam.relay.localhost:$HTTPS/hello.txt") || fail "curl $v through the edge"
  case "$out" in
    "hello from the recorder"*" 200") ;;
    *) fail "curl $v got: $out" ;;
  esac
done
ok "curl over HTTP/1.1 and HTTP/2 through the HTTPS edge"
for v in --http1.1 --http2; do
  sum=$("${CURL[@]}" --max-time 120 "$v" "https://cam.relay.localhost:$HTTPS/big.bin" | sha256sum | cut -d' ' -f1)
  [ "$sum" = "$BIG_SUM" ] || fail "curl $v: 100 MiB download has sha256 $sum, expected $BIG_SUM"
  sum=$("${CURL[@]}" --max-time 120 "$v" --data-binary @"$WORK/www/big.bin" -H 'Content-Type: application/octet-stream' "https://cam.relay.localhost:$HTTPS/upload") || fail "curl $v upload"
  [ "$sum" = "$BIG_SUM" ] || fail "curl $v: the recorder got an upload with sha256 $sum, expected $BIG_SUM"
done
ok "100 MiB download and upload over HTTP/1.1 and HTTP/2, sha256 equal"
for v in --http1.1 --http2; do
  # Five frames must arrive as they are sent (0.1 s apart), not when a buffer fills. curl
  # ends with a write error once the reader has seen enough.
  frames=$( { "${CURL[@]}" -N "$v" "https://cam.relay.localhost:$HTTPS/mjpeg" 2>/dev/null || true; } | python3 -c '
import sys, time
t0, n, buf = time.time(), 0, b""
while n < 5:
    d = sys.stdin.buffer.read1(65536)
    if not d: break
    buf += d; n = buf.count(b"--frame\r\n")
print(n if time.time() - t0 < 5 else -1)')
  [ "$frames" = "5" ] || fail "curl -N $v: MJPEG frames did not stream (got $frames)"
done
ok "curl -N reads MJPEG frames as they come over HTTP/1.1 and HTTP/2"
code=$("${CURL[@]}" -o /dev/null -w '%{http_code}' "https://nobody.relay.localhost:$HTTPS/") || true
[ "$code" = "404" ] || fail "unknown hostname answered $code, not 404"
ok "unknown hostname: 404"
ADMIN_TOKEN=$("$BIN" admin-token --config "$WORK/relay.toml" 2>/dev/null)
ACURL=(curl -sS --max-time 5 -H "Authorization: Bearer $ADMIN_TOKEN")
"${ACURL[@]}" "http://127.0.0.1:$ADMIN/api/agents" | grep -q '"name":"home"' || fail "admin API does not list agent home"
"${ACURL[@]}" "http://127.0.0.1:$ADMIN/metrics" | grep -q '^periscope_agents_connected 1' || fail "metrics: agents_connected is not 1"
code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$ADMIN/api/agents")
[ "$code" = "401" ] || fail "admin API without the token answered $code"
ok "admin API (token from periscope admin-token): agents and metrics; 401 without the token"
if grep -q "$TOKEN" "$WORK"/*.log; then fail "the token appears in a log"; fi
ok "the token never appears in the logs"

# 2. kill -9 the relay, start it again: the agent comes back by itself.
kill -9 "$RELAY"; wait "$RELAY" 2>/dev/null || true
START=$(date +%s.%N)
start_relay
T=$(wait_serving 15 "$START") || fail "tunnel not back after relay kill -9 and restart"
roundtrip "again" || fail "round trip after restart"
ok "agent back ${T}s after relay kill -9 + restart"

# 3. Revoking the token disconnects the agent within 5 s and frees the port.
"$BIN" token revoke --config "$WORK/relay.toml" "$JTI" 2>>"$WORK/token.log"
python3 - "$PORT" <<'PY' || fail "port still served 5 s after revocation"
import socket, sys, time
t0 = time.time()
while time.time() - t0 < 5:
    try:
        socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=0.3).close()
        time.sleep(0.1)
    except OSError:
        sys.exit(0)
sys.exit(1)
PY
for _ in $(seq 50); do grep -q "token revoked" "$WORK/agent.log" && break; sleep 0.1; done
grep -q "token revoked" "$WORK/agent.log" || fail "agent log does not say the token was revoked"
ok "revoked token: agent disconnected, port closed, agent log says why"

# 4. SIGTERM: the relay drains and exits on its own.
kill -TERM "$RELAY"
for _ in $(seq 100); do kill -0 "$RELAY" 2>/dev/null || break; sleep 0.1; done
if kill -0 "$RELAY" 2>/dev/null; then fail "relay still running 10 s after SIGTERM"; fi
ok "relay exits cleanly on SIGTERM"

# 5. `periscope demo`: prints its box, serves the test camera through the edge (curl reads the
#    live MJPEG stream for 3 s), and exits 0 on SIGINT while a viewer is still watching.
DEMO_PORT=$(free_port)
"$BIN" demo --port "$DEMO_PORT" >"$WORK/demo.out" 2>"$WORK/demo.log" &
DEMO=$!; PIDS+=($DEMO)
for _ in $(seq 150); do grep -q "Ctrl-C" "$WORK/demo.out" && break; sleep 0.1; done
DEMO_PW=$(sed -n 's/.*login   demo \/ \([0-9a-f]*\).*/\1/p' "$WORK/demo.out")
[ -n "$DEMO_PW" ] || fail "demo printed no login: $(cat "$WORK/demo.out")"
grep -q "curl -k -u demo:$DEMO_PW --resolve cam.localhost:$DEMO_PORT:127.0.0.1 https://cam.localhost:$DEMO_PORT/" "$WORK/demo.out" \
  || fail "demo printed no box with its curl line: $(cat "$WORK/demo.out")"
SHARE_URL=$(grep -o "https://cam.localhost:$DEMO_PORT/.periscope/share?t=[A-Za-z0-9._-]*" "$WORK/demo.out")
[ -n "$SHARE_URL" ] || fail "demo printed no share link: $(cat "$WORK/demo.out")"
DCURL=(curl -sk --resolve "cam.localhost:$DEMO_PORT:127.0.0.1")
code=$("${DCURL[@]}" --max-time 10 -o /dev/null -w '%{http_code}' "https://cam.localhost:$DEMO_PORT/")
[ "$code" = 303 ] || fail "the demo camera answered $code without a login (want 303 to the login page)"
DCURL+=(-u "demo:$DEMO_PW")
"${DCURL[@]}" --max-time 10 "https://cam.localhost:$DEMO_PORT/" | grep -q "<img src=\"/mjpeg\"" \
  || fail "demo page through the edge"
"${DCURL[@]}" --max-time 3 "https://cam.localhost:$DEMO_PORT/mjpeg" -o "$WORK/demo.mjpeg" || true
frames=$(grep -ac "Content-Type: image/jpeg" "$WORK/demo.mjpeg" || true)
[ "${frames:-0}" -ge 10 ] || fail "demo /mjpeg: $frames frames in 3 s"
ok "periscope demo: page and live MJPEG through the edge ($frames frames in 3 s)"
# A real browser: headless Chromium (`*.localhost` is loopback to it) gets the login page at
# the plain URL, and through the demo's share link (it logs the browser in) a moving picture
# (two screenshots differ) and the WebSocket counter; the status page lists the demo agent.
# Screenshots stay in target/interop/ (CI artifacts).
SHOTS=target/interop; mkdir -p "$SHOTS"
CHROME=(timeout 60 chromium --headless --no-sandbox --disable-gpu --disable-background-networking
  --disable-component-update --disable-sync --no-first-run --window-size=900,700)
"${CHROME[@]}" --ignore-certificate-errors --virtual-time-budget=2000 --dump-dom \
  "https://cam.localhost:$DEMO_PORT/" >"$WORK/demo-login.html" 2>>"$WORK/chromium.log" || true
grep -q 'type="password"' "$WORK/demo-login.html" || fail "chromium: the demo camera did not ask for a login"
for i in 1 2; do
  "${CHROME[@]}" --ignore-certificate-errors --virtual-time-budget=2000 --screenshot="$SHOTS/demo-$i.png" \
    "$SHARE_URL" >>"$WORK/chromium.log" 2>&1 || fail "chromium screenshot of the demo"
  sleep 1
done
if cmp -s "$SHOTS/demo-1.png" "$SHOTS/demo-2.png"; then fail "the demo picture did not move between screenshots"; fi
"${CHROME[@]}" --ignore-certificate-errors --virtual-time-budget=3000 --dump-dom \
  "$SHARE_URL" >"$WORK/demo-dom.html" 2>>"$WORK/chromium.log" || true
grep -q 'WebSocket: frame [0-9]' "$WORK/demo-dom.html" || fail "chromium: the demo's WebSocket counter did not run"
STATUS_URL=$(grep -o 'http://127.0.0.1:[0-9]*/#[0-9a-f]*' "$WORK/demo.out")
"${CHROME[@]}" --virtual-time-budget=3000 --screenshot="$SHOTS/status.png" "$STATUS_URL" >>"$WORK/chromium.log" 2>&1 \
  || fail "chromium screenshot of the status page"
"${CHROME[@]}" --virtual-time-budget=3000 --dump-dom "$STATUS_URL" >"$WORK/status-dom.html" 2>>"$WORK/chromium.log" || true
grep -q 'id="n-agents">1<' "$WORK/status-dom.html" || fail "chromium: the status page does not show the demo agent"
ok "chromium: the demo asks for a login; through its share link the picture moves and the WebSocket counter runs; the status page lists the agent (screenshots in $SHOTS)"
"${DCURL[@]}" --max-time 20 "https://cam.localhost:$DEMO_PORT/mjpeg" -o /dev/null &
VIEWER=$!; PIDS+=($VIEWER)
sleep 0.5
kill -INT "$DEMO"
for _ in $(seq 20); do kill -0 "$DEMO" 2>/dev/null || break; sleep 0.1; done
if kill -0 "$DEMO" 2>/dev/null; then fail "demo still running 2 s after SIGINT"; fi
wait "$DEMO" || fail "demo exited with status $? after SIGINT"
ok "periscope demo exits 0 within 2 s of SIGINT with a viewer connected"

# 6. ACME with pebble.
# shellcheck source=tests/interop/acme.sh
source tests/interop/acme.sh

# 7. UDP tunnels with coturn (STUN binding, TURN allocation and relay).
# shellcheck source=tests/interop/coturn.sh
source tests/interop/coturn.sh

# 8. A real browser: headless Chromium (Debian `chromium`) logs in on a protected hostname,
#    then sees the recorder's page, its MJPEG picture and its WebSocket through the relay, and
#    logs out (tests/e2e/browser.rs, driven over the DevTools protocol).
command -v chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium; }
cargo test --locked --test e2e browser:: -- --ignored >"$WORK/browser.log" 2>&1 \
  || fail "chromium login flow: $(grep -v '^ *[0-9]*: \|^ *at ' "$WORK/browser.log" | tail -n 30)"
ok "headless Chromium: login, session cookie, recorder page, MJPEG and WebSocket through the edge, logout"

# 9. Every network (tests/netns/run.sh, root): CGNAT, NAT rebinding during a 256 MiB
#    transfer, a satellite link through the userspace link emulator, relay kill -9.
BIN="$BIN" bash tests/netns/run.sh >"$WORK/netns.log" 2>&1 || fail "emulated networks: $(tail -n 40 "$WORK/netns.log")"
while read -r line; do ok "${line#netns: ok: }"; done < <(grep '^netns: ok: ' "$WORK/netns.log")

echo "interop: $pass passed, 0 failed"
