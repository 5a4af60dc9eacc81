//! `lookout probe URL`: what an installer needs to know about one camera before adding
//! it. Connects for a few seconds, measures the stream (codec, resolution, frame rate,
//! keyframe interval, bitrate), runs the model on the last decoded frame and writes that
//! frame with its boxes drawn to a JPEG.
//!
//! The frame is scaled for the model with `image`'s bilinear filter here, not by the
//! agent's GStreamer path, so scores can differ slightly from the running agent's.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;

use crate::config::{InferenceConfig, Transport};
use crate::infer::Detector;
use crate::infer::detection::Detection;
use crate::infer::manifest::ModelSpec;

pub struct ProbeOptions {
    pub url: String,
    pub seconds: u64,
    pub transport: Transport,
    pub manifest: PathBuf,
    pub min_score: f32,
    pub out: PathBuf,
}

#[derive(Default)]
struct StreamStats {
    codec: String,
    frames: u64,
    bytes: u64,
    first_pts: Option<u64>,
    last_pts: Option<u64>,
    keyframes: Vec<u64>,
}

/// The last decoded frame, RGB at the camera's size.
struct Still {
    width: u32,
    height: u32,
    rgb: Vec<u8>,
}

pub fn run(opts: &ProbeOptions) -> anyhow::Result<()> {
    // Whatever fails (GStreamer's messages may quote the location) is shown masked.
    probe(opts).map_err(|e| anyhow::anyhow!(crate::config::redact_secrets_in(&format!("{e:#}"), &opts.url)))
}

fn probe(opts: &ProbeOptions) -> anyhow::Result<()> {
    gst::init()?;
    println!("probing {} for {} s …", crate::config::redact_url(&opts.url), opts.seconds);
    let stats = Arc::new(Mutex::new(StreamStats::default()));
    let still = Arc::new(Mutex::new(None::<Still>));
    let pipeline = build(opts, stats.clone(), still.clone())?;
    let result = watch(&pipeline, Duration::from_secs(opts.seconds));
    let _ = pipeline.set_state(gst::State::Null);
    result?;

    let s = stats.lock().unwrap_or_else(|e| e.into_inner());
    let still = still.lock().unwrap_or_else(|e| e.into_inner()).take();
    let Some(still) = still else { bail!("connected, but no frame could be decoded in {} s", opts.seconds) };
    let span_s = match (s.first_pts, s.last_pts) {
        (Some(a), Some(b)) if b > a => (b - a) as f64 / 1e9,
        _ => 0.0,
    };
    println!("  codec:              {}", s.codec);
    println!("  resolution:         {}x{}", still.width, still.height);
    if span_s > 0.0 {
        println!("  frame rate:         {:.1} fps", (s.frames.saturating_sub(1)) as f64 / span_s);
        println!("  bitrate:            {:.0} kbit/s", s.bytes as f64 * 8.0 / span_s / 1000.0);
    }
    match s.keyframes.windows(2).map(|w| w[1].saturating_sub(w[0])).collect::<Vec<_>>() {
        gaps if gaps.is_empty() => {
            println!("  keyframe interval:  longer than the probe ({} keyframe seen)", s.keyframes.len())
        }
        gaps => {
            let avg = gaps.iter().sum::<u64>() as f64 / gaps.len() as f64 / 1e9;
            println!(
                "  keyframe interval:  {avg:.2} s (analysis at up to {:.1} fps decodes keyframes only)",
                1.0 / avg
            );
        }
    }

    let spec = ModelSpec::load(&opts.manifest)?;
    let img = image::RgbImage::from_raw(still.width, still.height, still.rgb.clone()).context("frame size")?;
    let dets = detect_image(&img, &spec, opts.min_score)?;
    println!("  detections (≥ {}):  {}", opts.min_score, dets.len());
    for d in &dets {
        let label = spec.labels.get(d.class_id as usize).map_or("?", String::as_str);
        println!(
            "    {label} {:.2} at x={:.3} y={:.3} w={:.3} h={:.3}",
            d.score, d.bbox.x, d.bbox.y, d.bbox.w, d.bbox.h
        );
    }
    write_jpeg(&still, &dets, &opts.out)?;
    println!("  frame with boxes:   {}", opts.out.display());
    Ok(())
}

