//! Snapshots: a decoded camera frame as a JPEG no larger than `max_side`.
//!
//! The pipeline keeps a reference to the decoded frame (before it is scaled to the
//! model's input) with each analysed frame that has detections; the event stage encodes
//! it only when a track's best frame improves, and keeps just the JPEG.
//!
//! Encoding: the frame is scaled in its own YUV (JPEG is YUV inside, so no RGB round
//! trip) and encoded by GStreamer's `jpegenc`, i.e. libjpeg-turbo with its x86 SIMD and
//! ARM NEON paths, several times faster than the `image` crate's encoder
//! (docs/BENCHMARKS.md, "Snapshots"). Each encoding thread keeps one small
//! `appsrc ! jpegenc ! appsink` pipeline; where `jpegenc` is missing or fails, the
//! `image` crate encodes instead.

use gstreamer as gst;
use gstreamer_video as gst_video;
use gstreamer_video::prelude::*;
use image::ImageEncoder;

use crate::camera::Original;

/// An encoded snapshot.
#[derive(Debug, Clone, PartialEq)]
pub struct Jpeg {
    pub bytes: Vec<u8>,
    pub width: u32,
    pub height: u32,
}

/// The size a `width`×`height` frame is scaled to so its longer side is at most
/// `max_side` (never enlarged; at least 1×1).
pub fn fit(width: u32, height: u32, max_side: u32) -> (u32, u32) {
    let long = width.max(height).max(1);
    if long <= max_side {
        return (width.max(1), height.max(1));
    }
    let scale = max_side as f64 / long as f64;
    (((width as f64 * scale).round() as u32).max(1), ((height as f64 * scale).round() as u32).max(1))
}

/// Scales `frame` and encodes it as a JPEG: libjpeg-turbo through `jpegenc` where it
/// works, else [`encode_with_image`].
pub fn encode(frame: &Original, max_side: u32, quality: u8) -> Result<Jpeg, String> {
    match encode_with_jpegenc(frame, max_side, quality) {
        Ok(j) => Ok(j),
        Err(e) => {
            static ONCE: std::sync::Once = std::sync::Once::new();
            ONCE.call_once(
                || tracing::warn!(error = %e, "jpegenc unusable; snapshots are encoded by the slower image crate"),
            );
            encode_with_image(frame, max_side, quality)
        }
    }
}

/// One thread's `appsrc ! jpegenc ! appsink`, reused across encodings.
struct JpegEnc {
    pipeline: gst::Pipeline,
    src: gstreamer_app::AppSrc,
    enc: gst::Element,
    sink: gstreamer_app::AppSink,
    caps: Option<gst::Caps>,
}

impl JpegEnc {
    fn new() -> Result<Self, String> {
        gst::init().map_err(|e| format!("GStreamer: {e}"))?;
        let pipeline = gst::Pipeline::with_name("snapshot-jpegenc");
        let make = |f: &str| gst::ElementFactory::make(f).build().map_err(|_| format!("no {f} element"));
        let src = make("appsrc")?.downcast::<gstreamer_app::AppSrc>().map_err(|_| "appsrc".to_string())?;
        let enc = make("jpegenc")?;
        let sink = make("appsink")?.downcast::<gstreamer_app::AppSink>().map_err(|_| "appsink".to_string())?;
        src.set_format(gst::Format::Time);
        sink.set_sync(false);
        pipeline.add_many([src.upcast_ref(), &enc, sink.upcast_ref()]).map_err(|e| e.to_string())?;
        gst::Element::link_many([src.upcast_ref(), &enc, sink.upcast_ref()]).map_err(|e| e.to_string())?;
        pipeline.set_state(gst::State::Playing).map_err(|e| format!("cannot start jpegenc: {e}"))?;
        Ok(Self { pipeline, src, enc, sink, caps: None })
    }

