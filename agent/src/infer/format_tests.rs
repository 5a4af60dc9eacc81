//! The output formats end to end through ONNX Runtime, on the tiny generated models in
//! `models/testdata/` (made by `models/testgen/make_test_models.py`: constant outputs
//! that encode the detections each test expects), plus manifest validation.
//!
//! These need ONNX Runtime (scripts/setup.sh installs it) and fail without it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::detection::Detection;
use super::manifest::{DType, Layout, ModelError, ModelSpec, OutputSpec, Resize};
use super::{Detector, InferError, InputBatch};
use crate::camera::{CameraCtx, Frame};
use crate::config::InferenceConfig;

fn manifest(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/testdata").join(name).join("manifest.toml")
}

fn load(name: &str) -> Result<Detector, InferError> {
    let spec = ModelSpec::load(&manifest(name)).expect("test model manifest loads");
    detector(&spec)
}

fn detector(spec: &ModelSpec) -> Result<Detector, InferError> {
    let env = super::runtime::environment(None).expect("ONNX Runtime is installed (run scripts/setup.sh)");
    let cfg = InferenceConfig {
        threads: 1,
        workers: 1,
        max_batch: 2,
        max_wait: Duration::ZERO,
        spinning: false,
        providers: vec![crate::config::Provider::Cpu],
    };
    Detector::new(spec, &cfg, &env)
}

/// A frame as the pipeline delivers it: `w` x `h` RGB filled with `value`, from a
/// camera of `native_w` x `native_h` whose detections reach the tracker from `floor`.
fn frame(native_w: u32, native_h: u32, w: u32, h: u32, value: u8, floor: f32) -> Frame {
    Frame {
        slot: 0,
        camera: Arc::new(CameraCtx::new("cam", floor / crate::camera::LOW_SCORE_FRACTION)),
        pts_ns: 0,
        captured: SystemTime::UNIX_EPOCH,
        native_width: native_w,
        native_height: native_h,
        width: w,
        height: h,
        stride: w as usize * 3,
        pixels: Box::new(vec![value; w as usize * h as usize * 3]),
        original: None,
        sampled_at: std::time::Instant::now(),
    }
}

/// (class, score, [x, y, w, h]) each, in order, boxes to 1e-5.
fn assert_detections(got: &[Detection], want: &[(u32, f32, [f32; 4])]) {
    assert_eq!(got.len(), want.len(), "got {got:?}, want {want:?}");
    for (g, (class, score, b)) in got.iter().zip(want) {
        let close = g.class_id == *class
            && (g.score - score).abs() < 1e-6
            && [(g.bbox.x, b[0]), (g.bbox.y, b[1]), (g.bbox.w, b[2]), (g.bbox.h, b[3])]
                .iter()
                .all(|(g, w)| (g - w).abs() < 1e-5);
        assert!(close, "got {g:?}, want class {class} score {score} box {b:?}\nall: {got:?}");
    }
}

#[test]
fn ssd_decoded_model_thresholds_suppresses_and_clips_per_frame_of_a_batch() {
    let mut det = load("ssd-decoded").expect("loads");
    // Two cameras in one batch: the second reports only from 0.7.
    let frames = [frame(640, 480, 32, 32, 0, 0.5), frame(640, 480, 32, 32, 0, 0.7)];
    let got = det.detect(&frames).expect("runs");
    let person = (0, 0.9, [0.2, 0.1, 0.4, 0.4]);
    assert_detections(&got[0], &[person, (1, 0.6, [0.6, 0.6, 0.4, 0.3])]);
    assert_detections(&got[1], &[person]);
}

#[test]
fn bad_shape_model_is_refused_naming_the_anchor_count() {
    match load("bad-shape") {
        Err(InferError::Mismatch { what, message, .. }) => {
            assert_eq!(what, "output shape");
            assert!(
                message.contains("\"boxes\"") && message.contains("dim 1 is 5, expected 4 (output.anchors)"),
                "{message}"
            );
        }
        Err(e) => panic!("refused for another reason: {e}"),
        Ok(_) => panic!("a model with 5 anchors loaded under a manifest that says 4"),
    }
}

