//! Snapshots: a decoded camera frame as a JPEG no larger than `max_side`.
//!
//! The pipeline keeps a reference to the decoded frame (before it is scaled to the
//! model's input) with each analysed frame that has detections; the event stage encodes
//! it only when a track's best frame improves, and keeps just the JPEG.

use gstreamer as gst;
use gstreamer_video as gst_video;
use gstreamer_video::prelude::*;
use image::ImageEncoder;

use crate::source::Original;

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
