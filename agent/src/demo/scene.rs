//! Ground-truth scenes for end-to-end tests of tracking, zone and line rules: people cut
//! out of real photos (the cached `grace_hopper.jpg` and `messi5.jpg`) and vehicles cut out
//! of a real camera frame (the city model's reference `vtest_frame0.png`) move along
//! scripted paths over a static background, are encoded once to H.264 and served over RTSP like a
//! camera ([`scene_media`]). Because the script is known, so is the truth: where every
//! person is at every frame ([`Scene::truth_box`]), and so which lines they cross and which
//! zones they are in, and when.
//!
//! Time: frame `i` shows the scene at `t = i / fps` seconds. Served over RTSP, frame 0 goes
//! out when the first client connects to the mount and frame `i` about `i / fps` seconds
//! later; clients that join while another is watching see the scene already under way, as
//! from a camera. After the script the stream shows the empty background forever.
//!
//! Encoding: 1 s GOP with keyframes exactly at whole seconds (frame `i` is a keyframe iff
//! `i % fps == 0`; scene-cut keyframes are off), no B-frames, constant quantizer 20.
//! The result is cached as `<cache>/media/scene-<hash>.au` (the format of
//! [`super::media`]), where the hash covers the scene, the sprites' crops, the renderer
//! version and the encoder settings.

use std::sync::Arc;

use anyhow::{Context, bail};
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use image::RgbImage;
use sha2::{Digest, Sha256};

use super::media::{AccessUnit, Codec, media_dir, media_file, read_aus, write_aus};
use super::rtsp::Media;

/// Bump whenever [`Scene::render`]'s output changes for the same scene (background,
/// sprites, placement): it is part of the cache file's name.
const RENDER_VERSION: u32 = 1;

/// The vehicles' source: vtest.avi's first frame, the default model's self-test image.
const VEHICLES: &str = "vtest_frame0.png";

/// x264 settings after `key-int-max`; part of the cache file's name.
/// Quantizer 20 keeps the people sharp enough for the detector at these sizes.
const X264: &str = "bframes=0 speed-preset=veryfast tune=zerolatency pass=quant quantizer=20 option-string=scenecut=0";

/// A person or vehicle cut out of a real picture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sprite {
    /// The whole of `grace_hopper.jpg` (512×600, a portrait).
    Grace,
    /// `messi5.jpg` (548×342) cropped to x 155..410, y 78..310: the player, cut to the box
    /// the detector gives him at scene sizes (at full size it draws x 82..446, y 65..328,
    /// arm and ball included; a cut-out that wide scored 0.4–0.9 with IoU 0.48–0.71).
    Messi,
    /// The car parked at the top right of `vtest_frame0.png` (768×576), x 730..768,
    /// y 43..97: the city model's box for it plus 2 px left and 7 px on top (its right side
    /// is the frame's edge). The model calls it `car` at a sprite height of 0.32 (score
    /// ≥ 0.66 at every x along y = 0.60 or 0.68; other heights and rows dip to 0.5).
    Car,
    /// The van parked beside it, x 652..724, y 45..102: `truck` to the city model at a
    /// sprite height of 0.20 (score ≥ 0.73 along y = 0.60–0.70, except x ≤ 0.13, where
    /// the frame's edge clips it; larger, it flickers between `truck` and `car`).
    Van,
}

impl Sprite {
    /// Source file and the crop (x, y, width, height) in its pixels.
    fn source(self) -> (&'static str, [u32; 4]) {
        match self {
            Sprite::Grace => ("grace_hopper.jpg", [0, 0, 512, 600]),
            Sprite::Messi => ("messi5.jpg", [155, 78, 255, 232]),
            Sprite::Car => (VEHICLES, [730, 43, 38, 54]),
            Sprite::Van => (VEHICLES, [652, 45, 72, 57]),
        }
    }

