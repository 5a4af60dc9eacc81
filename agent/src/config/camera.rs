//! `[[cameras]]`: one camera's settings, its zones, lines and class filters, and the
//! same validation for a camera that arrives as JSON (`camera.add`).

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::Duration;

use super::reader::{Issues, Keyword, TableReader};
use super::{ClassGroup, Config, redact_url, redact_urls_in};
use crate::rules::geometry::{self, Point};
use crate::rules::{LineRule, ReferencePoint, RulesConfig, ZoneRule};
use crate::source::motion::{CompressedMotionPolicy, MotionPolicy};

/// `[[cameras]]`
#[derive(Debug, Clone, PartialEq)]
pub struct CameraConfig {
    /// `id` (required): unique per agent; letters, digits, `-`, `_`, `.` (a topic segment).
    pub id: String,
    /// `url` (required): `rtsp://`, `rtsps://` or `rtspt://`, credentials allowed.
    pub url: String,
    /// `model` (required): the `name` of one of the `[[models]]`.
    pub model: String,
    /// `fps` (default 1.0): analysed frames per second; a ceiling, must be > 0 and ≤ 60.
    pub fps: f64,
    /// `min_score` (default: the model manifest's `score_threshold`), in (0, 1].
    pub min_score: Option<f32>,
    /// `transport` (default "tcp").
    pub transport: Transport,
    /// `rtsp_client` (default "auto"): who receives the stream, as resolved ("auto" is
    /// the shared client with rtspsrc to fall back on for `rtsp://` over TCP, else
    /// rtspsrc).
    pub client: RtspClient,
    /// `decode` (default "auto").
    pub decode: DecodePolicy,
    /// `decoder` (default "auto"): which decoder element.
    pub decoder: DecoderPolicy,
    /// `reconnect_min_secs` / `reconnect_max_secs` (defaults 1 and 30).
    pub reconnect: ReconnectPolicy,
    /// `stall_seconds` (default 10, at least 1): no data for this long (twice as long
    /// while starting) rebuilds the camera's pipeline.
    pub stall: Duration,
    /// `lost_after` (seconds, default the larger of 5 and 3 analysed frames, `3 / fps`): a
    /// tracked object unseen this long ends (`object.end`).
    pub lost_after: Duration,
    /// `count_interval` (seconds, default 60, at least 1): how often the camera's
    /// `counts` message is published.
    pub count_interval: Duration,
    /// `[[cameras.zones]]`, `[[cameras.lines]]`, `reference_point` (default
    /// "bottom_center") and `update_interval` (seconds, default off): the camera's rules,
    /// with class names resolved to the model's class ids.
    pub rules: RulesConfig,
    /// `snapshots` (default true), `snapshot_max_side` (default 640 px, 32 to 4096) and
    /// `snapshot_quality` (default 80, 1 to 100): JPEG snapshots of `object.new` and
    /// `object.end`.
    pub snapshots: SnapshotPolicy,
    /// `motion` (default true), `motion_threshold` (default 8 luma levels, 1 to 255) and
    /// `keepalive` (default 10 s): frames without motion skip the model (see
    /// `source::motion`), except while tracking and at least every `keepalive`.
    /// `compressed_motion` (`"auto"`, the default, or `"off"`): with `motion` on, a due
    /// keyframe is not even decoded while the compressed stream shows no activity, once
    /// the camera has learnt that its frame sizes tell motion (`source::activity`).
    pub motion: MotionPolicy,
}

impl CameraConfig {
    /// Whether `other` runs the same pipeline and model: it differs at most in what the
    /// event stage can take while the camera runs (rules, `count_interval`, snapshots).
    pub fn same_pipeline(&self, other: &CameraConfig) -> bool {
        let mut o = other.clone();
        o.rules = self.rules.clone();
        o.count_interval = self.count_interval;
        o.snapshots = self.snapshots;
        *self == o
    }
}

/// Whether and how a camera publishes JPEG snapshots of its objects.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SnapshotPolicy {
    pub enabled: bool,
    /// Longest side of the JPEG in pixels; smaller frames are not enlarged.
    pub max_side: u32,
    pub quality: u8,
}

impl Default for SnapshotPolicy {
    fn default() -> Self {
        Self { enabled: true, max_side: 640, quality: 80 }
    }
}

