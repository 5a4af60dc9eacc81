#!/bin/sh
# Regenerates models/testdata/ (tiny ONNX models with known outputs, one per output
# format) in a venv with the pinned onnx. Byte-for-byte reproducible: a second run
# leaves `git status` clean.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
venv="${TMPDIR:-/tmp}/lookout-testgen-venv"
if [ ! -x "$venv/bin/python" ] || ! cmp -s "$here/requirements.txt" "$venv/requirements.txt"; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet -r "$here/requirements.txt"
    cp "$here/requirements.txt" "$venv/requirements.txt"
fi
exec "$venv/bin/python" "$here/make_test_models.py" "${1:-$here/../testdata}"
