#!/usr/bin/env bash
# Sets up the machine if needed (scripts/setup.sh), then runs `lookout demo`: the bundled
# clip served over RTSP, a local MQTT broker, the default person model; one line per
# published message. Extra arguments go to `lookout demo` (see --help). Ctrl-C stops.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cargo build -q -p lookout
exec target/debug/lookout demo "$@"
