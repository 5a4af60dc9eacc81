#!/usr/bin/env bash
# The benchmarks recorded in docs/BENCHMARKS.md (release build). Takes ~20 minutes.
# Run it on an otherwise idle machine; numbers are printed as Markdown table rows.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cargo build --release --workspace --bins
bench=target/release/lookout-bench
echo "## Bare ONNX Runtime, every bundled model"
$bench model --batch 1,2,4 --threads 1,2 --seconds 5
echo
echo "## Agent on N streams (H.264 768x576, 10 fps, 1 s GOP, 1 analysed fps each; rtsp-serve in its own process)"
echo "| streams | fps/camera | agent CPU (% of one core) | per stream | RSS | per stream | threads | analysed fps per stream min / median / max | analysed fps total | capture→publish p50 / p99 | replaced | decoded/received frames |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|"
for n in 1 16 64 128 256; do $bench streams --streams "$n" --fps 1; done
echo
echo "## Events on one pass of the vtest clip, COCO (default) and person model"
$bench events --fps 5
$bench events --fps 5 --manifest models/ssdlite-mobilenetv2-person/manifest.toml
echo
echo "## Snapshot encoding"
$bench snapshot
echo
echo "## Console: agent CPU closed, open on one camera, grid"
$bench console --streams 8 --fps 5 --warmup 15 --seconds 20 --rounds 3
echo
echo "## A site of many gateways: failover over 10 SIGKILLs at TTL 10 s; etcd traffic and standby memory, 750 cameras on 12 gateways"
$bench site --kills 10 --gateways 12 --cameras 750 --seconds 60
