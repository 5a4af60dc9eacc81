//! One camera's GStreamer pipeline:
//!
//! ```text
//! rtspsrc ─▶ depay ─▶ parse ─[gate]─▶ decoder ─[sampler, motion]─▶ videoscale ─▶ videoconvert ─▶ appsink (RGB, model size)
//!
//! H.264, H.265 and MJPEG (RTP JPEG); the decoder per the camera's `decoder` policy.
//! ```
//! - `[gate]` is a pad probe that drops delta frames (and keyframes not due) before the
//!   decoder when only keyframes are needed, and due keyframes when the compressed
//!   stream shows that nothing moved ([`super::activity`], which learns from the motion
//!   gate's verdicts on the frames that are decoded); `[sampler]` drops decoded frames not due
//!   (both [`super::gate::Gate`]), then frames the motion gate finds static
//!   ([`super::motion`]), before they cost scaling, conversion and inference.
//! - videoscale uses 2-tap bilinear without anti-aliasing, the resize the default model
//!   was trained with (TF1 `ResizeBilinear`); scaling happens before the colour
//!   conversion so the conversion touches model-size frames only.
//! - The appsink never blocks the pipeline: `max-buffers=1, drop=true, sync=false`, and
//!   its callback only hands the buffer to the model's latest-frame slot.
//! - For snapshots the sampler also keeps a reference to the decoded frame it passes
//!   (no copy); the appsink attaches it to the scaled frame with the same timestamp.
//!   All of this runs on the one streaming thread after the decoder.
//!
//! Probes and callbacks never panic: a poisoned lock is recovered, missing data skips
//! the buffer.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use gstreamer_video::prelude::*;

use super::SourceError;
use super::activity::{ActivityGate, CompressedMotionPolicy, Decision, GateState};
use super::gate::{Gate, GateVerdict, Timeline};
use super::motion::{self, MotionGate};
use crate::camera::{CameraCtx, Frame, Original, StreamSetup};
use crate::config::{CameraConfig, DecoderPolicy, Transport};
use crate::infer::queue::FrameQueue;
use crate::latency::{STAGES, Stage};

/// The model input the frames are scaled to.
#[derive(Debug, Clone, Copy)]
pub struct FrameFormat {
    pub width: u32,
    pub height: u32,
}

/// Builds the pipeline for `cam`; frames go to `queue` at `slot`.
pub fn build(
    cam: &CameraConfig,
    ctx: Arc<CameraCtx>,
    format: FrameFormat,
    queue: Arc<FrameQueue>,
    slot: usize,
) -> Result<gst::Pipeline, SourceError> {
    let (pipeline, scale, taps) = tail(cam, &ctx, format, queue, slot)?;
    let src = make(&cam.id, "rtspsrc")?;
    src.set_property("location", &cam.url);
    src.set_property_from_str(
        "protocols",
        match cam.transport {
            Transport::Tcp => "tcp",
            Transport::Udp => "udp",
        },
    );
    // Analytics needs no smoothing: a short jitter buffer that drops late packets keeps
    // memory and latency low.
    src.set_property("latency", 200u32);
    src.set_property("drop-on-latency", true);
    src.set_property("tcp-timeout", 10_000_000u64);
    pipeline.add(&src).map_err(|e| SourceError::build(&cam.id, e))?;

    // Only video streams are set up (audio would need a sink of its own).
    src.connect("select-stream", false, |args| {
        let is_video = args
            .get(2)
            .and_then(|v| v.get::<gst::Caps>().ok())
            .and_then(|c| c.structure(0).and_then(|s| s.get::<String>("media").ok()))
            .is_some_and(|m| m == "video");
        Some(is_video.to_value())
    });
    let weak_pipeline = pipeline.downgrade();
    let camera_id = cam.id.clone();
    src.connect_pad_added(move |_src, pad| {
        let Some(pipeline) = weak_pipeline.upgrade() else { return };
        if let Err(e) = link_decoder(&pipeline, pad, &scale, &taps, &ctx) {
            // Posting to the bus makes the camera's run loop restart it.
            tracing::error!(camera = %camera_id, error = %e, "cannot set up decoding");
            gst::element_error!(pipeline, gst::StreamError::CodecNotFound, ("{}", e));
        }
    });
    Ok(pipeline)
}

/// A stream's codec as the shared RTSP client hands it over: whole access units (H.264
/// and H.265 with 4-byte NAL lengths, as in MP4) or JPEG images.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoded {
    H264,
    H265,
    Jpeg,
}

