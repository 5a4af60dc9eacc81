#!/usr/bin/env bash
# Cross-builds `lookout` for aarch64-unknown-linux-gnu on a Debian 12 (bookworm) x86_64
# machine, from the package registries only (Debian apt, crates.io, PyPI), and smoke-tests
# the result under qemu-user. Idempotent: each step checks before it acts, so a second
# run only re-checks and re-runs the smoke test.
#
#   1. Debian packages: Debian's Rust (rustc-web/cargo-web 1.96 + the arm64 std), the
#      aarch64 cross gcc/binutils/libc, qemu-user-static, and the arm64 GStreamer libraries.
#      The arm64 packages that cannot be co-installed with their amd64 twins
#      (libgstreamer-plugins-base1.0-dev, libgstrtspserver-1.0-0 and -dev) are extracted
#      into a private sysroot instead. apt is never allowed to remove a package (--no-remove).
#   2. `cargo build --release -p lookout --bin lookout --target aarch64-unknown-linux-gnu`
#      with /usr/bin/cargo and /usr/bin/rustc (rustup has no aarch64 std here).
#   3. ONNX Runtime 1.31.1 for aarch64 from the PyPI wheel `onnxruntime`, put beside the
#      binary (where the binary looks first after the config and ORT_DYLIB_PATH).
#   4. Smoke test through qemu-aarch64-static: `lookout --version` and
#      `lookout check-config configs/example.toml` must pass; then whether ONNX Runtime
#      loads the model under emulation (`lookout run` against a dead camera and a closed
#      MQTT port, until it logs "model loaded"): informational, or required with
#      LOOKOUT_CROSS_ORT_REQUIRED=1.
#   5. Prints the binary's path, size, `file` output and glibc requirement.
#
# Output: target/cross/aarch64/{lookout,libonnxruntime.so.1,libonnxruntime.so.1.31.1}
#
# Environment:
#   LOOKOUT_CROSS_DIR      target dir for everything (default: <repo>/target/cross)
#   LOOKOUT_CROSS_ORT_SMOKE=0  skip the (informational) ONNX Runtime-under-qemu check
#   LOOKOUT_CROSS_ORT_SMOKE_SECS  how long that check may take (default 180)
#   LOOKOUT_CROSS_ORT_REQUIRED=1  make that check fail the script (cross/ci.sh does)
#   LOOKOUT_CROSS_LOCKED=0 let cargo update Cargo.lock (default: --locked)
# Run it niced on a shared machine: `nice -n 10 cross/build-aarch64.sh`.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET=aarch64-unknown-linux-gnu
TRIPLE=aarch64-linux-gnu
ORT_VERSION=1.31.1
DIR=${LOOKOUT_CROSS_DIR:-$ROOT/target/cross}
OUT=$DIR/aarch64
SYSROOT=$DIR/sysroot
SUDO=()
[ "$(id -u)" -eq 0 ] || SUDO=(sudo)
APT=("${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 -q)

log() { printf '\033[1mcross:\033[0m %s\n' "$*" >&2; }
die() { printf '\033[1;31mcross: %s\033[0m\n' "$*" >&2; exit 1; }
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
t_start=$(date +%s)

# --- 1. Debian packages ------------------------------------------------------------
# Host (amd64) tools.
HOST_PACKAGES=(
  rustc-web cargo-web gcc-aarch64-linux-gnu binutils-aarch64-linux-gnu libc6-dev-arm64-cross
  qemu-user-static pkg-config file ca-certificates
  # etcd-client compiles its gRPC protos at build time (protoc + the well-known types).
  protobuf-compiler libprotobuf-dev
)
# Target (arm64) libraries that are Multi-Arch: same, so they sit beside their amd64 twins
# in /usr/lib/aarch64-linux-gnu. libgstreamer1.0-dev:arm64 brings libglib2.0-dev:arm64 and
# libc6:arm64 (whose loader qemu runs the binary with).
ARM64_PACKAGES=(
  libstd-rust-web-dev:arm64 libgstreamer1.0-dev:arm64 liborc-0.4-dev:arm64
  libgstreamer-plugins-base1.0-0:arm64
)
# The arm64 packages that would make apt remove their amd64 twins (not Multi-Arch: same in
# bookworm): extracted into a private sysroot, never installed. gst-rtsp-server's runtime
# library is one of them, so the smoke test points the guest's LD_LIBRARY_PATH there.
EXTRACT_PACKAGES=(libgstreamer-plugins-base1.0-dev libgstrtspserver-1.0-0 libgstrtspserver-1.0-dev)
# Versions: plugins-base's dev files match the installed arm64 runtime library; the
# gst-rtsp-server ones are apt's candidate.
extract_version() {
  case $1 in
    libgstreamer-plugins-base1.0-dev) dpkg-query -W -f='${Version}' libgstreamer-plugins-base1.0-0:arm64 ;;
    *) apt-cache policy "$1:arm64" | awk '/Candidate:/ {print $2}' ;;
  esac
}