    /// Where the source file is: the media folder, or beside the default model (whose
    /// reference frame the vehicles come from).
    fn file(self) -> anyhow::Result<std::path::PathBuf> {
        let (name, _) = self.source();
        if name != VEHICLES {
            return media_file(name);
        }
        // Tests and benchmarks run from elsewhere in the workspace this was built in.
        let built_in = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models");
        let dir = match super::default_manifest() {
            Ok(m) => m.parent().map(std::path::Path::to_path_buf).unwrap_or_default(),
            Err(_) => built_in.join(super::DEFAULT_MODEL),
        };
        let path = dir.join("reference").join(name);
        if !path.is_file() {
            bail!("{} is missing (the default model's reference frame)", path.display());
        }
        Ok(path)
    }

    /// Width / height of the cut-out; known without loading it, so the truth is pure.
    pub fn aspect(self) -> f32 {
        let [_, _, w, h] = self.source().1;
        w as f32 / h as f32
    }

    /// The cut-out's pixels.
    pub fn load(self) -> anyhow::Result<RgbImage> {
        let (_, [x, y, w, h]) = self.source();
        let path = self.file()?;
        let img = image::open(&path).with_context(|| format!("reading {}", path.display()))?.to_rgb8();
        if img.width() < x + w || img.height() < y + h {
            bail!("{} is {}×{}, too small for the {self:?} sprite", path.display(), img.width(), img.height());
        }
        Ok(image::imageops::crop_imm(&img, x, y, w, h).to_image())
    }
}

/// One person on a scripted path.
#[derive(Debug, Clone)]
pub struct Actor {
    pub sprite: Sprite,
    /// Sprite height as a fraction of the frame height.
    pub height: f32,
    /// Waypoints (seconds from stream start, x, y) of the sprite's bottom-centre,
    /// normalised 0..1, times ascending. Visible from the first waypoint's time to the
    /// last one's (inclusive), moving in straight lines between them; a repeated point
    /// is standing still.
    pub path: Vec<(f64, f32, f32)>,
}

impl Actor {
    /// Bottom-centre (x, y) at `t`, or `None` when not in the scene.
    pub fn position(&self, t: f64) -> Option<(f32, f32)> {
        let (&(t0, x0, y0), &(t1, _, _)) = (self.path.first()?, self.path.last()?);
        if t < t0 || t > t1 {
            return None;
        }
        let mut at = (x0, y0);
        for w in self.path.windows(2) {
            let ((ta, xa, ya), (tb, xb, yb)) = (w[0], w[1]);
            if t >= ta && t <= tb {
                let f = if tb > ta { ((t - ta) / (tb - ta)) as f32 } else { 1.0 };
                at = (xa + (xb - xa) * f, ya + (yb - ya) * f);
            }
        }
        Some(at)
    }
}

/// A scripted scene: a static background and actors.
#[derive(Debug, Clone)]
pub struct Scene {
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    /// Seconds; the scene has `round(duration * fps)` frames.
    pub duration: f64,
    pub actors: Vec<Actor>,
}

/// The standard scene, 640×480 at 10 fps, 45 s:
///
/// - A: Grace, height 0.38, walks east along y = 0.85 from x = 0.15 (t = 3 s) to x = 0.85
///   (t = 13 s).
/// - B: Messi, height 0.38, walks west along y = 0.45 from x = 0.78 (t = 5 s) to x = 0.22
///   (t = 15 s).
/// - C: Grace, height 0.35, appears at (0.88, 0.95) at t = 20 s, walks to (0.65, 0.95) by
///   t = 22 s, stands there until t = 32 s, walks back to (0.88, 0.95) by t = 34 s and
///   disappears.
/// - From 34 s on: background only.
///
/// Truth, from the bottom-centre point (checked by the unit tests):
///
/// - Vertical line x = 0.5: A crosses it eastwards at t = 8.0 s (frame 80), B westwards at
///   t = 10.0 s (frame 100); C never reaches it; no other crossing.
/// - Zone "bench" x ∈ [0.55, 0.75], y ∈ [0.7, 1.0]: A is inside from t ≈ 8.71 s to
///   ≈ 11.57 s (x = 0.55 at 3 + 0.40/0.07 s, x = 0.75 at 3 + 0.60/0.07 s), C from
///   t ≈ 21.13 s to ≈ 32.87 s (x = 0.75 at 20 + 0.13/0.115 s and 32 + 0.10/0.115 s);
///   B (y = 0.45) never.
/// - A and B are both visible from 5 s to 13 s; at most one person is visible from 15 s on.
///
/// Sizes: A's top edge (0.85 − 0.38) stays 0.02 below B's feet (0.45) when they pass each
/// other around t = 9 s: touching (A at 0.40), A's score fell to 0.3–0.6 next to B.
/// Smaller than ~0.35 of the frame, Grace is found less reliably. Measured with the default
/// model on every decoded frame, scaled as the agent does (2-tap bilinear to 300×300):
/// score ≥ 0.68 and IoU with the truth box ≥ 0.68 for every visible actor in every frame,
/// no other detection at ≥ 0.3.
pub fn standard_scene() -> Scene {
    Scene {
        width: 640,
        height: 480,
        fps: 10,
        duration: 45.0,
        actors: vec![
            Actor { sprite: Sprite::Grace, height: 0.38, path: vec![(3.0, 0.15, 0.85), (13.0, 0.85, 0.85)] },
            Actor { sprite: Sprite::Messi, height: 0.38, path: vec![(5.0, 0.78, 0.45), (15.0, 0.22, 0.45)] },
            Actor {
                sprite: Sprite::Grace,
                height: 0.35,
                path: vec![(20.0, 0.88, 0.95), (22.0, 0.65, 0.95), (32.0, 0.65, 0.95), (34.0, 0.88, 0.95)],
            },
        ],
    }
}

