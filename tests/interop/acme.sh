# Sourced by tests/interop.sh: ACME against pebble (Let's Encrypt's test CA, Debian package)
# with pebble-challtestsrv as its DNS (every name → 127.0.0.1). Two relays, one per challenge
# type; each obtains a certificate for its own domain (agents verify it with the web PKI) and
# for the hostname an agent claims; curl verifies the edge against pebble's root.
# Uses from interop.sh: BIN WORK WEB PIDS free_port fail ok.

command -v pebble >/dev/null || { apt-get update -qq && apt-get install -y -qq pebble; }
command -v openssl >/dev/null || { apt-get update -qq && apt-get install -y -qq openssl; }
A="$WORK/acme"; mkdir -p "$A"
# pebble serves its directory over https: a throwaway CA and a certificate for 127.0.0.1.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=interop-ca \
  -keyout "$A/ca.key" -out "$A/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=localhost \
  -keyout "$A/wfe.key" -out "$A/wfe.csr" 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n' >"$A/ext.cnf"
openssl x509 -req -in "$A/wfe.csr" -CA "$A/ca.pem" -CAkey "$A/ca.key" -CAcreateserial -days 2 \
  -extfile "$A/ext.cnf" -out "$A/wfe.pem" 2>/dev/null

DNS=$(free_port); CHALL_MGMT=$(free_port); ACME=$(free_port); ACME_MGMT=$(free_port)
VA_HTTP=$(free_port); VA_TLS=$(free_port)
cat >"$A/pebble.json" <<JSON
{"pebble": {"listenAddress": "127.0.0.1:$ACME", "managementListenAddress": "127.0.0.1:$ACME_MGMT",
  "certificate": "$A/wfe.pem", "privateKey": "$A/wfe.key",
  "httpPort": $VA_HTTP, "tlsPort": $VA_TLS, "ocspResponderURL": "",
  "externalAccountBindingRequired": false}}
JSON
pebble-challtestsrv -defaultIPv4 127.0.0.1 -defaultIPv6 "" -dns01 "127.0.0.1:$DNS" \
  -http01 "" -https01 "" -tlsalpn01 "" -management "127.0.0.1:$CHALL_MGMT" \
  >"$WORK/challtestsrv.log" 2>&1 &
PIDS+=($!)
start_pebble() {
  PEBBLE_VA_NOSLEEP=1 PEBBLE_WFE_NONCEREJECT=0 pebble -config "$A/pebble.json" \
    -dnsserver "127.0.0.1:$DNS" >>"$WORK/pebble.log" 2>&1 &
  PEBBLE=$!; PIDS+=($PEBBLE)
  for _ in $(seq 100); do
    curl -s --cacert "$A/ca.pem" -o /dev/null "https://127.0.0.1:$ACME/dir" && return 0
    sleep 0.1
  done
  fail "pebble did not start"
}
start_pebble
curl -sS --cacert "$A/ca.pem" "https://127.0.0.1:$ACME_MGMT/roots/0" >"$A/root.pem" \
  || fail "cannot fetch pebble's root"

# acme_relay NAME CHALLENGE HTTPS HTTP: a relay for domain NAME.test using CHALLENGE.
acme_relay() {
  local quic; quic=$(free_port)
  cat >"$A/$1.toml" <<TOML
domain = "$1.test"
data_dir = "$A/$1-data"
[listen]
https = "127.0.0.1:$3"
http = "127.0.0.1:$4"
admin = "127.0.0.1:$(free_port)"
quic = "127.0.0.1:$quic"
tunnels = "127.0.0.1"
[tls]
acme_email = "interop@example.org"
acme_directory = "https://127.0.0.1:$ACME/dir"
acme_ca_file = "$A/ca.pem"
acme_challenge = "$2"
[[access]]
host = "cam.$1.test"
public = true
TOML
  "$BIN" relay --config "$A/$1.toml" 2>>"$WORK/relay-$1.log" &
  PIDS+=($!)
  eval "RELAY_$1=$!"
  for _ in $(seq 100); do grep -q "relay ready" "$WORK/relay-$1.log" && break; sleep 0.1; done
  local token
  token=$("$BIN" token issue --config "$A/$1.toml" --agent "home-$1" --host "cam.$1.test" --ttl 1h 2>/dev/null)
  # The agent verifies the relay like any web PKI client (here pebble's root), no fingerprint.
  PERISCOPE_TOKEN="$token" "$BIN" agent --relay "127.0.0.1:$quic" --ca-file "$A/root.pem" \
    --server-name "$1.test" --http "cam=127.0.0.1:$WEB" 2>>"$WORK/agent-$1.log" &
  PIDS+=($!)
}
# wait_cert NAME PORT SECONDS: until curl verifies https://cam.NAME.test against pebble's root.
wait_cert() {
  local t0; t0=$(date +%s)
  while [ $(($(date +%s) - t0)) -lt "$3" ]; do
    if out=$(curl -sS --max-time 5 --cacert "$A/root.pem" --resolve "cam.$1.test:$2:127.0.0.1" \
      "https://cam.$1.test:$2/hello.txt" 2>/dev/null) && [ "$out" = "hello from the recorder" ]; then
      echo $(($(date +%s) - t0)); return 0
    fi
    sleep 0.5
  done
  return 1
}

HTTPS_H=$(free_port); acme_relay http http-01 "$HTTPS_H" "$VA_HTTP"
HTTP_T=$(free_port); acme_relay alpn tls-alpn-01 "$VA_TLS" "$HTTP_T"
T=$(wait_cert http "$HTTPS_H" 90) || fail "no verified certificate by http-01 within 90 s"
ok "ACME http-01 with pebble: agent verified the relay by web PKI, curl verified cam.http.test (${T}s)"
T=$(wait_cert alpn "$VA_TLS" 90) || fail "no verified certificate by tls-alpn-01 within 90 s"
ok "ACME tls-alpn-01 with pebble: curl verified cam.alpn.test (${T}s)"
mode=$(stat -c %a "$A/http-data/acme/cam.http.test.pem")
[ "$mode" = "600" ] || fail "cached certificate has mode $mode"
# Restart with the CA gone: the cached certificate keeps serving.
kill "$PEBBLE"; wait "$PEBBLE" 2>/dev/null || true
kill "$RELAY_http"; wait "$RELAY_http" 2>/dev/null || true
"$BIN" relay --config "$A/http.toml" 2>>"$WORK/relay-http.log" &
PIDS+=($!)
wait_cert http "$HTTPS_H" 30 >/dev/null || fail "cached certificate not served after a restart without the CA"
ok "ACME certificate cached on disk (0600) and served after a restart while the CA is down"
