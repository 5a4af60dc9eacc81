#!/usr/bin/env bash
# INT8 variants of the bundled SSDs (model.int8.onnx + manifest.int8.toml in
# models/ssdlite-mobilenetv2-person/ and models/ssd-mobilenetv2-coco/), and their
# accuracy and speed against the reference models (Markdown tables on stdout).
#
#   models/convert/quantize_int8.sh [MEDIA_DIR] [-- extra quantize_int8.py options]
#
# MEDIA_DIR (default ~/.cache/lookout/media, filled by scripts/setup.sh) must hold
# vtest.avi, messi5.jpg and grace_hopper.jpg: the evaluation frames, never calibration.
# Calibration data comes from Debian's opencv-doc package (`apt-get download`, ~96 MB;
# examples/data and the HTML pictures, ~45 MB, are extracted under the work folder and
# the files used are checked by sha256), or from
# OPENCV_DOC_DIR (an extracted usr/share/doc/opencv-doc) when set.
# Venv: ${TMPDIR:-/tmp}/lookout-int8-venv (pinned requirements-int8.txt, reused while
# unchanged); work folder: ${TMPDIR:-/tmp}/lookout-int8-work (calibration caches, the
# variants that are measured but not shipped, int8-report.md, int8-facts.json).
# Output is byte-for-byte reproducible on the same kind of CPU.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache=${LOOKOUT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/lookout}
media=$cache/media
if [ $# -gt 0 ] && [ "$1" != "--" ]; then media=$1; shift; fi
[ "${1:-}" = "--" ] && shift
tmp=${TMPDIR:-/tmp}
venv=${LOOKOUT_INT8_VENV:-$tmp/lookout-int8-venv}
work=${LOOKOUT_INT8_WORK:-$tmp/lookout-int8-work}
python=${PYTHON:-python3}

log() { printf 'int8: %s\n' "$*" >&2; }

req="$here/requirements-int8.txt"
stamp="$venv/.lookout-requirements.sha256"
want=$(sha256sum "$req" | cut -d' ' -f1)
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  "$python" -c 'import sys; sys.exit(not ((3, 11) <= sys.version_info[:2] <= (3, 13)))' || {
    log "$python is $("$python" --version 2>&1); the pinned numpy 2.4 / onnxruntime 1.31 need Python 3.11-3.13 (set PYTHON=...)"
    exit 1
  }
  log "creating the venv $venv (pinned versions from $req)"
  rm -rf "$venv"
  "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check --no-deps -r "$req"
  echo "$want" >"$stamp"
else
  log "reusing the venv $venv"
fi

mkdir -p "$work"
calib=${OPENCV_DOC_DIR:-}
if [ -z "$calib" ]; then
  calib=$work/opencv-doc/usr/share/doc/opencv-doc
  if [ ! -f "$calib/examples/data/Megamind.avi" ]; then
    log "fetching Debian's opencv-doc (calibration images and videos, ~96 MB)"
    rm -rf "$work/deb" "$work/opencv-doc"
    mkdir -p "$work/deb" "$work/opencv-doc"
    (cd "$work/deb" && apt-get download opencv-doc >/dev/null 2>&1)
    log "$(cd "$work/deb" && sha256sum opencv-doc_*.deb)"
    # Only what calibration reads: examples/data and the documentation's top-level pictures.
    dpkg-deb --fsys-tarfile "$work"/deb/opencv-doc_*.deb |
      tar -x -C "$work/opencv-doc" --wildcards --no-wildcards-match-slash \
        './usr/share/doc/opencv-doc/examples/data/*' './usr/share/doc/opencv-doc/opencv4/html/*.jpg'
    rm -rf "$work/deb"
  fi
fi

"$venv/bin/python" "$here/quantize_int8.py" --media "$media" --calib-data "$calib" \
  --work "$work" --report "$work" "$@"
