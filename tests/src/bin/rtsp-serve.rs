//! A standalone RTSP server for tests and benchmarks: serves the bundled clip (H.264 or
//! H.265, looping at 10 fps), still images or a ground-truth scene (`lookout::demo::scene`;
//! it starts when the first client connects, then shows the empty background) on
//! 127.0.0.1. Prints `ready <port>` once listening, then serves until killed.
//!
//! rtsp-serve --port 8554 --mount /cam1=h264 --mount /cam2=h265 --mount /img=still:/path/grace_hopper.jpg \
//!     --mount /scene=scene:standard --mount /cam3=h264@3

use std::sync::Arc;

use anyhow::{Context, bail};
use clap::Parser;
use lookout_e2e::{Codec, Media, RtspServer, clip, quiet_scene, scene_media, standard_scene};

#[derive(Parser)]
struct Args {
    /// Port to listen on (0 = any free port).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// `/path=h264`, `/path=h265`, `/path=still:<image file>`, `/path=mjpeg:<image file>` `/path=scene:standard` or `/path=scene:quiet`; `/path=h264@K` starts the clip at frame K (staggered GOPs); repeatable.
    #[arg(long = "mount", required = true)]
    mounts: Vec<String>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut mounts = Vec::new();
    let mut clips: Vec<(Codec, usize, Arc<Vec<_>>)> = Vec::new();
    let mut scenes: Vec<(&str, Media)> = Vec::new();
    for m in &args.mounts {
        let (path, what) = m.split_once('=').context("--mount takes /path=kind")?;
        let media = match what {
            kind if kind.starts_with("h264") || kind.starts_with("h265") => {
                let codec = if kind.starts_with("h264") { Codec::H264 } else { Codec::H265 };
                // `@K`: the stream starts K frames into the clip, so that cameras' GOPs are
                // not all aligned (real cameras' are not). Rotations are shared per K.
                let start: usize = match kind[4..].strip_prefix('@') {
                    Some(k) => k.parse().context("h264@K takes a frame number")?,
                    None if kind.len() == 4 => 0,
                    None => bail!("unknown media {kind:?}"),
                };
                let units = match clips.iter().find(|(c, k, _)| *c == codec && *k == start) {
                    Some((_, _, u)) => u.clone(),
                    None => {
                        let mut u = match clips.iter().find(|(c, _, _)| *c == codec) {
                            Some((_, _, u)) => u.as_ref().clone(),
                            None => clip(codec)?,
                        };
                        let k = start % u.len().max(1);
                        u.rotate_left(k);
                        let u = Arc::new(u);
                        clips.push((codec, start, u.clone()));
                        u
                    }
                };
                // A rotated clip starts mid-GOP (clients wait for its first keyframe) and
                // loops from that keyframe.
                let loop_from = units.iter().position(|u| u.keyframe).unwrap_or(0);
                Media::Clip { codec, units, fps: 10, loop_from }
            }
            "scene:standard" | "scene:quiet" => match scenes.iter().find(|(k, _)| *k == what) {
                Some((_, media)) => media.clone(),
                None => {
                    let scene = if what == "scene:quiet" { quiet_scene() } else { standard_scene() };
                    let media = scene_media(&scene)?;
                    scenes.push((what, media.clone()));
                    media
                }
            },
            other => match (other.strip_prefix("still:"), other.strip_prefix("mjpeg:")) {
                (Some(image), _) => Media::Still { image: image.into() },
                (_, Some(image)) => Media::MjpegStill { image: image.into() },
                _ => bail!("unknown media {other:?}"),
            },
        };
        mounts.push((path.to_string(), media));
    }
    let server = RtspServer::start(args.port, mounts)?;
    println!("ready {}", server.port());
    loop {
        std::thread::park();
    }
}