impl Keyword for ReferencePoint {
    const ALL: &'static [(&'static str, Self)] =
        &[("bottom_center", ReferencePoint::BottomCenter), ("center", ReferencePoint::Center)];
}

/// RTSP lower transport for a camera.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// RTP interleaved in the RTSP TCP connection: one socket, no UDP receive-buffer
    /// losses, works through NAT. The default.
    Tcp,
    /// RTP over UDP: lower latency on a clean LAN, loses packets when the host is busy.
    Udp,
}

impl Keyword for Transport {
    const ALL: &'static [(&'static str, Self)] = &[("tcp", Transport::Tcp), ("udp", Transport::Udp)];
}

/// Who receives a camera's RTSP stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RtspClient {
    /// GStreamer's rtspsrc: four threads of its own per camera (reader, jitter buffer
    /// and its timer, RTCP); UDP or TCP, `rtsp://`, `rtspt://` and `rtsps://`.
    Gstreamer,
    /// A client on the agent's async runtime (the `retina` crate): no thread of its own,
    /// a quarter of rtspsrc's CPU to receive (docs/BENCHMARKS.md); only the frames due
    /// for analysis go to a decode-only pipeline (one thread). RTP over the RTSP
    /// connection (`transport = "tcp"`) and `rtsp://` only; H.264, H.265 and MJPEG.
    Shared,
    /// The shared client, and rtspsrc for the rest of the camera's run if the shared
    /// client cannot receive it (what `auto` gives a camera the shared client fits).
    SharedOrGstreamer,
}

/// `rtsp_client` as written: a client, or `auto` (the default), which takes the shared
/// client wherever it can receive the camera (with rtspsrc to fall back on) and rtspsrc
/// elsewhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClientChoice {
    Auto,
    Gstreamer,
    Shared,
}

impl Keyword for ClientChoice {
    const ALL: &'static [(&'static str, Self)] =
        &[("auto", ClientChoice::Auto), ("gstreamer", ClientChoice::Gstreamer), ("shared", ClientChoice::Shared)];
}

/// Whether the shared client can receive `url` over `transport`.
fn shared_client_fits(url: &str, transport: Transport) -> bool {
    transport == Transport::Tcp && url.get(..7).is_some_and(|p| p.eq_ignore_ascii_case("rtsp://"))
}

/// Which frames reach the video decoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodePolicy {
    /// Decode only keyframes while the camera's keyframe rate is at least its analysis
    /// `fps` (about a quarter of the cost of full decoding), everything otherwise. Default.
    Auto,
    /// Decode only keyframes, whatever the analysis rate (analysed rate ≤ keyframe rate).
    Keyframes,
    /// Decode every frame.
    All,
}

impl Keyword for CompressedMotionPolicy {
    const ALL: &'static [(&'static str, Self)] =
        &[("auto", CompressedMotionPolicy::Auto), ("off", CompressedMotionPolicy::Off)];
}

impl Keyword for DecodePolicy {
    const ALL: &'static [(&'static str, Self)] =
        &[("auto", DecodePolicy::Auto), ("keyframes", DecodePolicy::Keyframes), ("all", DecodePolicy::All)];
}

/// Which GStreamer decoder a camera uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecoderPolicy {
    /// The highest-ranked decoder for the stream's codec: a hardware one (v4l2, VA-API,
    /// NVIDIA) when its plugin is installed, else the software one. The default.
    Auto,
    /// libav's (`avdec_h264`, `avdec_h265`) or `jpegdec`.
    Software,
    /// This element, e.g. `"v4l2h264dec"`.
    Element(String),
}

/// How a failed camera is retried: exponential back-off between `min` and `max`, reset
/// once the camera has delivered frames again. A camera is never given up on.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReconnectPolicy {
    pub min: Duration,
    pub max: Duration,
}

