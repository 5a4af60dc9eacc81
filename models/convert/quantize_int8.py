#!/usr/bin/env python3
"""INT8 variants of the bundled SSDs for x86 CPUs with VNNI, and how they compare with
the reference models. Run through quantize_int8.sh (it makes the pinned venv and fetches
the calibration data):

    models/convert/quantize_int8.sh [MEDIA_DIR]

Per model folder it writes `model.int8.onnx` and `manifest.int8.toml`; everything else
(the calibration ranges, the S8S8 and float variants that are measured but not shipped)
goes to --work. Byte-for-byte reproducible: a second run rewrites the same bytes (checked
on one x86 machine with 1 and 2 threads; the rounding of the ranges below is there so that
other CPUs give the same bytes too, not checked).

How:
- Calibration: 72 frames that no test uses: 29 photographs (Debian's opencv-doc:
  examples/data and the documentation's own pictures, none derived from vtest.avi or
  messi5.jpg), every 10th frame of Megamind.avi and every 30th of tree.avi (same
  package). Each is stretched to 300x300 with PIL bilinear. MinMax ranges, rounded
  outwards to 3 significant digits (so that a last-bit difference in a float kernel on
  another CPU does not change the file), then `quantize_static` from that cache.
- Quantisation: QDQ, uint8 activations (asymmetric), int8 weights per output channel
  ("U8S8 per-channel"), MinMax. The head after the last convolutions (reshapes, concats,
  the anchor box decode, the final Sigmoid) stays float: `nodes_to_exclude` = every node
  with no Conv downstream of it.
- ssd-mobilenetv2-coco is already a uint8 QAT QDQ model; its U8U8 kernels gain little or
  nothing over float on x86. It is first turned into a float graph (weight DequantizeLinear folded into float
  initializers, activation QuantizeLinear/DequantizeLinear removed; a QuantizeLinear
  right after a Conv whose zero point is 0 becomes the Clip(0, 255 * scale) it implies,
  i.e. the fused ReLU6), checked against the bundled model, then quantised like the person
  model. Its uint8 input keeps the model's own input DequantizeLinear ((p - 128) / 128),
  which the quantiser leaves as the first Conv's input: that Conv reads the input bytes.
- The person model's INT8 variant takes raw uint8 pixels too: its float input only ever
  reached a QuantizeLinear whose scale is the preprocessing's own (2/255, zero point 128),
  so the agent's float conversion, a float Transpose and that QuantizeLinear are replaced
  by a uint8 input (`uint8_input`). It reads p as (p - 128) * 2/255 where the float path
  meant (p - 127.5) * 2/255 and then rounded half to even: both are within one level.
- Accuracy: reference model vs INT8 on frames no calibration used: every --eval-step-th
  frame of vtest.avi and messi5.jpg and grace_hopper.jpg, stretched to 300x300 with PIL
  bilinear (the agent scales camera frames with GStreamer's bilinear videoscale), decoded
  as the agent does (per class score >= 0.5, clip, greedy NMS at IoU 0.6) and matched one
  to one (same class, IoU >= 0.5, in descending reference score).
- Speed: batch 1, sessions as the agent makes them (all graph optimisations, one inter-op
  thread, intra-op spinning off), 1 and 2 intra-op threads, the models taking turns in
  short rounds within one run; medians.
"""
import argparse
import json
import logging
import math
import os
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper
from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                      quantize_static)
from onnxruntime.quantization.calibrate import TensorData, TensorsData, load_tensors_data, save_tensors_data
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
# Shared with the conversions (numpy and PIL only at import).
# The agent's decoding (agent/src/infer/ssd.rs) and IoU, as the COCO conversion checks them.
from convert_ssd_mobilenetv2_coco import agent_decode, iou  # noqa: E402
from convert_ssd_mobilenetv2_coco import resize_variants as coco_resize_variants  # noqa: E402
from convert_ssdlite_person import sha256  # noqa: E402

MODELS_DIR = Path(__file__).resolve().parents[1]
SIZE = 300
SCORE = 0.5       # the manifests' postprocess.score_threshold
MATCH_IOU = 0.5

