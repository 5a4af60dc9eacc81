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
                // `@K`: the first GOP is cut to K frames, so this stream's keyframes fall K
                // frames later than an unstaggered one's (real cameras' GOPs are not
                // aligned); it still starts with a keyframe, so the server prerolls at once.
                let start: usize = match kind[4..].strip_prefix('@') {
                    Some(k) => k.parse().context("h264@K takes a frame number")?,
                    None if kind.len() == 4 => 0,
                    None => bail!("unknown media {kind:?}"),
                };
                let units = match clips.iter().find(|(c, k, _)| *c == codec && *k == start) {
                    Some((_, _, u)) => u.clone(),
                    None => {
                        let whole = match clips.iter().find(|(c, _, _)| *c == codec) {
                            Some((_, _, u)) => u.as_ref().clone(),
                            None => clip(codec)?,
                        };
                        let head = start.min(whole.iter().skip(1).position(|u| u.keyframe).map_or(0, |p| p + 1));
                        let u: Vec<_> = whole[..head].iter().chain(whole.iter()).cloned().collect();
                        let u = Arc::new(u);
                        clips.push((codec, start, u.clone()));
                        u
                    }
                };
                // Loops over the whole clip, after the short first GOP.
                let loop_from =
                    if start == 0 { 0 } else { units.iter().skip(1).position(|u| u.keyframe).map_or(0, |p| p + 1) };
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
