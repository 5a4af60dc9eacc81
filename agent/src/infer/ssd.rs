//! Post-processing for SSD models whose graph ends at decoded boxes and per-class scores
//! (`ssd-decoded` in the manifest): threshold, per-class greedy NMS, clip, top-k.
//!
//! The order is TF Object Detection API's: clip boxes to the frame and drop empty ones,
//! then NMS. Thresholding before NMS gives the same surviving boxes as TF's
//! post-processor (which thresholds at ~0 and filters later): a box is only ever
//! suppressed by a higher-scoring box of its class, which passes any threshold the
//! lower one passes. `decode` is checked against TF's own detections in the tests.

use super::detection::{BBox, Detection, clip};
use super::letterbox::Placement;

/// Post-processing knobs.
#[derive(Debug, Clone, Copy)]
pub struct NmsParams {
    /// Candidates below this are dropped before NMS: the camera's tracking floor (or the
    /// model's own threshold for stills), not the reporting threshold.
    pub score_floor: f32,
    pub iou: f32,
    pub max_detections: usize,
}

/// Decodes one image's outputs, the frame filling the model input.
///
/// `boxes` holds `anchors × 4` values (ymin, xmin, ymax, xmax), `scores` holds
/// `anchors × (1 + classes)` with column 0 the background. Returns detections sorted by
/// score, highest first.
pub fn decode(boxes: &[f32], scores: &[f32], classes: usize, p: &NmsParams) -> Vec<Detection> {
    decode_placed(boxes, scores, classes, &Placement::full(1, 1), p)
}

/// [`decode`] for a frame placed in the input as `place` says (boxes are mapped to the
/// frame before clipping).
pub fn decode_placed(
    boxes: &[f32],
    scores: &[f32],
    classes: usize,
    place: &Placement,
    p: &NmsParams,
) -> Vec<Detection> {
    let stride = classes + 1;
    let anchors = (boxes.len() / 4).min(scores.len() / stride);
    let mut out = Vec::new();
    for class in 0..classes {
        let mut cands: Vec<(f32, BBox)> = (0..anchors)
            .filter_map(|a| {
                let s = scores[a * stride + 1 + class];
                if s < p.score_floor || s.is_nan() {
                    return None;
                }
                let b = &boxes[a * 4..a * 4 + 4];
                let (ymin, xmin, ymax, xmax) = (b[0], b[1], b[2], b[3]);
                Some((s, clip(place.to_frame(xmin, ymin, xmax, ymax))?))
            })
            .collect();
        cands.sort_by(|a, b| b.0.total_cmp(&a.0));
        let kept = nms(&cands, p.iou, p.max_detections);
        out.extend(kept.into_iter().map(|(score, bbox)| Detection { class_id: class as u32, score, bbox }));
    }
    out.sort_by(|a, b| b.score.total_cmp(&a.score));
    out.truncate(p.max_detections);
    out
}

/// Greedy NMS over candidates sorted by descending score: keeps a box unless it
/// overlaps a kept box by more than `iou`.
pub fn nms(sorted: &[(f32, BBox)], iou: f32, max: usize) -> Vec<(f32, BBox)> {
    let mut kept: Vec<(f32, BBox)> = Vec::new();
    for &(s, b) in sorted {
        if kept.len() >= max {
            break;
        }
        if kept.iter().all(|(_, k)| k.iou(&b) <= iou) {
            kept.push((s, b));
        }
    }
    kept
}

