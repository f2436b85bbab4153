# Sourced by tests/interop.sh: ACME against pebble (Let's Encrypt's test CA, Debian package)
# with pebble-challtestsrv as its DNS (every name → 127.0.0.1). Two relays, one per challenge
# type; each obtains a certificate for its own domain (agents verify it with the web PKI) and
# for the hostname an agent claims; curl verifies the edge against pebble's root.
# A third relay renews short-lived certificates from a second pebble while running, and keeps
# serving the old one while a renewal fails.
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

# acme_relay NAME CHALLENGE HTTPS HTTP: a relay for domain NAME.test using CHALLENGE; the
# directory is pebble's on port ACME_PORT (default $ACME), agents trust ROOT (default pebble's
# root), TLS_EXTRA is added to [tls].
acme_relay() {
  local dir_port=${ACME_PORT:-$ACME} root=${ROOT:-$A/root.pem}
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
acme_directory = "https://127.0.0.1:$dir_port/dir"
acme_ca_file = "$A/ca.pem"
acme_challenge = "$2"
${TLS_EXTRA:-}
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
  PERISCOPE_TOKEN="$token" "$BIN" agent --relay "127.0.0.1:$quic" --ca-file "$root" \
    --server-name "$1.test" --http "cam=127.0.0.1:$WEB" 2>>"$WORK/agent-$1.log" &
  PIDS+=($!)
}
# wait_cert NAME PORT SECONDS: until curl verifies https://cam.NAME.test against pebble's root
# (ROOT, default the first pebble's).
wait_cert() {
  local t0 root=${ROOT:-$A/root.pem}; t0=$(date +%s)
  while [ $(($(date +%s) - t0)) -lt "$3" ]; do
    if out=$(curl -sS --max-time 5 --cacert "$root" --resolve "cam.$1.test:$2:127.0.0.1" \
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

# Renewal in a running relay. A second pebble issues 60-second certificates; with
# acme_renew_before = 45s the relay must serve a new one (new serial, still verified against
# pebble's root) about 15 s after the first, without a restart. Then the name's DNS points
# where nothing listens, so the next renewal's http-01 validation fails: the old certificate
# stays in use, and once DNS is back a retry (backoff) renews it before it expires.
ACME2=$(free_port); ACME2_MGMT=$(free_port); VA2_HTTP=$(free_port); VA2_TLS=$(free_port)
cat >"$A/pebble-short.json" <<JSON
{"pebble": {"listenAddress": "127.0.0.1:$ACME2", "managementListenAddress": "127.0.0.1:$ACME2_MGMT",
  "certificate": "$A/wfe.pem", "privateKey": "$A/wfe.key",
  "httpPort": $VA2_HTTP, "tlsPort": $VA2_TLS, "ocspResponderURL": "",
  "externalAccountBindingRequired": false, "certificateValidityPeriod": 60}}
JSON
# Every renewal validates again (pebble reuses half of the valid authorizations by default).
PEBBLE_VA_NOSLEEP=1 PEBBLE_WFE_NONCEREJECT=0 PEBBLE_AUTHZREUSE=0 pebble -config "$A/pebble-short.json" \
  -dnsserver "127.0.0.1:$DNS" >>"$WORK/pebble-short.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do
  curl -s --cacert "$A/ca.pem" -o /dev/null "https://127.0.0.1:$ACME2/dir" && break
  sleep 0.1
done
curl -sS --cacert "$A/ca.pem" "https://127.0.0.1:$ACME2_MGMT/roots/0" >"$A/root-short.pem" \
  || fail "cannot fetch the short-lived pebble's root"
# The same with tls-alpn-01 (the challenge certificate answers only acme-tls/1 handshakes
# while visitors keep getting the current one).
HTTPS_R=$(free_port); HTTP_RA=$(free_port)
ACME_PORT=$ACME2 ROOT="$A/root-short.pem" TLS_EXTRA='acme_renew_before = "45s"' \
  acme_relay renew http-01 "$HTTPS_R" "$VA2_HTTP"
ACME_PORT=$ACME2 ROOT="$A/root-short.pem" TLS_EXTRA='acme_renew_before = "45s"' \
  acme_relay renewalpn tls-alpn-01 "$VA2_TLS" "$HTTP_RA"
# serial [NAME PORT]: the serial number of the certificate served for cam.NAME.test (default
# the http-01 relay's).
serial() {
  openssl s_client -connect "127.0.0.1:${2:-$HTTPS_R}" -servername "cam.${1:-renew}.test" \
    </dev/null 2>/dev/null | openssl x509 -noout -serial 2>/dev/null | cut -d= -f2 || true
}
# new_serial OLD SECONDS [NAME PORT]: until a serial other than OLD is served and curl
# verifies it; prints the seconds waited.
new_serial() {
  local t0 s name=${3:-renew} port=${4:-$HTTPS_R}; t0=$(date +%s)
  while [ $(($(date +%s) - t0)) -lt "$2" ]; do
    s=$(serial "$name" "$port")
    if [ -n "$s" ] && [ "$s" != "$1" ] \
      && ROOT="$A/root-short.pem" wait_cert "$name" "$port" 5 >/dev/null; then
      echo $(($(date +%s) - t0)); return 0
    fi
    sleep 0.5
  done
  return 1
}
ROOT="$A/root-short.pem" wait_cert renew "$HTTPS_R" 90 >/dev/null \
  || fail "no verified short-lived certificate within 90 s"
S1=$(serial); [ -n "$S1" ] || fail "no serial served for cam.renew.test"
ROOT="$A/root-short.pem" wait_cert renewalpn "$VA2_TLS" 30 >/dev/null \
  || fail "no verified short-lived certificate by tls-alpn-01 within 30 s"
A1=$(serial renewalpn "$VA2_TLS"); [ -n "$A1" ] || fail "no serial served for cam.renewalpn.test"
left=$(openssl s_client -connect "127.0.0.1:$HTTPS_R" -servername cam.renew.test </dev/null 2>/dev/null \
  | openssl x509 -noout -checkend 61 >/dev/null && echo long || echo short)
[ "$left" = short ] || fail "pebble did not issue a short-lived certificate (certificateValidityPeriod)"
T=$(new_serial "$S1" 40) || fail "certificate $S1 not renewed within 40 s (60 s validity, renew 45 s before)"
S2=$(serial)
ok "ACME renewal while running: 60 s certificate $S1 replaced by $S2 after ${T}s, verified against pebble's root"
# A failed renewal: cam.renew.test resolves to 127.0.0.2, where nothing answers http-01.
curl -sS -X POST -d '{"host":"cam.renew.test","addresses":["127.0.0.2"]}' \
  "http://127.0.0.1:$CHALL_MGMT/add-a" || fail "challtestsrv add-a"
t0=$(date +%s)
until grep -q "ACME certificate for cam.renew.test failed" "$WORK/relay-renew.log"; do
  [ $(($(date +%s) - t0)) -lt 40 ] || fail "no failed renewal of cam.renew.test within 40 s"
  sleep 0.5
done
[ "$(serial)" = "$S2" ] || fail "a failed renewal changed the served certificate"
ROOT="$A/root-short.pem" wait_cert renew "$HTTPS_R" 5 >/dev/null \
  || fail "the old certificate is not served (verified) after a failed renewal"
grep -q "cam.renew.test failed.*the current certificate stays in use; retrying in" "$WORK/relay-renew.log" \
  || fail "the failed renewal does not say it keeps the old certificate and retries"
curl -sS -X POST -d '{"host":"cam.renew.test"}' "http://127.0.0.1:$CHALL_MGMT/clear-a" \
  || fail "challtestsrv clear-a"
T=$(new_serial "$S2" 40) || fail "certificate $S2 not renewed within 40 s after DNS came back"
kill -0 "$RELAY_renew" || fail "the relay is gone"
[ "$(grep -c "relay ready" "$WORK/relay-renew.log")" = 1 ] || fail "the relay restarted"
ok "ACME renewal failed while DNS was wrong: $S2 kept being served; renewed ${T} s after DNS came back, same relay process"
T=$(new_serial "$A1" 40 renewalpn "$VA2_TLS") \
  || fail "tls-alpn-01 certificate $A1 not renewed within 40 s"
kill -0 "$RELAY_renewalpn" || fail "the tls-alpn-01 relay is gone"
[ "$(grep -c "relay ready" "$WORK/relay-renewalpn.log")" = 1 ] || fail "the tls-alpn-01 relay restarted"
n=$(grep -c "ACME certificate obtained.*cam.renewalpn.test" "$WORK/relay-renewalpn.log" || true)
ok "ACME renewal by tls-alpn-01 while running: $A1 replaced, $n certificates for cam.renewalpn.test in one relay process"
