# Emulated networks for the interop suite and the satellite bench (sourced, bash).
#
#   visitor 10.99.1.2 ── veth ── 10.99.1.1 vps 10.99.2.1 ── TUN ⇄ linkem.py ⇄ TUN ── 10.99.2.2 nat 10.99.3.1 ── veth ── 10.99.3.2 home
#
# `vps` runs the relay (its public side faces `visitor`); `home` runs the agent and the
# recorder behind `nat`, a CGNAT-like router (MASQUERADE, no inbound connections). The
# vps⇄nat link goes through the userspace link emulator (tests/netns/linkem.py), whose delay,
# loss and rate `ns_link` changes at any time. Every address lives inside these namespaces.
#
# The caller sets WORK (a scratch folder) and PIDS (an array), and calls ns_down on exit.

# Namespace names carry the PID of the shell that sourced this file, so two runs at once (the
# interop suite and the satellite bench, say) never tear down each other's network.
NS_TAG=psc$$
NS_VISITOR=$NS_TAG-visitor
NS_VPS=$NS_TAG-vps
NS_NAT=$NS_TAG-nat
NS_HOME=$NS_TAG-home
NS_ALL=("$NS_VISITOR" "$NS_VPS" "$NS_NAT" "$NS_HOME")
VPS_PUBLIC=10.99.1.1
VPS_UPLINK=10.99.2.1
NAT_UPLINK=10.99.2.2

ns_need_tools() {
  local need=()
  command -v ip >/dev/null || need+=(iproute2)
  command -v iptables >/dev/null || need+=(iptables)
  command -v conntrack >/dev/null || need+=(conntrack)
  command -v python3 >/dev/null || need+=(python3)
  command -v curl >/dev/null || need+=(curl)
  if [ ${#need[@]} -gt 0 ]; then apt-get update -qq && apt-get install -y -qq "${need[@]}"; fi
}

in_ns() { local ns=$1; shift; ip netns exec "$ns" "$@"; }

# ns_down: stop every process still inside the namespaces (by PID, from `ip netns pids`),
# the link emulator, and remove the namespaces.
ns_down() {
  local ns pids
  for ns in "${NS_ALL[@]}"; do
    pids=$(ip netns pids "$ns" 2>/dev/null || true)
    # shellcheck disable=SC2086
    if [ -n "$pids" ]; then kill $pids 2>/dev/null || true; fi
  done
  sleep 0.2
  for ns in "${NS_ALL[@]}"; do
    pids=$(ip netns pids "$ns" 2>/dev/null || true)
    # shellcheck disable=SC2086
    if [ -n "$pids" ]; then kill -9 $pids 2>/dev/null || true; fi
  done
  if [ -n "${LINKEM_PID:-}" ]; then
    kill "$LINKEM_PID" 2>/dev/null || true
    wait "$LINKEM_PID" 2>/dev/null || true
  fi
  LINKEM_PID=
  for ns in "${NS_ALL[@]}"; do ip netns del "$ns" 2>/dev/null || true; done
  return 0
}

# ns_reap_stale: remove namespaces left by runs that were killed before their ns_down (the
# PID in the name is gone), with any process still inside them.
ns_reap_stale() {
  local ns owner pids
  for ns in $(ip netns list 2>/dev/null | awk '{print $1}'); do
    case $ns in
      psc-*) owner= ;;                 # the fixed names of earlier versions
      psc[0-9]*-*) owner=${ns#psc}; owner=${owner%%-*} ;;
      *) continue ;;
    esac
    if [ -n "$owner" ] && kill -0 "$owner" 2>/dev/null; then continue; fi
    pids=$(ip netns pids "$ns" 2>/dev/null || true)
    # shellcheck disable=SC2086
    if [ -n "$pids" ]; then kill -9 $pids 2>/dev/null || true; fi
    ip netns del "$ns" 2>/dev/null || true
  done
}