/// Per-class greedy NMS over candidates in any order (Ultralytics' order: NMS on the
/// unclipped boxes, then clip to the frame), highest score first, at most
/// `p.max_detections`. Boxes left empty by clipping are dropped.
pub fn nms_per_class(mut cands: Vec<Detection>, p: &NmsParams) -> Vec<Detection> {
    cands.sort_by(|a, b| a.class_id.cmp(&b.class_id).then(b.score.total_cmp(&a.score)));
    let mut out = Vec::new();
    for group in cands.chunk_by(|a, b| a.class_id == b.class_id) {
        let sorted: Vec<(f32, BBox)> = group.iter().map(|d| (d.score, d.bbox)).collect();
        let class_id = group[0].class_id;
        out.extend(
            nms(&sorted, p.iou, p.max_detections)
                .into_iter()
                .filter_map(|(score, bbox)| Some(Detection { class_id, score, bbox: clip(bbox)? })),
        );
    }
    out.sort_by(|a, b| b.score.total_cmp(&a.score));
    out.truncate(p.max_detections);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(x: f32, y: f32, w: f32, h: f32) -> BBox {
        BBox { x, y, w, h }
    }

    #[test]
    fn iou_of_identical_boxes_is_one_and_disjoint_is_zero() {
        assert!((b(0.1, 0.1, 0.2, 0.2).iou(&b(0.1, 0.1, 0.2, 0.2)) - 1.0).abs() < 1e-6);
        assert_eq!(b(0.0, 0.0, 0.1, 0.1).iou(&b(0.5, 0.5, 0.1, 0.1)), 0.0);
        // Half-overlapping: inter 0.5, union 1.5.
        assert!((b(0.0, 0.0, 0.2, 0.1).iou(&b(0.1, 0.0, 0.2, 0.1)) - 1.0 / 3.0).abs() < 1e-6);
    }

    #[test]
    fn nms_suppresses_overlaps_above_threshold_only() {
        let c = [(0.9, b(0.1, 0.1, 0.2, 0.2)), (0.8, b(0.11, 0.1, 0.2, 0.2)), (0.7, b(0.6, 0.6, 0.2, 0.2))];
        let kept = nms(&c, 0.6, 100);
        assert_eq!(kept.iter().map(|k| k.0).collect::<Vec<_>>(), vec![0.9, 0.7]);
        // With a threshold above their overlap, both survive.
        assert_eq!(nms(&c, 0.95, 100).len(), 3);
        assert_eq!(nms(&c, 0.95, 2).len(), 2);
    }

    #[test]
    fn decode_thresholds_converts_and_clips() {
        // Two anchors, one class: anchor 0 is a person sticking out of the frame on the left.
        let boxes = [0.2, -0.1, 0.6, 0.3, 0.0, 0.0, 0.1, 0.1];
        let scores = [0.1, 0.9, 0.8, 0.2];
        let d = decode(&boxes, &scores, 1, &NmsParams { score_floor: 0.5, iou: 0.6, max_detections: 10 });
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].class_id, 0);
        assert!((d[0].bbox.x - 0.0).abs() < 1e-6 && (d[0].bbox.w - 0.3).abs() < 1e-6);
        assert!((d[0].bbox.y - 0.2).abs() < 1e-6 && (d[0].bbox.h - 0.4).abs() < 1e-6);
    }

    /// The conversion script's fixtures: the ONNX model's raw outputs on TF's own
    /// preprocessed input, and TF's own post-processed detections for the same image.
    fn fixture(name: &str) -> (Vec<f32>, Vec<f32>, Vec<(f32, BBox)>) {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/ssdlite-mobilenetv2-person/reference");
        let read = |f: &str| -> serde_json::Value {
            serde_json::from_str(&std::fs::read_to_string(dir.join(f)).expect("fixture present"))
                .expect("fixture is JSON")
        };
        let raw = read(&format!("{name}.raw.json"));
        let flat = |k: &str| -> Vec<f32> {
            raw[k]
                .as_array()
                .expect("array")
                .iter()
                .flat_map(|r| r.as_array().expect("row").iter().map(|v| v.as_f64().expect("number") as f32))
                .collect()
        };
        let refs = read("detections.json");
        let image = refs["images"]
            .as_array()
            .expect("images")
            .iter()
            .find(|i| i["image"].as_str().is_some_and(|s| s.starts_with(name)))
            .expect("image in fixtures");
        let dets = image["detections"]
            .as_array()
            .expect("detections")
            .iter()
            .map(|d| {
                let b = &d["bbox"];
                let f = |k: &str| b[k].as_f64().expect("number") as f32;
                (d["score"].as_f64().expect("score") as f32, BBox { x: f("x"), y: f("y"), w: f("w"), h: f("h") })
            })
            .collect();
        (flat("boxes"), flat("scores"), dets)
    }

    #[test]
    fn decode_reproduces_tensorflow_detections_on_real_images() {
        for name in ["grace_hopper", "messi5", "vtest_frame200"] {
            let (boxes, scores, expected) = fixture(name);
            assert_eq!(boxes.len(), 1917 * 4, "{name}");
            let got = decode(&boxes, &scores, 1, &NmsParams { score_floor: 0.3, iou: 0.6, max_detections: 100 });
            assert_eq!(got.len(), expected.len(), "{name}: {got:?} vs {expected:?}");
            for (g, (score, bbox)) in got.iter().zip(&expected) {
                assert!((g.score - score).abs() < 1e-4, "{name}: score {} vs {score}", g.score);
                assert!(g.bbox.iou(bbox) > 0.999, "{name}: box {:?} vs {bbox:?}", g.bbox);
            }
        }
    }

    #[test]
    fn nms_is_per_class() {
        // Same box, two classes: both survive because NMS runs per class.
        let boxes = [0.1, 0.1, 0.5, 0.5];
        let scores = [0.0, 0.9, 0.8];
        let d = decode(&boxes, &scores, 2, &NmsParams { score_floor: 0.5, iou: 0.5, max_detections: 10 });
        assert_eq!(d.iter().map(|d| d.class_id).collect::<Vec<_>>(), vec![0, 1]);
    }
}
