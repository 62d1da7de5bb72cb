#!/usr/bin/env bash
# Installs the Debian package and checks it the way its systemd unit runs it:
# the unit is verified where systemd-analyze works, then its ExecStart is run
# by hand (CI has no running systemd) as an unprivileged user in a fresh
# state directory, and two users chat through the installed binary.
set -euo pipefail
deb=$1
dpkg -i "$deb"
test -x /usr/bin/dyad && test -f /etc/dyad/dyad.toml && test -f /usr/lib/systemd/system/dyad.service
unit=/usr/lib/systemd/system/dyad.service
if systemd-analyze verify "$unit" 2>&1 | tee /tmp/dyad-verify.log; then
  echo "systemd-analyze verify: ok"
else
  # Without a running systemd (a container) verify cannot load units at all.
  grep -qiE "system has not been booted|failed to connect|not running|Failed to initialize" /tmp/dyad-verify.log ||
    { echo "the unit does not verify" >&2; exit 1; }
  echo "systemd-analyze verify could not run here; running ExecStart by hand"
fi
/usr/bin/dyad serve --config /etc/dyad/dyad.toml --print-config >/dev/null

# ExecStart, as the unit's user would run it: its own state directory, the
# packaged config; only the port moves (DYAD_LISTEN beats the file), so
# that CI does not depend on 8080 being free.
exec_start=$(sed -n 's/^ExecStart=//p' "$unit")
state=/var/lib/dyad
if [ -e "$state" ] && [ ! -e "$state/.made-by-check-deb" ]; then
  echo "$state exists and holds someone's data: not touching it" >&2
  exit 1
fi
rm -rf "$state" && mkdir -p "$state" && touch "$state/.made-by-check-deb"
chown -R nobody:nogroup "$state" && chmod 0700 "$state"
out=$(mktemp) && chmod 0644 "$out"
# `exec`: `$!` is then the server itself, which the trap stops (without it,
# the trap stopped only the subshell and left the server running).
(cd "$state" && DYAD_LISTEN=127.0.0.1:0 exec setpriv --reuid=nobody --regid=nogroup --clear-groups $exec_start >"$out" 2>&1) &
server=$!
trap 'kill $server 2>/dev/null || true; wait $server 2>/dev/null || true; rm -rf "$state"' EXIT
for _ in $(seq 50); do grep -q "dyad listening on" "$out" && break; sleep 0.2; done
url=$(sed -n 's/^dyad listening on //p' "$out")
test -n "$url" || { cat "$out"; echo "the packaged server did not start" >&2; exit 1; }
echo "packaged server at $url"

export HOME=$(mktemp -d)
alice() { DYAD_CONFIG=$HOME/alice.json /usr/bin/dyad "$@"; }
bob() { DYAD_CONFIG=$HOME/bob.json /usr/bin/dyad "$@"; }
echo "a long password" | alice register alice --password-stdin --server "$url"
echo "a long password" | bob register bob --password-stdin --server "$url"
alice send bob "hello from the package"
bob history alice | grep -q "hello from the package" || { echo "bob did not get the message" >&2; exit 1; }
test -f "$state/dyad.db" && [ "$(stat -c %U "$state/dyad.db")" = nobody ]
echo "the package installs, starts as its unit would, and chats"