/// The city scene, 640×480 at 10 fps, 33 s: two vehicles and a person cross the frame
/// one after another, each appearing more than 3 s after the last one left (a vehicle
/// passing just above a person lowers both scores, and a track still waiting to be
/// declared lost must not take over the next road user).
///
/// - 0 Car (`car`), height 0.32, drives east along y = 0.68 from x = 0.1 (t = 1 s) to
///   x = 0.9 (t = 9 s): crosses x = 0.5 at t = 5 s.
/// - 1 Van (`truck`), height 0.20, drives west along y = 0.62 from x = 0.85 (t = 12.5 s)
///   to x = 0.15 (t = 19.5 s): crosses x = 0.5 at t = 16 s.
/// - 2 Messi (`person`), height 0.32, walks east along y = 0.95 from x = 0.15 (t = 21 s)
///   to x = 0.85 (t = 29 s): crosses x = 0.5 at t = 25 s.
/// - From 29 s on: background only.
///
/// Both vehicles' reference points stay in y 0.5–0.75 (a road), the person's in
/// y 0.85–1.0 (a pavement).
pub fn city_scene() -> Scene {
    Scene {
        width: 640,
        height: 480,
        fps: 10,
        duration: 33.0,
        actors: vec![
            Actor { sprite: Sprite::Car, height: 0.32, path: vec![(1.0, 0.1, 0.68), (9.0, 0.9, 0.68)] },
            Actor { sprite: Sprite::Van, height: 0.20, path: vec![(12.5, 0.85, 0.62), (19.5, 0.15, 0.62)] },
            Actor { sprite: Sprite::Messi, height: 0.32, path: vec![(21.0, 0.15, 0.95), (29.0, 0.85, 0.95)] },
        ],
    }
}

/// The quiet scene, 640×480 at 10 fps, 122 s: a mostly static view that someone crosses a
/// tenth of the time (three crossings of 4 s each), for measuring what a static camera
/// costs without losing an event.
///
/// - A: Grace, height 0.38, walks east along y = 0.85 from x = 0.1 (t = 20 s) to x = 0.9
///   (t = 24 s): crosses x = 0.5 at t = 22 s.
/// - B: Messi, height 0.38, walks west along y = 0.45 from x = 0.9 (t = 60 s) to x = 0.1
///   (t = 64 s): crosses x = 0.5 at t = 62 s.
/// - C: Grace, height 0.38, walks east along y = 0.85 from x = 0.1 (t = 100 s) to x = 0.9
///   (t = 104 s): crosses x = 0.5 at t = 102 s.
///
/// With the vertical line x = 0.5 and the zone x ∈ [0.3, 0.7], y ∈ [0.6, 1.0]: crossings
/// east, west, east; A and C each enter and leave the zone once, B never.
pub fn quiet_scene() -> Scene {
    let walk = |sprite, t: f64, y: f32, from: f32, to: f32| Actor {
        sprite,
        height: 0.38,
        path: vec![(t, from, y), (t + 4.0, to, y)],
    };
    Scene {
        width: 640,
        height: 480,
        fps: 10,
        duration: 122.0,
        actors: vec![
            walk(Sprite::Grace, 20.0, 0.85, 0.1, 0.9),
            walk(Sprite::Messi, 60.0, 0.45, 0.9, 0.1),
            walk(Sprite::Grace, 100.0, 0.85, 0.1, 0.9),
        ],
    }
}