fn build(
    opts: &ProbeOptions,
    stats: Arc<Mutex<StreamStats>>,
    still: Arc<Mutex<Option<Still>>>,
) -> anyhow::Result<gst::Pipeline> {
    let pipeline = gst::Pipeline::new();
    let src = gst::ElementFactory::make("rtspsrc").property("location", &opts.url).build()?;
    src.set_property_from_str("protocols", if opts.transport == Transport::Udp { "udp" } else { "tcp" });
    src.set_property("latency", 200u32);
    let convert = gst::ElementFactory::make("videoconvert").build()?;
    let sink = gst_app::AppSink::builder()
        .caps(&gst::Caps::builder("video/x-raw").field("format", "RGB").build())
        .max_buffers(1)
        .drop(true)
        .sync(false)
        .build();
    pipeline.add_many([&src, &convert, sink.upcast_ref()])?;
    convert.link(&sink)?;
    sink.set_callbacks(
        gst_app::AppSinkCallbacks::builder()
            .new_sample(move |sink| {
                let Ok(sample) = sink.pull_sample() else { return Ok(gst::FlowSuccess::Ok) };
                let info = sample.caps().and_then(|c| gstreamer_video::VideoInfo::from_caps(c).ok());
                if let (Some(info), Some(buf)) = (info, sample.buffer())
                    && let Ok(map) = buf.map_readable()
                {
                    let (w, h, stride) = (info.width(), info.height(), info.stride()[0].max(0) as usize);
                    let mut rgb = Vec::with_capacity((w * h * 3) as usize);
                    for y in 0..h as usize {
                        if let Some(row) = map.get(y * stride..y * stride + w as usize * 3) {
                            rgb.extend_from_slice(row);
                        }
                    }
                    if rgb.len() == (w * h * 3) as usize {
                        *still.lock().unwrap_or_else(|e| e.into_inner()) = Some(Still { width: w, height: h, rgb });
                    }
                }
                Ok(gst::FlowSuccess::Ok)
            })
            .build(),
    );
    let weak = pipeline.downgrade();
    let convert_in = convert.clone();
    src.connect_pad_added(move |_, pad| {
        let Some(pipeline) = weak.upgrade() else { return };
        let enc = pad
            .current_caps()
            .and_then(|c| c.structure(0).and_then(|s| s.get::<String>("encoding-name").ok()))
            .unwrap_or_default()
            .to_ascii_uppercase();
        let names = match enc.as_str() {
            "H264" => ["rtph264depay", "h264parse", "avdec_h264"],
            "H265" => ["rtph265depay", "h265parse", "avdec_h265"],
            _ => return,
        };
        let elems: Vec<gst::Element> = names.iter().filter_map(|n| gst::ElementFactory::make(n).build().ok()).collect();
        if elems.len() != 3 || pipeline.add_many(&elems).is_err() {
            return;
        }
        if gst::Element::link_many([&elems[0], &elems[1], &elems[2], &convert_in]).is_err() {
            return;
        }
        for e in &elems {
            let _ = e.sync_state_with_parent();
        }
        if let Some(sinkpad) = elems[0].static_pad("sink") {
            let _ = pad.link(&sinkpad);
        }
        stats.lock().unwrap_or_else(|e| e.into_inner()).codec = enc.clone();
        if let Some(parse_src) = elems[1].static_pad("src") {
            let stats = stats.clone();
            parse_src.add_probe(gst::PadProbeType::BUFFER, move |_, info| {
                if let Some(buf) = info.buffer() {
                    let mut s = stats.lock().unwrap_or_else(|e| e.into_inner());
                    s.frames += 1;
                    s.bytes += buf.size() as u64;
                    if let Some(pts) = buf.pts() {
                        s.first_pts.get_or_insert(pts.nseconds());
                        s.last_pts = Some(pts.nseconds());
                        if !buf.flags().contains(gst::BufferFlags::DELTA_UNIT) {
                            s.keyframes.push(pts.nseconds());
                        }
                    }
                }
                gst::PadProbeReturn::Ok
            });
        }
    });
    Ok(pipeline)
}

/// Plays for `duration`, failing on the first pipeline error.
fn watch(pipeline: &gst::Pipeline, duration: Duration) -> anyhow::Result<()> {
    let bus = pipeline.bus().context("pipeline has no bus")?;
    pipeline.set_state(gst::State::Playing)?;
    let deadline = Instant::now() + duration;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        let Some(msg) = bus.timed_pop(gst::ClockTime::from_mseconds(left.as_millis().min(200) as u64)) else {
            continue;
        };
        match msg.view() {
            gst::MessageView::Error(e) => bail!("{} ({})", e.error(), e.debug().unwrap_or_default()),
            gst::MessageView::Eos(_) => break,
            _ => {}
        }
    }
    Ok(())
}

/// Runs the model of `spec` on one image (scaled with `image`'s bilinear filter, then the
/// model's own preprocessing, whatever its input type).
pub fn detect_image(img: &image::RgbImage, spec: &ModelSpec, min_score: f32) -> anyhow::Result<Vec<Detection>> {
    let env = crate::infer::runtime::environment(None)?;
    let mut det = Detector::new(
        spec,
        &InferenceConfig {
            threads: 2,
            workers: 1,
            max_batch: 1,
            max_wait: Duration::ZERO,
            spinning: false,
            providers: vec![crate::config::Provider::Cpu],
        },
        &env,
    )?;
    let frames = det.image_frames(img, 1, min_score);
    let found = det.detect(&frames)?.into_iter().next().unwrap_or_default();
    // `detect` keeps the tracker's lower floor too; a probe reports what a camera would.
    Ok(found.into_iter().filter(|d| d.score >= min_score).collect())
}

/// The frame with a 3-pixel box per detection.
fn write_jpeg(still: &Still, dets: &[Detection], out: &Path) -> anyhow::Result<()> {
    let mut img = image::RgbImage::from_raw(still.width, still.height, still.rgb.clone()).context("frame size")?;
    let (w, h) = (still.width as f32, still.height as f32);
    for d in dets {
        let x0 = (d.bbox.x * w) as i64;
        let y0 = (d.bbox.y * h) as i64;
        let x1 = ((d.bbox.x + d.bbox.w) * w) as i64;
        let y1 = ((d.bbox.y + d.bbox.h) * h) as i64;
        for t in 0..3 {
            for x in x0..=x1 {
                put(&mut img, x, y0 + t);
                put(&mut img, x, y1 - t);
            }
            for y in y0..=y1 {
                put(&mut img, x0 + t, y);
                put(&mut img, x1 - t, y);
            }
        }
    }
    img.save_with_format(out, image::ImageFormat::Jpeg).with_context(|| format!("writing {}", out.display()))
}

fn put(img: &mut image::RgbImage, x: i64, y: i64) {
    if x >= 0 && y >= 0 && (x as u32) < img.width() && (y as u32) < img.height() {
        img.put_pixel(x as u32, y as u32, image::Rgb([255, 32, 32]));
    }
}