if ! dpkg --print-foreign-architectures | grep -qx arm64; then
  log "adding the arm64 architecture to dpkg"
  "${SUDO[@]}" dpkg --add-architecture arm64
fi
missing=()
for p in "${HOST_PACKAGES[@]}" "${ARM64_PACKAGES[@]}"; do installed "$p" || missing+=("$p"); done
python3 -m pip --version >/dev/null 2>&1 || missing+=(python3-pip)
if [ ${#missing[@]} -gt 0 ]; then
  log "updating apt lists"
  "${APT[@]}" update -qq
  # Simulate first: show what would be upgraded, refuse anything that removes a package.
  sim=$("${APT[@]}" -s install --no-install-recommends "${missing[@]}" 2>&1) || { echo "$sim" >&2; die "apt cannot install: ${missing[*]}"; }
  if grep -q '^Remv ' <<<"$sim"; then
    grep '^Remv ' <<<"$sim" >&2
    die "apt would remove the packages above to install ${missing[*]}; refusing (nothing was changed)"
  fi
  upgrades=$(grep -E '^Inst \S+ \[' <<<"$sim" | awk '{print $2 " " $3 "->" $4}' | tr -d '[](' || true)
  [ -z "$upgrades" ] || log "apt upgrades these installed packages to match their new arm64 twins: $(tr '\n' ' ' <<<"$upgrades")"
  log "installing: ${missing[*]}"
  "${APT[@]}" install -y -qq --no-install-recommends --no-remove "${missing[@]}" >/dev/null
fi

# Private sysroot with the conflicting packages, their .pc prefixes pointing at it.
stamp="$SYSROOT: "
for p in "${EXTRACT_PACKAGES[@]}"; do
  v=$(extract_version "$p")
  [ -n "$v" ] && [ "$v" != "(none)" ] || die "no arm64 version of $p known to apt (run apt-get update?)"
  stamp+="$p=$v "
done
if [ "$(cat "$SYSROOT/.stamp" 2>/dev/null)" != "$stamp" ]; then
  log "extracting into the private sysroot $stamp"
  rm -rf "$SYSROOT" "$DIR/debs"
  mkdir -p "$SYSROOT" "$DIR/debs"
  for p in "${EXTRACT_PACKAGES[@]}"; do
    v=$(extract_version "$p")
    (cd "$DIR/debs" && apt-get download -q=2 "$p:arm64=$v" 2>/dev/null) \
      || { "${APT[@]}" update -qq && (cd "$DIR/debs" && apt-get download -q=2 "$p:arm64=$v"); } \
      || die "cannot download $p:arm64=$v"
  done
  for deb in "$DIR"/debs/*.deb; do dpkg -x "$deb" "$SYSROOT"; done
  libdir=$SYSROOT/usr/lib/$TRIPLE
  for pc in "$libdir"/pkgconfig/*.pc; do
    sed -i "s|^prefix=/usr\$|prefix=$SYSROOT/usr|" "$pc"
    grep -q "^prefix=$SYSROOT/usr\$" "$pc" || die "unexpected prefix in $pc"
  done
  # The dev symlinks (libgstvideo-1.0.so -> libgstvideo-1.0.so.0) point at the runtime
  # libraries, which apt installed in /usr/lib/aarch64-linux-gnu. Libraries lookout does
  # not link (gstreamer-gl, whose runtime package is not installed) lose their symlink.
  for l in "$libdir"/*.so; do
    [ -L "$l" ] && [ ! -e "$l" ] || continue
    real=/usr/lib/$TRIPLE/$(readlink "$l")
    if [ -e "$real" ]; then ln -sfn "$real" "$l"; else rm -f "$l"; fi
  done
  echo "$stamp" >"$SYSROOT/.stamp"
fi

# --- 2. build ------------------------------------------------------------------------
export RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=$TRIPLE-gcc
export CC_aarch64_unknown_linux_gnu=$TRIPLE-gcc AR_aarch64_unknown_linux_gnu=$TRIPLE-ar
export PKG_CONFIG_ALLOW_CROSS=1 PKG_CONFIG_SYSROOT_DIR=/ PKG_CONFIG_PATH=
export PKG_CONFIG_LIBDIR=$SYSROOT/usr/lib/$TRIPLE/pkgconfig:/usr/lib/$TRIPLE/pkgconfig:/usr/share/pkgconfig
log "building with $(/usr/bin/cargo --version) / $(/usr/bin/rustc --version)"
t_build=$(date +%s)
# --locked: this script never rewrites Cargo.lock (a Cargo.toml edited without updating the
# lock fails here; build once natively, or set LOOKOUT_CROSS_LOCKED=0).
locked=(--locked)
[ "${LOOKOUT_CROSS_LOCKED:-1}" != 0 ] || locked=()
(cd "$ROOT" && /usr/bin/cargo build --release "${locked[@]}" -p lookout --bin lookout --target $TARGET --target-dir "$DIR")
t_build=$(($(date +%s) - t_build))
mkdir -p "$OUT"
cp -p "$DIR/$TARGET/release/lookout" "$OUT/lookout.tmp" && mv -f "$OUT/lookout.tmp" "$OUT/lookout"

# --- 3. ONNX Runtime -------------------------------------------------------------------
if [ ! -f "$OUT/libonnxruntime.so.$ORT_VERSION" ]; then
  log "fetching onnxruntime==$ORT_VERSION (manylinux_2_28_aarch64) from PyPI"
  mkdir -p "$DIR/downloads"
  python3 -m pip download -q --no-deps --only-binary=:all: --platform manylinux_2_28_aarch64 \
    --python-version 3.11 -d "$DIR/downloads" "onnxruntime==$ORT_VERSION"
  whl=$(find "$DIR/downloads" -name "onnxruntime-$ORT_VERSION-*aarch64*.whl" | head -n1)
  python3 - "$whl" "$OUT" "$ORT_VERSION" <<'EOF'
import sys, zipfile, os
whl, out, ver = sys.argv[1:]
name = f"onnxruntime/capi/libonnxruntime.so.{ver}"
with zipfile.ZipFile(whl) as z, open(os.path.join(out, f"libonnxruntime.so.{ver}.tmp"), "wb") as f:
    f.write(z.read(name))
os.chmod(f.name, 0o755)
os.replace(f.name, os.path.join(out, f"libonnxruntime.so.{ver}"))
EOF
fi
ln -sfn "libonnxruntime.so.$ORT_VERSION" "$OUT/libonnxruntime.so.1"

# --- 4. smoke test under qemu -------------------------------------------------------------
# binfmt_misc is usually not mounted in containers: run through qemu explicitly.
# -L names the folder qemu looks in first for every absolute path the guest opens, falling
# back to the real path when it is not there. Not /usr/aarch64-linux-gnu (its loader with the
# multiarch libc makes every thread creation spin forever); instead an overlay holding only
# an ARM proc/cpuinfo, so the loader and libraries come from / (libc6:arm64, multiarch) and
# ONNX Runtime's CPU detection does not read the host's x86 /proc/cpuinfo.
QROOT=$DIR/qemu-root
if [ ! -f "$QROOT/proc/cpuinfo" ]; then
  mkdir -p "$QROOT/proc"
  for ((i = 0; i < $(nproc); i++)); do
    printf 'processor\t: %d\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd08\nCPU revision\t: 3\n\n' "$i"
  done >"$QROOT/proc/cpuinfo.tmp"
  mv "$QROOT/proc/cpuinfo.tmp" "$QROOT/proc/cpuinfo"
fi
export GST_REGISTRY_FORK=no GST_REGISTRY=$DIR/gst-registry-aarch64.bin
QEMU=(qemu-aarch64-static -L "$QROOT" -E "LD_LIBRARY_PATH=$SYSROOT/usr/lib/$TRIPLE")
arm() { "${QEMU[@]}" "$OUT/lookout" "$@"; }

log "smoke test under $(qemu-aarch64-static --version | head -n1)"
version=$(cd "$ROOT" && arm --version) || die "lookout --version failed under qemu"
log "  lookout --version: $version"
(cd "$ROOT" && arm check-config configs/example.toml) >"$DIR/check-config.log" 2>&1 \
  || { cat "$DIR/check-config.log" >&2; die "lookout check-config configs/example.toml failed under qemu"; }
log "  lookout check-config configs/example.toml: ok ($(tail -n1 "$DIR/check-config.log"))"

passed=2 failed=0
ort_required=${LOOKOUT_CROSS_ORT_REQUIRED:-0}
ort_result="skipped (LOOKOUT_CROSS_ORT_SMOKE=0)"
if [ "${LOOKOUT_CROSS_ORT_SMOKE:-1}" != 0 ]; then
  # ONNX Runtime loading the model, under emulation (informational unless
  # LOOKOUT_CROSS_ORT_REQUIRED=1, as cross/ci.sh sets). Nothing listens on
  # 127.0.0.1:1, so the camera and the broker both fail and are retried; the agent loads
  # its models before it starts either.
  smoke=$DIR/smoke
  rm -rf "$smoke" && mkdir -p "$smoke/state"
  cat >"$smoke/ort.toml" <<EOF
[agent]
site = "cross"
id = "qemu"
state_dir = "$smoke/state"
onnxruntime = "$OUT/libonnxruntime.so.1"

[mqtt]
url = "mqtt://127.0.0.1:1"

[inference]
threads = 1

[[models]]
name = "person"
manifest = "$ROOT/models/ssdlite-mobilenetv2-person/manifest.toml"

[[cameras]]
id = "dead"
url = "rtsp://127.0.0.1:1/none"
model = "person"
EOF
  secs=${LOOKOUT_CROSS_ORT_SMOKE_SECS:-180}
  t_ort=$(date +%s)
  (cd "$ROOT" && RUST_LOG=info exec "${QEMU[@]}" "$OUT/lookout" run -c "$smoke/ort.toml" --grace-secs 1) \
    >"$smoke/run.log" 2>&1 &
  pid=$!
  while kill -0 $pid 2>/dev/null && ! grep -q "agent running" "$smoke/run.log" && (($(date +%s) - t_ort < secs)); do sleep 1; done
  kill -INT $pid 2>/dev/null || true
  for _ in $(seq 20); do kill -0 $pid 2>/dev/null || break; sleep 1; done
  kill -KILL $pid 2>/dev/null || true
  wait $pid 2>/dev/null && rc=0 || rc=$?
  if grep -q "model loaded" "$smoke/run.log"; then
    ort_result="ONNX Runtime loaded the model under qemu in $(($(date +%s) - t_ort)) s (log: $smoke/run.log)"
    [ "$ort_required" = 0 ] || passed=$((passed + 1))
  else
    ort_result="ONNX Runtime did NOT load under qemu (exit $rc; log: $smoke/run.log)"
    [ "$ort_required" = 0 ] || { failed=$((failed + 1)); tail -n 20 "$smoke/run.log" >&2; }
  fi
  log "  $ort_result"
fi

# --- 5. report -------------------------------------------------------------------------
glibc=$($TRIPLE-objdump -T "$OUT/lookout" | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -n1)
ort_glibc=$($TRIPLE-objdump -T "$OUT/libonnxruntime.so.$ORT_VERSION" | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -n1)
log "done in $(($(date +%s) - t_start)) s (cargo build: ${t_build} s)"
echo "binary:       $OUT/lookout ($(stat -c %s "$OUT/lookout") bytes, $(du -h "$OUT/lookout" | cut -f1))"
echo "file:         $(file -b "$OUT/lookout")"
echo "needs:        ${glibc/_/ >= } (libonnxruntime: ${ort_glibc/_/ >= })"
echo "onnxruntime:  $OUT/libonnxruntime.so.1 -> libonnxruntime.so.$ORT_VERSION"
echo "smoke test:   --version and check-config passed; $ort_result"
echo "cross-aarch64: $passed passed, $failed failed"
[ "$failed" = 0 ]
