#!/usr/bin/env bash
# Builds the lookout Debian package for amd64 (native) or arm64 (from cross/build-aarch64.sh).
#
#   systemd/build-deb.sh amd64     # builds the release binary first
#   systemd/build-deb.sh arm64     # packages target/cross/aarch64/lookout (run cross/build-aarch64.sh first)
#
# Contents: /usr/bin/lookout; ONNX Runtime from the onnxruntime wheel in /usr/lib/lookout/
# (where the binary looks for it); both bundled models in /usr/share/lookout/models/; the
# example config as /etc/lookout/lookout.toml (a conffile); the systemd unit; the docs.
# Output: target/deb/lookout_<version>_<arch>.deb
set -euo pipefail
cd "$(dirname "$0")/.."
arch=${1:-amd64}
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
cache=${LOOKOUT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/lookout}
case "$arch" in
  amd64)
    cargo build --release -p lookout --bin lookout
    bin=target/release/lookout
    ort=$(ls "$cache"/onnxruntime-*/libonnxruntime.so.1.* | head -1)
    strip=strip ;;
  arm64)
    bin=target/cross/aarch64/lookout
    ort=$(ls target/cross/aarch64/libonnxruntime.so.1.* | head -1)
    strip=aarch64-linux-gnu-strip ;;
  *) echo "usage: $0 amd64|arm64" >&2; exit 2 ;;
esac
[ -x "$bin" ] || { echo "build-deb: $bin is missing" >&2; exit 1; }
[ -f "$ort" ] || { echo "build-deb: ONNX Runtime for $arch is missing (scripts/setup.sh or cross/build-aarch64.sh)" >&2; exit 1; }

root=target/deb/lookout_${version}_${arch}
rm -rf "$root"
install -d "$root/DEBIAN" "$root/usr/bin" "$root/usr/lib/lookout" "$root/etc/lookout" \
  "$root/lib/systemd/system" "$root/usr/share/doc/lookout" "$root/usr/share/lookout/models"
install -m 0755 "$bin" "$root/usr/bin/lookout"
$strip "$root/usr/bin/lookout" 2>/dev/null || true
install -m 0644 "$ort" "$root/usr/lib/lookout/"
ln -s "$(basename "$ort")" "$root/usr/lib/lookout/libonnxruntime.so.1"
# Both bundled models, each with its [self_test] reference frame (checked at start).
for model in models/ssd-mobilenetv2-coco models/ssdlite-mobilenetv2-person; do
  install -d "$root/usr/share/lookout/$model/reference"
  # With its INT8 variant (models/README.md: which to use on which CPU).
  install -m 0644 $model/model.onnx $model/manifest.toml $model/model.int8.onnx $model/manifest.int8.toml \
    $model/labels.txt $model/LICENSE $model/NOTICE.md "$root/usr/share/lookout/$model/"
  ref=$(sed -n 's/^image = "\(reference\/[^"]*\)".*/\1/p' $model/manifest.toml)
  install -m 0644 "$model/$ref" "$root/usr/share/lookout/$model/reference/"
done
# The example config, pointing at the packaged models.
sed 's|manifest = "../models/|manifest = "/usr/share/lookout/models/|' configs/example.toml >"$root/etc/lookout/lookout.toml"
chmod 0640 "$root/etc/lookout/lookout.toml"
install -m 0644 systemd/lookout.service "$root/lib/systemd/system/"
install -m 0644 docs/INSTALL.md docs/CONFIG.md docs/EVENTS.md docs/CONSOLE.md "$root/usr/share/doc/lookout/"
cat >"$root/usr/share/doc/lookout/copyright" <<COPY
Lookout: Apache-2.0.
Bundled: ONNX Runtime (MIT, Microsoft), from the PyPI wheel onnxruntime.
Default model: SSD MobileNet V2 COCO, people and vehicles (Apache-2.0), see
/usr/share/lookout/models/ssd-mobilenetv2-coco/NOTICE.md.
Person model: SSDLite-MobileNetV2 person detector (MIT), see
/usr/share/lookout/models/ssdlite-mobilenetv2-person/NOTICE.md.
COPY
install -m 0755 systemd/debian/postinst systemd/debian/prerm systemd/debian/postrm "$root/DEBIAN/"
echo "/etc/lookout/lookout.toml" >"$root/DEBIAN/conffiles"
size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
cat >"$root/DEBIAN/control" <<CTRL
Package: lookout
Version: $version-1
Architecture: $arch
Maintainer: Lookout developers <lookout@localhost>
Installed-Size: $size
Depends: libc6 (>= 2.34), adduser, libgstreamer1.0-0 (>= 1.22), libgstreamer-plugins-base1.0-0 (>= 1.22), libgstrtspserver-1.0-0 (>= 1.22), gstreamer1.0-plugins-base, gstreamer1.0-plugins-good, gstreamer1.0-plugins-bad, gstreamer1.0-libav
Section: video
Priority: optional
Homepage: https://localhost/lookout
Description: edge video-analytics agent
 Decodes RTSP camera streams with GStreamer, runs ONNX detection models with
 ONNX Runtime and publishes structured events over MQTT, with a durable outbox
 so nothing is lost when the uplink fails.
CTRL
dpkg-deb --build --root-owner-group "$root" >/dev/null
echo "$root.deb ($(du -h "$root.deb" | cut -f1))"
