#!/usr/bin/env python3
# COMPARISON PEER, NOT PART OF LOOKOUT. A deliberately straightforward Python camera
# agent ("what a competent engineer writes in an afternoon"), run by the benchmark
# beside Lookout on the same RTSP streams (docs/BENCHMARKS.md, tests/peers/README.md).
#
# Per camera: one GStreamer pipeline through PyGObject that fully decodes the stream
# (every frame, not keyframes only), drops to 1 fps with videorate and scales to
# 300x300 RGB into an appsink. The appsink callback puts the frame into a queue that
# keeps the latest frame per camera; one worker thread runs one ONNX Runtime session
# shared by all cameras (one frame per run), filters scores >= threshold with a trivial
# greedy NMS and publishes one JSON message per analysed frame with paho-mqtt, QoS 1.
# After --seconds it stops everything and prints per-camera counts as JSON on stdout.
#
#   python_agent.py --model models/ssd-mobilenetv2-coco/model.onnx --threads 2 \
#       --broker-host 127.0.0.1 --broker-port 1883 --seconds 60 rtsp://127.0.0.1:8554/cam1 ...
#
# Needs gi (Debian's python3-gi, GStreamer 1.x typelibs) + onnxruntime, numpy, paho-mqtt:
# tests/peers/setup.sh makes a venv with all of them and prints its python.
import argparse
import collections
import json
import os
import resource
import signal
import sys
import threading
import time

import gi

gi.require_version("Gst", "1.0")
from gi.repository import Gst  # noqa: E402

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import paho.mqtt.client as mqtt  # noqa: E402

SIZE = 300

PIPELINE = (
    "rtspsrc location={url} protocols=tcp latency=200 "
    "! rtph264depay ! h264parse ! avdec_h264 "
    "! videorate ! video/x-raw,framerate={fps}/1 "
    "! videoscale ! videoconvert ! video/x-raw,format=RGB,width={size},height={size} "
    "! appsink name=sink emit-signals=true max-buffers=1 drop=true sync=false"
)


def log(msg):
    print(f"python_agent: {msg}", file=sys.stderr, flush=True)


class LatestFrames:
    """A queue that holds at most one frame per camera: a newer frame replaces the older."""

    def __init__(self):
        self._frames = collections.OrderedDict()
        self._cond = threading.Condition()
        self._closed = False
        self.replaced = collections.Counter()

    def put(self, cam, frame):
        with self._cond:
            if cam in self._frames:
                self.replaced[cam] += 1
                del self._frames[cam]
            self._frames[cam] = frame
            self._cond.notify()

    def get(self):
        """The oldest waiting camera's latest frame, or None once closed."""
        with self._cond:
            while not self._frames and not self._closed:
                self._cond.wait()
            if self._closed:
                return None
            return self._frames.popitem(last=False)

    def close(self):
        with self._cond:
            self._closed = True
            self._cond.notify_all()


class Camera:
    def __init__(self, cam_id, url, fps, frames):
        self.id = cam_id
        self.url = url
        self.frames = frames
        self.received = 0
        self.analysed = 0
        self.errors = 0
        self.first_frame_at = None
        self.restart_at = None
        self.pipeline = Gst.parse_launch(PIPELINE.format(url=url, fps=fps, size=SIZE))
        self.pipeline.get_by_name("sink").connect("new-sample", self._on_sample)
        self.bus = self.pipeline.get_bus()

    def _on_sample(self, sink):
        sample = sink.emit("pull-sample")
        if sample is None:
            return Gst.FlowReturn.OK
        buf = sample.get_buffer()
        ok, info = buf.map(Gst.MapFlags.READ)
        if not ok:
            return Gst.FlowReturn.OK
        try:
            data = np.frombuffer(info.data, dtype=np.uint8)
            stride = len(data) // SIZE  # rows may be padded
            frame = data.reshape(SIZE, stride)[:, : SIZE * 3].reshape(SIZE, SIZE, 3).copy()
        finally:
            buf.unmap(info)
        self.received += 1
        if self.first_frame_at is None:
            self.first_frame_at = time.monotonic()
        self.frames.put(self.id, frame)
        return Gst.FlowReturn.OK

    def start(self):
        self.pipeline.set_state(Gst.State.PLAYING)

    def stop(self):
        self.pipeline.set_state(Gst.State.NULL)

    def poll(self, now):
        """Handles errors and end-of-stream: restart after 2 s."""
        if self.restart_at is not None:
            if now >= self.restart_at:
                log(f"{self.id}: restarting")
                self.restart_at = None
                self.start()
            return
        msg = self.bus.timed_pop_filtered(0, Gst.MessageType.ERROR | Gst.MessageType.EOS)
        if msg is None:
            return
        if msg.type == Gst.MessageType.ERROR:
            err, _ = msg.parse_error()
            log(f"{self.id}: error: {err.message}")
        else:
            log(f"{self.id}: end of stream")
        self.errors += 1
        self.stop()
        self.restart_at = now + 2.0