pub fn camera_from_json(value: &serde_json::Value, config: &Config) -> Result<CameraConfig, Vec<String>> {
    let table = match toml::Value::try_from(value) {
        Ok(toml::Value::Table(t)) => t,
        Ok(_) => return Err(vec!["camera: must be an object".into()]),
        Err(e) => {
            let e = redact_urls_in(&e.to_string());
            return Err(vec![format!("camera: cannot be read as a [[cameras]] table ({e}); null is not a value")]);
        }
    };
    let mut doc = toml::Table::new();
    doc.insert("camera".into(), toml::Value::Table(table));
    let src = match toml::to_string(&doc) {
        Ok(s) => s,
        Err(e) => return Err(vec![format!("camera: cannot be read as a [[cameras]] table: {e}")]),
    };
    let label = Path::new("command");
    let mut issues = Issues::new(label, &src);
    let parsed = toml::de::DeTable::parse(&src);
    let doc = match &parsed {
        Ok(d) => d,
        Err(e) => return Err(vec![redact_urls_in(&format!("camera: {}", e.message()))]),
    };
    let Some(cam) = doc.get_ref().iter().find(|(k, _)| k.get_ref() == "camera").map(|(_, v)| v) else {
        return Err(vec!["camera: missing".into()]);
    };
    let Some(table) = cam.get_ref().as_table() else {
        return Err(vec!["camera: must be an object".into()]);
    };
    let mut t = TableReader::new("camera", table, cam.span());
    let model_names: HashSet<String> = config.models.iter().map(|m| m.name.clone()).collect();
    let labels: HashMap<&str, &[String]> =
        config.models.iter().map(|m| (m.name.as_str(), &m.spec.labels[..])).collect();
    let camera = read_camera(&mut issues, &mut t, &model_names, &labels, &config.class_groups, &mut Vec::new());
    t.finish(&mut issues);
    match camera {
        Some(c) if issues.list.is_empty() => Ok(c),
        _ => Err(issues.list.into_iter().map(|i| format!("{}: {}", i.field, i.message)).collect()),
    }
}