#[test]
fn shape_checks_refuse_a_class_count_that_disagrees_with_the_labels() {
    // The ssd-decoded model has 1 + 2 score columns; with 3 labels it needs 1 + 3.
    let mut spec = ModelSpec::load(&manifest("ssd-decoded")).expect("loads");
    spec.labels.push("bus".into());
    match detector(&spec) {
        Err(InferError::Mismatch { message, .. }) => {
            assert!(message.contains("dim 2 is 3, expected 4 (background + 3 labels"), "{message}")
        }
        other => panic!("expected a mismatch, got {:?}", other.map(|_| ())),
    }
}

#[test]
fn tfod_model_keeps_num_detections_and_maps_one_based_classes() {
    let mut det = load("tfod").expect("loads");
    assert_eq!(det.spec().input.dtype, DType::Uint8);
    let frames = [frame(1920, 1080, 32, 32, 0, 0.5), frame(640, 480, 32, 32, 0, 0.5)];
    let got = det.detect(&frames).expect("runs");
    // Slot 0: class 1 -> labels[0]; slot 1: class 3 -> labels[2]; slot 2 below 0.5;
    // slot 3 (0.7) is past num_detections = 3.
    let want = [(0, 0.95, [0.2, 0.1, 0.4, 0.4]), (2, 0.8, [0.5, 0.5, 0.3, 0.4])];
    assert_detections(&got[0], &want);
    assert_detections(&got[1], &want);
}

#[test]
fn yolov8_boxes_map_back_through_the_letterbox() {
    let mut det = load("yolov8").expect("loads");
    // One landscape and one portrait camera in the same batch: the same model output
    // lands in different places of each frame.
    let frames = [frame(1280, 720, 64, 64, 0, 0.5), frame(720, 1280, 64, 64, 0, 0.5)];
    let got = det.detect(&frames).expect("runs");
    // 1280x720: content rows 14..50. The 0.95 box lies in the padding above; the 0.85
    // one is suppressed by the 0.9 one; the car on the same box survives.
    assert_detections(
        &got[0],
        &[(0, 0.9, [0.25, 0.25, 0.5, 0.5]), (1, 0.7, [0.25, 0.25, 0.5, 0.5]), (0, 0.6, [0.0625, 0.5, 0.125, 0.25])],
    );
    // 720x1280: content columns 14..50; now the 0.6 box is in the padding.
    let big = [2.0 / 36.0, 23.0 / 64.0, 32.0 / 36.0, 18.0 / 64.0];
    assert_detections(
        &got[1],
        &[(0, 0.95, [14.0 / 36.0, 2.0 / 64.0, 8.0 / 36.0, 8.0 / 64.0]), (0, 0.9, big), (1, 0.7, big)],
    );
}

#[test]
fn yolov5_scores_objectness_times_class_and_runs_a_fixed_batch_frame_by_frame() {
    let mut det = load("yolov5").expect("loads");
    assert_eq!(det.spec().fixed_batch(), Some(1));
    // Two frames for a model that takes one at a time; 1280x480 is letterboxed to
    // 64x24 from row 12 of the 64x48 input.
    let frames = [frame(640, 640, 64, 48, 0, 0.5), frame(1280, 480, 64, 48, 0, 0.5)];
    let got = det.detect(&frames).expect("runs");
    let (car, person) = (0.9f32 * 0.8, 0.8f32 * 1.0);
    assert_detections(&got[0], &[(0, person, [0.0, 0.0, 0.5, 0.5]), (1, car, [0.5, 0.5, 0.25, 0.25])]);
    // The person box starts in the padding: clipped at the frame's top.
    assert_detections(&got[1], &[(0, person, [0.125, 0.0, 0.375, 0.5]), (1, car, [0.5, 0.5, 0.1875, 0.5])]);
}

