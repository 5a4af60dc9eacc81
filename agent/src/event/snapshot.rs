//! Snapshots: a decoded camera frame as a JPEG no larger than `max_side`.
//!
//! The pipeline keeps a reference to the decoded frame (before it is scaled to the
//! model's input) with each analysed frame that has detections; the event stage encodes
//! it only when a track's best frame improves, and keeps just the JPEG.

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

/// Scales and converts `frame` to RGB with GStreamer's converter, then encodes a JPEG.
pub fn encode(frame: &Original, max_side: u32, quality: u8) -> Result<Jpeg, String> {
    let in_info = gst_video::VideoInfo::from_caps(&frame.caps).map_err(|e| format!("unusable frame caps: {e}"))?;
    let (w, h) = fit(in_info.width(), in_info.height(), max_side);
    let out_info = gst_video::VideoInfo::builder(gst_video::VideoFormat::Rgb, w, h)
        .fps(in_info.fps())
        .interlace_mode(in_info.interlace_mode())
        .build()
        .map_err(|e| format!("cannot describe a {w}x{h} RGB frame: {e}"))?;
    let converter = gst_video::VideoConverter::new(&in_info, &out_info, None)
        .map_err(|e| format!("no conversion from {:?}: {e}", in_info.format()))?;
    let src = gst_video::VideoFrame::from_buffer_readable(frame.buffer.clone(), &in_info)
        .map_err(|_| "cannot map the decoded frame".to_string())?;
    let out = gst::Buffer::with_size(out_info.size()).map_err(|e| format!("cannot allocate: {e}"))?;
    let mut dst = gst_video::VideoFrame::from_buffer_writable(out, &out_info)
        .map_err(|_| "cannot map the snapshot buffer".to_string())?;
    converter.frame(&src, &mut dst);
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
        let info = gst_video::VideoInfo::builder(gst_video::VideoFormat::I420, 64, 48).build().expect("info");
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
        let jpeg = encode(&orig, 32, 90).expect("encode");
        assert_eq!((jpeg.width, jpeg.height), (32, 24));
        let img = image::load_from_memory(&jpeg.bytes).expect("decodes").to_luma8();
        assert_eq!(img.dimensions(), (32, 24));
        let (dark, bright) = (img.get_pixel(4, 12)[0], img.get_pixel(28, 12)[0]);
        assert!(dark < 60 && bright > 190, "dark {dark}, bright {bright}");
    }
}