    fn encode(&mut self, buffer: gst::Buffer, caps: &gst::Caps, quality: u8) -> Result<Vec<u8>, String> {
        if self.caps.as_ref() != Some(caps) {
            self.src.set_caps(Some(caps));
            self.caps = Some(caps.clone());
        }
        self.enc.set_property("quality", i32::from(quality.clamp(1, 100)));
        self.src.push_buffer(buffer).map_err(|e| format!("jpegenc refused the frame: {e}"))?;
        // The picture, or the pipeline's error as soon as it is posted: never a long wait
        // on the events thread (an encoding takes a few milliseconds).
        let bus = self.pipeline.bus().ok_or("jpegenc pipeline has no bus")?;
        let mut sample = None;
        for _ in 0..20 {
            if let Some(s) = self.sink.try_pull_sample(gst::ClockTime::from_mseconds(25)) {
                sample = Some(s);
                break;
            }
            if let Some(msg) = bus.pop_filtered(&[gst::MessageType::Error, gst::MessageType::Eos]) {
                return Err(match msg.view() {
                    gst::MessageView::Error(e) => format!("jpegenc failed: {}", e.error()),
                    _ => "jpegenc ended".to_string(),
                });
            }
        }
        let sample = sample.ok_or_else(|| "jpegenc gave no picture within 500 ms".to_string())?;
        let out = sample.buffer().ok_or("jpegenc gave an empty sample")?;
        let map = out.map_readable().map_err(|_| "cannot read the JPEG".to_string())?;
        Ok(map.as_slice().to_vec())
    }
}

impl Drop for JpegEnc {
    fn drop(&mut self) {
        let _ = self.pipeline.set_state(gst::State::Null);
    }
}

thread_local! {
    static JPEGENC: std::cell::RefCell<Option<JpegEnc>> = const { std::cell::RefCell::new(None) };
    /// Failures in a row on this thread; after [`JPEGENC_GIVE_UP`] it uses the fallback.
    static JPEGENC_FAILURES: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

thread_local! {
    /// The last converter this thread built, for frames of the same size and format
    /// (a camera's): building one sets up its resampling tables.
    static CONVERTER: std::cell::RefCell<Option<(gst_video::VideoInfo, gst_video::VideoInfo, gst_video::VideoConverter)>> =
        const { std::cell::RefCell::new(None) };
}

/// Failed encodings in a row after which a thread stops trying `jpegenc`.
const JPEGENC_GIVE_UP: u32 = 3;

/// `frame` scaled so its longer side is at most `max_side` and converted to `format`
/// (the decoded buffer itself when it already is both), with its description.
fn scaled(
    frame: &Original,
    format: gst_video::VideoFormat,
    max_side: u32,
) -> Result<(gst::Buffer, gst_video::VideoInfo), String> {
    let in_info = gst_video::VideoInfo::from_caps(&frame.caps).map_err(|e| format!("unusable frame caps: {e}"))?;
    let (w, h) = fit(in_info.width(), in_info.height(), max_side);
    // The converter refuses to change the frame rate: keep the decoder's.
    let out_info = gst_video::VideoInfo::builder(format, w, h)
        .fps(in_info.fps())
        .interlace_mode(in_info.interlace_mode())
        .build()
        .map_err(|e| format!("cannot describe a {w}x{h} frame: {e}"))?;
    if in_info.format() == format && (w, h) == (in_info.width(), in_info.height()) {
        return Ok((frame.buffer.clone(), out_info));
    }
    let src = gst_video::VideoFrame::from_buffer_readable(frame.buffer.clone(), &in_info)
        .map_err(|_| "cannot map the decoded frame".to_string())?;
    let out = gst::Buffer::with_size(out_info.size()).map_err(|e| format!("cannot allocate: {e}"))?;
    let mut dst = gst_video::VideoFrame::from_buffer_writable(out, &out_info)
        .map_err(|_| "cannot map the snapshot buffer".to_string())?;
    CONVERTER.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.as_ref().is_none_or(|(i, o, _)| *i != in_info || *o != out_info) {
            // Bilinear: GStreamer's default (cubic) costs about as much as the JPEG
            // encoding itself and shows nothing more at snapshot sizes. Two taps where
            // the frame shrinks by less than half (no aliasing to filter out), else
            // as many as the ratio needs.
            let mut config = gst_video::VideoConverterConfig::new();
            config.set_resampler_method(gst_video::VideoResamplerMethod::Linear);
            config.set_chroma_resampler_method(gst_video::VideoResamplerMethod::Linear);
            if 2 * out_info.width() >= in_info.width() && 2 * out_info.height() >= in_info.height() {
                config.set_resampler_taps(2);
            }
            let converter = gst_video::VideoConverter::new(&in_info, &out_info, Some(config))
                .map_err(|e| format!("no conversion from {:?}: {e}", in_info.format()))?;
            *slot = Some((in_info.clone(), out_info.clone(), converter));
        }
        let (_, _, converter) = slot.as_ref().ok_or("no converter")?;
        converter.frame(&src, &mut dst);
        Ok::<_, String>(())
    })?;
    Ok((dst.into_buffer(), out_info))
}

