#!/usr/bin/env bash
# Installs what the comparison peers (tests/peers/, NOT part of Lookout) need, on
# Debian 12. Idempotent: each step checks before it acts.
#   - Debian packages: python3-gi + GStreamer typelibs and plugins (python_agent.py),
#     ffmpeg (ffmpeg_ingest.sh), python3-venv
#   - a venv at ${LOOKOUT_CACHE:-~/.cache/lookout}/peers-venv made from Debian's
#     /usr/bin/python3 with --system-site-packages (for gi), holding requirements.txt;
#     remade when requirements.txt changes
# Prints the venv's python on stdout at the end.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
CACHE=${LOOKOUT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/lookout}
VENV="$CACHE/peers-venv"
# Debian's python: the one python3-gi is built for (a pyenv or other python3 on PATH can't import it).
PY=/usr/bin/python3

log() { printf '\033[1mpeers setup:\033[0m %s\n' "$*" >&2; }

APT_PACKAGES=(
  python3 python3-venv python3-gi gir1.2-gstreamer-1.0 gir1.2-gst-plugins-base-1.0
  gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad gstreamer1.0-libav
  ffmpeg
)
"$here/../../scripts/apt-ensure.sh" "peers setup" "${APT_PACKAGES[@]}"

stamp="$VENV/.requirements.txt"
if [ ! -x "$VENV/bin/python" ] || ! cmp -s "$here/requirements.txt" "$stamp"; then
  log "making $VENV"
  rm -rf "$VENV"
  mkdir -p "$CACHE"
  "$PY" -m venv --system-site-packages "$VENV"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$here/requirements.txt"
  cp "$here/requirements.txt" "$stamp"
fi

"$VENV/bin/python" - <<'PY' >&2
import gi
gi.require_version("Gst", "1.0")
from gi.repository import Gst
import numpy, onnxruntime, paho.mqtt
Gst.init(None)
for e in ("rtspsrc", "rtph264depay", "h264parse", "avdec_h264", "videorate", "videoscale", "videoconvert", "appsink"):
    assert Gst.ElementFactory.find(e), f"GStreamer element {e} missing"
print(f"peers setup: ok: {Gst.version_string()}, onnxruntime {onnxruntime.__version__}, "
      f"numpy {numpy.__version__}, paho-mqtt {paho.mqtt.__version__}")
PY
command -v ffmpeg >/dev/null || { log "ffmpeg missing"; exit 1; }
echo "$VENV/bin/python"