#[test]
fn letterboxed_frames_reach_the_model_padded_with_the_pad_value() {
    let det = load("yolov8").expect("loads");
    assert_eq!((det.spec().input.layout, det.spec().input.resize), (Layout::NCHW, Resize::Letterbox));
    // A white 1280x720 frame, delivered stretched to 64x64: rows 14..50 white, the rest 114.
    let (input, places) = det.preprocess(&[frame(1280, 720, 64, 64, 255, 0.5)]).expect("preprocesses");
    assert_eq!((places[0].top, places[0].content_h), (14, 36));
    let InputBatch::F32(a) = input else { panic!("float32 model got {input:?}") };
    assert_eq!(a.shape(), &[1, 3, 64, 64]);
    let grey = 114.0 * det.spec().input.scale;
    for c in 0..3 {
        for y in 0..64 {
            let want = if (14..50).contains(&y) { 255.0 * det.spec().input.scale } else { grey };
            assert!((0..64).all(|x| (a[[0, c, y, x]] - want).abs() < 1e-6), "channel {c} row {y}");
        }
    }
}

#[test]
fn uint8_and_float_inputs_get_the_frame_pixels_in_their_layout() {
    // NHWC uint8 (tfod): raw bytes; NHWC float32 (ssd-decoded): pixel * scale + offset.
    let mut f = frame(32, 32, 32, 32, 0, 0.5);
    let mut px = vec![0u8; 32 * 32 * 3];
    px[(5 * 32 + 7) * 3..][..3].copy_from_slice(&[10, 20, 30]);
    f.pixels = Box::new(px);
    let det = load("tfod").expect("loads");
    let Ok((InputBatch::U8(a), _)) = det.preprocess(std::slice::from_ref(&f)) else { panic!("uint8 input") };
    assert_eq!((a[[0, 5, 7, 0]], a[[0, 5, 7, 1]], a[[0, 5, 7, 2]], a[[0, 5, 8, 0]]), (10, 20, 30, 0));
    let det = load("ssd-decoded").expect("loads");
    let Ok((InputBatch::F32(a), _)) = det.preprocess(std::slice::from_ref(&f)) else { panic!("float input") };
    let s = det.spec().input.scale;
    assert!((a[[0, 5, 7, 2]] - (30.0 * s - 1.0)).abs() < 1e-6 && (a[[0, 0, 0, 0]] + 1.0).abs() < 1e-6);
    // A stretch model refuses frames of another size.
    assert!(matches!(det.preprocess(&[frame(64, 64, 16, 16, 0, 0.5)]), Err(InferError::BadFrame { .. })));
}

#[test]
fn default_model_passes_the_shape_checks() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/ssdlite-mobilenetv2-person/manifest.toml");
    let spec = ModelSpec::load(&path).expect("the default manifest is valid unchanged");
    assert_eq!(
        (spec.input.layout, spec.input.dtype, spec.input.resize),
        (Layout::NHWC, DType::Float32, Resize::Stretch)
    );
    assert!(matches!(spec.output, OutputSpec::SsdDecoded { anchors: 1917, .. }));
    detector(&spec).expect("the default model's shapes match its manifest");
}