pub(super) fn read_camera(
    issues: &mut Issues<'_>,
    t: &mut TableReader<'_, '_>,
    model_names: &HashSet<String>,
    labels: &HashMap<&str, &[String]>,
    groups: &[ClassGroup],
    seen_ids: &mut Vec<String>,
) -> Option<CameraConfig> {
    let id = t.req::<String>(issues, "id");
    let url = t.req::<String>(issues, "url");
    let model = t.req::<String>(issues, "model");
    let fps = t.opt::<f64>(issues, "fps").unwrap_or(1.0);
    let min_score = t.opt::<f64>(issues, "min_score");
    let transport = t.keyword(issues, "transport", Transport::Tcp);
    let choice = t.keyword(issues, "rtsp_client", ClientChoice::Auto);
    let decode = t.keyword(issues, "decode", DecodePolicy::Auto);
    let decoder = match t.opt::<String>(issues, "decoder").as_deref() {
        None | Some("auto") => DecoderPolicy::Auto,
        Some("software") => DecoderPolicy::Software,
        Some(name) => {
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
                let s = t.raw("decoder").map(|v| v.span());
                issues.push(
                    &t.field_path("decoder"),
                    s.as_ref(),
                    format!("\"{name}\" is neither \"auto\", \"software\" nor a GStreamer element name"),
                );
            }
            DecoderPolicy::Element(name.to_string())
        }
    };
    // Durations are bounded so that no clock arithmetic can overflow, whatever a config
    // file or a command says; out of range is reported and the default stands in.
    let rmin = t.secs_in(issues, "reconnect_min_secs", 0.01, 3600.0).unwrap_or(Duration::from_secs(1));
    let rmax = t.secs_in(issues, "reconnect_max_secs", 0.01, 86_400.0).unwrap_or(Duration::from_secs(30));
    let stall = t.secs_in(issues, "stall_seconds", 1.0, 3600.0).unwrap_or(Duration::from_secs(10));
    let lost_after = t.secs_in(issues, "lost_after", 0.1, 3600.0);
    let count_interval = t.secs_in(issues, "count_interval", 1.0, 86_400.0).unwrap_or(Duration::from_secs(60));
    let update_interval = t.secs_in(issues, "update_interval", 0.1, 3600.0);
    let reference = t.keyword(issues, "reference_point", ReferencePoint::BottomCenter);
    let snapshots = SnapshotPolicy {
        enabled: t.opt::<bool>(issues, "snapshots").unwrap_or(true),
        max_side: t.opt::<u64>(issues, "snapshot_max_side").unwrap_or(640).min(u32::MAX as u64) as u32,
        quality: t.opt::<u64>(issues, "snapshot_quality").unwrap_or(80).min(255) as u8,
    };
    let motion_on = t.opt::<bool>(issues, "motion").unwrap_or(true);
    let motion_threshold = t.opt::<u64>(issues, "motion_threshold").unwrap_or(8);
    let keepalive = t.secs_in(issues, "keepalive", 0.1, 3600.0).unwrap_or(Duration::from_secs(10));
    let compressed = t.keyword(issues, "compressed_motion", CompressedMotionPolicy::Auto);
    let class_ids = model.as_deref().and_then(|m| labels.get(m).copied());
    let zones = read_zones(issues, t, class_ids, groups);
    let lines = read_lines(issues, t, class_ids, groups);

    let span_of = |t: &mut TableReader<'_, '_>, key: &str| t.raw(key).map(|v| v.span());
    if let Some(id) = &id {
        check_segment(issues, t, "id", id);
        if seen_ids.contains(id) {
            let s = span_of(t, "id");
            issues.push(&t.field_path("id"), s.as_ref(), format!("duplicate camera id \"{id}\""));
        }
        seen_ids.push(id.clone());
    }
    if let Some(u) = &url
        && let Err(e) = check_rtsp_url(u)
    {
        let s = span_of(t, "url");
        issues.push(&t.field_path("url"), s.as_ref(), e);
    }
    let client = match choice {
        ClientChoice::Gstreamer => RtspClient::Gstreamer,
        ClientChoice::Shared => RtspClient::Shared,
        ClientChoice::Auto if url.as_deref().is_some_and(|u| shared_client_fits(u, transport)) => {
            RtspClient::SharedOrGstreamer
        }
        ClientChoice::Auto => RtspClient::Gstreamer,
    };
    if choice == ClientChoice::Shared {
        if transport == Transport::Udp {
            let s = span_of(t, "rtsp_client");
            issues.push(
                &t.field_path("rtsp_client"),
                s.as_ref(),
                "\"shared\" receives over TCP only: set transport = \"tcp\" or rtsp_client = \"gstreamer\"",
            );
        }
        if url.as_deref().is_some_and(|u| !shared_client_fits(u, Transport::Tcp)) {
            let s = span_of(t, "rtsp_client");
            issues.push(
                &t.field_path("rtsp_client"),
                s.as_ref(),
                "\"shared\" takes rtsp:// URLs only (rtsps:// and rtspt:// need \"gstreamer\")",
            );
        }
    }
    if let Some(m) = &model
        && !model_names.contains(m)
    {
        let s = span_of(t, "model");
        let mut known: Vec<_> = model_names.iter().map(String::as_str).collect();
        known.sort_unstable();
        issues.push(
            &t.field_path("model"),
            s.as_ref(),
            format!("unknown model \"{m}\" (models: {})", known.join(", ")),
        );
    }
    if !(0.01..=60.0).contains(&fps) {
        let s = span_of(t, "fps");
        issues.push(&t.field_path("fps"), s.as_ref(), format!("must be > 0 and ≤ 60, got {fps} (the lowest is 0.01)"));
    }
    if let Some(ms) = min_score
        && !(ms > 0.0 && ms <= 1.0)
    {
        let s = span_of(t, "min_score");
        issues.push(&t.field_path("min_score"), s.as_ref(), format!("must be in (0, 1], got {ms}"));
    }
    if rmax < rmin {
        let s = span_of(t, "reconnect_max_secs");
        issues.push(
            &t.field_path("reconnect_max_secs"),
            s.as_ref(),
            "need 0 < reconnect_min_secs ≤ reconnect_max_secs",
        );
    }
    if !(1..=255).contains(&motion_threshold) {
        let s = span_of(t, "motion_threshold");
        issues.push(&t.field_path("motion_threshold"), s.as_ref(), "must be from 1 to 255 (luma levels)");
    }
    if !(32..=4096).contains(&snapshots.max_side) {
        let s = span_of(t, "snapshot_max_side");
        issues.push(&t.field_path("snapshot_max_side"), s.as_ref(), "must be from 32 to 4096 pixels");
    }
    if !(1..=100).contains(&snapshots.quality) {
        let s = span_of(t, "snapshot_quality");
        issues.push(&t.field_path("snapshot_quality"), s.as_ref(), "must be from 1 to 100");
    }
    // fps is only used once it passed its check above: 0.01..=60.
    let default_lost_after = Duration::from_secs_f64((3.0 / fps.clamp(0.01, 60.0)).clamp(5.0, 300.0));
    Some(CameraConfig {
        stall,
        lost_after: lost_after.unwrap_or(default_lost_after),
        count_interval,
        rules: RulesConfig { zones, lines, reference, update_interval },
        snapshots,
        motion: MotionPolicy {
            enabled: motion_on,
            threshold: motion_threshold.clamp(1, 255) as u8,
            keepalive,
            compressed,
        },
        id: id?,
        url: url?,
        model: model?,
        fps,
        min_score: min_score.map(|s| s as f32),
        transport,
        client,
        decode,
        decoder,
        reconnect: ReconnectPolicy { min: rmin, max: rmax.max(rmin) },
    })
}