# ns_up: build the four namespaces, the links and the NAT; start the link emulator clean.
ns_up() {
  ns_down
  ns_reap_stale
  for ns in "${NS_ALL[@]}"; do ip netns add "$ns"; in_ns "$ns" ip link set lo up; done

  ip link add vis0 netns "$NS_VISITOR" type veth peer name vps-vis netns "$NS_VPS"
  in_ns "$NS_VISITOR" ip addr add 10.99.1.2/24 dev vis0
  in_ns "$NS_VISITOR" ip link set vis0 up
  in_ns "$NS_VPS" ip addr add "$VPS_PUBLIC/24" dev vps-vis
  in_ns "$NS_VPS" ip link set vps-vis up

  ip link add home0 netns "$NS_HOME" type veth peer name nat-home netns "$NS_NAT"
  in_ns "$NS_HOME" ip addr add 10.99.3.2/24 dev home0
  in_ns "$NS_HOME" ip link set home0 up
  in_ns "$NS_HOME" ip route add default via 10.99.3.1
  in_ns "$NS_NAT" ip addr add 10.99.3.1/24 dev nat-home
  in_ns "$NS_NAT" ip link set nat-home up

  echo '{}' >"$WORK/link.json"
  rm -f "$WORK/linkem.ready"
  python3 tests/netns/linkem.py --a "$NS_VPS:em-vps" --b "$NS_NAT:em-nat" \
    --params "$WORK/link.json" --ready "$WORK/linkem.ready" 2>>"$WORK/linkem.log" &
  LINKEM_PID=$!
  PIDS+=("$LINKEM_PID")
  for _ in $(seq 100); do [ -e "$WORK/linkem.ready" ] && break; sleep 0.05; done
  [ -e "$WORK/linkem.ready" ] || { echo "netns: link emulator did not start" >&2; return 1; }
  in_ns "$NS_VPS" ip addr add "$VPS_UPLINK/24" dev em-vps
  in_ns "$NS_VPS" ip link set em-vps up
  in_ns "$NS_NAT" ip addr add "$NAT_UPLINK/24" dev em-nat
  in_ns "$NS_NAT" ip link set em-nat up

  # The NAT: home's packets leave with the router's address; nothing from outside gets in
  # unless it answers a connection home opened.
  in_ns "$NS_NAT" sysctl -qw net.ipv4.ip_forward=1
  in_ns "$NS_NAT" iptables -t nat -A POSTROUTING -o em-nat -j MASQUERADE
  in_ns "$NS_NAT" iptables -A FORWARD -i em-nat -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
  in_ns "$NS_NAT" iptables -A FORWARD -i em-nat -j DROP
  # The vps may even know the way to the home network: the NAT still lets nothing in.
  in_ns "$NS_VPS" ip route add 10.99.3.0/24 via "$NAT_UPLINK"
}

# ns_link DELAY_MS LOSS RATE_MBIT: one-way delay, loss probability and rate of each direction
# of the vps⇄nat link (0 = none).
ns_link() {
  printf '{"delay_ms": %s, "loss": %s, "rate_mbit": %s, "queue_kb": 4096}\n' "$1" "$2" "$3" >"$WORK/link.json"
  kill -HUP "$LINKEM_PID"
}

# ns_block_udp / ns_unblock_udp: the home network's router drops UDP toward the relay.
ns_block_udp() { in_ns "$NS_NAT" iptables -I FORWARD -i nat-home -p udp -j DROP; }
ns_unblock_udp() { in_ns "$NS_NAT" iptables -D FORWARD -i nat-home -p udp -j DROP; }

# ns_rebind_nat: the NAT forgets its mappings and gives home new source ports (as a CGNAT
# does after a timeout or a router reboot), while packets are flowing.
ns_rebind_nat() {
  in_ns "$NS_NAT" iptables -t nat -R POSTROUTING 1 -o em-nat -p udp -j MASQUERADE --to-ports 40000-40999
  in_ns "$NS_NAT" iptables -t nat -A POSTROUTING -o em-nat -j MASQUERADE
  in_ns "$NS_NAT" conntrack -D -p udp >/dev/null 2>&1 || true
}

# ns_start_relay [EXTRA_TOML]: write $WORK/relay.toml (domain relay.test; https 8443 and QUIC
# 4433 on every address of `vps`; cam.relay.test public) plus EXTRA_TOML, start the relay in
# `vps` (RELAY, added to PIDS) and wait for its fingerprint (FP). ns_restart_relay starts it
# again with the same file.
ns_start_relay() {
  cat >"$WORK/relay.toml" <<TOML
domain = "relay.test"
data_dir = "$WORK/data"
[listen]
https = "0.0.0.0:8443"
quic = "0.0.0.0:4433"
http = "127.0.0.1:8080"
admin = "127.0.0.1:9090"
tunnels = "0.0.0.0"
[[access]]
host = "cam.relay.test"
public = true
${1:-}
TOML
  ns_restart_relay
  for _ in $(seq 200); do grep -q 'fingerprint sha256:' "$WORK/relay.log" && break; sleep 0.05; done
  FP=$(grep -o 'fingerprint sha256:[0-9a-f]*' "$WORK/relay.log" | head -1 | cut -d' ' -f2 || true)
  [ -n "$FP" ]
}
ns_restart_relay() {
  ip netns exec "$NS_VPS" "$BIN" relay --config "$WORK/relay.toml" 2>>"$WORK/relay.log" &
  RELAY=$!
  PIDS+=("$RELAY")
}
