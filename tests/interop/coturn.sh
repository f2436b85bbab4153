# Sourced by tests/interop.sh: UDP tunnels against coturn (Debian package `coturn`). coturn
# listens on a LAN-side port behind the agent; its clients talk to the relay's public UDP
# port only: `turnutils_stunclient` gets a STUN binding response, and `turnutils_uclient`
# completes TURN allocations (long-term credentials) and relays packets between two clients
# with no loss. coturn sees each flow from the agent's per-flow socket (it does not read
# PROXY headers on UDP), so the mapped address it reports is that socket's.
# Uses from interop.sh: BIN WORK PIDS free_port fail ok.

command -v turnserver >/dev/null || { apt-get update -qq && apt-get install -y -qq coturn; }
T="$WORK/turn"; mkdir -p "$T"
TURN=$(free_port); TPUB=$(free_port); TQUIC=$(free_port); THTTPS=$(free_port); THTTP=$(free_port)
RELAY_LO=$(free_port)
turnserver -n --listening-ip=127.0.0.1 --listening-port="$TURN" --relay-ip=127.0.0.1 \
  --min-port="$RELAY_LO" --max-port=$((RELAY_LO + 50)) --lt-cred-mech --user=alice:secret \
  --realm=periscope --no-tls --no-dtls --allow-loopback-peers --no-cli \
  --log-file=stdout --simple-log >"$WORK/turnserver.log" 2>&1 &
PIDS+=($!)
cat >"$T/relay.toml" <<TOML
domain = "relay.localhost"
data_dir = "$T/data"
[listen]
https = "127.0.0.1:$THTTPS"
http = "127.0.0.1:$THTTP"
quic = "127.0.0.1:$TQUIC"
admin = "127.0.0.1:$(free_port)"
tunnels = "127.0.0.1"
# TURN clients are apps, not browsers: the port is open (by default a raw port first wants a
# web login from the same address).
[[port_access]]
ports = "$TPUB"
mode = "open"
TOML
"$BIN" relay --config "$T/relay.toml" 2>>"$WORK/turn-relay.log" &
PIDS+=($!)
for _ in $(seq 100); do grep -q 'fingerprint sha256:' "$WORK/turn-relay.log" && break; sleep 0.05; done
TFP=$(grep -o 'fingerprint sha256:[0-9a-f]*' "$WORK/turn-relay.log" | head -1 | cut -d' ' -f2)
[ -n "$TFP" ] || fail "coturn relay printed no fingerprint"
TTOKEN=$("$BIN" token issue --config "$T/relay.toml" --agent turn --udp-port "$TPUB" --ttl 1h 2>/dev/null)
PERISCOPE_TOKEN="$TTOKEN" "$BIN" agent --relay "127.0.0.1:$TQUIC" --fingerprint "$TFP" \
  --udp "turn=127.0.0.1:$TURN:$TPUB" 2>>"$WORK/turn-agent.log" &
PIDS+=($!)
for _ in $(seq 100); do grep -q "tunnel up: udp://" "$WORK/turn-agent.log" && break; sleep 0.05; done
grep -q "tunnel up: udp://relay.localhost:$TPUB" "$WORK/turn-agent.log" || fail "udp tunnel did not come up"
stun=""
for _ in $(seq 5); do
  stun=$(timeout 10 turnutils_stunclient -p "$TPUB" 127.0.0.1 2>&1 || true)
  echo "$stun" | grep -q "UDP reflexive addr: 127.0.0.1:[0-9]" && break
done
echo "$stun" >"$WORK/stunclient.log"
echo "$stun" | grep -q "UDP reflexive addr: 127.0.0.1:[0-9]" || fail "turnutils_stunclient through the udp tunnel: $stun"
ok "STUN binding through the relay's public UDP port ($(echo "$stun" | grep -o 'reflexive addr: [0-9.:]*' | head -1))"
timeout 60 turnutils_uclient -u alice -w secret -r periscope -p "$TPUB" -y -n 100 -m 2 -l 1000 127.0.0.1 \
  >"$WORK/uclient.log" 2>&1 || fail "turnutils_uclient exited with $?"
grep -q "tot_send_msgs=400, tot_recv_msgs=400" "$WORK/uclient.log" \
  || fail "turnutils_uclient: not every message relayed: $(grep -E 'tot_send_msgs=[0-9]+, tot_recv' "$WORK/uclient.log" | tail -1)"
grep -q "Total lost packets 0 " "$WORK/uclient.log" || fail "turnutils_uclient lost packets: $(grep 'lost packets' "$WORK/uclient.log")"
ok "TURN allocations through the udp tunnel: turnutils_uclient relayed 400 messages of 1000 bytes, none lost"
