#!/usr/bin/env bash
# Installs everything Lookout needs on a fresh Debian 12 (bookworm) machine, from
# the package registries only. Idempotent: each step checks before it acts, so a
# second run takes a few seconds.
#
#   - Debian packages: GStreamer 1.22 dev files + plugins, gst-rtsp-server, mosquitto,
#     and headless Chromium + chromedriver for the console's browser test (Debian's own
#     pair, always the same version; the test speaks WebDriver over HTTP: no Node needed),
#     etcd 3.4 for the site tests (nothing runs it as a service: the tests start their own
#     cluster) and protoc, which the etcd-client crate needs at build time
#   - ONNX Runtime 1.31 (ort 2.0.0-rc.15's API level) from the PyPI wheel `onnxruntime`
#   - test media: vtest.avi and messi5.jpg (Debian's opencv-doc), grace_hopper.jpg (matplotlib's wheel)
#
# Everything downloaded lands in $LOOKOUT_CACHE (default ~/.cache/lookout), where the
# `lookout` binary looks for ONNX Runtime by default (see agent/src/infer/runtime.rs).
set -euo pipefail

ORT_VERSION=1.31.1
MPL_VERSION=3.9.2
CACHE=${LOOKOUT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/lookout}
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

log() { printf '\033[1msetup:\033[0m %s\n' "$*" >&2; }

APT_PACKAGES=(
  pkg-config build-essential unzip curl ca-certificates
  libgstreamer1.0-dev libgstreamer-plugins-base1.0-dev libgstrtspserver-1.0-dev
  gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad
  gstreamer1.0-plugins-ugly gstreamer1.0-libav gstreamer1.0-rtsp gstreamer1.0-tools
  mosquitto mosquitto-clients openssl
  chromium chromium-driver
  etcd-server etcd-client protobuf-compiler libprotobuf-dev
)

"$(cd "$(dirname "$0")" && pwd)/apt-ensure.sh" setup "${APT_PACKAGES[@]}"
# The Debian mosquitto service is not wanted: tests and the demo start their own broker.
if command -v systemctl >/dev/null && systemctl is-active --quiet mosquitto 2>/dev/null; then
  $SUDO systemctl disable --now mosquitto >/dev/null 2>&1 || true
fi

mkdir -p "$CACHE"

# --- ONNX Runtime ------------------------------------------------------------------
ort_dir="$CACHE/onnxruntime-$ORT_VERSION"
if [ ! -f "$ort_dir/libonnxruntime.so.1" ]; then
  case "${LOOKOUT_ARCH:-$(uname -m)}" in
    x86_64) plat=manylinux_2_28_x86_64 ;;
    aarch64) plat=manylinux_2_28_aarch64 ;;
    *) echo "setup: no onnxruntime wheel known for $(uname -m)" >&2; exit 1 ;;
  esac
  log "fetching onnxruntime==$ORT_VERSION ($plat) from PyPI"
  tmp=$(mktemp -d)
  python3 -m pip download -q --no-deps --only-binary=:all: --platform "$plat" \
    --python-version 3.11 -d "$tmp" "onnxruntime==$ORT_VERSION"
  unzip -q -o "$tmp"/onnxruntime-*.whl 'onnxruntime/capi/libonnxruntime.so*' -d "$tmp/x"
  mkdir -p "$ort_dir"
  cp "$tmp"/x/onnxruntime/capi/libonnxruntime.so.* "$ort_dir/"
  ln -sf "$(basename "$tmp"/x/onnxruntime/capi/libonnxruntime.so.*.*)" "$ort_dir/libonnxruntime.so.1"
  rm -rf "$tmp"
fi

# --- test media ----------------------------------------------------------------------
media="$CACHE/media"
mkdir -p "$media"
if [ ! -f "$media/vtest.avi" ] || [ ! -f "$media/messi5.jpg" ]; then
  log "fetching vtest.avi and messi5.jpg from Debian's opencv-doc"
  tmp=$(mktemp -d)
  (cd "$tmp" && apt-get download -qq opencv-doc >/dev/null 2>&1 || { $SUDO apt-get update -qq && apt-get download -qq opencv-doc; })
  dpkg -x "$tmp"/opencv-doc_*.deb "$tmp/x"
  d="$tmp/x/usr/share/doc/opencv-doc/examples/data"
  for f in vtest.avi messi5.jpg; do
    if [ -f "$d/$f" ]; then cp "$d/$f" "$media/"; elif [ -f "$d/$f.gz" ]; then gunzip -c "$d/$f.gz" >"$media/$f"; fi
  done
  rm -rf "$tmp"
fi
if [ ! -f "$media/grace_hopper.jpg" ]; then
  log "fetching grace_hopper.jpg from matplotlib's wheel"
  tmp=$(mktemp -d)
  python3 -m pip download -q --no-deps --only-binary=:all: --platform manylinux2014_x86_64 \
    --python-version 3.11 -d "$tmp" "matplotlib==$MPL_VERSION"
  unzip -q -j -o "$tmp"/matplotlib-*.whl '*/sample_data/grace_hopper.jpg' -d "$media"
  rm -rf "$tmp"
fi

log "ready: ONNX Runtime in $ort_dir, media in $media"