/// A camera's decode-only pipeline, fed encoded frames by the shared RTSP client:
///
/// ```text
/// appsrc ─▶ parse ─▶ decoder ─[sampler, motion]─▶ videoscale ─▶ videoconvert ─▶ appsink
/// ```
/// The gate runs in [`Decoding::offer`], before anything is copied into GStreamer.
pub struct Decoding {
    pub pipeline: gst::Pipeline,
    src: gst_app::AppSrc,
    taps: Taps,
    ctx: Arc<CameraCtx>,
}

impl Decoding {
    /// Builds it for `codec`; `codec_data` is the stream's decoder configuration (avcC /
    /// hvcC), empty for JPEG.
    pub fn build(
        cam: &CameraConfig,
        ctx: Arc<CameraCtx>,
        format: FrameFormat,
        queue: Arc<FrameQueue>,
        slot: usize,
        codec: Encoded,
        codec_data: &[u8],
    ) -> Result<Self, SourceError> {
        let (pipeline, scale, taps) = tail(cam, &ctx, format, queue, slot)?;
        let (parse, media, software) = match codec {
            Encoded::H264 => ("h264parse", "video/x-h264", "avdec_h264"),
            Encoded::H265 => ("h265parse", "video/x-h265", "avdec_h265"),
            Encoded::Jpeg => ("jpegparse", "image/jpeg", "jpegdec"),
        };
        let dec_name = pick_decoder(&taps.decoder, media, software);
        tracing::info!(camera = %ctx.id, codec = ?codec, decoder = %dec_name, client = "shared", "stream set up");
        // Live, timestamped by us; never blocking the RTSP client: when the decoder
        // falls behind, the oldest queued frames go (at most a few: only due frames
        // come here).
        let src = gst_app::AppSrc::builder()
            .caps(&encoded_caps(codec, codec_data))
            .is_live(true)
            .format(gst::Format::Time)
            .build();
        // GStreamer ≥ 1.20 properties (Debian 12 has 1.22), by name.
        src.set_property("max-buffers", 4u64);
        src.set_property_from_str("leaky-type", "downstream");
        let parse = make(&ctx.id, parse)?;
        let dec = make(&ctx.id, &dec_name)?;
        if dec.has_property("max-threads") {
            dec.set_property("max-threads", 1i32);
        }
        pipeline.add_many([src.upcast_ref(), &parse, &dec]).map_err(|e| SourceError::build(&ctx.id, e))?;
        gst::Element::link_many([src.upcast_ref(), &parse, &dec, &scale])
            .map_err(|e| SourceError::build(&ctx.id, e))?;
        let codec_name = match codec {
            Encoded::H264 => "H264",
            Encoded::H265 => "H265",
            Encoded::Jpeg => "JPEG",
        };
        ctx.set_stream(StreamSetup { rtsp_client: "shared", codec: codec_name, decoder: dec_name });
        install_sampler(&dec, &taps, &ctx);
        Ok(Decoding { pipeline, src, taps, ctx })
    }

    /// New decoder configuration (the camera changed its parameters).
    pub fn set_codec_data(&self, codec: Encoded, codec_data: &[u8]) {
        self.src.set_caps(Some(&encoded_caps(codec, codec_data)));
    }

    /// One encoded frame from the client, with its media time (ns since the stream's
    /// start): through the gate, and if due into the decoder, stamped with its arrival
    /// in the pipeline's running time as smoothed by `timeline`.
    pub fn offer(&self, data: Vec<u8>, is_key: bool, media_ns: i64, timeline: &mut Timeline) {
        self.ctx.touch();
        self.ctx.stats.encoded_frames.fetch_add(1, Ordering::Relaxed);
        let Some(now) = self.pipeline.current_running_time() else { return };
        let pts = timeline.pts(now.nseconds(), media_ns);
        if !gate_encoded(&self.taps, &self.ctx, pts, is_key, data.len()) {
            return;
        }
        let mut buffer = gst::Buffer::from_mut_slice(data);
        if let Some(b) = buffer.get_mut() {
            b.set_pts(gst::ClockTime::from_nseconds(pts));
            if !is_key {
                b.set_flags(gst::BufferFlags::DELTA_UNIT);
            }
        }
        // Fails only once the pipeline stops; the bus says why.
        let _ = self.src.push_buffer(buffer);
    }
}