# Calibration data: paths below usr/share/doc/opencv-doc of Debian's opencv-doc package
# (4.6.0+dfsg-12), with their sha256. Not used: vtest.avi and messi5.jpg (the tests'
# media), Megamind_bugy.avi (a damaged copy of Megamind.avi), pictures made from vtest or
# messi5 (e.g. Background_Subtraction_Tutorial_*.jpg, demo.jpg, messipyr.jpg), drawings,
# charts and screenshots.
CALIB_IMAGES = [
    ("examples/data/aero1.jpg", "d9a69191f6e3642ea361bc3c62e677b2f40fe6534b78da540f4155e0734b59ef"),
    ("examples/data/aero3.jpg", "1c407146f8762b3b14a7953ff9bc4c01ed64c467d7277122e769bf7e816017a4"),
    ("examples/data/aloeL.jpg", "cce5736808efe80d9f04b118dbb978c344d4345672b332718c3e039a3eeb8eee"),
    ("examples/data/apple.jpg", "e86879de3d9a807dedc742a8f464f39e6b74bbb531a1fba3583155d94997d1cd"),
    ("examples/data/baboon.jpg", "1a1dd18d78eec44420af3b0b7f08ee3d41c982916cae3ce203d7ff35d754cc0f"),
    ("examples/data/basketball1.png", "ba06f6701f7260998b430c39b6557f775497e6ce7b1a74f0b7ea6af371bf54a6"),
    ("examples/data/box_in_scene.png", "8b0225ff76244a42bd1400c0904f8b7afea7d97b7d8115495e42e98ad347bd51"),
    ("examples/data/building.jpg", "742a1baad62ac82e91e718e77eedf7e85c2eddc4badfb8c87c6cbc86c45a8b07"),
    ("examples/data/butterfly.jpg", "34a99716b78ded10eae87b4880de739d3e68cc7dd1a96812bb28f469d5eeaea8"),
    ("examples/data/chicky_512.png", "4d2cf040de084fd3f34d5e3f96f1251faaa4787c1ac3b548fec5809a0d01854e"),
    ("examples/data/ela_original.jpg", "b55798b35e2dcb24675f0865a2442d0e4887eeb6aff322ecb1968d936cc23e7f"),
    ("examples/data/fruits.jpg", "9c031d80a1c52da5eca790db896baffec6a7e52bf786cdb7bbfca5c7f880e6a1"),
    ("examples/data/home.jpg", "23b8cf46a1965d0ec33459b875aed43187802834db49e0daa9fa2cc842e9d8d2"),
    ("examples/data/left.jpg", "fb314330c3eb0a81651c682803e73b348898157267fbc37c4c2c07d1b3a8e321"),
    ("examples/data/left06.jpg", "1cb164db61b3bd52f58a7e9340bb27c5e0278895bc80b6f292fba5cf9bccc4a1"),
    ("examples/data/leuvenA.jpg", "b2977cdbd9fb3f94dadd6f76cf586d145676deb8a22b5f0f42149d21c058c09f"),
    ("examples/data/leuvenB.jpg", "5bb41a60038a2baa5d8ea0eaba55e6e3050d721b254cf79d8d8998d7e49d664a"),
    ("examples/data/licenseplate_motion.jpg", "ea6fa9cea75df91bec656d1d3b903111a9c0708c6a3b88f405a5156de38ff9d6"),
    ("examples/data/orange.jpg", "152c20d2f380ac985de25e474e1a5f06ed34b932191342099b8272a63a15a079"),
    ("examples/data/rubberwhale1.png", "eb312435369dac9efcc92f7e098edbd9ed8d7e6dfede8b3b4d8e3702cd80b796"),
    ("examples/data/squirrel_cls.jpg", "20bb6e8ae96918a36c9886b6d48e54eedeb3948591e1485c206bc1dc60c8dc8b"),
    ("examples/data/stuff.jpg", "21cd00afbdd0727f445dd91c0a09633e6345ed5b05a3d2355453a1f3c314c6c5"),
    ("opencv4/html/person_multi_det.jpg", "ea8da5e7c7edbf13f4d3a88caf442c91c9af867b02e02d6ee1017dd8b958a4a5"),
    ("opencv4/html/pexels_double_decker_bus.jpg", "e4c4dd62995cbe30501798f86fcf5973c7abe3ff9f7711fdb72c6d1f7f304484"),
    ("opencv4/html/motion_original.jpg", "48ab70b2a43644ee9d60a9e52d7756c26533c9831262e4fbb1f42b5410a439db"),
    ("opencv4/html/bus_det.jpg", "456c28977db869eca87d72be5c59eb20e33bcdc53df459ff1139f2e137c1bc03"),
    ("opencv4/html/227943776_1.jpg", "b038fd3919363b92037715027c36f5671cc2f9cf1fda9770325f75daf9c8fa56"),
    ("opencv4/html/230501201_1.jpg", "fe4ffecdddbd2d319d5d6af1b144fe5eaeb7b845e4835dc9907fd7b9283e5c2f"),
    ("opencv4/html/studentsSample_input.jpg", "4f7158ae7b403405d0879194d0afe590b063bc81479d944705102d9ff55a2c56"),
]
CALIB_VIDEOS = [  # (path, sha256, every n-th frame)
    ("examples/data/Megamind.avi", "0057387cb7e75c8fd1663b62cfdc51fa53f527795d0fe3c1fea2fd159d3130b5", 10),
    ("examples/data/tree.avi", "4666099d0f704e310047b2f0a5ec9f936cb76a7271de9a2e70a0c57f82ac82dc", 30),
]
EVAL_VIDEO = "vtest.avi"
EVAL_IMAGES = ["messi5.jpg", "grace_hopper.jpg"]


