#!/usr/bin/env bash
# The benchmarks recorded in docs/BENCHMARKS.md (release build). Takes ~5 minutes.
# Run it on an otherwise idle machine; numbers are printed as Markdown table rows.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cargo build --release --workspace --bins
bench=target/release/lookout-bench
echo "## Bare ONNX Runtime, default model"
$bench model --batch 1,2,4,8 --threads 1,2
echo
echo "## Agent on N streams (H.264 768x576, 10 fps, 1 s GOP)"
echo "| streams | fps/camera | messages/s | agent CPU (% of one core) | per stream | RSS | threads | decoded/received frames | replaced | messages per camera (min..max) |"
echo "|---|---|---|---|---|---|---|---|---|---|"
for n in 1 8 32; do $bench streams --streams "$n" --fps 1; done
$bench streams --streams 8 --fps 2
echo
echo "## Events on one pass of the vtest clip"
$bench events --fps 5
echo
echo "## Snapshot encoding"
$bench snapshot