fn encoded_caps(codec: Encoded, codec_data: &[u8]) -> gst::Caps {
    let with_data = |b: gst::caps::Builder<gst::caps::NoFeature>| {
        if codec_data.is_empty() { b } else { b.field("codec_data", gst::Buffer::from_slice(codec_data.to_vec())) }
    };
    match codec {
        Encoded::H264 => {
            with_data(gst::Caps::builder("video/x-h264").field("stream-format", "avc").field("alignment", "au")).build()
        }
        Encoded::H265 => {
            with_data(gst::Caps::builder("video/x-h265").field("stream-format", "hvc1").field("alignment", "au"))
                .build()
        }
        Encoded::Jpeg => gst::Caps::builder("image/jpeg").build(),
    }
}

/// A camera's pipeline behind its decoder: the wall clock, scaling, conversion and the
/// appsink handing frames to `queue`, and the probes' shared state. Returns the element
/// the decoder links to.
fn tail(
    cam: &CameraConfig,
    ctx: &Arc<CameraCtx>,
    format: FrameFormat,
    queue: Arc<FrameQueue>,
    slot: usize,
) -> Result<(gst::Pipeline, gst::Element, Taps), SourceError> {
    let pipeline = gst::Pipeline::with_name(&format!("camera-{}", cam.id));
    // Capture times come from the pipeline clock: make it the wall clock so that
    // base_time + running_time is a Unix time.
    let clock = gst::SystemClock::obtain();
    clock.set_property("clock-type", gst::ClockType::Realtime);
    pipeline.use_clock(Some(&clock));

    let scale = make(&cam.id, "videoscale")?;
    scale.set_property_from_str("method", "bilinear");
    scale.set_property("add-borders", false);
    let convert = make(&cam.id, "videoconvert")?;
    let caps = gst::Caps::builder("video/x-raw")
        .field("format", "RGB")
        .field("width", format.width as i32)
        .field("height", format.height as i32)
        .build();
    let sink = gst_app::AppSink::builder().caps(&caps).max_buffers(1).drop(true).sync(false).build();
    pipeline.add_many([&scale, &convert, sink.upcast_ref()]).map_err(|e| SourceError::build(&cam.id, e))?;
    gst::Element::link_many([&scale, &convert, sink.upcast_ref()]).map_err(|e| SourceError::build(&cam.id, e))?;

    // The slot always exists; frames go in only for snapshots or while the console watches.
    let originals: Option<OriginalSlot> = Some(OriginalSlot::default());
    install_appsink(&sink, ctx.clone(), queue.clone(), slot, originals.clone());
    // A new pipeline's activity gate starts learning, whatever the last one had found.
    ctx.stats.activity_gate_active.store(0, Ordering::Relaxed);
    let taps = Taps {
        queue,
        slot,
        decoder: cam.decoder.clone(),
        gate: Arc::new(Mutex::new(Gate::new(cam.decode, cam.fps))),
        motion: Arc::new(Mutex::new(MotionGate::new(cam.motion))),
        // Its labels come from the motion gate: without that, it could never learn.
        activity: Arc::new(Mutex::new(ActivityGate::new(
            if cam.motion.enabled { cam.motion.compressed } else { CompressedMotionPolicy::Off },
            cam.motion.keepalive,
        ))),
        originals,
        snapshots: cam.snapshots.enabled,
    };
    Ok((pipeline, scale, taps))
}

/// The decoder element for `media` caps: `auto` takes the highest-ranked decoder
/// GStreamer has for them (hardware ones such as v4l2, VA-API or NVIDIA's rank above the
/// software ones when their plugins are installed), `software` the libav/libjpeg one, and
/// anything else is taken as an element name.
fn pick_decoder(policy: &DecoderPolicy, media: &str, software: &str) -> String {
    match policy {
        DecoderPolicy::Software => software.to_string(),
        DecoderPolicy::Element(name) => name.clone(),
        DecoderPolicy::Auto => {
            let caps = gst::Caps::new_empty_simple(media);
            let mut decoders: Vec<gst::ElementFactory> = gst::ElementFactory::factories_with_type(
                gst::ElementFactoryType::DECODER | gst::ElementFactoryType::MEDIA_VIDEO,
                gst::Rank::MARGINAL,
            )
            .into_iter()
            .filter(|f| f.can_sink_any_caps(&caps))
            .collect();
            decoders.sort_by_key(|f| std::cmp::Reverse(f.rank()));
            decoders.first().map_or_else(|| software.to_string(), |f| f.name().to_string())
        }
    }
}

fn make(camera: &str, factory: &str) -> Result<gst::Element, SourceError> {
    gst::ElementFactory::make(factory)
        .build()
        .map_err(|_| SourceError::MissingElement { camera: camera.to_string(), element: factory.to_string() })
}

