//! A standalone RTSP server for tests and benchmarks: serves the bundled clip (H.264 or
//! H.265, looping at 10 fps), still images or a ground-truth scene (`lookout::demo::scene`;
//! it starts when the first client connects, then shows the empty background) on
//! 127.0.0.1. Prints `ready <port>` once listening, then serves until killed.
//!
//! rtsp-serve --port 8554 --mount /cam1=h264 --mount /cam2=h265 --mount /img=still:/path/grace_hopper.jpg \
//!     --mount /scene=scene:standard

use std::sync::Arc;

use anyhow::{Context, bail};
use clap::Parser;
use lookout_e2e::{Codec, Media, RtspServer, clip, scene_media, standard_scene};

#[derive(Parser)]
struct Args {
    /// Port to listen on (0 = any free port).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// `/path=h264`, `/path=h265`, `/path=still:<image file>`, `/path=mjpeg:<image file>` or `/path=scene:standard`; repeatable.
    #[arg(long = "mount", required = true)]
    mounts: Vec<String>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut mounts = Vec::new();
    let mut clips: Vec<(Codec, Arc<Vec<_>>)> = Vec::new();
    let mut scene: Option<Media> = None;
    for m in &args.mounts {
        let (path, what) = m.split_once('=').context("--mount takes /path=kind")?;
        let media = match what {
            "h264" | "h265" => {
                let codec = if what == "h264" { Codec::H264 } else { Codec::H265 };
                let units = match clips.iter().find(|(c, _)| *c == codec) {
                    Some((_, u)) => u.clone(),
                    None => {
                        let u = Arc::new(clip(codec)?);
                        clips.push((codec, u.clone()));
                        u
                    }
                };
                Media::Clip { codec, units, fps: 10, loop_from: 0 }
            }
            "scene:standard" => match &scene {
                Some(media) => media.clone(),
                None => scene.insert(scene_media(&standard_scene())?).clone(),
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
