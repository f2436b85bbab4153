#!/usr/bin/env bash
# Install the periscope binary and its systemd units. Idempotent: run it again to upgrade; files
# that are already up to date are left alone, and existing configs are never overwritten.
#
#   sudo deploy/install.sh                      # build with cargo (release), then install
#   sudo deploy/install.sh --binary ./periscope # install a binary you built or downloaded
#
# Options:
#   --binary PATH   the periscope binary to install (default: build target/release/periscope)
#   --prefix DIR    install the binary to DIR/bin (default: /usr/local)
#   --no-systemd    do not install the units or call systemctl
# Environment: DESTDIR=/some/root stages everything under that root (packaging, tests); then
# systemctl is not called.
#
# Afterwards: write /etc/periscope/relay.toml (VPS) or agent.toml + agent.token (home; examples
# are installed next to them as *.example), then
#   systemctl enable --now periscope-relay     or     systemctl enable --now periscope-agent
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
binary=""
prefix="/usr/local"
systemd=1
destdir="${DESTDIR:-}"

usage() { sed -n '2,19p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
  case "$1" in
    --binary) binary="${2:?--binary needs a path}"; shift 2 ;;
    --prefix) prefix="${2:?--prefix needs a directory}"; shift 2 ;;
    --no-systemd) systemd=0; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "install.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

if [ -z "$destdir" ] && [ "$(id -u)" -ne 0 ]; then
  echo "install.sh: run as root (sudo), or set DESTDIR to stage the files somewhere" >&2
  exit 1
fi

if [ -z "$binary" ]; then
  command -v cargo >/dev/null || {
    echo "install.sh: cargo not found; build elsewhere and pass --binary PATH" >&2
    exit 1
  }
  echo "building periscope (cargo build --release --locked)…"
  (cd "$repo" && cargo build --release --locked --bin periscope)
  binary="${CARGO_TARGET_DIR:-$repo/target}/release/periscope"
fi
[ -f "$binary" ] || { echo "install.sh: $binary: no such file" >&2; exit 1; }

changed=0
# put SRC DEST MODE: install SRC at DEST unless DEST already has the same content and mode.
put() {
  local src="$1" dest="$2" mode="$3"
  if [ -f "$dest" ] && cmp -s "$src" "$dest" \
     && [ "$(stat -c %a "$dest")" = "${mode#0}" ]; then
    echo "unchanged  $dest"
    return
  fi
  mkdir -p "$(dirname "$dest")"
  # Copy next to the target and rename: a running binary is replaced, never truncated.
  local tmp
  tmp="$(mktemp "$dest.XXXXXX")"
  cp "$src" "$tmp"
  chmod "$mode" "$tmp"
  mv -f "$tmp" "$dest"
  echo "installed  $dest"
  changed=1
}

bin="$prefix/bin/periscope"
put "$binary" "$destdir$bin" 0755

etc="$destdir/etc/periscope"
mkdir -p "$etc"
chmod 0755 "$etc"
put "$repo/deploy/examples/relay.toml" "$etc/relay.toml.example" 0644
put "$repo/deploy/examples/agent.toml" "$etc/agent.toml.example" 0644

if [ "$systemd" = 1 ]; then
  units="$destdir/etc/systemd/system"
  tmpdir="$(mktemp -d)"
  trap 'rm -rf "$tmpdir"' EXIT
  units_changed=0
  for unit in periscope-relay.service periscope-agent.service; do
    # The units name /usr/local/bin/periscope; follow --prefix.
    sed "s#/usr/local/bin/periscope#$bin#g" "$repo/deploy/systemd/$unit" >"$tmpdir/$unit"
    before=$changed
    put "$tmpdir/$unit" "$units/$unit" 0644
    [ "$changed" = "$before" ] || units_changed=1
  done
  if [ -z "$destdir" ] && [ "$units_changed" = 1 ] && [ -d /run/systemd/system ]; then
    systemctl daemon-reload
    echo "systemd reloaded"
  fi
  if [ -z "$destdir" ] && [ -d /run/systemd/system ]; then
    for unit in periscope-relay periscope-agent; do
      if systemctl is-active --quiet "$unit" && [ "$changed" = 1 ]; then
        echo "note: $unit is running; restart it to use the new version: systemctl restart $unit"
      fi
    done
  fi
fi

if [ "$changed" = 0 ]; then
  echo "periscope is up to date ($("$destdir$bin" --version 2>/dev/null || echo "$destdir$bin"))"
else
  echo "done. Next: write /etc/periscope/relay.toml (or agent.toml + agent.token), then"
  echo "  systemctl enable --now periscope-relay   # on the VPS"
  echo "  systemctl enable --now periscope-agent   # at home"
fi