/// Ids become MQTT topic segments: no `/`, `+`, `#`, spaces or control characters.
pub(super) fn check_segment(issues: &mut Issues<'_>, t: &mut TableReader<'_, '_>, key: &str, value: &str) {
    let ok = !value.is_empty()
        && value.len() <= 64
        && value.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !ok {
        let span = t.raw(key).map(|v| v.span());
        issues.push(
            &t.field_path(key),
            span.as_ref(),
            format!("\"{value}\" must be 1–64 characters of letters, digits, '-', '_' or '.'"),
        );
    }
}

pub(super) fn check_rtsp_url(u: &str) -> Result<(), String> {
    let parsed = url::Url::parse(u).map_err(|e| format!("not a valid URL ({e}): \"{}\"", redact_url(u)))?;
    if !matches!(parsed.scheme(), "rtsp" | "rtsps" | "rtspt") {
        return Err(format!("expected an rtsp:// URL, got scheme \"{}\"", parsed.scheme()));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err("URL has no host".into());
    }
    Ok(())
}

/// Class names (labels or `[class_groups]` names) to the model's class ids, reporting
/// unknown ones; `None` labels (the model failed to load, already reported) accept every
/// name and give no ids.
pub(super) fn read_classes(
    issues: &mut Issues<'_>,
    t: &mut TableReader<'_, '_>,
    labels: Option<&[String]>,
    groups: &[ClassGroup],
) -> Vec<u32> {
    let Some(names) = t.opt::<Vec<String>>(issues, "classes") else { return Vec::new() };
    let Some(labels) = labels else { return Vec::new() };
    let mut ids = Vec::new();
    for n in names {
        let found = match labels.iter().position(|l| *l == n) {
            Some(i) => Ok(vec![i as u32]),
            None => match groups.iter().find(|g| g.name == n) {
                Some(g) if g.ids_in(labels).is_empty() => Err(format!(
                    "group \"{n}\" has no class of this camera's model (its members: {}; the model's classes: {})",
                    g.members.join(", "),
                    labels.join(", ")
                )),
                Some(g) => Ok(g.ids_in(labels)),
                None => {
                    let group_names: Vec<&str> = groups.iter().map(|g| g.name.as_str()).collect();
                    let also = if group_names.is_empty() {
                        String::new()
                    } else {
                        format!("; groups: {}", group_names.join(", "))
                    };
                    Err(format!("unknown class \"{n}\" (the model's classes: {}{also})", labels.join(", ")))
                }
            },
        };
        match found {
            Ok(new) => ids.extend(new.into_iter().filter(|i| !ids.contains(i)).collect::<Vec<_>>()),
            Err(m) => {
                let s = t.raw("classes").map(|v| v.span());
                issues.push(&t.field_path("classes"), s.as_ref(), m);
            }
        }
    }
    ids.sort_unstable();
    ids
}

/// A rule's name: non-empty, unique among the camera's zones (or lines).
pub(super) fn check_rule_name(
    issues: &mut Issues<'_>,
    t: &mut TableReader<'_, '_>,
    name: &str,
    seen: &mut Vec<String>,
) {
    let s = t.raw("name").map(|v| v.span());
    if name.trim().is_empty() {
        issues.push(&t.field_path("name"), s.as_ref(), "must not be empty");
    } else if seen.iter().any(|n| n == name) {
        issues.push(&t.field_path("name"), s.as_ref(), format!("duplicate name \"{name}\""));
    }
    seen.push(name.to_string());
}