/// What the probes around the decoder share: one per pipeline.
#[derive(Clone)]
struct Taps {
    queue: Arc<FrameQueue>,
    slot: usize,
    decoder: DecoderPolicy,
    gate: Arc<Mutex<Gate>>,
    motion: Arc<Mutex<MotionGate>>,
    activity: Arc<Mutex<ActivityGate>>,
    originals: Option<OriginalSlot>,
    snapshots: bool,
}

/// On a new RTP pad: depayloader, parser and decoder for its codec, the gate in front
/// of the decoder and the sampler behind it.
fn link_decoder(
    pipeline: &gst::Pipeline,
    pad: &gst::Pad,
    scale: &gst::Element,
    taps: &Taps,
    ctx: &Arc<CameraCtx>,
) -> Result<(), SourceError> {
    let decoder = &taps.decoder;
    let caps = pad.current_caps().or_else(|| Some(pad.query_caps(None)));
    let encoding = caps
        .as_ref()
        .and_then(|c| c.structure(0))
        .and_then(|s| s.get::<String>("encoding-name").ok())
        .unwrap_or_default()
        .to_ascii_uppercase();
    let (codec, depay, parse, media, software) = match encoding.as_str() {
        "H264" => ("H264", "rtph264depay", "h264parse", "video/x-h264", "avdec_h264"),
        "H265" => ("H265", "rtph265depay", "h265parse", "video/x-h265", "avdec_h265"),
        // MJPEG: every frame is a keyframe, so the gate's keyframe mode applies as is.
        "JPEG" => ("JPEG", "rtpjpegdepay", "jpegparse", "image/jpeg", "jpegdec"),
        other => return Err(SourceError::UnsupportedCodec { camera: ctx.id.clone(), codec: other.to_string() }),
    };
    let dec_name = pick_decoder(decoder, media, software);
    tracing::info!(camera = %ctx.id, codec = %encoding, decoder = %dec_name, client = "gstreamer", "stream set up");
    let depay = make(&ctx.id, depay)?;
    let parse = make(&ctx.id, parse)?;
    let dec = make(&ctx.id, &dec_name)?;
    // Decoder threads: one is enough at analysis rates, and hundreds of cameras with a
    // thread pool each would swamp the scheduler.
    if dec.has_property("max-threads") {
        dec.set_property("max-threads", 1i32);
    }
    let chain = [&depay, &parse, &dec];
    pipeline.add_many(chain).map_err(|e| SourceError::build(&ctx.id, e))?;
    gst::Element::link_many([&depay, &parse, &dec, scale]).map_err(|e| SourceError::build(&ctx.id, e))?;
    for e in chain {
        e.sync_state_with_parent().map_err(|e| SourceError::build(&ctx.id, e))?;
    }
    let sink_pad =
        depay.static_pad("sink").ok_or_else(|| SourceError::build(&ctx.id, "depayloader has no sink pad"))?;
    pad.link(&sink_pad).map_err(|e| SourceError::build(&ctx.id, e))?;
    ctx.set_stream(StreamSetup { rtsp_client: "gstreamer", codec, decoder: dec_name });
    // Data arriving is noted at the RTP level, so a stream whose payload does not parse
    // or decode is told apart from one that sends nothing.
    {
        let ctx = ctx.clone();
        pad.add_probe(gst::PadProbeType::BUFFER | gst::PadProbeType::BUFFER_LIST, move |_, _| {
            ctx.touch();
            gst::PadProbeReturn::Ok
        });
    }

    // Gate: before the decoder.
    if let Some(parse_src) = parse.static_pad("src") {
        let taps = taps.clone();
        let ctx = ctx.clone();
        parse_src.add_probe(gst::PadProbeType::BUFFER, move |_pad, info| {
            let Some(buffer) = info.buffer() else { return gst::PadProbeReturn::Ok };
            ctx.stats.encoded_frames.fetch_add(1, Ordering::Relaxed);
            let Some(pts) = buffer.pts().or(buffer.dts()) else { return gst::PadProbeReturn::Ok };
            let is_key = !buffer.flags().contains(gst::BufferFlags::DELTA_UNIT);
            if gate_encoded(&taps, &ctx, pts.nseconds(), is_key, buffer.size()) {
                gst::PadProbeReturn::Ok
            } else {
                gst::PadProbeReturn::Drop
            }
        });
    }
    install_sampler(&dec, taps, ctx);
    Ok(())
}