/// Scales `frame` in YUV (I420) and encodes it with `jpegenc`.
pub fn encode_with_jpegenc(frame: &Original, max_side: u32, quality: u8) -> Result<Jpeg, String> {
    let (scaled, out_info) = scaled(frame, gst_video::VideoFormat::I420, max_side)?;
    let (w, h) = (out_info.width(), out_info.height());
    let caps = out_info.to_caps().map_err(|e| e.to_string())?;
    if JPEGENC_FAILURES.get() >= JPEGENC_GIVE_UP {
        return Err("jpegenc failed repeatedly on this thread".to_string());
    }
    let result = JPEGENC.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = Some(JpegEnc::new()?);
        }
        let enc = slot.as_mut().ok_or("jpegenc")?;
        match enc.encode(scaled, &caps, quality) {
            Ok(bytes) => Ok(Jpeg { bytes, width: w, height: h }),
            Err(e) => {
                // Rebuilt at the next call: a failed pipeline is not reused.
                *slot = None;
                Err(e)
            }
        }
    });
    JPEGENC_FAILURES.set(if result.is_ok() { 0 } else { JPEGENC_FAILURES.get() + 1 });
    result
}

/// Scales and converts `frame` to RGB with GStreamer's converter, then encodes a JPEG with
/// the `image` crate (the fallback, and the baseline of the snapshot benchmark).
pub fn encode_with_image(frame: &Original, max_side: u32, quality: u8) -> Result<Jpeg, String> {
    let (rgb_buffer, out_info) = scaled(frame, gst_video::VideoFormat::Rgb, max_side)?;
    let (w, h) = (out_info.width(), out_info.height());
    let dst = gst_video::VideoFrame::from_buffer_readable(rgb_buffer, &out_info)
        .map_err(|_| "cannot map the snapshot buffer".to_string())?;
    let stride = dst.plane_stride()[0].max(0) as usize;
    let data = dst.plane_data(0).map_err(|e| e.to_string())?;
    let row = w as usize * 3;
    let mut rgb = Vec::with_capacity(row * h as usize);
    for y in 0..h as usize {
        let line = data.get(y * stride..y * stride + row).ok_or("snapshot buffer too small")?;
        rgb.extend_from_slice(line);
    }
    let mut bytes = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, quality.clamp(1, 100))
        .write_image(&rgb, w, h, image::ExtendedColorType::Rgb8)
        .map_err(|e| format!("JPEG encoding failed: {e}"))?;
    Ok(Jpeg { bytes, width: w, height: h })
}