/// Normalised points: every coordinate in [0, 1].
pub(super) fn read_points(issues: &mut Issues<'_>, t: &mut TableReader<'_, '_>, key: &str) -> Option<Vec<Point>> {
    let pts = t.req::<Vec<[f64; 2]>>(issues, key)?;
    if let Some((i, _)) = pts.iter().enumerate().find(|(_, p)| !p.iter().all(|c| (0.0..=1.0).contains(c))) {
        let s = t.raw(key).map(|v| v.span());
        issues.push(
            &t.field_path(key),
            s.as_ref(),
            format!("point {i} is outside the frame: coordinates are normalised to [0, 1] (x right, y down)"),
        );
        return None;
    }
    Some(pts.iter().map(|p| Point::new(p[0] as f32, p[1] as f32)).collect())
}

pub(super) fn read_zones(
    issues: &mut Issues<'_>,
    cam: &mut TableReader<'_, '_>,
    labels: Option<&[String]>,
    groups: &[ClassGroup],
) -> Vec<ZoneRule> {
    let mut zones = Vec::new();
    let mut names = Vec::new();
    for mut t in cam.tables(issues, "zones") {
        let name = t.req::<String>(issues, "name");
        let polygon = read_points(issues, &mut t, "polygon");
        let loiter = t.secs_in(issues, "loiter_seconds", 0.1, 86_400.0);
        let max_objects = t.num_in::<usize>(issues, "max_objects", 0, 10_000, "objects");
        let classes = read_classes(issues, &mut t, labels, groups);
        if let Some(n) = &name {
            check_rule_name(issues, &mut t, n, &mut names);
        }
        let polygon = polygon.filter(|poly| {
            let problem = if poly.len() < 3 {
                Some("needs at least 3 points")
            } else if geometry::self_intersects(poly) {
                Some("crosses itself: list the points in order around the zone")
            } else if geometry::area2(poly).abs() < 1e-9 {
                Some("has no area (its points are on one line)")
            } else {
                None
            };
            if let Some(p) = problem {
                let s = t.raw("polygon").map(|v| v.span());
                issues.push(&t.field_path("polygon"), s.as_ref(), p);
            }
            problem.is_none()
        });
        t.finish(issues);
        if let (Some(name), Some(polygon)) = (name, polygon) {
            zones.push(ZoneRule { name, polygon, loiter, max_objects, classes });
        }
    }
    zones
}

pub(super) fn read_lines(
    issues: &mut Issues<'_>,
    cam: &mut TableReader<'_, '_>,
    labels: Option<&[String]>,
    groups: &[ClassGroup],
) -> Vec<LineRule> {
    let mut lines = Vec::new();
    let mut names = Vec::new();
    for mut t in cam.tables(issues, "lines") {
        let name = t.req::<String>(issues, "name");
        let points = read_points(issues, &mut t, "points");
        let directions = t.req::<[String; 2]>(issues, "directions");
        let classes = read_classes(issues, &mut t, labels, groups);
        if let Some(n) = &name {
            check_rule_name(issues, &mut t, n, &mut names);
        }
        let points = points.and_then(|p| {
            let problem = match p.as_slice() {
                [a, b] if a.dist(*b) < 1e-6 => Some("the two points are the same".to_string()),
                [_, _] => None,
                other => Some(format!("needs exactly 2 points (A, B), found {}", other.len())),
            };
            if let Some(m) = problem {
                let s = t.raw("points").map(|v| v.span());
                issues.push(&t.field_path("points"), s.as_ref(), m);
                return None;
            }
            Some((p[0], p[1]))
        });
        if let Some([d0, d1]) = &directions
            && (d0.trim().is_empty() || d1.trim().is_empty() || d0 == d1)
        {
            let s = t.raw("directions").map(|v| v.span());
            issues.push(&t.field_path("directions"), s.as_ref(), "needs two different, non-empty names");
        }
        t.finish(issues);
        if let (Some(name), Some((a, b)), Some(directions)) = (name, points, directions) {
            lines.push(LineRule { name, a, b, directions, classes });
        }
    }
    lines
}