/// The gate in front of the decoder, for one encoded frame at `pts_ns`: whether it goes
/// to the decoder. Counts what it drops and why.
fn gate_encoded(taps: &Taps, ctx: &CameraCtx, pts_ns: u64, is_key: bool, size: usize) -> bool {
    let Taps { queue, slot, gate, activity, .. } = taps;
    let slot = *slot;
    let mut g = gate.lock().unwrap_or_else(|e| e.into_inner());
    let verdict = g.on_encoded(pts_ns, is_key);
    let keyframes_only = g.keyframes_only();
    drop(g);
    let mut a = activity.lock().unwrap_or_else(|e| e.into_inner());
    if !is_key {
        a.on_delta(size);
    }
    if !keyframes_only {
        ctx.stats.activity_gate_active.store(0, Ordering::Relaxed);
    }
    if verdict == GateVerdict::Pass && keyframes_only {
        let tracking = ctx.live_tracks.load(Ordering::Relaxed) > 0;
        let decision = a.on_due_keyframe(pts_ns, size, tracking);
        if let Some(state) = a.state_change() {
            ctx.stats.activity_gate_active.store(u64::from(state == GateState::Active), Ordering::Relaxed);
            tracing::info!(
                camera = %ctx.id,
                state = state.as_str(),
                threshold_bytes = a.threshold().map(|t| t.round() as u64),
                "compressed motion gate"
            );
        }
        if decision == Decision::Skip {
            ctx.stats.activity_skipped_frames.fetch_add(1, Ordering::Relaxed);
            ctx.skipped_by_choice();
            return false;
        }
        // Decode on demand: while the model has not taken this camera's last
        // frame, a new one would only replace it, so it is not decoded at all
        // (keyframes only: a skipped delta frame would break the next). Under
        // overload this keeps decoding to what inference consumes.
        if queue.is_pending(slot) {
            a.not_decoded();
            ctx.stats.undecoded_frames.fetch_add(1, Ordering::Relaxed);
            return false;
        }
    }
    drop(a);
    match verdict {
        GateVerdict::Pass => {
            ctx.stats.decoded_frames.fetch_add(1, Ordering::Relaxed);
            ctx.handed_to_decoder();
            true
        }
        GateVerdict::Drop => false,
    }
}

/// The sampler behind the decoder: drops decoded frames not due and static ones (motion
/// gate), teaches the activity gate, and records the camera's native frame size.
fn install_sampler(dec: &gst::Element, taps: &Taps, ctx: &Arc<CameraCtx>) {
    let Taps { gate, motion, activity, originals, snapshots, .. } = taps;
    if let Some(dec_src) = dec.static_pad("src") {
        let gate = gate.clone();
        let ctx = ctx.clone();
        let originals = originals.clone();
        let snapshots = *snapshots;
        let motion = motion.clone();
        let activity = activity.clone();
        dec_src.add_probe(gst::PadProbeType::BUFFER, move |pad, info| {
            let Some(buffer) = info.buffer() else { return gst::PadProbeReturn::Ok };
            ctx.touch_decoded();
            let Some(pts) = buffer.pts() else { return gst::PadProbeReturn::Ok };
            if !gate.lock().unwrap_or_else(|e| e.into_inner()).on_decoded(pts.nseconds()) {
                return gst::PadProbeReturn::Drop;
            }
            let caps = pad.current_caps();
            let tracking = ctx.live_tracks.load(Ordering::Relaxed) > 0;
            let mut motion_gate = motion.lock().unwrap_or_else(|e| e.into_inner());
            // The luma grid is only read when gating is on: no per-frame work otherwise.
            let cells = if motion_gate.enabled() { caps.as_ref().and_then(|c| luma_grid(buffer, c)) } else { None };
            let verdict = motion_gate.decide(pts.nseconds(), cells, tracking);
            drop(motion_gate);
            // Every compared frame teaches the activity gate what motion looks like in
            // this camera's compressed stream.
            let moved = match verdict {
                motion::Verdict::Analyse => None,
                v => Some(v == motion::Verdict::Motion),
            };
            if activity.lock().unwrap_or_else(|e| e.into_inner()).label(pts.nseconds(), moved, verdict.analyse()) {
                ctx.stats.activity_misses.fetch_add(1, Ordering::Relaxed);
            }
            let analyse = verdict.analyse();
            if !analyse {
                ctx.stats.motion_skipped_frames.fetch_add(1, Ordering::Relaxed);
                return gst::PadProbeReturn::Drop;
            }
            if let Some(s) = caps.as_ref().and_then(|c| c.structure(0))
                && let (Ok(w), Ok(h)) = (s.get::<i32>("width"), s.get::<i32>("height"))
            {
                ctx.set_native_size(w.max(0) as u32, h.max(0) as u32);
            }
            if let (Some(slot), Some(caps)) = (&originals, caps)
                && (snapshots || ctx.watch.is_watched())
            {
                let original = Original { buffer: buffer.clone(), caps };
                *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some((pts.nseconds(), original));
            }
            gst::PadProbeReturn::Ok
        });
    }
}

