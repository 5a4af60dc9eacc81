//! Decoders for the output formats other than `ssd-decoded` (see [`super::ssd`]):
//! TF Object Detection API whole-graph exports and Ultralytics YOLO heads. Each takes
//! one image's slice of the outputs and returns detections normalised to the frame,
//! highest score first. Scores at or above `score_floor` pass (as in `ssd`).

use super::detection::{BBox, Detection, clip};
use super::letterbox::Placement;
use super::ssd::{NmsParams, nms_per_class};

/// TF Object Detection API post-processed outputs for one image: `boxes` `K x 4`
/// (ymin, xmin, ymax, xmax normalised to the input), `scores` and `classes` `K`
/// (classes are 1-based label-map ids stored as floats), `num` the valid count.
///
/// The graph has already run NMS, so this only keeps the first `num` slots, drops
/// classes outside the labels (0 would be background), thresholds and clips.
pub fn tfod(
    boxes: &[f32],
    scores: &[f32],
    classes: &[f32],
    num: f32,
    labels: usize,
    place: &Placement,
    p: &NmsParams,
) -> Vec<Detection> {
    let slots = (boxes.len() / 4).min(scores.len()).min(classes.len());
    let valid = if num.is_finite() && num > 0.0 { (num as usize).min(slots) } else { 0 };
    let mut out: Vec<Detection> = (0..valid)
        .filter_map(|k| {
            let score = scores[k];
            if score < p.score_floor || score.is_nan() {
                return None;
            }
            let id = classes[k].round();
            if !(1.0..=labels as f32).contains(&id) {
                return None;
            }
            let b = &boxes[k * 4..k * 4 + 4];
            let bbox = clip(place.to_frame(b[1], b[0], b[3], b[2]))?;
            Some(Detection { class_id: id as u32 - 1, score, bbox })
        })
        .collect();
    out.sort_by(|a, b| b.score.total_cmp(&a.score));
    out.truncate(p.max_detections);
    out
}

/// Ultralytics YOLOv8 / YOLO11 head for one image: `4 + classes` rows of `anchors`
/// values (cx, cy, w, h in input pixels, then one score per class). Each anchor
/// proposes its best class, as Ultralytics' NMS does by default.
pub fn yolov8(out: &[f32], classes: usize, anchors: usize, place: &Placement, p: &NmsParams) -> Vec<Detection> {
    if out.len() < (4 + classes) * anchors {
        return Vec::new();
    }
    let at = |row: usize, a: usize| out[row * anchors + a];
    let cands = (0..anchors)
        .filter_map(|a| {
            let (class, score) = best((0..classes).map(|c| at(4 + c, a)))?;
            if score < p.score_floor {
                return None;
            }
            Some(Detection { class_id: class, score, bbox: corners(place, at(0, a), at(1, a), at(2, a), at(3, a)) })
        })
        .collect();
    nms_per_class(cands, p)
}

/// Ultralytics YOLOv5 head for one image: `anchors` rows of `5 + classes` values (cx,
/// cy, w, h in input pixels, objectness, class probabilities); the score of a class
/// is objectness x its probability.
pub fn yolov5(out: &[f32], classes: usize, anchors: usize, place: &Placement, p: &NmsParams) -> Vec<Detection> {
    let stride = 5 + classes;
    if out.len() < stride * anchors {
        return Vec::new();
    }
    let cands = out
        .chunks_exact(stride)
        .take(anchors)
        .filter_map(|r| {
            let (class, prob) = best(r[5..].iter().copied())?;
            let score = r[4] * prob;
            if score < p.score_floor || score.is_nan() {
                return None;
            }
            Some(Detection { class_id: class, score, bbox: corners(place, r[0], r[1], r[2], r[3]) })
        })
        .collect();
    nms_per_class(cands, p)
}

/// The highest non-NaN value and its index.
fn best(values: impl Iterator<Item = f32>) -> Option<(u32, f32)> {
    values.enumerate().filter(|(_, v)| !v.is_nan()).max_by(|a, b| a.1.total_cmp(&b.1)).map(|(i, v)| (i as u32, v))
}

