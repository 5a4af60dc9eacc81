#!/usr/bin/env bash
# The benchmarks recorded in docs/BENCHMARKS.md (release build). Takes ~65 minutes.
# Run it on an otherwise idle machine; numbers are printed as Markdown table rows.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cargo build --release --workspace --bins
bench=target/release/lookout-bench
person=models/ssdlite-mobilenetv2-person
coco=models/ssd-mobilenetv2-coco
echo "## Bare ONNX Runtime, every bundled model and its INT8 variant"
$bench model --batch 1,2 --threads 1,2 --seconds 5
echo
echo "## Snapshot encoding: the image crate (before) and jpegenc (now)"
$bench snapshot
echo
echo "## Agent on N streams (H.264 768x576, 10 fps, 1 s GOP staggered across cameras, 1 analysed fps each; rtsp-serve in its own process)"
echo "Cameras are received by the agent's default client (rtsp_client = auto: the shared client for these rtsp:// TCP cameras) unless a row names one."
row_header() {
  echo "| streams | fps/camera | agent CPU (% of one core) | per stream | RSS | per stream | threads | analysed fps per stream min / median / max | analysed fps total | capture→publish p50 / p99 | not analysed (replaced in the slot, or skipped before decoding while the last waited) | decoded/received frames |"
  echo "|---|---|---|---|---|---|---|---|---|---|---|---|"
}
echo "### The person model (fp32), the agent's defaults (2 intra-op threads): the rows recorded before"
row_header
for n in 16 64; do $bench streams --streams "$n" --fps 1; done
echo "### The person model's INT8 variant, 1 intra-op thread (16 and 64 three times: this shared machine's CPU per frame drifts by ~10 % between minutes)"
row_header
for n in 16 64; do
  for r in 1 2 3; do $bench streams --streams "$n" --fps 1 --manifest "$person/manifest.int8.toml" --threads 1; done
done
for n in 16 64 128; do $bench streams --streams "$n" --fps 1 --manifest "$person/manifest.int8.toml" --threads 1 --stages; done
echo "### The same with the RTSP server and the broker pinned to one core, the agent to the other"
row_header
for n in 16 64; do $bench streams --streams "$n" --fps 1 --manifest "$person/manifest.int8.toml" --threads 1 --pin-server; done
echo "### The person model's INT8 variant, 1 intra-op thread, 2 workers (sessions)"
row_header
for n in 16 64 128; do $bench streams --streams "$n" --fps 1 --manifest "$person/manifest.int8.toml" --threads 1 --workers 2 --warmup 25; done
echo "### The person model's INT8 variant, 1 intra-op thread, rtspsrc against the shared RTSP client (the default; same sitting)"
row_header
for n in 16 64; do
  for c in gstreamer shared; do $bench streams --streams "$n" --fps 1 --manifest "$person/manifest.int8.toml" --threads 1 --rtsp-client "$c"; done
done
$bench streams --streams 128 --fps 1 --manifest "$person/manifest.int8.toml" --threads 1 --rtsp-client shared --stages
for n in 128 256; do $bench streams --streams "$n" --fps 1 --manifest "$person/manifest.int8.toml" --threads 1 --workers 2 --rtsp-client shared --warmup 25; done
echo "### The person model's INT8 variant, 2 intra-op threads"
row_header
for n in 16 64 128; do $bench streams --streams "$n" --fps 1 --manifest "$person/manifest.int8.toml" --threads 2; done
echo "### The default (COCO) model: bundled and INT8, 1 intra-op thread"
row_header
for m in manifest.toml manifest.int8.toml; do
  for n in 16 64; do $bench streams --streams "$n" --fps 1 --manifest "$coco/$m" --threads 1; done
done
echo
echo "## Decode only what moved: 16 cameras of the quiet scene (someone crossing a tenth of the time)"
$bench quiet --streams 16 --manifest "$person/manifest.int8.toml"
echo
echo "## Comparison peers on the same 16 streams (tests/peers)"
python=$(tests/peers/setup.sh | tail -n 1)
$bench peers --streams 16 --python "$python"
echo
echo "## Events on one pass of the vtest clip, COCO (default) and person model"
$bench events --fps 5
$bench events --fps 5 --manifest "$person/manifest.toml"
echo
echo "## Console: agent CPU closed, open on one camera, grid"
$bench console --streams 8 --fps 5 --warmup 15 --seconds 20 --rounds 3
echo
echo "## A site of many gateways: failover over 10 SIGKILLs at TTL 10 s; etcd traffic and standby memory, 750 cameras on 12 gateways"
$bench site --kills 10 --gateways 12 --cameras 750 --seconds 60