def load_labels(model_path):
    path = os.path.join(os.path.dirname(os.path.abspath(model_path)), "labels.txt")
    try:
        with open(path) as f:
            return [line.strip() for line in f]
    except OSError:
        return []


def nms(boxes, scores, iou_threshold=0.5):
    """Plain greedy NMS over [K,4] (ymin, xmin, ymax, xmax) boxes; returns kept indices."""
    order = np.argsort(-scores)
    keep = []
    area = np.maximum(0, boxes[:, 2] - boxes[:, 0]) * np.maximum(0, boxes[:, 3] - boxes[:, 1])
    while order.size:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        ymin = np.maximum(boxes[i, 0], boxes[rest, 0])
        xmin = np.maximum(boxes[i, 1], boxes[rest, 1])
        ymax = np.minimum(boxes[i, 2], boxes[rest, 2])
        xmax = np.minimum(boxes[i, 3], boxes[rest, 3])
        inter = np.maximum(0, ymax - ymin) * np.maximum(0, xmax - xmin)
        iou = inter / np.maximum(area[i] + area[rest] - inter, 1e-9)
        order = rest[iou <= iou_threshold]
    return keep


class Detector:
    def __init__(self, model_path, threads, threshold):
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.add_session_config_entry("session.inter_op.allow_spinning", "0")
        self.session = ort.InferenceSession(model_path, so, providers=["CPUExecutionProvider"])
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        # tensor(uint8): raw RGB pixels (COCO SSD); tensor(float): p*2/255-1 (person SSDLite)
        self.uint8_input = inp.type == "tensor(uint8)"
        outputs = [o.name for o in self.session.get_outputs()]
        if "boxes" not in outputs or "scores" not in outputs:
            raise SystemExit(f"model outputs {outputs}: want boxes and scores")
        self.labels = load_labels(model_path)
        self.threshold = threshold

    def detect(self, frame):
        if self.uint8_input:
            x = frame[None]
        else:
            x = frame[None].astype(np.float32) * (2.0 / 255.0) - 1.0
        boxes, scores = self.session.run(["boxes", "scores"], {self.input_name: x})
        boxes, scores = boxes[0], scores[0][:, 1:]  # column 0 is background
        cls = scores.argmax(axis=1)
        best = scores[np.arange(len(cls)), cls]
        idx = np.nonzero(best >= self.threshold)[0]
        dets = []
        for c in np.unique(cls[idx]):
            sel = idx[cls[idx] == c]
            b = np.clip(boxes[sel], 0.0, 1.0)
            for k in nms(b, best[sel]):
                ymin, xmin, ymax, xmax = (float(v) for v in b[k])
                if ymax <= ymin or xmax <= xmin:
                    continue
                label = self.labels[c] if c < len(self.labels) else str(int(c))
                dets.append(
                    {
                        "label": label,
                        "score": round(float(best[sel][k]), 4),
                        "bbox": {
                            "x": round(xmin, 4),
                            "y": round(ymin, 4),
                            "w": round(xmax - xmin, 4),
                            "h": round(ymax - ymin, 4),
                        },
                    }
                )
        return dets


