#!/usr/bin/env bash
# Installs those of the named Debian packages that are not installed yet, in one apt-get
# run (the set-up scripts' shared step).
#   scripts/apt-ensure.sh LABEL PKG...     (LABEL prefixes the log line)
set -euo pipefail
label=$1
shift
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
missing=()
for p in "$@"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -gt 0 ] || exit 0
printf '\033[1m%s:\033[0m installing Debian packages: %s\n' "$label" "${missing[*]}" >&2
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