impl Scene {
    /// Number of frames.
    pub fn frames(&self) -> u64 {
        (self.duration * self.fps as f64).round().max(0.0) as u64
    }

    /// The time frame `index` shows.
    pub fn time(&self, index: u64) -> f64 {
        index as f64 / self.fps.max(1) as f64
    }

    /// When the last actor leaves; the stream is background only after this.
    pub fn script_end(&self) -> f64 {
        self.actors.iter().filter_map(|a| a.path.last().map(|p| p.0)).fold(0.0, f64::max)
    }

    /// The sprite's size in pixels for `actor`.
    fn sprite_size(&self, actor: &Actor) -> (u32, u32) {
        let h = (actor.height * self.height as f32).round().max(1.0);
        let w = (h * actor.sprite.aspect()).round().max(1.0);
        (w as u32, h as u32)
    }

    /// Left, top (pixels) and size of `actor`'s sprite at `t`: exactly the pixels
    /// [`Scene::render`] covers.
    fn sprite_rect(&self, actor: &Actor, t: f64) -> Option<(i64, i64, u32, u32)> {
        let (x, y) = actor.position(t)?;
        let (w, h) = self.sprite_size(actor);
        let left = (x * self.width as f32 - w as f32 / 2.0).round() as i64;
        let top = (y * self.height as f32).round() as i64 - h as i64;
        Some((left, top, w, h))
    }

    /// Normalised x, y, w, h of actor `actor`'s sprite at `t`; `None` when not visible
    /// (or no such actor).
    pub fn truth_box(&self, actor: usize, t: f64) -> Option<[f32; 4]> {
        let (left, top, w, h) = self.sprite_rect(self.actors.get(actor)?, t)?;
        let (fw, fh) = (self.width as f32, self.height as f32);
        Some([left as f32 / fw, top as f32 / fh, w as f32 / fw, h as f32 / fh])
    }

    /// Frame `frame_index` (background and the actors visible at `index / fps`). Loads the
    /// sprites on every call: to render many frames use [`Scene::renderer`].
    pub fn render(&self, frame_index: u64) -> anyhow::Result<RgbImage> {
        Ok(self.renderer()?.frame(frame_index))
    }

