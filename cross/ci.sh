#!/usr/bin/env bash
# CI: cross-build `lookout` for aarch64 and smoke-test it under qemu (cross/README.md).
# Installs what it needs on first use (Debian 12 x86_64, as root or with sudo); about
# 6 minutes on a fresh 2-core machine, a few seconds when nothing changed.
# Here ONNX Runtime loading the model under qemu is required, not just reported.
set -euo pipefail
cd "$(dirname "$0")/.."
LOOKOUT_CROSS_ORT_REQUIRED=1 nice -n 10 cross/build-aarch64.sh