/// The motion grid of a decoded frame's luma (the first plane of every YUV format the
/// decoders produce); `None` for other formats, which are then always analysed.
fn luma_grid(buffer: &gst::BufferRef, caps: &gst::CapsRef) -> Option<Vec<u8>> {
    let info = gstreamer_video::VideoInfo::from_caps(caps).ok()?;
    if !info.format_info().is_yuv() {
        return None;
    }
    let frame = gstreamer_video::VideoFrameRef::from_buffer_ref_readable(buffer, &info).ok()?;
    let stride = usize::try_from(*frame.plane_stride().first()?).ok()?;
    let luma = frame.plane_data(0).ok()?;
    motion::grid(luma, info.width() as usize, info.height() as usize, stride)
}

/// The decoded frame the sampler last passed, with its timestamp.
type OriginalSlot = Arc<Mutex<Option<(u64, Original)>>>;

fn install_appsink(
    sink: &gst_app::AppSink,
    ctx: Arc<CameraCtx>,
    queue: Arc<FrameQueue>,
    slot: usize,
    originals: Option<OriginalSlot>,
) {
    sink.set_callbacks(
        gst_app::AppSinkCallbacks::builder()
            .new_sample(move |sink| {
                let Ok(sample) = sink.pull_sample() else { return Ok(gst::FlowSuccess::Ok) };
                let Some(buffer) = sample.buffer_owned() else { return Ok(gst::FlowSuccess::Ok) };
                let Some(info) = sample.caps().and_then(|c| gstreamer_video::VideoInfo::from_caps(c).ok()) else {
                    return Ok(gst::FlowSuccess::Ok);
                };
                let pts = buffer.pts();
                let captured = capture_time(sink, &sample, pts);
                let Ok(pixels) = buffer.into_mapped_buffer_readable() else { return Ok(gst::FlowSuccess::Ok) };
                let (native_w, native_h) = ctx.native_size();
                let pts_ns = pts.map(|p| p.nseconds()).unwrap_or(0);
                let original = originals
                    .as_ref()
                    .and_then(|o| o.lock().unwrap_or_else(|e| e.into_inner()).take())
                    .filter(|(t, _)| *t == pts_ns)
                    .map(|(_, o)| o);
                let frame = Frame {
                    slot,
                    camera: ctx.clone(),
                    pts_ns,
                    captured,
                    native_width: native_w.max(1),
                    native_height: native_h.max(1),
                    width: info.width(),
                    height: info.height(),
                    stride: info.stride()[0].max(0) as usize,
                    pixels: Box::new(pixels),
                    original,
                    sampled_at: std::time::Instant::now(),
                };
                STAGES.record(
                    Stage::Pipeline,
                    SystemTime::now().duration_since(captured).unwrap_or_default().as_secs_f64(),
                );
                ctx.stats.sampled_frames.fetch_add(1, Ordering::Relaxed);
                ctx.set_last_frame(captured);
                if queue.put(slot, frame).is_some() {
                    ctx.stats.replaced_frames.fetch_add(1, Ordering::Relaxed);
                }
                Ok(gst::FlowSuccess::Ok)
            })
            .build(),
    );
}

/// When the frame was captured, as well as the pipeline can tell: the pipeline clock is
/// the wall clock, so base time + the buffer's running time is when the frame's first
/// packet was received, corrected for the jitter buffer. Falls back to now.
fn capture_time(sink: &gst_app::AppSink, sample: &gst::Sample, pts: Option<gst::ClockTime>) -> SystemTime {
    let running = pts.and_then(|pts| {
        sample.segment().and_then(|seg| seg.downcast_ref::<gst::ClockTime>().and_then(|s| s.to_running_time(pts)))
    });
    match (sink.base_time(), running) {
        (Some(base), Some(rt)) => UNIX_EPOCH + Duration::from_nanos(base.nseconds() + rt.nseconds()),
        _ => SystemTime::now(),
    }
}