/// A centre-size box in input pixels, normalised to the frame (not clipped).
fn corners(place: &Placement, cx: f32, cy: f32, w: f32, h: f32) -> BBox {
    place.to_frame_px(cx - w / 2.0, cy - h / 2.0, cx + w / 2.0, cy + h / 2.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: NmsParams = NmsParams { score_floor: 0.5, iou: 0.5, max_detections: 10 };

    fn close(d: &Detection, class_id: u32, score: f32, b: [f32; 4]) -> bool {
        d.class_id == class_id
            && (d.score - score).abs() < 1e-6
            && [(d.bbox.x, b[0]), (d.bbox.y, b[1]), (d.bbox.w, b[2]), (d.bbox.h, b[3])]
                .iter()
                .all(|(g, w)| (g - w).abs() < 1e-5)
    }

    #[test]
    fn tfod_keeps_num_detections_maps_one_based_classes_and_thresholds() {
        // Four slots, three valid: class 2 at 0.9, class 1 at 0.4 (below 0.5), class 1 at 0.7;
        // slot 3 (padding past num_detections) scores 0.95 and must not appear.
        let boxes = [
            0.1, 0.2, 0.5, 0.6, // ymin, xmin, ymax, xmax
            0.0, 0.0, 0.1, 0.1, //
            0.5, 0.5, 1.2, 0.9, // sticks out at the bottom
            0.0, 0.0, 1.0, 1.0,
        ];
        let d = tfod(&boxes, &[0.9, 0.4, 0.7, 0.95], &[2.0, 1.0, 1.0, 1.0], 3.0, 2, &Placement::full(8, 8), &P);
        assert_eq!(d.len(), 2, "{d:?}");
        assert!(close(&d[0], 1, 0.9, [0.2, 0.1, 0.4, 0.4]), "{d:?}");
        assert!(close(&d[1], 0, 0.7, [0.5, 0.5, 0.4, 0.5]), "{d:?}");
    }

    #[test]
    fn tfod_drops_background_and_ids_beyond_the_labels() {
        let boxes = [0.1, 0.1, 0.5, 0.5].repeat(3);
        let d = tfod(&boxes, &[0.9, 0.8, 0.7], &[0.0, 3.0, 2.0], 3.0, 2, &Placement::full(8, 8), &P);
        assert_eq!(d.iter().map(|d| d.class_id).collect::<Vec<_>>(), vec![1]);
    }

    /// One anchor per column: `[4 + C, A]`.
    fn v8(cols: &[[f32; 6]]) -> Vec<f32> {
        (0..6).flat_map(|r| cols.iter().map(move |c| c[r])).collect()
    }

    #[test]
    fn yolov8_takes_each_anchors_best_class_and_runs_nms_per_class() {
        let place = Placement::full(100, 100);
        let out = v8(&[
            [50.0, 50.0, 20.0, 40.0, 0.2, 0.8], // class 1 at 0.8
            [51.0, 50.0, 20.0, 40.0, 0.1, 0.7], // overlaps the first, class 1: suppressed
            [50.0, 50.0, 20.0, 40.0, 0.6, 0.1], // same box, class 0: kept
            [10.0, 10.0, 4.0, 4.0, 0.3, 0.4],   // below the threshold
        ]);
        let d = yolov8(&out, 2, 4, &place, &P);
        assert_eq!(d.len(), 2, "{d:?}");
        assert!(close(&d[0], 1, 0.8, [0.4, 0.3, 0.2, 0.4]), "{d:?}");
        assert!(close(&d[1], 0, 0.6, [0.4, 0.3, 0.2, 0.4]), "{d:?}");
    }

    #[test]
    fn yolov8_boxes_leave_the_padding_and_are_clipped_to_the_frame() {
        // 200x100 frame into 100x100: content 100x50 from row 25.
        let place = Placement::letterbox(200, 100, 100, 100);
        // A box from the top padding (y 15..35) into the frame: y 0..0.2 after clipping.
        let out = v8(&[[50.0, 25.0, 20.0, 20.0, 0.9, 0.0]]);
        let d = yolov8(&out, 2, 1, &place, &P);
        assert_eq!(d.len(), 1);
        assert!(close(&d[0], 0, 0.9, [0.4, 0.0, 0.2, 0.2]), "{d:?}");
        // A box wholly in the padding has nothing left.
        let out = v8(&[[50.0, 10.0, 20.0, 10.0, 0.9, 0.0]]);
        assert!(yolov8(&out, 2, 1, &place, &P).is_empty());
    }

    #[test]
    fn yolov5_score_is_objectness_times_class_probability() {
        let place = Placement::full(100, 100);
        let out = [
            50.0, 50.0, 20.0, 20.0, 0.9, 0.1, 0.8, // 0.9 x 0.8 = 0.72, class 1
            20.0, 20.0, 10.0, 10.0, 0.6, 0.9, 0.0, // 0.6 x 0.9 = 0.54, class 0
            80.0, 80.0, 10.0, 10.0, 0.4, 1.0, 0.0, // 0.4: below 0.5 whatever the class says
        ];
        let d = yolov5(&out, 2, 3, &place, &P);
        assert_eq!(d.len(), 2, "{d:?}");
        assert!(close(&d[0], 1, 0.72, [0.4, 0.4, 0.2, 0.2]), "{d:?}");
        assert!(close(&d[1], 0, 0.54, [0.15, 0.15, 0.1, 0.1]), "{d:?}");
    }

    #[test]
    fn truncated_outputs_decode_to_nothing_rather_than_panicking() {
        let place = Placement::full(100, 100);
        assert!(yolov8(&[0.5; 10], 2, 4, &place, &P).is_empty());
        assert!(yolov5(&[0.5; 10], 2, 4, &place, &P).is_empty());
    }
}
