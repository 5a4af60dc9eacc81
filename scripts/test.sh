#!/usr/bin/env bash
# Sets up the machine if needed (scripts/setup.sh), then runs every test: unit tests and
# the end-to-end tests against real mosquitto, gst-rtsp-server and ONNX Runtime.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
# The end-to-end tests run the real `lookout` binary: build it first.
cargo build --workspace --bins
cargo test --workspace "$@"