    /// A renderer with the background drawn and the sprites loaded and scaled once.
    pub fn renderer(&self) -> anyhow::Result<Renderer<'_>> {
        let sprites = self
            .actors
            .iter()
            .map(|a| {
                let (w, h) = self.sprite_size(a);
                Ok(image::imageops::resize(&a.sprite.load()?, w, h, image::imageops::FilterType::Triangle))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let background = RgbImage::from_fn(self.width, self.height, |x, y| background(x, y, self.height));
        Ok(Renderer { scene: self, background, sprites })
    }

    /// Name of the cache file: changes with the scene, the sprites' crops, the renderer and
    /// the encoder.
    pub fn cache_name(&self) -> String {
        let mut h = Sha256::new();
        let sources: Vec<_> = self.actors.iter().map(|a| a.sprite.source()).collect();
        h.update(format!("render {RENDER_VERSION}; x264 {X264}; {self:?}; sprites {sources:?}"));
        let hex: String = h.finalize().iter().take(8).map(|b| format!("{b:02x}")).collect();
        format!("scene-{hex}.au")
    }

    /// Every frame as H.264 access units (one per frame), encoded on first use and cached
    /// in the media folder.
    pub fn encode(&self) -> anyhow::Result<Vec<AccessUnit>> {
        let dir = media_dir();
        let cached = dir.join(self.cache_name());
        if let Ok(aus) = read_aus(&cached)
            && aus.len() as u64 == self.frames()
        {
            return Ok(aus);
        }
        let started = std::time::Instant::now();
        let aus = self.encode_now()?;
        let bytes: usize = aus.iter().map(|a| a.data.len()).sum();
        tracing::info!(
            frames = aus.len(),
            bytes,
            secs = started.elapsed().as_secs_f32(),
            "encoded a test scene (cached in {})",
            cached.display()
        );
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        write_aus(&cached, &aus).with_context(|| format!("writing {}", cached.display()))?;
        Ok(aus)
    }

    fn encode_now(&self) -> anyhow::Result<Vec<AccessUnit>> {
        if self.fps == 0 || self.width == 0 || self.height == 0 || self.frames() == 0 {
            bail!("empty scene: {}×{} at {} fps for {} s", self.width, self.height, self.fps, self.duration);
        }
        let renderer = self.renderer()?;
        gst::init()?;
        let desc = format!(
            "appsrc name=src format=time block=true max-bytes={} \
             ! videoconvert ! video/x-raw,format=I420 \
             ! x264enc key-int-max={} {X264} ! video/x-h264,profile=main \
             ! h264parse ! video/x-h264,stream-format=byte-stream,alignment=au ! appsink name=out sync=false",
            // A few frames in flight: rendering runs ahead of the encoder, not the whole scene.
            4 * self.width as u64 * self.height as u64 * 3,
            self.fps
        );
        let pipeline =
            gst::parse::launch(&desc)?.downcast::<gst::Pipeline>().map_err(|_| anyhow::anyhow!("not a pipeline"))?;
        let src =
            pipeline.by_name("src").and_then(|e| e.downcast::<gst_app::AppSrc>().ok()).context("appsrc missing")?;
        let sink =
            pipeline.by_name("out").and_then(|e| e.downcast::<gst_app::AppSink>().ok()).context("appsink missing")?;
        src.set_caps(Some(
            &gst::Caps::builder("video/x-raw")
                .field("format", "RGB")
                .field("width", self.width as i32)
                .field("height", self.height as i32)
                .field("framerate", gst::Fraction::new(self.fps as i32, 1))
                .build(),
        ));
        pipeline.set_state(gst::State::Playing)?;
        let frame_ns = 1_000_000_000 / self.fps as u64;
        let frames = self.frames();
        let (pulled, pushed) = std::thread::scope(|s| {
            let pusher = s.spawn(|| -> anyhow::Result<()> {
                for i in 0..frames {
                    let mut buf = gst::Buffer::from_mut_slice(renderer.frame(i).into_raw());
                    if let Some(b) = buf.get_mut() {
                        b.set_pts(gst::ClockTime::from_nseconds(i * 1_000_000_000 / self.fps as u64));
                        b.set_duration(gst::ClockTime::from_nseconds(frame_ns));
                    }
                    // Fails (flushing) when the pipeline stopped on an error: the puller reports it.
                    src.push_buffer(buf).map_err(|e| anyhow::anyhow!("pushing frame {i}: {e:?}"))?;
                }
                src.end_of_stream().map_err(|e| anyhow::anyhow!("ending the scene: {e:?}"))?;
                Ok(())
            });
            let pulled = pull_all(&pipeline, &sink, || pusher.is_finished());
            // Stopping unblocks the pusher if the pull ended early.
            let _ = pipeline.set_state(gst::State::Null);
            (pulled, pusher.join())
        });
        let aus = pulled?;
        match pushed {
            Ok(r) => r?,
            Err(_) => bail!("the scene's render thread panicked"),
        }
        if aus.len() as u64 != frames {
            bail!("encoding the scene gave {} access units for {frames} frames", aus.len());
        }
        if let Some(i) = (0..aus.len()).find(|&i| aus[i].keyframe != (i % self.fps as usize == 0)) {
            bail!("encoding the scene: keyframes not at whole seconds (frame {i})");
        }
        Ok(aus)
    }
}

/// Access units from `sink` until end of stream, failing on a pipeline error or when
/// nothing more comes for 5 s after the pusher stopped (it failed before end of stream).
fn pull_all(
    pipeline: &gst::Pipeline,
    sink: &gst_app::AppSink,
    pusher_done: impl Fn() -> bool,
) -> anyhow::Result<Vec<AccessUnit>> {
    let bus = pipeline.bus().context("pipeline has no bus")?;
    let mut aus = Vec::new();
    let mut idle = 0;
    loop {
        if let Some(msg) = bus.pop_filtered(&[gst::MessageType::Error])
            && let gst::MessageView::Error(e) = msg.view()
        {
            bail!("encoding the scene failed: {} ({:?})", e.error(), e.debug());
        }
        match sink.try_pull_sample(gst::ClockTime::from_mseconds(200)) {
            Some(sample) => {
                idle = 0;
                let Some(buf) = sample.buffer() else { continue };
                let map = buf.map_readable()?;
                aus.push(AccessUnit {
                    data: map.to_vec(),
                    keyframe: !buf.flags().contains(gst::BufferFlags::DELTA_UNIT),
                });
            }
            None if sink.is_eos() => return Ok(aus),
            None if pusher_done() => {
                idle += 1;
                if idle >= 25 {
                    bail!("encoding the scene stalled after {} access units", aus.len());
                }
            }
            None => {}
        }
    }
}

/// Renders frames of one scene.
pub struct Renderer<'a> {
    scene: &'a Scene,
    background: RgbImage,
    /// Per actor, scaled to its size in the frame.
    sprites: Vec<RgbImage>,
}