def log(msg):
    print(f"int8: {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- frames
def small(rgb):
    """Stretched to 300x300, PIL bilinear (antialiased)."""
    return np.asarray(Image.fromarray(rgb).resize((SIZE, SIZE), Image.BILINEAR))


def video_frames(path, step):
    """(index, RGB) of every step-th frame; ffmpeg from the imageio-ffmpeg wheel, bit-exact decoding."""
    import imageio_ffmpeg
    gen = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24", input_params=["-flags", "+bitexact"])
    w, h = next(gen)["size"]
    for n, raw in enumerate(gen):
        if n % step == 0:
            yield n, np.frombuffer(raw, np.uint8).reshape(h, w, 3).copy()


def calibration_frames(data_dir, banned):
    """The calibration frames (uint8 [300,300,3]) and a description of their sources."""
    out, names = [], []
    for rel, want in CALIB_IMAGES + [(p, s) for p, s, _ in CALIB_VIDEOS]:
        p = data_dir / rel
        if not p.is_file():
            sys.exit(f"int8: missing calibration file {p} (quantize_int8.sh extracts opencv-doc there)")
        got = sha256(p)
        if got != want:
            sys.exit(f"int8: {p} has sha256 {got}, expected {want} (another opencv-doc version?)")
        if got in banned:
            sys.exit(f"int8: {p} is one of the evaluation files ({banned[got]}): refusing to calibrate on it")
    for rel, _ in CALIB_IMAGES:
        out.append(small(np.asarray(Image.open(data_dir / rel).convert("RGB"))))
        names.append(rel)
    for rel, _, step in CALIB_VIDEOS:
        n0 = len(out)
        for n, rgb in video_frames(data_dir / rel, step):
            out.append(small(rgb))
        names.append(f"{rel} every {step}th frame ({len(out) - n0} frames)")
    return out, names


def eval_frames(media, step):
    """(name, uint8 [300,300,3]): every step-th frame of vtest.avi, then the still images."""
    out = []
    vtest = media / EVAL_VIDEO
    if not vtest.is_file():
        sys.exit(f"int8: missing {vtest} (run scripts/setup.sh, or pass the media folder)")
    for n, rgb in video_frames(vtest, step):
        out.append((f"vtest#{n}", small(rgb)))
    for name in EVAL_IMAGES:
        p = media / name
        if not p.is_file():
            sys.exit(f"int8: missing {p} (run scripts/setup.sh)")
        out.append((name, small(np.asarray(Image.open(p).convert("RGB")))))
    return out


# --------------------------------------------------------------------------- decode / match
def match(ref, other, min_iou=MATCH_IOU):
    """One-to-one matching (same class, IoU >= min_iou), greedy in descending reference
    score, each taking the unused candidate of highest IoU. Returns (pairs (r, o, iou),
    unmatched of ref, unmatched of other)."""
    used, pairs, miss = set(), [], []
    for r in ref:
        best, bi = None, -1.0
        for j, o in enumerate(other):
            if j in used or o[0] != r[0]:
                continue
            v = iou(r[2], o[2])
            if v >= min_iou and v > bi:
                best, bi = j, v
        if best is None:
            miss.append(r)
        else:
            used.add(best)
            pairs.append((r, other[best], bi))
    return pairs, miss, [o for j, o in enumerate(other) if j not in used]


def session(path, threads, opt=ort.GraphOptimizationLevel.ORT_ENABLE_ALL):
    """As the agent makes its sessions."""
    so = ort.SessionOptions()
    so.graph_optimization_level = opt
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def run_all(path, prep, frames, threads=2, batch=8):
    """boxes [F,A,4], scores [F,A,C] of the model on every frame."""
    s = session(path, threads)
    name = s.get_inputs()[0].name
    bs, ss = [], []
    for i in range(0, len(frames), batch):
        b, sc = s.run(["boxes", "scores"], {name: prep(np.stack(frames[i:i + batch]))})
        bs.append(b)
        ss.append(sc)
    return np.concatenate(bs), np.concatenate(ss)


def compare(ref_out, out, names, labels, classes=None):
    """Accuracy of `out` against `ref_out` on the decoded detections at SCORE. Per class
    group (None = all classes): reference boxes, recall, unmatched boxes of `out`, mean
    |delta score| and IoU of the matched pairs, recall when `out` may go down to 0.4."""
    res = {}
    groups = [("all", None)] + [(c, labels.index(c)) for c in (classes or [])]
    dets = [(agent_decode(ref_out[0][i], ref_out[1][i], SCORE), agent_decode(out[0][i], out[1][i], SCORE),
             agent_decode(out[0][i], out[1][i], 0.4)) for i in range(len(names))]
    for g, cid in groups:
        n_ref = n_out = n_match = n_extra = n_match04 = 0
        ds, ious = [], []
        for r, o, o04 in dets:
            if cid is not None:
                r, o, o04 = ([d for d in x if d[0] == cid] for x in (r, o, o04))
            pairs, _, extra = match(r, o)
            n_ref += len(r)
            n_out += len(o)
            n_match += len(pairs)
            n_extra += len(extra)
            n_match04 += len(match(r, o04)[0])
            ds += [abs(a[1] - b[1]) for a, b, _ in pairs]
            ious += [v for _, _, v in pairs]
        res[g] = dict(frames=len(names), ref=n_ref, out=n_out, matched=n_match, extra=n_extra,
                      recall=n_match / n_ref if n_ref else float("nan"),
                      recall04=n_match04 / n_ref if n_ref else float("nan"),
                      extra_frac=n_extra / n_out if n_out else float("nan"),
                      dscore=float(np.mean(ds)) if ds else float("nan"),
                      iou=float(np.mean(ious)) if ious else float("nan"))
    return res


# --------------------------------------------------------------------------- graph edits
def head_nodes(model):
    """Nodes with no Conv downstream (and not Conv themselves): the reshapes and concats
    of the predictions, the anchor box decode and the final Sigmoid. They stay float."""
    g = model.graph
    consumers = defaultdict(list)
    for n in g.node:
        for i in n.input:
            consumers[i].append(n)
    feeds_conv = {}
    for n in reversed(g.node):  # ONNX graphs are topologically sorted
        feeds_conv[id(n)] = any(c.op_type == "Conv" or feeds_conv[id(c)] for o in n.output for c in consumers[o])
    return [n.name for n in g.node if n.op_type != "Conv" and not feeds_conv[id(n)]]


def _attr(node, name, default):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def dequantize(q, scale, zp, axis):
    """DequantizeLinear as ONNX Runtime computes it: float32((q - zp)) * float32(scale)."""
    q = q.astype(np.int64)
    zp = np.zeros_like(scale, dtype=np.int64) if zp is None else zp.astype(np.int64)
    scale = scale.astype(np.float32)
    if scale.ndim == 1 and q.ndim > 0:
        shape = [1] * q.ndim
        shape[axis] = -1
        scale, zp = scale.reshape(shape), zp.reshape(shape)
    return (q - zp).astype(np.float32) * scale


def qdq_to_float(model):
    """The float graph of a QDQ model: weight DequantizeLinear folded into float
    initializers; activation QuantizeLinear/DequantizeLinear removed (data-movement ops
    between them then carry floats); a QuantizeLinear right after a Conv whose zero point
    is the type's minimum becomes Clip(0, (qmax - zp) * scale), the activation (ReLU6) the
    quantisation implied. DequantizeLinear of data that no QuantizeLinear made (the uint8
    graph input) stays. Returns (model, facts)."""
    g = model.graph
    inits = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    prod = {o: n for n in g.node for o in n.output}
    alias = {}       # tensor -> the tensor it is now the same as
    quant = set()    # tensors holding integers made by a QuantizeLinear (directly or moved)
    folded = {}      # new float initializers
    nodes, clips, dropped_q, dropped_dq, moved = [], 0, 0, 0, 0
    movers = {"Transpose", "Reshape", "Concat", "Squeeze", "Unsqueeze", "Flatten", "Split", "Slice", "Gather"}

    def src(t):
        while t in alias:
            t = alias[t]
        return t

    for n in g.node:
        ins = list(n.input)
        if n.op_type == "DequantizeLinear" and ins[0] in inits:
            zp = inits[ins[2]] if len(ins) > 2 and ins[2] else None
            folded[n.output[0]] = dequantize(inits[ins[0]], inits[ins[1]], zp, _attr(n, "axis", 1))
            continue
        if n.op_type == "DequantizeLinear" and ins[0] in quant:
            alias[n.output[0]] = ins[0]
            dropped_dq += 1
            continue
        if n.op_type == "QuantizeLinear":
            assert ins[0] not in inits, f"{n.name}: QuantizeLinear of an initializer"
            zp = inits[ins[2]]
            scale = float(inits[ins[1]])
            info = np.iinfo(zp.dtype)
            x = prod.get(src(ins[0]))
            if x is not None and x.op_type == "Conv" and int(zp) == info.min:
                lo, hi = n.output[0] + "/min", n.output[0] + "/max"
                folded[lo] = np.array(0.0, np.float32)
                folded[hi] = np.array((info.max - int(zp)) * scale, np.float32)
                nodes.append(helper.make_node("Clip", [src(ins[0]), lo, hi], [n.output[0]], name=n.name + "/clip"))
                clips += 1
            else:
                alias[n.output[0]] = ins[0]
                dropped_q += 1
            quant.add(n.output[0])
            continue
        if n.op_type in movers and any(i in quant for i in ins):
            quant.update(n.output)
            moved += 1
        n2 = onnx.NodeProto()
        n2.CopyFrom(n)
        del n2.input[:]
        n2.input.extend(src(i) if i else i for i in ins)
        nodes.append(n2)
    # Graph outputs keep their names: the tensor they alias is renamed to them.
    rename = {}
    for o in g.output:
        s = src(o.name)
        if s != o.name:
            assert s not in {i.name for i in g.input} and s not in folded, o.name
            rename[s] = o.name
    for n in nodes:
        for k, v in enumerate(n.input):
            if v in rename:
                n.input[k] = rename[v]
        for k, v in enumerate(n.output):
            if v in rename:
                n.output[k] = rename[v]
    used = {i for n in nodes for i in n.input}
    new_inits = [t for t in g.initializer if t.name in used and t.name not in folded]
    new_inits += [numpy_helper.from_array(v, k) for k, v in folded.items() if k in used]
    out = helper.make_model(
        helper.make_graph(nodes, g.name, list(g.input), list(g.output), new_inits),
        opset_imports=list(model.opset_import), producer_name="lookout quantize_int8.py (qdq_to_float)")
    out.ir_version = model.ir_version
    out = onnx.shape_inference.infer_shapes(out)
    onnx.checker.check_model(out)
    facts = dict(weights_folded=sum(1 for k in folded if not k.endswith(("/min", "/max"))), relu_clips=clips,
                 q_removed=dropped_q, dq_removed=dropped_dq, data_moves_now_float=moved,
                 dq_kept=sum(1 for n in nodes if n.op_type == "DequantizeLinear"))
    return out, facts


def input_dq_feeds_conv(model):
    """Whether every DequantizeLinear of a (transposed) uint8 graph input feeds a Conv
    directly: the quantiser keeps such a tensor as it is (it is already quantised), so
    the Conv reads the input bytes with the model's own (p - 128) / 128."""
    g = model.graph
    inits = {t.name for t in g.initializer}
    prod = {o: n for n in g.node for o in n.output}
    inputs = {i.name for i in g.input}
    found = []
    for n in g.node:
        if n.op_type != "DequantizeLinear" or n.input[0] in inits:
            continue
        t = n.input[0]
        while t in prod and prod[t].op_type == "Transpose":
            t = prod[t].input[0]
        if t in inputs:
            found.append(all(c.op_type == "Conv" for c in g.node if n.output[0] in c.input))
    return bool(found) and all(found)


def uint8_input(path, scale, offset):
    """Makes the QDQ model at `path` take raw uint8 pixels where it took `pixel * scale +
    offset`: the graph input, through at most one Transpose, must feed exactly one
    QuantizeLinear with that scale and a zero point within half a level of -offset/scale;
    the QuantizeLinear goes and its consumers read the (transposed) uint8 input."""
    m = onnx.load(str(path))
    g = m.graph
    inits = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    (inp,) = list(g.input)
    users = [n for n in g.node if inp.name in n.input]
    tr = users[0] if len(users) == 1 and users[0].op_type == "Transpose" else None
    src = tr.output[0] if tr else inp.name
    qs = [n for n in g.node if src in n.input]
    if len(qs) != 1 or qs[0].op_type != "QuantizeLinear":
        sys.exit(f"int8: {path.name}: the input does not feed one QuantizeLinear: {[n.op_type for n in qs]}")
    q = qs[0]
    qscale, zp = float(inits[q.input[1]]), inits[q.input[2]]
    if zp.dtype != np.uint8 or abs(qscale - scale) > 1e-6 * scale or abs(float(zp) + offset / scale) > 0.5 + 1e-4:
        sys.exit(f"int8: {path.name}: input quantised with scale {qscale}, zero point {zp}: not the preprocessing's")
    if tr:
        tr.output[0] = q.output[0]
    else:
        for n in g.node:
            n.input[:] = [inp.name if x == q.output[0] else x for x in n.input]
    g.node.remove(q)
    inp.type.tensor_type.elem_type = onnx.TensorProto.UINT8
    onnx.checker.check_model(m)
    onnx.save(m, str(path))


def uint8_manifest_input(text):
    """The manifest's [input] with scale/offset (float32 preprocessing) replaced by
    dtype = "uint8"."""
    import re
    out, section, done = [], None, False
    for line in text.split("\n"):
        if line.startswith("["):
            section = line.split("]")[0] + "]"
        if section == "[input]" and re.match(r"^(scale|offset|dtype)\s*=", line):
            if not done:
                out.append('dtype = "uint8"             # raw 0..255 pixels; the model dequantises them itself ((p - 128) / 127.5)')
                done = True
            continue
        out.append(line)
    if not done:
        sys.exit("int8: the person manifest's [input] has no scale/offset")
    return "\n".join(out)


# --------------------------------------------------------------------------- quantisation
class Frames(CalibrationDataReader):
    def __init__(self, name, frames, prep):
        self.items = [{name: prep(f[None])} for f in frames]
        self.pos = 0

    def get_next(self):
        if self.pos == len(self.items):
            return None
        self.pos += 1
        return self.items[self.pos - 1]

    def __len__(self):
        return len(self.items)


def round_out(v, up, digits=3):
    """v rounded outwards (up or down) to `digits` significant decimal digits."""
    v = float(v)
    if v == 0.0 or not math.isfinite(v):
        return v
    e = math.floor(math.log10(abs(v))) - digits + 1
    m = v / 10.0 ** e
    m = math.ceil(m - 1e-9) if up else math.floor(m + 1e-9)
    return float(f"{m}e{e}")


def calibrate(float_model, frames, prep, work, tag):
    """MinMax ranges of every tensor over the calibration frames, rounded outwards to 3
    significant digits, as a calibration cache for quantize_static."""
    raw, cache = work / f"{tag}.calib-raw.json", work / f"{tag}.calib.json"
    for p in (raw, cache):
        p.unlink(missing_ok=True)
    name = onnx.load(str(float_model)).graph.input[0].name
    quantize_static(str(float_model), str(work / f"{tag}.calib-throwaway.onnx"), Frames(name, frames, prep),
                    quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    per_channel=True, calibrate_method=CalibrationMethod.MinMax, calibration_cache_path=str(raw))
    (work / f"{tag}.calib-throwaway.onnx").unlink()
    td = load_tensors_data(raw)
    data = {}
    for k in sorted(td.keys()):
        lo, hi = td[k].range_value
        assert lo.size == 1 and hi.size == 1, k
        data[k] = TensorData(lowest=np.full(lo.shape, round_out(lo.item(), False), np.float32),
                             highest=np.full(hi.shape, round_out(hi.item(), True), np.float32))
    save_tensors_data(TensorsData(CalibrationMethod.MinMax, data), cache)
    return cache


def quantize(float_model, cache, out, act_type, exclude):
    quantize_static(str(float_model), str(out), None, quant_format=QuantFormat.QDQ,
                    activation_type=act_type, weight_type=QuantType.QInt8, per_channel=True,
                    calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=list(exclude),
                    calibration_cache_path=str(cache))
    m = onnx.load(str(out))
    m.producer_name = "lookout quantize_int8.py (onnxruntime.quantization quantize_static)"
    m.producer_version = ort.__version__
    del m.metadata_props[:]
    onnx.save(m, str(out))


# --------------------------------------------------------------------------- self-test
def resize_variants(rgb):
    """The reference frame at 300x300 through other resizes than PIL's bilinear (the
    agent's self-test uses the image crate's Triangle filter, cameras GStreamer): the
    expectations must hold whatever the resize. The COCO conversion's set, plus PIL's."""
    return {"PIL bilinear": small(rgb), **coco_resize_variants(rgb)}


def parse_expects(text):
    """[(label, [x, y, w, h], min_score, min_iou)] of a manifest's [[self_test.expect]]."""
    import tomllib
    t = tomllib.loads(text)
    return [(e["label"], e["bbox"], e.get("min_score"), e.get("min_iou", 0.5)) for e in t["self_test"]["expect"]], t


def self_test(model_path, prep, manifest_text, model_dir, labels):
    """The INT8 model's detections of the objects the reference manifest expects, on the
    same reference image: bbox as the INT8 model finds it (PIL bilinear), min_score 0.1
    below the lowest score over the resizes, rounded down to 0.05, at least 0.3 (as
    convert_ssd_mobilenetv2_coco.py); min_iou as the reference manifest's, checked
    against the lowest IoU over the resizes."""
    expects, t = parse_expects(manifest_text)
    img = model_dir / t["self_test"]["image"]
    assert sha256(img) == t["self_test"]["sha256"], img
    variants = resize_variants(np.asarray(Image.open(img).convert("RGB")))
    b, s = run_all(model_path, prep, list(variants.values()))
    found = {k: agent_decode(b[i], s[i], 0.3) for i, k in enumerate(variants)}
    out = []
    for label, (x, y, w, h), ref_min, min_iou in expects:
        cid = labels.index(label)
        want = [y, x, y + h, x + w]
        cands = [d for d in found["PIL bilinear"] if d[0] == cid and iou(d[2], want) >= 0.5]
        if not cands:
            sys.exit(f"int8: the INT8 model does not find the expected {label} at {want} in {img}")
        d = max(cands, key=lambda d: iou(d[2], want))
        lows, ious = {}, {}
        for k, dets in found.items():
            m = [(e[1], iou(e[2], d[2])) for e in dets if e[0] == cid and iou(e[2], d[2]) >= min_iou]
            lows[k] = max(m)[0] if m else 0.0
            ious[k] = max(v for _, v in m) if m else 0.0
        low = min(lows.values())
        ymin, xmin, ymax, xmax = (float(v) for v in d[2])
        e = dict(label=label, bbox=[xmin, ymin, xmax - xmin, ymax - ymin], score=d[1], low=low,
                 low_iou=min(ious.values()), ref_iou=iou(d[2], want), ref_min_score=ref_min,
                 min_score=round(max(0.3, math.floor((low - 0.1) * 20 + 1e-9) / 20), 2), min_iou=min_iou,
                 per_resize=lows)
        if e["low_iou"] < min_iou or low < e["min_score"]:
            sys.exit(f"int8: self-test expectation does not hold over the resizes: {e}")
        log(f"self-test: {label} {d[1]:.3f} at x,y,w,h {[round(v, 3) for v in e['bbox']]} (IoU {e['ref_iou']:.3f} with the "
            f"reference manifest's box); lowest over resizes {low:.3f}, IoU {e['low_iou']:.3f} -> min_score {e['min_score']}")
        out.append(e)
    return out


COMMENT = ("# INT8 variant of model.onnx: QDQ, uint8 activations, int8 weights per channel (U8S8 per-channel),\n"
           "# for x86 CPUs with VNNI (AVX512-VNNI / AVX-VNNI); made by models/convert/quantize_int8.sh, see models/README.md.\n")


def int8_manifest(text, version, model_path, expects, note):
    """The reference manifest with version, file, sha256, size, source and the self-test
    expectations replaced; everything else (input dtype, layout, scale, output, labels,
    postprocess, self-test image) as it was."""
    import re
    import tomllib
    lines = text.split("\n")
    out, in_expects, top = [], False, True
    for line in lines:
        if line.startswith("["):
            top = False
        if line.startswith("[[self_test.expect]]"):
            in_expects = True
        if in_expects:
            continue
        if top and re.match(r"^version\s*=", line):
            line = f'version = "{version}"'
        elif top and re.match(r"^file\s*=", line):
            line = 'file = "model.int8.onnx"'
        elif top and re.match(r"^sha256\s*=", line):
            line = f'sha256 = "{sha256(model_path)}"\nsize = {model_path.stat().st_size}'
        elif top and re.match(r"^size\s*=", line):
            continue
        elif top and re.match(r"^source\s*=", line):
            src = tomllib.loads(line)["source"]
            line = "source = " + json.dumps(f"{src}; quantised to INT8 by models/convert/quantize_int8.sh")
        out.append(line)
    while out and out[-1] == "":
        out.pop()
    body = "\n".join(out) + "\n"
    body = body.replace("[self_test]\n", f"[self_test]   # expectations measured on the INT8 model ({note})\n", 1)
    for e in expects:
        x, y, w, h = e["bbox"]
        body += (f'\n[[self_test.expect]]\nlabel = "{e["label"]}"\n'
                 f"bbox = [{x:.3f}, {y:.3f}, {w:.3f}, {h:.3f}]   # x, y, w, h (normalised); INT8 measured score "
                 f"{e['score']:.3f}, lowest over resizes {e['low']:.3f}\n"
                 f"min_score = {e['min_score']}\nmin_iou = {e['min_iou']}\n")
    first = body.index("\n") + 1
    body = body[:first] + COMMENT + body[first:]
    tomllib.loads(body)  # still TOML
    return body


# --------------------------------------------------------------------------- speed
def speed(models, frame, runs, rounds=10, threads_list=(1, 2)):
    """{(name, threads): median ms} at batch 1; the models take turns in `rounds` rounds."""
    res = {}
    for threads in threads_list:
        sess = {k: session(p, threads) for k, (p, _) in models.items()}
        feeds = {k: {sess[k].get_inputs()[0].name: prep(frame[None])} for k, (_, prep) in models.items()}
        times = defaultdict(list)
        for k in models:
            for _ in range(10):
                sess[k].run(None, feeds[k])
        per = max(1, runs // rounds)
        for _ in range(rounds):
            for k in models:
                for _ in range(per):
                    t = time.perf_counter()
                    sess[k].run(None, feeds[k])
                    times[k].append((time.perf_counter() - t) * 1000)
        for k in models:
            res[(k, threads)] = statistics.median(times[k])
    return res


# --------------------------------------------------------------------------- main
def person_prep(x):
    return x.astype(np.float32) * np.float32(0.007843138) - np.float32(1.0)


def uint8_prep(x):
    return np.ascontiguousarray(x, dtype=np.uint8)


def fmt_row(name, r):
    return (f"| {name} | {r['frames']} | {r['ref']} | {r['recall']:.1%} ({r['matched']}/{r['ref']}) | {r['recall04']:.1%} "
            f"| {r['extra']} of {r['out']} ({r['extra_frac']:.1%}) | {r['dscore']:.4f} | {r['iou']:.3f} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--media", type=Path, default=Path.home() / ".cache/lookout/media")
    ap.add_argument("--calib-data", type=Path, required=True, help="usr/share/doc/opencv-doc of opencv-doc, extracted")
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--eval-step", type=int, default=10, help="every n-th frame of vtest.avi is evaluated")
    ap.add_argument("--runs", type=int, default=200, help="timed runs per model and thread count")
    ap.add_argument("--no-speed", action="store_true")
    ap.add_argument("--report", type=Path, help="also write the tables (Markdown) and facts (JSON) here")
    a = ap.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    logging.getLogger().setLevel(logging.ERROR)  # quantize_static's advice to pre-process
    ort.set_default_logger_severity(3)
    log(f"onnxruntime {ort.__version__}, onnx {onnx.__version__}, numpy {np.__version__}; load average {os.getloadavg()}")

    banned = {sha256(a.media / n): n for n in [EVAL_VIDEO] + EVAL_IMAGES if (a.media / n).is_file()}
    calib, calib_names = calibration_frames(a.calib_data, banned)
    log(f"calibration: {len(calib)} frames from {len(calib_names)} sources")
    evals = eval_frames(a.media, a.eval_step)
    names = [n for n, _ in evals]
    frames = [f for _, f in evals]
    log(f"evaluation: {len(frames)} frames ({names[0]} ... {names[-1]})")

    facts, tables, speed_models = {"calibration": calib_names, "versions": {
        "onnxruntime": ort.__version__, "onnx": onnx.__version__, "numpy": np.__version__}}, [], {}

    # ---- person: fp32 -> U8S8 (shipped) and S8S8 (for the record)
    pdir = MODELS_DIR / "ssdlite-mobilenetv2-person"
    pref = pdir / "model.onnx"
    plabels = (pdir / "labels.txt").read_text().split()
    exclude = head_nodes(onnx.load(str(pref)))
    cache = calibrate(pref, calib, person_prep, a.work, "person")
    pint8 = pdir / "model.int8.onnx"
    quantize(pref, cache, pint8, QuantType.QUInt8, exclude)
    uint8_input(pint8, 0.007843138, -1.0)
    if not input_dq_feeds_conv(onnx.load(str(pint8))):
        sys.exit("int8: the INT8 person model does not feed its input DequantizeLinear to the Conv directly")
    ps8 = a.work / "person.s8s8.onnx"
    quantize(pref, cache, ps8, QuantType.QInt8, exclude)
    ref_out = run_all(pref, person_prep, frames)
    r_u8 = compare(ref_out, run_all(pint8, uint8_prep, frames), names, plabels)
    r_s8 = compare(ref_out, run_all(ps8, person_prep, frames), names, plabels)
    facts["person"] = dict(excluded=exclude, u8s8=r_u8, s8s8=r_s8)
    tables += [fmt_row("person: INT8 U8S8 per-channel (shipped) vs fp32", r_u8["all"]),
               fmt_row("person: INT8 S8S8 per-channel (not shipped) vs fp32", r_s8["all"])]
    ptext = (pdir / "manifest.toml").read_text()
    pexp = self_test(pint8, uint8_prep, ptext, pdir, plabels)
    ptoml = int8_manifest(uint8_manifest_input(ptext), parse_expects(ptext)[1]["version"] + "+int8", pint8, pexp,
                          "PIL bilinear; min_score 0.1 below the lowest score over five resizes")
    (pdir / "manifest.int8.toml").write_text(ptoml)
    facts["person"]["self_test"] = pexp
    speed_models.update({"person fp32 (reference)": (pref, person_prep), "person INT8 U8S8": (pint8, uint8_prep),
                         "person INT8 S8S8": (ps8, person_prep)})

    # ---- coco: uint8 QDQ -> float -> U8S8
    cdir = MODELS_DIR / "ssd-mobilenetv2-coco"
    cref = cdir / "model.onnx"
    clabels = (cdir / "labels.txt").read_text().split("\n")
    fm, ffacts = qdq_to_float(onnx.load(str(cref)))
    cfloat = a.work / "coco.float.onnx"
    onnx.save(fm, str(cfloat))
    log(f"coco float graph: {ffacts}")
    cref_out = run_all(cref, uint8_prep, frames)
    cf_out = run_all(cfloat, uint8_prep, frames)
    ffacts["score_abs_diff_max"] = float(np.abs(cf_out[1] - cref_out[1]).max())
    ffacts["score_abs_diff_mean"] = float(np.abs(cf_out[1] - cref_out[1]).mean())
    conf = cref_out[1][..., 1:].max(-1) >= SCORE
    ffacts["box_abs_diff_max_confident"] = float(np.abs(cf_out[0] - cref_out[0])[conf].max()) if conf.any() else 0.0
    log(f"coco float vs bundled: scores max |d| {ffacts['score_abs_diff_max']:.4f} mean {ffacts['score_abs_diff_mean']:.6f}, "
        f"boxes of anchors >= 0.5 max |d| {ffacts['box_abs_diff_max_confident']:.4f}")
    groups = ["person", "car"]
    r_cf = compare(cref_out, cf_out, names, clabels, groups)
    cexclude = head_nodes(fm)
    ccache = calibrate(cfloat, calib, uint8_prep, a.work, "coco")
    cint8 = cdir / "model.int8.onnx"
    quantize(cfloat, ccache, cint8, QuantType.QUInt8, cexclude)
    if not input_dq_feeds_conv(onnx.load(str(cint8))):
        sys.exit("int8: the INT8 COCO model does not feed its input DequantizeLinear to the Conv directly")
    ci_out = run_all(cint8, uint8_prep, frames)
    r_ci = compare(cref_out, ci_out, names, clabels, groups)
    r_cif = compare(cf_out, ci_out, names, clabels, groups)
    facts["coco"] = dict(float=ffacts, excluded=cexclude, float_vs_bundled=r_cf, int8_vs_bundled=r_ci, int8_vs_float=r_cif)
    for g in ["all"] + groups:
        tables.append(fmt_row(f"coco ({g}): float (folded, not shipped) vs bundled uint8 QDQ", r_cf[g]))
    for g in ["all"] + groups:
        tables.append(fmt_row(f"coco ({g}): INT8 U8S8 per-channel (shipped) vs bundled uint8 QDQ", r_ci[g]))
    tables.append(fmt_row("coco (all): INT8 U8S8 per-channel vs float (folded)", r_cif["all"]))
    ctext = (cdir / "manifest.toml").read_text()
    cexp = self_test(cint8, uint8_prep, ctext, cdir, clabels)
    ctoml = int8_manifest(ctext, parse_expects(ctext)[1]["version"] + "+int8", cint8, cexp,
                          "PIL bilinear; min_score 0.1 below the lowest score over five resizes")
    (cdir / "manifest.int8.toml").write_text(ctoml)
    facts["coco"]["self_test"] = cexp
    speed_models.update({"coco uint8 QDQ (bundled, reference)": (cref, uint8_prep),
                         "coco float (folded)": (cfloat, uint8_prep), "coco INT8 U8S8": (cint8, uint8_prep)})

    head = ("| comparison | frames | reference boxes >= 0.5 | recall (IoU >= 0.5, same class) | recall if INT8 may go to 0.4 "
            "| boxes >= 0.5 not in the reference | mean abs delta score (matched) | mean IoU (matched) |\n"
            "|---|---|---|---|---|---|---|---|")
    md = [head] + tables
    files = {str(p.relative_to(MODELS_DIR.parent)): (p.stat().st_size, sha256(p))
             for p in (pref, pint8, cref, cint8, pdir / "manifest.int8.toml", cdir / "manifest.int8.toml")}
    files[str(ps8)] = (ps8.stat().st_size, sha256(ps8))
    files[str(cfloat)] = (cfloat.stat().st_size, sha256(cfloat))
    facts["files"] = files
    md += ["", "| file | bytes | sha256 |", "|---|---|---|"] + [f"| {k} | {v[0]} | {v[1]} |" for k, v in files.items()]

    if not a.no_speed:
        load0 = os.getloadavg()
        sp = speed(speed_models, frames[0], a.runs)
        load1 = os.getloadavg()
        facts["speed"] = {f"{k} @{t}": v for (k, t), v in sp.items()}
        facts["load"] = [load0, load1]
        md += ["", f"Speed: batch 1, median ms/image, same run, load average {load0[0]:.2f} before, {load1[0]:.2f} after "
               f"({os.cpu_count()} CPUs)", "", "| model | 1 thread | 2 threads | vs reference, 1 / 2 threads |", "|---|---|---|---|"]
        for k in speed_models:
            ref = "person fp32 (reference)" if k.startswith("person") else "coco uint8 QDQ (bundled, reference)"
            md.append(f"| {k} | {sp[(k, 1)]:.2f} | {sp[(k, 2)]:.2f} | {sp[(ref, 1)] / sp[(k, 1)]:.2f}x / "
                      f"{sp[(ref, 2)] / sp[(k, 2)]:.2f}x |")
    text = "\n".join(md)
    print(text)
    if a.report:
        a.report.mkdir(parents=True, exist_ok=True)
        (a.report / "int8-report.md").write_text(text + "\n")
        (a.report / "int8-facts.json").write_text(json.dumps(facts, indent=1, default=float) + "\n")


if __name__ == "__main__":
    main()