/// `jpeg` made to fit in `max_bytes`: decoded, then encoded again at lower quality and,
/// if that is not enough, smaller, a few steps at most (each costs an encoding). `None`
/// when nothing reasonable fits or the JPEG does not decode; the caller then leaves the
/// snapshot out rather than send a message no broker would take.
pub fn shrink(jpeg: &Jpeg, max_bytes: usize) -> Option<Jpeg> {
    let img = image::load_from_memory_with_format(&jpeg.bytes, image::ImageFormat::Jpeg).ok()?.to_rgb8();
    let (w0, h0) = img.dimensions();
    // Quality first (cheap in detail), then the side by 3/4 per step down to 1/8.
    let steps: [(u8, u32); 7] = [(70, 8), (50, 8), (50, 6), (50, 4), (40, 3), (40, 2), (30, 1)];
    for (quality, eighths) in steps {
        let (w, h) = fit(w0, h0, (w0.max(h0) * eighths / 8).max(16));
        let scaled;
        let rgb = if (w, h) == (w0, h0) {
            &img
        } else {
            scaled = image::imageops::resize(&img, w, h, image::imageops::FilterType::Triangle);
            &scaled
        };
        let mut bytes = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, quality)
            .write_image(rgb.as_raw(), w, h, image::ExtendedColorType::Rgb8)
            .ok()?;
        if bytes.len() <= max_bytes {
            return Some(Jpeg { bytes, width: w, height: h });
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_shrink_to_the_longest_side_and_never_grow() {
        assert_eq!(fit(768, 576, 640), (640, 480));
        assert_eq!(fit(1920, 1080, 640), (640, 360));
        assert_eq!(fit(1080, 1920, 640), (360, 640));
        assert_eq!(fit(320, 240, 640), (320, 240));
    }

    /// A noisy picture: JPEG cannot squeeze it much, like a busy camera view.
    fn noisy_jpeg(w: u32, h: u32) -> Jpeg {
        let mut x = 0x2545_F491_u32;
        let img = image::RgbImage::from_fn(w, h, |_, _| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            image::Rgb([x as u8, (x >> 8) as u8, (x >> 16) as u8])
        });
        let mut bytes = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 95)
            .write_image(img.as_raw(), w, h, image::ExtendedColorType::Rgb8)
            .expect("encode");
        Jpeg { bytes, width: w, height: h }
    }

    #[test]
    fn an_oversized_snapshot_is_made_smaller_to_fit_or_left_out() {
        let big = noisy_jpeg(1024, 768);
        let max = big.bytes.len() / 4;
        let small = shrink(&big, max).expect("fits after shrinking");
        assert!(small.bytes.len() <= max, "{} > {max}", small.bytes.len());
        let img = image::load_from_memory(&small.bytes).expect("still a JPEG");
        assert_eq!(img.width() * 768, img.height() * 1024, "aspect kept");
        assert_eq!((img.width(), img.height()), (small.width, small.height));
        assert!(shrink(&big, 200).is_none(), "nothing reasonable fits in 200 bytes");
        assert!(shrink(&Jpeg { bytes: b"not a jpeg".to_vec(), width: 1, height: 1 }, 1 << 20).is_none());
    }

    #[test]
    fn an_i420_frame_becomes_a_jpeg_of_the_same_picture() {
        gst::init().expect("gstreamer");
        // 64×48 I420: left half dark, right half bright.
        // With a frame rate, as decoders give them.
        let info = gst_video::VideoInfo::builder(gst_video::VideoFormat::I420, 64, 48)
            .fps(gst::Fraction::new(10, 1))
            .build()
            .expect("info");
        let mut buffer = gst::Buffer::with_size(info.size()).expect("buffer");
        {
            let b = buffer.get_mut().expect("writable");
            let mut frame = gst_video::VideoFrameRef::from_buffer_ref_writable(b, &info).expect("map");
            let stride = frame.plane_stride()[0] as usize;
            let y = frame.plane_data_mut(0).expect("Y");
            for row in 0..48 {
                for col in 0..64 {
                    y[row * stride + col] = if col < 32 { 30 } else { 220 };
                }
            }
            for p in [1, 2] {
                frame.plane_data_mut(p).expect("chroma").fill(128);
            }
        }
        let orig = Original { buffer, caps: info.to_caps().expect("caps") };
        for (name, jpeg) in [
            ("jpegenc", encode_with_jpegenc(&orig, 32, 90).expect("jpegenc")),
            ("image", encode_with_image(&orig, 32, 90).expect("image")),
            // Unscaled: the decoded buffer goes to jpegenc as it is.
            ("jpegenc, full size", encode_with_jpegenc(&orig, 64, 90).expect("jpegenc")),
        ] {
            let img = image::load_from_memory(&jpeg.bytes).expect("decodes").to_luma8();
            assert_eq!(img.dimensions(), (jpeg.width, jpeg.height), "{name}");
            let (w, h) = img.dimensions();
            assert_eq!(w * 48, h * 64, "{name}: aspect");
            let (dark, bright) = (img.get_pixel(w / 8, h / 2)[0], img.get_pixel(w * 7 / 8, h / 2)[0]);
            assert!(dark < 60 && bright > 190, "{name}: dark {dark}, bright {bright}");
        }
        assert_eq!(encode(&orig, 32, 90).expect("encode").width, 32);
    }
}
