#!/usr/bin/env bash
# CI for installation: builds the amd64 package, installs it on this machine and checks
# what an installer relies on, then removes and purges it.
set -euo pipefail
cd "$(dirname "$0")/.."
deb=$(systemd/build-deb.sh amd64 | awk '{print $1}')
echo "package: $deb ($(du -h "$deb" | cut -f1))"
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "./$deb" >/dev/null
lookout --version
# The shipped config validates, read as the service user.
runuser -u lookout -- lookout check-config /etc/lookout/lookout.toml
unit=/lib/systemd/system/lookout.service
out=$(systemd-analyze verify "$unit" 2>&1 || true)
if [ -n "$out" ]; then echo "systemd-analyze verify:"; echo "$out"; exit 1; fi
echo "systemd-analyze verify: ok"
score=$(systemd-analyze security --offline=true "$unit" 2>/dev/null | sed -n 's/.*Overall exposure level for lookout.service: \([0-9.]*\).*/\1/p')
echo "systemd-analyze security exposure: $score"
awk -v s="$score" 'BEGIN { exit !(s != "" && s <= 2.5) }'
# remove keeps the config and the outbox; purge deletes them.
touch /var/lib/lookout/ci-marker
dpkg -r lookout >/dev/null
test -f /etc/lookout/lookout.toml && test -f /var/lib/lookout/ci-marker
echo "remove: config and state kept"
dpkg -P lookout >/dev/null
test ! -e /etc/lookout && test ! -e /var/lib/lookout
echo "purge: config and state deleted"
