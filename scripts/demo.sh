#!/usr/bin/env bash
# Sets up the machine if needed (scripts/setup.sh), then runs `lookout demo`: the bundled
# clip served over RTSP, a local MQTT broker, the default person model; one line per
# published message. Extra arguments go to `lookout demo` (see --help). Ctrl-C stops: the
# agent drains to the demo's broker, which runs outside the terminal's process group and
# is stopped after it.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cargo build -q -p lookout
# exec: Ctrl-C then reaches the agent itself, not a shell waiting for it.
exec "${CARGO_TARGET_DIR:-target}/debug/lookout" demo "$@"