impl Renderer<'_> {
    /// Frame `index`: the background with every actor visible at `index / fps` pasted at
    /// its truth box, in actor order (later actors in front).
    pub fn frame(&self, index: u64) -> RgbImage {
        let t = self.scene.time(index);
        let mut img = self.background.clone();
        for (actor, sprite) in self.scene.actors.iter().zip(&self.sprites) {
            if let Some((left, top, _, _)) = self.scene.sprite_rect(actor, t) {
                image::imageops::replace(&mut img, sprite, left, top);
            }
        }
        img
    }
}

/// The static background at pixel (x, y): a vertical gradient (pale grey-blue at the top
/// to grey-brown at the bottom) with a fixed low-contrast mottle (±6 levels, smooth over
/// 24 px) and grain (±2): textured like a real wall or floor, so the encoder and decoder
/// have real work, but with no edges or shapes a detector could take for a person.
fn background(x: u32, y: u32, height: u32) -> image::Rgb<u8> {
    let f = y as f32 / height.max(1) as f32;
    let top = [170.0, 178.0, 186.0];
    let bottom = [118.0, 112.0, 100.0];
    let mottle = value_noise(x as f32 / 24.0, y as f32 / 24.0) * 12.0 - 6.0;
    let grain = (hash(x, y, 7) & 0xff) as f32 / 255.0 * 4.0 - 2.0;
    let c = |i: usize| (top[i] + (bottom[i] - top[i]) * f + mottle + grain).round().clamp(0.0, 255.0) as u8;
    image::Rgb([c(0), c(1), c(2)])
}

/// Smooth noise in 0..1: bilinear interpolation of a hashed lattice (smoothstep weights).
fn value_noise(x: f32, y: f32) -> f32 {
    let (xi, yi) = (x.floor(), y.floor());
    let (fx, fy) = (x - xi, y - yi);
    let (sx, sy) = (fx * fx * (3.0 - 2.0 * fx), fy * fy * (3.0 - 2.0 * fy));
    let (xi, yi) = (xi as u32, yi as u32);
    let v = |dx: u32, dy: u32| (hash(xi + dx, yi + dy, 1) & 0xffff) as f32 / 65535.0;
    let top = v(0, 0) + (v(1, 0) - v(0, 0)) * sx;
    let bottom = v(0, 1) + (v(1, 1) - v(0, 1)) * sx;
    top + (bottom - top) * sy
}

/// A fixed integer hash (no RNG state, so every build renders the same pixels).
fn hash(x: u32, y: u32, seed: u32) -> u32 {
    let mut h = x.wrapping_mul(0x8da6_b343) ^ y.wrapping_mul(0xd816_3841) ^ seed.wrapping_mul(0xcb1a_b31f);
    h ^= h >> 13;
    h = h.wrapping_mul(0x5bd1_e995);
    h ^ (h >> 15)
}

