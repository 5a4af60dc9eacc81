//! Test and demo media: the bundled clip (`vtest.avi` from Debian's opencv-doc, fetched by
//! `scripts/setup.sh`), re-encoded once to H.264 or H.265 with a 1 s GOP and cached.
//!
//! Cache format (`<cache>/media/vtest-<codec>.au`): a sequence of access units, each a
//! 4-byte little-endian length, one flag byte (1 = keyframe), then the Annex B bytes.
//! The encoding parameters are part of the file name's contract: delete the file to
//! re-encode.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;

use crate::infer::runtime::cache_dir;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    H264,
    H265,
}

impl Codec {
    pub fn name(self) -> &'static str {
        match self {
            Codec::H264 => "h264",
            Codec::H265 => "h265",
        }
    }
}

/// One encoded frame.
#[derive(Debug, Clone)]
pub struct AccessUnit {
    pub data: Vec<u8>,
    pub keyframe: bool,
}

/// The media folder in the set-up cache.
pub fn media_dir() -> PathBuf {
    cache_dir().join("media")
}

/// A file from the media folder, or an error saying to run the set-up.
pub fn media_file(name: &str) -> anyhow::Result<PathBuf> {
    let p = media_dir().join(name);
    if !p.is_file() {
        bail!("{} is missing: run scripts/setup.sh to fetch the test media", p.display());
    }
    Ok(p)
}

/// The clip's access units, encoding and caching them on first use.
pub fn clip(codec: Codec) -> anyhow::Result<Vec<AccessUnit>> {
    let cached = media_dir().join(format!("vtest-{}.au", codec.name()));
    if let Ok(aus) = read_aus(&cached)
        && !aus.is_empty()
    {
        return Ok(aus);
    }
    let src = media_file("vtest.avi")?;
    tracing::info!(codec = codec.name(), "encoding the demo clip once (cached in {})", cached.display());
    let aus = encode(&src, codec)?;
    write_aus(&cached, &aus).with_context(|| format!("writing {}", cached.display()))?;
    Ok(aus)
}

/// 10 fps, 1 s GOP, ~1 Mbit/s, no B-frames: what a typical IP camera sends.
fn encode(src: &Path, codec: Codec) -> anyhow::Result<Vec<AccessUnit>> {
    gst::init()?;
    let enc = match codec {
        Codec::H264 => {
            "x264enc key-int-max=10 bitrate=1000 speed-preset=veryfast tune=zerolatency bframes=0 \
             ! video/x-h264,profile=main ! h264parse ! video/x-h264,stream-format=byte-stream,alignment=au"
        }
        Codec::H265 => {
            "x265enc key-int-max=10 bitrate=1000 speed-preset=ultrafast tune=zerolatency \
             ! h265parse ! video/x-h265,stream-format=byte-stream,alignment=au"
        }
    };
    let desc = format!(
        "filesrc location=\"{}\" ! avidemux ! decodebin ! videoconvert ! video/x-raw,format=I420 ! {enc} ! appsink name=out sync=false",
        src.display()
    );
    let pipeline =
        gst::parse::launch(&desc)?.downcast::<gst::Pipeline>().map_err(|_| anyhow::anyhow!("not a pipeline"))?;
    let sink =
        pipeline.by_name("out").and_then(|e| e.downcast::<gst_app::AppSink>().ok()).context("appsink missing")?;
    pipeline.set_state(gst::State::Playing)?;
    let mut aus = Vec::new();
    let result = loop {
        match sink.pull_sample() {
            Ok(sample) => {
                let Some(buf) = sample.buffer() else { continue };
                let map = buf.map_readable()?;
                aus.push(AccessUnit {
                    data: map.to_vec(),
                    keyframe: !buf.flags().contains(gst::BufferFlags::DELTA_UNIT),
                });
            }
            Err(_) => break Ok(()),
        }
    };
    let errored = pipeline.bus().and_then(|b| b.pop_filtered(&[gst::MessageType::Error]));
    let _ = pipeline.set_state(gst::State::Null);
    if let Some(msg) = errored
        && let gst::MessageView::Error(e) = msg.view()
    {
        bail!("encoding the clip failed: {} ({:?})", e.error(), e.debug());
    }
    if aus.is_empty() {
        bail!("encoding the clip produced nothing");
    }
    result.map(|()| aus)
}

pub(crate) fn write_aus(path: &Path, aus: &[AccessUnit]) -> std::io::Result<()> {
    // Unique per writer: parallel tests may encode the same clip at once; the last rename wins.
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    let tmp = path.with_extension(format!("{}-{nanos}.tmp", std::process::id()));
    let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
    for au in aus {
        f.write_all(&(au.data.len() as u32).to_le_bytes())?;
        f.write_all(&[au.keyframe as u8])?;
        f.write_all(&au.data)?;
    }
    f.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    std::fs::rename(tmp, path)
}

pub(crate) fn read_aus(path: &Path) -> std::io::Result<Vec<AccessUnit>> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)?.read_to_end(&mut bytes)?;
    let mut aus = Vec::new();
    let mut rest = &bytes[..];
    while rest.len() >= 5 {
        let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        if rest.len() < 5 + len {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "truncated access unit"));
        }
        aus.push(AccessUnit { keyframe: rest[4] == 1, data: rest[5..5 + len].to_vec() });
        rest = &rest[5 + len..];
    }
    Ok(aus)
}
