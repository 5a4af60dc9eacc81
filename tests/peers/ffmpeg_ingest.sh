#!/usr/bin/env bash
# COMPARISON PEER, NOT PART OF LOOKOUT. Frigate-style ingest only: one ffmpeg process
# per camera that fully decodes the RTSP stream and hands 1 fps of 300x300 RGB frames
# to a pipe (here /dev/null): the decode cost a Frigate-like NVR pays before any
# detection. Run by the benchmark beside Lookout (docs/BENCHMARKS.md, tests/peers/README.md).
#
#   ffmpeg_ingest.sh --seconds 60 rtsp://127.0.0.1:8554/cam1 rtsp://127.0.0.1:8554/cam2 ...
#
# Runs for --seconds (or until SIGTERM/SIGINT), then stops every ffmpeg (TERM, KILL after
# 5 s), waits for them and prints one JSON line on stdout: frames per camera (from each
# ffmpeg's -progress output) and the CPU seconds of all ffmpeg processes (this shell's
# reaped children). Needs ffmpeg (tests/peers/setup.sh installs it).
set -uo pipefail

seconds=60
urls=()
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) seconds=$2; shift 2 ;;
    --seconds=*) seconds=${1#*=}; shift ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) urls+=("$1"); shift ;;
  esac
done
[ ${#urls[@]} -gt 0 ] || { echo "usage: $0 --seconds N RTSP_URL..." >&2; exit 2; }

work=$(mktemp -d "${TMPDIR:-/tmp}/ffmpeg-ingest.XXXXXX")
pids=()
stopping=0

stop_all() {
  [ "$stopping" -eq 1 ] && return
  stopping=1
  kill -TERM "${pids[@]}" 2>/dev/null
  for _ in $(seq 50); do
    alive=0
    for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ "$alive" -eq 0 ] && break
    sleep 0.1
  done
  kill -KILL "${pids[@]}" 2>/dev/null
}
trap 'stop_all' TERM INT

start=$(date +%s.%N)
i=0
for url in "${urls[@]}"; do
  i=$((i + 1))
  ffmpeg -nostdin -hide_banner -loglevel error -nostats -progress "$work/cam$i.progress" \
    -rtsp_transport tcp -i "$url" \
    -vf fps=1,scale=300:300 -pix_fmt rgb24 -f rawvideo pipe: >/dev/null 2>"$work/cam$i.log" &
  pids+=($!)
done

# Interruptible sleep: the trap runs as soon as a signal arrives.
sleep "$seconds" &
sleeper=$!
wait "$sleeper" 2>/dev/null
kill "$sleeper" 2>/dev/null
stop_all
wait "${pids[@]}" 2>/dev/null
end=$(date +%s.%N)

# CPU of the reaped children (all ffmpeg processes): /proc/self/stat fields 16, 17
# (cutime, cstime) in clock ticks, read by this shell itself.
read -r -a st <"/proc/$$/stat"
tck=$(getconf CLK_TCK)
elapsed=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.2f", b - a }')
cpu=$(awk -v u="${st[15]}" -v s="${st[16]}" -v t="$tck" 'BEGIN { printf "%.2f", (u + s) / t }')

cams=""
i=0
for url in "${urls[@]}"; do
  i=$((i + 1))
  frames=$(grep -o '^frame=[0-9]*' "$work/cam$i.progress" 2>/dev/null | tail -n 1 | cut -d= -f2)
  frames=${frames:-0}
  err=$(head -c 300 "$work/cam$i.log" 2>/dev/null | tr '\n"\\' '   ')
  fps=$(awk -v f="$frames" -v e="$elapsed" 'BEGIN { printf "%.3f", (e > 0 ? f / e : 0) }')
  [ -n "$cams" ] && cams+=", "
  cams+="\"cam$i\": {\"url\": \"$url\", \"frames\": $frames, \"fps\": $fps, \"stderr\": \"$err\"}"
done
echo "{\"peer\": \"ffmpeg_ingest\", \"seconds\": $elapsed, \"cpu_seconds\": $cpu, \"cameras\": {$cams}}"
rm -rf "$work"