/// The scene as an RTSP mount: encoded (or read from the cache), at its frame rate, and
/// after the last frame looping its last GOP, which lies in the background-only tail,
/// so the stream shows the empty background forever once the script is over.
pub fn scene_media(scene: &Scene) -> anyhow::Result<Media> {
    let aus = scene.encode()?;
    let loop_from = aus.iter().rposition(|a| a.keyframe).context("the encoded scene has no keyframe")?;
    let end = scene.script_end();
    if scene.time(loop_from as u64) <= end {
        bail!(
            "the scene's last keyframe (t = {:.1} s) is not after its script ends (t = {end:.1} s): \
             make the background-only tail longer than a second",
            scene.time(loop_from as u64)
        );
    }
    Ok(Media::Clip { codec: Codec::H264, units: Arc::new(aus), fps: scene.fps, loop_from })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Times in [0, duration] (step `dt`) with `actor`'s bottom-centre position.
    fn track(scene: &Scene, actor: usize, dt: f64) -> Vec<(f64, Option<(f32, f32)>)> {
        let steps = (scene.duration / dt).round() as u64;
        (0..=steps).map(|i| i as f64 * dt).map(|t| (t, scene.actors[actor].position(t))).collect()
    }

    /// Crossings of x = 0.5 as (time, eastwards?).
    fn crossings(scene: &Scene, actor: usize) -> Vec<(f64, bool)> {
        let tr = track(scene, actor, 0.001);
        tr.windows(2)
            .filter_map(|w| match (w[0].1, w[1].1) {
                (Some((a, _)), Some((b, _))) if (a < 0.5) != (b < 0.5) => Some((w[1].0, b >= 0.5)),
                _ => None,
            })
            .collect()
    }

    /// (enter, leave) intervals in the "bench" zone.
    fn in_bench(scene: &Scene, actor: usize) -> Vec<(f64, f64)> {
        let inside =
            |p: Option<(f32, f32)>| p.is_some_and(|(x, y)| (0.55..=0.75).contains(&x) && (0.7..=1.0).contains(&y));
        let mut spans = Vec::new();
        let mut since = None;
        for (t, p) in track(scene, actor, 0.001) {
            match (inside(p), since) {
                (true, None) => since = Some(t),
                (false, Some(s)) => {
                    spans.push((s, t));
                    since = None;
                }
                _ => {}
            }
        }
        if let Some(s) = since {
            spans.push((s, scene.duration));
        }
        spans
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 0.01
    }

    #[test]
    fn line_truth_of_the_standard_scene() {
        let s = standard_scene();
        let a = crossings(&s, 0);
        assert!(a.len() == 1 && close(a[0].0, 8.0) && a[0].1, "A: {a:?}");
        let b = crossings(&s, 1);
        assert!(b.len() == 1 && close(b[0].0, 10.0) && !b[0].1, "B: {b:?}");
        assert!(crossings(&s, 2).is_empty());
    }

    #[test]
    fn line_truth_of_the_city_scene() {
        let s = city_scene();
        let car = crossings(&s, 0);
        assert!(car.len() == 1 && close(car[0].0, 5.0) && car[0].1, "car: {car:?}");
        let van = crossings(&s, 1);
        assert!(van.len() == 1 && close(van[0].0, 16.0) && !van[0].1, "van: {van:?}");
        let person = crossings(&s, 2);
        assert!(person.len() == 1 && close(person[0].0, 25.0) && person[0].1, "person: {person:?}");
        // One at a time, and inside the frame.
        for i in 0..s.frames() {
            let t = s.time(i);
            let seen: Vec<[f32; 4]> = (0..3).filter_map(|a| s.truth_box(a, t)).collect();
            assert!(seen.len() <= 1, "t = {t}: {seen:?}");
            for [x, y, w, h] in seen {
                assert!(x >= 0.0 && y >= 0.0 && x + w <= 1.0 && y + h <= 1.0, "t = {t}: {x} {y} {w} {h}");
            }
        }
        assert_eq!(s.script_end(), 29.0);
    }

    #[test]
    fn zone_truth_of_the_standard_scene() {
        let s = standard_scene();
        let a = in_bench(&s, 0);
        assert!(a.len() == 1 && close(a[0].0, 3.0 + 0.40 / 0.07) && close(a[0].1, 3.0 + 0.60 / 0.07), "A: {a:?}");
        assert!(close(a[0].0, 8.714) && close(a[0].1, 11.571), "A: {a:?}");
        assert!(in_bench(&s, 1).is_empty());
        let c = in_bench(&s, 2);
        assert!(c.len() == 1 && close(c[0].0, 21.130) && close(c[0].1, 32.870), "C: {c:?}");
    }

    #[test]
    fn sprites_stay_inside_the_frame_and_appear_only_on_their_paths() {
        let s = standard_scene();
        let visible = |i: usize, t: f64| s.truth_box(i, t).is_some();
        for i in 0..s.frames() {
            let t = s.time(i);
            for a in 0..s.actors.len() {
                if let Some([x, y, w, h]) = s.truth_box(a, t) {
                    assert!(
                        x >= 0.0 && y >= 0.0 && x + w <= 1.0 && y + h <= 1.0,
                        "actor {a} at t={t}: {x} {y} {w} {h}"
                    );
                }
            }
        }
        assert!(!visible(0, 2.9) && visible(0, 3.0) && visible(0, 13.0) && !visible(0, 13.1));
        assert!(!visible(1, 4.9) && visible(1, 5.0) && visible(1, 15.0) && !visible(1, 15.1));
        assert!(!visible(2, 19.9) && visible(2, 20.0) && visible(2, 34.0) && !visible(2, 34.1));
        assert!((0..3).all(|a| !visible(a, 34.1) && !visible(a, 44.9)) && s.truth_box(3, 10.0).is_none());
        assert!(s.script_end() == 34.0 && s.frames() == 450);
    }

    #[test]
    fn truth_box_follows_the_bottom_centre() {
        let s = standard_scene();
        // A at t = 8: bottom-centre (0.5, 0.85); 182 px tall, 155 px wide.
        let [x, y, w, h] = s.truth_box(0, 8.0).expect("A visible");
        assert!((x + w / 2.0 - 0.5).abs() < 1.0 / 640.0 && (y + h - 0.85).abs() < 1.0 / 480.0);
        assert!((h * 480.0 - 182.0).abs() < 1e-3 && (w * 640.0 - 155.0).abs() < 1e-3);
        // A's head stays clear of B's feet.
        let [_, b_y, _, b_h] = s.truth_box(1, 8.0).expect("B visible");
        assert!(y - (b_y + b_h) > 0.015);
        // C stands still from 22 s to 32 s.
        assert_eq!(s.truth_box(2, 22.0), s.truth_box(2, 27.3));
        assert_eq!(s.actors[2].position(30.0), Some((0.65, 0.95)));
    }

    #[test]
    fn background_is_static_textured_and_smooth() {
        let px: Vec<[u8; 3]> = (0..480).flat_map(|y| (0..640).map(move |x| background(x, y, 480).0)).collect();
        assert_eq!(background(123, 45, 480), background(123, 45, 480));
        let distinct: std::collections::HashSet<_> = px.iter().collect();
        assert!(distinct.len() > 1000, "not textured: {} colours", distinct.len());
        // No edges: neighbours differ by little more than the grain.
        for y in 0..480u32 {
            for x in 1..640u32 {
                let (a, b) = (background(x - 1, y, 480).0, background(x, y, 480).0);
                assert!((0..3).all(|c| a[c].abs_diff(b[c]) <= 6), "edge at {x},{y}");
            }
        }
    }

    #[test]
    fn cache_name_depends_on_the_scene() {
        let s = standard_scene();
        let mut moved = standard_scene();
        moved.actors[1].height = 0.36;
        assert_eq!(s.cache_name(), standard_scene().cache_name());
        assert_ne!(s.cache_name(), moved.cache_name());
        assert!(s.cache_name().starts_with("scene-") && s.cache_name().ends_with(".au"));
    }
}
