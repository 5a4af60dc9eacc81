#!/usr/bin/env python3
"""Compares the bundled models on this machine: ONNX Runtime speed at batch 1 (and 2) on
1 and 2 intra-op threads, and detections by class on frames of vtest.avi.

    $TMPDIR/lookout-convert-venv/bin/python models/convert/compare_models.py \
        [--media ~/.cache/lookout/media] [--step 5] [--runs 200]

(the venv of convert_*.sh). Sessions are set up as the agent sets them up: graph
optimisation level 3 (all), one inter-op thread, intra-op spinning off. The models take
turns in short rounds so that a noisy neighbour slows them alike; the load average is
printed with the timings, which are medians. Nothing is written.
"""
import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from convert_ssd_mobilenetv2_coco import agent_decode  # noqa: E402
from convert_nanodet_g_coco import yolov8_decode  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
def ssd(out, min_score):
    return agent_decode(out[0][0], out[1][0], min_score)


MODELS = {
    "person (ssdlite-mobilenetv2-person, fp32)": dict(
        path=ROOT / "ssdlite-mobilenetv2-person/model.onnx", labels=ROOT / "ssdlite-mobilenetv2-person/labels.txt",
        size=300, prep=lambda x: (x.astype(np.float32) * np.float32(0.007843138) - np.float32(1.0)), decode=ssd),
    "coco (ssd-mobilenetv2-coco, uint8 QDQ)": dict(
        path=ROOT / "ssd-mobilenetv2-coco/model.onnx", labels=ROOT / "ssd-mobilenetv2-coco/labels.txt",
        size=300, prep=lambda x: x, decode=ssd),
    # Only when convert_nanodet_g_coco.sh has made it (its model.onnx is not committed).
    "nanodet (nanodet-g-coco 416, fp32)": dict(
        path=ROOT / "nanodet-g-coco/model.onnx", labels=ROOT / "nanodet-g-coco/labels.txt",
        size=416, prep=lambda x: np.ascontiguousarray(x.transpose(0, 3, 1, 2)), fixed_batch=1,
        decode=lambda out, m: yolov8_decode(out[0][0], m)),
}
MODELS = {k: m for k, m in MODELS.items() if m["path"].is_file()}
VEHICLES = ("car", "truck", "bus", "motorcycle", "bicycle")


def session(path, threads):
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def frames(media, step):
    import imageio_ffmpeg
    gen = imageio_ffmpeg.read_frames(str(media / "vtest.avi"))
    meta = next(gen)
    w, h = meta["size"]
    for n, raw in enumerate(gen):
        if n % step == 0:
            yield n, np.frombuffer(raw, np.uint8).reshape(h, w, 3)


def small(rgb, size):
    return np.asarray(Image.fromarray(rgb).resize((size, size), Image.BILINEAR))


def speed(rgb, runs, rounds=10):
    print(f"load average before: {os.getloadavg()}")
    res = {}
    for threads in (1, 2):
        for batch in (1, 2):
            ms = {k: m for k, m in MODELS.items() if batch == 1 or not m.get("fixed_batch")}
            sess = {k: session(m["path"], threads) for k, m in ms.items()}
            feeds = {k: {sess[k].get_inputs()[0].name: m["prep"](np.stack([small(rgb, m["size"])] * batch))}
                     for k, m in ms.items()}
            times = {k: [] for k in ms}
            for k in ms:
                for _ in range(10):
                    sess[k].run(None, feeds[k])
            for _ in range(rounds):
                for k in ms:
                    for _ in range(max(1, runs // rounds // batch)):
                        t0 = time.perf_counter()
                        sess[k].run(None, feeds[k])
                        times[k].append((time.perf_counter() - t0) * 1000 / batch)
            for k in ms:
                t = np.array(times[k])
                res[(k, threads, batch)] = t
                print(f"{k:45s} threads {threads} batch {batch}: median {np.median(t):6.2f} ms/image "
                      f"(p10 {np.percentile(t, 10):6.2f}, p90 {np.percentile(t, 90):6.2f}, n {len(t)})", flush=True)
    print(f"load average after: {os.getloadavg()}")
    return res


def detections(media, step, min_score):
    sess = {k: session(m["path"], 2) for k, m in MODELS.items()}
    labels = {k: m["labels"].read_text().splitlines() for k, m in MODELS.items()}
    counts = {k: {} for k in MODELS}
    frames_with = {k: {"person": 0, "vehicle": 0} for k in MODELS}
    n_frames = 0
    for n, rgb in frames(media, step):
        n_frames += 1
        for k, m in MODELS.items():
            out = sess[k].run(None, {sess[k].get_inputs()[0].name: m["prep"](small(rgb, m["size"])[None])})
            dets = m["decode"](out, m.get("min_score", min_score))
            names = [labels[k][c] for c, _, _ in dets]
            for x in names:
                counts[k][x] = counts[k].get(x, 0) + 1
            frames_with[k]["person"] += "person" in names
            frames_with[k]["vehicle"] += any(x in VEHICLES for x in names)
    print(f"\nvtest.avi, every {step}th frame ({n_frames} frames), PIL bilinear stretch to the input, "
          f"agent decode (per-class NMS IoU 0.6) at score >= {min_score}:")
    for k in MODELS:
        c = counts[k]
        per = lambda x: c.get(x, 0) / n_frames  # noqa: E731
        veh = ", ".join(f"{v} {c.get(v, 0)}" for v in VEHICLES)
        other = {x: v for x, v in sorted(c.items(), key=lambda kv: -kv[1]) if x != "person" and x not in VEHICLES}
        print(f"  {k}: person {c.get('person', 0)} ({per('person'):.2f}/frame); {veh}; "
              f"frames with a person {frames_with[k]['person']}, with a vehicle {frames_with[k]['vehicle']}; "
              f"other classes {other}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--media", type=Path, default=Path.home() / ".cache/lookout/media")
    ap.add_argument("--step", type=int, default=5)
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--min-score", type=float, default=0.5)
    ap.add_argument("--skip-speed", action="store_true")
    a = ap.parse_args()
    print(f"onnxruntime {ort.__version__}, {os.cpu_count()} CPUs")
    if not a.skip_speed:
        _, rgb = next(frames(a.media, 10 ** 9))
        speed(rgb, a.runs)
    detections(a.media, a.step, a.min_score)


if __name__ == "__main__":
    main()