/// Writes `manifest` (with labels) into a fresh folder and loads it.
fn load_text(manifest: &str) -> Result<ModelSpec, ModelError> {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("lookout-manifest-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let src = manifest_dir("ssd-decoded");
    for f in ["model.onnx", "labels.txt"] {
        std::fs::copy(src.join(f), dir.join(f)).expect("copy test model");
    }
    std::fs::write(dir.join("manifest.toml"), manifest).expect("write manifest");
    let r = ModelSpec::load(&dir.join("manifest.toml"));
    let _ = std::fs::remove_dir_all(&dir);
    r
}

fn manifest_dir(name: &str) -> PathBuf {
    manifest(name).parent().map(Path::to_path_buf).unwrap_or_default()
}

/// The ssd-decoded test manifest with `from` replaced by `to`.
fn edited(from: &str, to: &str) -> String {
    let text = std::fs::read_to_string(manifest("ssd-decoded")).expect("test manifest");
    assert!(text.contains(from), "{from:?} not in the test manifest");
    text.replacen(from, to, 1)
}

fn refusal(manifest: &str) -> String {
    match load_text(manifest) {
        Err(e @ ModelError::BadManifest { .. }) => e.to_string(),
        Err(e) => panic!("refused for another reason: {e}"),
        Ok(_) => panic!("accepted:\n{manifest}"),
    }
}

#[test]
fn manifest_fields_that_do_not_fit_the_format_are_refused_by_name() {
    let e = refusal(&edited("anchors = 4", "anchors = 4\noutput = \"output0\""));
    assert!(
        e.contains("manifest.toml") && e.contains("output.output does not apply to output.format = \"ssd-decoded\""),
        "{e}"
    );
    let e = refusal(
        &edited("format = \"ssd-decoded\"", "format = \"yolov8\"")
            .replace("boxes = \"boxes\"\nscores = \"scores\"\n", ""),
    );
    assert!(e.contains("output.output is required for output.format = \"yolov8\""), "{e}");
    let e = refusal(&edited("anchors = 4", "anchors = 4\nstride = 8"));
    assert!(e.contains("unknown field `stride`"), "{e}");
    let e = refusal(&edited("format = \"ssd-decoded\"", "format = \"yolov9\""));
    assert!(e.contains("yolov9"), "{e}");
}

#[test]
fn manifest_input_options_are_checked_together() {
    let e = refusal(&edited("layout = \"NHWC\"", "layout = \"NCHW\""));
    assert!(e.contains("input.shape must be [N, 3, H, W] for layout NCHW"), "{e}");
    let e = refusal(&edited("color = \"RGB\"", "color = \"RGB\"\ndtype = \"uint8\""));
    assert!(e.contains("input.scale and input.offset do not apply to input.dtype = \"uint8\""), "{e}");
    let e = refusal(&edited("color = \"RGB\"", "color = \"RGB\"\npad_value = 0"));
    assert!(e.contains("input.pad_value applies only to input.resize = \"letterbox\""), "{e}");
    let e = refusal(&edited("offset = -1.0\n", ""));
    assert!(e.contains("input.scale and input.offset are required for input.dtype = \"float32\""), "{e}");
    let e = refusal(&edited("color = \"RGB\"", "color = \"RGB\"\nresize = \"crop\""));
    assert!(e.contains("crop"), "{e}");
    // Letterbox with its default pad, and a fixed batch, are fine.
    let spec =
        load_text(&edited("color = \"RGB\"", "color = \"RGB\"\nresize = \"letterbox\"").replace("[-1, 32", "[2, 32"))
            .expect("valid");
    assert_eq!((spec.input.resize, spec.input.pad_value, spec.fixed_batch()), (Resize::Letterbox, 114, Some(2)));
}

#[test]
fn city_model_matches_its_sha256_and_finds_people_and_vehicles_in_its_reference_frame() {
    // Loading checks the committed model.onnx and labels.txt against the manifest's sha256s.
    let spec = ModelSpec::load(&manifest("../ssd-mobilenetv2-coco")).expect("city manifest");
    assert_eq!(spec.input.dtype, crate::infer::manifest::DType::Uint8);
    assert_eq!((spec.labels.len(), spec.labels[0].as_str(), spec.labels[2].as_str()), (90, "person", "car"));
    let t = spec.self_test.as_ref().expect("the shipped model carries a self-test");
    let labels: Vec<&str> = t.expect.iter().map(|e| e.label.as_str()).collect();
    assert_eq!(labels, ["person", "person", "car", "car"], "people and vehicles both expected");
    let mut det = detector(&spec).expect("city model");
    det.self_test().expect("the reference frame gives two people, the car and the van");
    let img = image::open(&t.image).expect("reference frame").to_rgb8();
    let frames = det.image_frames(&img, 1, 0.5);
    let found = det.detect(&frames).expect("detect").remove(0);
    let strong = |c: u32| found.iter().filter(|d| d.class_id == c && d.score >= 0.5).count();
    assert!(strong(0) >= 3 && strong(2) == 2, "people and the two parked vehicles: {found:?}");
}

#[test]
fn person_model_passes_its_reference_self_test_and_a_wrong_expectation_fails() {
    let path = manifest("../ssdlite-mobilenetv2-person");
    let spec = ModelSpec::load(&path).expect("person manifest");
    assert!(spec.self_test.is_some(), "the shipped model carries a self-test");
    let mut det = detector(&spec).expect("person model");
    det.self_test().expect("the reference image gives the expected people");
    // The same image, expecting a person where there is none.
    let mut wrong = spec.clone();
    if let Some(t) = wrong.self_test.as_mut() {
        t.expect[0].bbox = [0.9, 0.0, 0.05, 0.05];
    }
    let mut det = detector(&wrong).expect("person model");
    match det.self_test() {
        Err(InferError::SelfTest { message, .. }) => assert!(message.contains("expected person"), "{message}"),
        other => panic!("expected a self-test failure, got {:?}", other.err()),
    }
}

#[test]
fn int8_variants_of_both_bundled_models_pass_their_self_tests_and_name_their_build() {
    for dir in ["../ssdlite-mobilenetv2-person", "../ssd-mobilenetv2-coco"] {
        let path = manifest(dir).with_file_name("manifest.int8.toml");
        let spec = ModelSpec::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let reference = ModelSpec::load(&manifest(dir)).expect("reference manifest");
        assert_eq!(spec.name, reference.name, "a variant is the same model to cameras and messages");
        assert_eq!(spec.version, format!("{}+int8", reference.version));
        assert_ne!(spec.sha256, reference.sha256);
        assert_eq!(crate::model::store::compare_versions(&spec.version, &reference.version), std::cmp::Ordering::Equal);
        let mut det = detector(&spec).expect("int8 model loads");
        det.self_test().unwrap_or_else(|e| panic!("{dir} int8: {e}"));
    }
}

#[test]
fn providers_are_tried_in_order_and_one_that_cannot_load_is_refused_never_silently_replaced() {
    use crate::config::Provider;
    let env = super::runtime::environment(None).expect("ONNX Runtime is installed (run scripts/setup.sh)");
    let spec = ModelSpec::load(&manifest("ssd-decoded")).expect("test model");
    let cfg = |providers: Vec<Provider>| InferenceConfig {
        threads: 1,
        workers: 1,
        max_batch: 1,
        max_wait: Duration::ZERO,
        spinning: false,
        providers,
    };
    // The CPU build of ONNX Runtime that setup.sh installs has none of the accelerators:
    // each is refused with ONNX Runtime's own reason, then the CPU runs the model.
    let det = Detector::new(&spec, &cfg(vec![Provider::Cuda, Provider::OpenVino, Provider::Cpu]), &env)
        .expect("falls back to the cpu, as listed");
    assert_eq!(det.provider(), Provider::Cpu);
    // Without "cpu" in the list, the model is refused, with every provider's reason.
    match Detector::new(&spec, &cfg(vec![Provider::Cuda, Provider::TensorRt]), &env) {
        Err(InferError::NoProvider { reasons, .. }) => {
            assert!(reasons.starts_with("cuda: ") && reasons.contains("; tensorrt: "), "{reasons}");
            // ONNX Runtime's own reason, not a guess of ours.
            assert!(reasons.contains("not enabled in this build"), "{reasons}");
        }
        Err(e) => panic!("expected NoProvider, got {e}"),
        Ok(d) => panic!("expected a refusal, the model loaded on {:?}", d.provider()),
    }
}