def worker(frames, cams, detector, client, topic_prefix, stats):
    while True:
        item = frames.get()
        if item is None:
            return
        cam_id, frame = item
        t0 = time.monotonic()
        dets = detector.detect(frame)
        ms = (time.monotonic() - t0) * 1000.0
        cams[cam_id].analysed += 1
        stats["inference_ms"] += ms
        msg = {"camera": cam_id, "ts": round(time.time(), 3), "inference_ms": round(ms, 2), "detections": dets}
        info = client.publish(f"{topic_prefix}/{cam_id}/detections", json.dumps(msg), qos=1)
        stats["published"] += 1
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            stats["publish_errors"] += 1
        stats["last_info"] = info


def main():
    ap = argparse.ArgumentParser(description="Comparison peer: naive Python RTSP -> ONNX -> MQTT agent")
    ap.add_argument("urls", nargs="+", metavar="RTSP_URL")
    ap.add_argument("--model", default="models/ssd-mobilenetv2-coco/model.onnx")
    ap.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads")
    ap.add_argument("--broker-host", default="127.0.0.1")
    ap.add_argument("--broker-port", type=int, default=1883)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--fps", type=int, default=1, help="frames analysed per second per camera")
    ap.add_argument("--threshold", type=float, default=0.5)
    ap.add_argument("--topic-prefix", default="peers/python")
    args = ap.parse_args()

    Gst.init(None)
    detector = Detector(args.model, args.threads, args.threshold)

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"python-agent-{os.getpid()}")
    client.max_queued_messages_set(10000)
    client.connect(args.broker_host, args.broker_port, keepalive=30)
    client.loop_start()

    frames = LatestFrames()
    cams = collections.OrderedDict()
    for i, url in enumerate(args.urls, 1):
        cam = Camera(f"cam{i}", url, args.fps, frames)
        cams[cam.id] = cam
    stats = {"published": 0, "publish_errors": 0, "inference_ms": 0.0, "last_info": None}
    t = threading.Thread(target=worker, args=(frames, cams, detector, client, args.topic_prefix, stats), daemon=True)
    t.start()

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    started = time.monotonic()
    deadline = started + args.seconds
    for cam in cams.values():
        cam.start()
    while not stop.is_set():
        now = time.monotonic()
        if now >= deadline:
            break
        for cam in cams.values():
            cam.poll(now)
        stop.wait(0.1)
    elapsed = time.monotonic() - started

    for cam in cams.values():
        cam.stop()
    frames.close()
    t.join(timeout=10)
    last = stats["last_info"]
    if last is not None:
        try:
            last.wait_for_publish(timeout=5)
        except (RuntimeError, ValueError):
            pass
    client.disconnect()
    client.loop_stop()

    ru = resource.getrusage(resource.RUSAGE_SELF)
    analysed = sum(c.analysed for c in cams.values())
    summary = {
        "peer": "python_agent",
        "seconds": round(elapsed, 2),
        "model": args.model,
        "threads": args.threads,
        "cpu_seconds": round(ru.ru_utime + ru.ru_stime, 2),
        "max_rss_kib": ru.ru_maxrss,
        "published": stats["published"],
        "publish_errors": stats["publish_errors"],
        "mean_inference_ms": round(stats["inference_ms"] / analysed, 2) if analysed else None,
        "cameras": {
            c.id: {
                "url": c.url,
                "received": c.received,
                "analysed": c.analysed,
                "replaced_in_queue": frames.replaced[c.id],
                "errors": c.errors,
                "fps": round(c.analysed / elapsed, 3) if elapsed > 0 else 0.0,
                "fps_since_first_frame": (
                    round(c.analysed / (started + elapsed - c.first_frame_at), 3)
                    if c.first_frame_at is not None and started + elapsed > c.first_frame_at
                    else 0.0
                ),
            }
            for c in cams.values()
        },
    }
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
