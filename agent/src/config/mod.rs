//! The agent's configuration: one TOML file, read strictly and validated all at once.
//!
//! Every key, its type and its default is documented on the field below and in
//! `docs/CONFIG.md`. [`load`] reports every problem it finds (unknown keys, missing
//! keys, wrong types, bad values, references to unknown models, duplicate ids), each
//! naming the file, the field and the line, so one `lookout check-config` run shows
//! the installer everything to fix.

mod reader;
mod redact;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use reader::Issue;
use reader::{Issues, Keyword, TableReader};

use crate::infer::model::ModelSpec;
use crate::publish::outbox::OutboxFullPolicy;
use crate::rules::geometry::{self, Point};
use crate::rules::{LineRule, ReferencePoint, RulesConfig, ZoneRule};
use crate::source::motion::MotionPolicy;

/// Every problem found in a config file. Display lists them one per line.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    pub issues: Vec<Issue>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.issues.len();
        writeln!(f, "{n} problem{} in the configuration:", if n == 1 { "" } else { "s" })?;
        for issue in &self.issues {
            writeln!(f, "  {issue}")?;
        }
        Ok(())
    }
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was read from (absolute when it could be made so).
    pub file: PathBuf,
    pub agent: AgentConfig,
    pub mqtt: MqttConfig,
    pub inference: InferenceConfig,
    pub outbox: OutboxSettings,
    pub telemetry: TelemetryConfig,
    pub model_updates: ModelUpdatesConfig,
    pub control: ControlConfig,
    pub models: Vec<ModelConfig>,
    /// `[class_groups]`, sorted by name.
    pub class_groups: Vec<ClassGroup>,
    pub cameras: Vec<CameraConfig>,
}

/// `[class_groups]` (optional section): `name = ["label", ...]`. A group names classes
/// that a platform wants under one stable name whatever the model calls them (`vehicle =
/// ["car", "bus", "truck", "motorcycle"]`). A zone's or line's `classes` may name groups;
/// counts and events report them. Names: 1 to 64 of `A-Z a-z 0-9 _ -`, not a class name of
/// any model; each member a class of at least one model; at most [`MAX_CLASS_GROUPS`].
#[derive(Debug, Clone, PartialEq)]
pub struct ClassGroup {
    pub name: String,
    pub members: Vec<String>,
}

impl ClassGroup {
    /// The group's class ids in a model with these labels (members it lacks are skipped).
    pub fn ids_in(&self, labels: &[String]) -> Vec<u32> {
        let mut ids: Vec<u32> =
            self.members.iter().filter_map(|m| labels.iter().position(|l| l == m).map(|i| i as u32)).collect();
        ids.sort_unstable();
        ids
    }
}

/// Most groups in `[class_groups]`, and most members of one.
pub const MAX_CLASS_GROUPS: usize = 64;

/// `[agent]`
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// `site` (required): the site this gateway belongs to; a topic segment.
    pub site: String,
    /// `id` (required): this gateway's id within the site; a topic segment.
    pub id: String,
    /// `onnxruntime` (optional): path of `libonnxruntime.so.1`. Default: `ORT_DYLIB_PATH`,
    /// then the standard places listed in `infer::runtime`.
    pub onnxruntime: Option<PathBuf>,
    /// `state_dir` (default `/var/lib/lookout`): where the outbox and the sequence number
    /// live; must be writable. Relative paths resolve against the config file's folder.
    pub state_dir: PathBuf,
}

/// `[outbox]` (optional section): the durable queue of messages awaiting PUBACK.
#[derive(Debug, Clone)]
pub struct OutboxSettings {
    /// `max_bytes` (default 268435456 = 256 MiB): disk the unacknowledged messages may use;
    /// at least twice `segment_bytes`.
    pub max_bytes: u64,
    /// `max_age_secs` (default 604800 = 7 days): older unacknowledged messages are dropped.
    pub max_age: Duration,
    /// `full_policy` (default "drop_oldest"): what happens when `max_bytes` is reached;
    /// "drop_newest" refuses new messages instead. Either way every dropped `seq` is
    /// announced in a `delivery.gap` message.
    pub full_policy: OutboxFullPolicy,
    /// `fsync_interval_ms` (default 200): the most recent messages a power cut can lose;
    /// 0 syncs after every message. A process crash loses nothing either way. Messages
    /// are published only once synced, so this is also the most publishing waits for
    /// durability (half of it on average; see docs/BENCHMARKS.md).
    pub fsync_interval: Duration,
    /// `segment_bytes` (default 8388608 = 8 MiB): size of one log file, 4 KiB to 1 GiB.
    pub segment_bytes: u64,
}

impl Keyword for OutboxFullPolicy {
    const ALL: &'static [(&'static str, Self)] =
        &[("drop_oldest", OutboxFullPolicy::DropOldest), ("drop_newest", OutboxFullPolicy::DropNewest)];
}

/// A secret that never shows in logs or debug output.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// TLS for `mqtts://`.
#[derive(Debug, Clone)]
pub struct MqttTls {
    /// `ca_file` (optional): PEM CA certificate(s) the broker's certificate must chain to.
    /// Default: the system's trust store.
    pub ca_file: Option<PathBuf>,
    /// `client_cert` and `client_key` (optional, together): PEM certificate and key for
    /// mutual TLS.
    pub client_auth: Option<(PathBuf, PathBuf)>,
}

/// `[mqtt]`
#[derive(Debug, Clone)]
pub struct MqttConfig {
    /// `url` (required): `mqtt://host[:port]` (port defaults to 1883) or
    /// `mqtts://host[:port]` (TLS, port defaults to 8883).
    pub host: String,
    pub port: u16,
    /// Set for `mqtts://`.
    pub tls: Option<MqttTls>,
    /// `username` (optional).
    pub username: Option<String>,
    /// One of `password`, `password_file` (its first line) or `password_env` (an
    /// environment variable's name). Never logged.
    pub password: Option<Secret>,
    /// `client_id` (default `lookout-{site}-{id}`).
    pub client_id: String,
    /// `keep_alive_secs` (default 30).
    pub keep_alive: Duration,
    /// `max_inflight` (default 100): QoS 1 publishes awaiting PUBACK.
    pub max_inflight: u16,
    /// `max_message_bytes` (default 1048576 = 1 MiB, 64 KiB to 16 MiB): the largest MQTT
    /// PUBLISH packet the agent sends or accepts (rumqttc's max packet size). Larger
    /// messages are refused at append (announced as a gap), snapshots made smaller first.
    pub max_message_bytes: u64,
}

/// `[inference]` (optional section)
#[derive(Debug, Clone)]
pub struct InferenceConfig {
    /// `threads` (default: the number of cores, at most 4): ONNX Runtime intra-op threads per model.
    pub threads: usize,
    /// `max_batch` (default 2): most frames, across cameras, in one model run. Larger
    /// batches were slower per image on a 2-core CPU (docs/BENCHMARKS.md); raise it for
    /// accelerators that want them.
    pub max_batch: usize,
    /// `max_wait_ms` (default 10, at most 1000): when fewer than `max_batch` frames are
    /// ready, how long the model waits for more before running a smaller batch. Under
    /// load frames are always ready and nothing waits.
    pub max_wait: Duration,
    /// `spinning` (default false): ONNX Runtime's intra-op spin-wait. Off because spinning
    /// made latency erratic on a busy 2-core gateway (see docs/BENCHMARKS.md).
    pub spinning: bool,
}

/// `[telemetry]` (optional section)
#[derive(Debug, Clone)]
pub struct TelemetryConfig {
    /// `listen` (default "127.0.0.1:9464"; "off" disables): where `/readyz`, `/healthz`
    /// and `/metrics` are served. Loopback by default: it is for the gateway itself.
    pub listen: Option<std::net::SocketAddr>,
    /// `console_token` (default none; issue 8): required by the console when set; without
    /// it the console is served only on a loopback `listen`. 16+ of `A-Z a-z 0-9 - . _ ~`.
    pub console_token: Option<Secret>,
}

/// `[model_updates]` (optional section): who may push models to this gateway.
#[derive(Debug, Clone)]
pub struct ModelUpdatesConfig {
    /// `trusted_keys` (default none): public key files (`lookout model keygen`); a
    /// `model.update` is installed only when its manifest is signed by one of them. Each
    /// file must exist and hold an ed25519 public key. Relative paths resolve against
    /// the config file's folder.
    pub trusted_keys: Vec<ed25519_dalek::VerifyingKey>,
    /// The files they came from, for messages.
    pub trusted_key_files: Vec<PathBuf>,
    /// `allow_unsigned` (default false): accept updates without a valid signature. For
    /// labs only: anyone who can publish on the command topic can then replace models.
    pub allow_unsigned: bool,
    /// `max_bytes` (default 536870912, 512 MiB): the largest artifact a `model.update`
    /// downloads; a bigger one (by its manifest's `size` or while streaming) is refused.
    pub max_bytes: u64,
    /// `timeout_secs` (default 300): the whole download of one update (manifest, labels,
    /// artifact) must finish within this; connecting must within 10 s.
    pub timeout: Duration,
    /// `keep_versions` (default 3, at least 2): installed versions kept on disk per model
    /// (the active one and the one before it are always kept, for rollback).
    pub keep_versions: usize,
    /// `ca_file` (default none): PEM certificates trusted for `https://` downloads in
    /// addition to the system's CA store (a release server with a private CA).
    pub ca_file: Option<PathBuf>,
    /// `allowed_urls` (default none): URL prefixes (`http://` or `https://`, each ending in
    /// `/`) that release manifests and their files may be downloaded from; any other
    /// http(s) URL, and every redirect that leaves them, is refused. A host name must
    /// resolve to public addresses only; a loopback, link-local or private address is
    /// accepted only when a prefix names it literally (`http://10.0.0.5:8080/releases/`).
    pub allowed_urls: Vec<url::Url>,
    /// `local_dir` (default none): the one folder `file://` releases may be read from
    /// (regular files only, symlinks resolved and still inside it). Without it `file://`
    /// URLs are refused.
    pub local_dir: Option<PathBuf>,
    /// `allow_downgrade` (default false): accept a `model.update` whose version is lower
    /// than the highest this gateway has run for that model. Off, an old signed release
    /// cannot be replayed to downgrade a model; `model.rollback` is the way back.
    pub allow_downgrade: bool,
}

impl ModelUpdatesConfig {
    /// Updates are switched on by trusting a key (or, in labs, `allow_unsigned`); until
    /// then `model.update` is refused before anything is fetched.
    pub fn enabled(&self) -> bool {
        !self.trusted_keys.is_empty() || self.allow_unsigned
    }
}

/// `[control]` (optional section): who may send commands, independently of the broker's ACL.
#[derive(Debug, Clone, Default)]
pub struct ControlConfig {
    /// `trusted_keys` (default none): public key files (`lookout model keygen`, the same
    /// format as `[model_updates] trusted_keys`) whose signatures on commands are accepted.
    /// Relative paths resolve against the config file's folder.
    pub trusted_keys: Vec<ed25519_dalek::VerifyingKey>,
    /// The files they came from, for messages.
    pub trusted_key_files: Vec<PathBuf>,
    /// `require_signed` (default false): refuse commands without a valid signature
    /// (`unsigned_command`). Needs at least one trusted key. A signature that is present
    /// is checked either way.
    pub require_signed: bool,
}

impl Default for ModelUpdatesConfig {
    fn default() -> Self {
        Self {
            trusted_keys: Vec::new(),
            trusted_key_files: Vec::new(),
            allow_unsigned: false,
            max_bytes: 512 << 20,
            timeout: Duration::from_secs(300),
            keep_versions: 3,
            ca_file: None,
            allowed_urls: Vec::new(),
            local_dir: None,
            allow_downgrade: false,
        }
    }
}

/// `[[models]]`
#[derive(Debug, Clone)]
pub struct ModelConfig {
    /// `name` (required): what cameras refer to in their `model` key.
    pub name: String,
    /// `manifest` (required): path of the model's `manifest.toml`; relative paths resolve
    /// against the config file's folder, then the working directory.
    pub manifest: PathBuf,
    /// The manifest, read and checked during validation.
    pub spec: ModelSpec,
}

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
    pub motion: MotionPolicy,
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

impl Config {
    pub fn model(&self, name: &str) -> Option<&ModelConfig> {
        self.models.iter().find(|m| m.name == name)
    }
}

/// Reads and validates `file`. Every problem is reported in the error, not just the first.
pub fn load(file: &Path) -> Result<Config, ConfigError> {
    let src = std::fs::read_to_string(file).map_err(|e| ConfigError {
        issues: vec![Issue {
            file: file.to_path_buf(),
            line: None,
            field: String::new(),
            message: format!("cannot read: {e}"),
        }],
    })?;
    parse(file, &src, &std::env::current_dir().unwrap_or_default())
}

/// Validates `src` as if read from `file`; `cwd` is the fallback for relative paths.
pub fn parse(file: &Path, src: &str, cwd: &Path) -> Result<Config, ConfigError> {
    let mut issues = Issues::new(file, src);
    let doc = match toml::de::DeTable::parse(src) {
        Ok(doc) => doc,
        Err(e) => {
            issues.push("", e.span().as_ref(), format!("not valid TOML: {}", e.message()));
            return Err(ConfigError { issues: issues.list });
        }
    };
    let base_dir = file.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut root = TableReader::new("", doc.get_ref(), doc.span());

    let agent = root.table(&mut issues, "agent", true).and_then(|mut t| {
        let site = t.req::<String>(&mut issues, "site");
        let id = t.req::<String>(&mut issues, "id");
        let onnxruntime = t.opt::<String>(&mut issues, "onnxruntime").map(|p| resolve_path(&base_dir, cwd, &p));
        let state_dir = t.opt::<String>(&mut issues, "state_dir").map_or_else(
            || PathBuf::from("/var/lib/lookout"),
            |p| if Path::new(&p).is_absolute() { PathBuf::from(p) } else { base_dir.join(p) },
        );
        for (key, value) in [("site", &site), ("id", &id)] {
            if let Some(v) = value {
                check_segment(&mut issues, &mut t, key, v);
            }
        }
        t.finish(&mut issues);
        Some(AgentConfig { site: site?, id: id?, onnxruntime, state_dir })
    });

    let mqtt = root.table(&mut issues, "mqtt", true).and_then(|mut t| {
        let url = t.req::<String>(&mut issues, "url");
        let endpoint = url.and_then(|u| match parse_mqtt_url(&u) {
            Ok(e) => Some(e),
            Err(e) => {
                issues.push(&t.field_path("url"), t.raw("url").map(|v| v.span()).as_ref(), e);
                None
            }
        });
        let client_id = t.opt::<String>(&mut issues, "client_id").unwrap_or_default();
        // rumqttc keeps the keep-alive as u16 seconds: a larger value would wrap.
        let keep_alive = t.num_in::<u64>(&mut issues, "keep_alive_secs", 5, 3600, "seconds").unwrap_or(30);
        let max_inflight = t.opt::<u64>(&mut issues, "max_inflight").unwrap_or(100);
        if !(1..=u16::MAX as u64).contains(&max_inflight) {
            let s = t.raw("max_inflight").map(|v| v.span());
            issues.push(&t.field_path("max_inflight"), s.as_ref(), "must be between 1 and 65535");
        }
        let max_message_bytes = t.opt::<u64>(&mut issues, "max_message_bytes").unwrap_or(1 << 20);
        if !(64 << 10..=16 << 20).contains(&max_message_bytes) {
            let s = t.raw("max_message_bytes").map(|v| v.span());
            issues.push(
                &t.field_path("max_message_bytes"),
                s.as_ref(),
                "must be between 65536 (64 KiB) and 16777216 (16 MiB)",
            );
        }
        let file_key = |t: &mut TableReader<'_, '_>, issues: &mut Issues<'_>, key: &str| {
            let p = resolve_path(&base_dir, cwd, &t.opt::<String>(issues, key)?);
            if !p.is_file() {
                let s = t.raw(key).map(|v| v.span());
                issues.push(&t.field_path(key), s.as_ref(), format!("{} is not a readable file", p.display()));
            }
            Some(p)
        };
        let ca_file = file_key(&mut t, &mut issues, "ca_file");
        let client_cert = file_key(&mut t, &mut issues, "client_cert");
        let client_key = file_key(&mut t, &mut issues, "client_key");
        let client_auth = match (client_cert, client_key) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            _ => {
                issues.push(&t.field_path("client_key"), Some(t.span()), "client_cert and client_key go together");
                None
            }
        };
        let username = t.opt::<String>(&mut issues, "username");
        let password = read_password(&mut t, &mut issues, &base_dir, cwd);
        let tls_keys = ca_file.is_some() || client_auth.is_some();
        if let Some((_, _, false)) = &endpoint
            && tls_keys
        {
            let s = t.raw("url").map(|v| v.span());
            issues.push(&t.field_path("url"), s.as_ref(), "ca_file/client_cert are set: use an mqtts:// URL");
        }
        t.finish(&mut issues);
        let (host, port, tls) = endpoint?;
        Some(MqttConfig {
            host,
            port,
            tls: tls.then_some(MqttTls { ca_file, client_auth }),
            username,
            password,
            client_id,
            keep_alive: Duration::from_secs(keep_alive),
            max_inflight: max_inflight.clamp(1, u16::MAX as u64) as u16,
            max_message_bytes,
        })
    });

    let mut outbox = OutboxSettings {
        max_bytes: 256 << 20,
        max_age: Duration::from_secs(7 * 24 * 3600),
        full_policy: OutboxFullPolicy::DropOldest,
        fsync_interval: Duration::from_millis(200),
        segment_bytes: 8 << 20,
    };
    if let Some(mut t) = root.table(&mut issues, "outbox", false) {
        if let Some(n) = t.num_in::<u64>(&mut issues, "max_bytes", 8 << 10, 1 << 40, "bytes") {
            outbox.max_bytes = n;
        }
        if let Some(n) = t.num_in::<u64>(&mut issues, "max_age_secs", 60, 366 * 24 * 3600, "seconds") {
            outbox.max_age = Duration::from_secs(n);
        }
        outbox.full_policy = t.keyword(&mut issues, "full_policy", OutboxFullPolicy::DropOldest);
        if let Some(n) = t.num_in::<u64>(&mut issues, "fsync_interval_ms", 0, 60_000, "ms") {
            outbox.fsync_interval = Duration::from_millis(n);
        }
        if let Some(n) = t.opt::<u64>(&mut issues, "segment_bytes") {
            if !(4 << 10..=1 << 30).contains(&n) {
                let s = t.raw("segment_bytes").map(|v| v.span());
                issues.push(&t.field_path("segment_bytes"), s.as_ref(), "must be between 4096 and 1073741824");
            }
            outbox.segment_bytes = n;
        }
        if outbox.max_bytes < 2 * outbox.segment_bytes {
            let s = t.raw("max_bytes").map(|v| v.span());
            issues.push(&t.field_path("max_bytes"), s.as_ref(), "must be at least twice segment_bytes");
        }
        t.finish(&mut issues);
    }

    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let mut inference =
        InferenceConfig { threads: cores.min(4), max_batch: 2, max_wait: Duration::from_millis(10), spinning: false };
    if let Some(mut t) = root.table(&mut issues, "inference", false) {
        if let Some(n) = t.num_in::<usize>(&mut issues, "threads", 1, 64, "threads") {
            inference.threads = n;
        }
        if let Some(n) = t.opt::<usize>(&mut issues, "max_batch") {
            if !(1..=64).contains(&n) {
                issues.push(
                    &t.field_path("max_batch"),
                    t.raw("max_batch").map(|v| v.span()).as_ref(),
                    "must be between 1 and 64",
                );
            }
            inference.max_batch = n.clamp(1, 64);
        }
        if let Some(ms) = t.opt::<u64>(&mut issues, "max_wait_ms") {
            if ms > 1000 {
                let s = t.raw("max_wait_ms").map(|v| v.span());
                issues.push(&t.field_path("max_wait_ms"), s.as_ref(), "must be at most 1000");
            }
            inference.max_wait = Duration::from_millis(ms.min(1000));
        }
        inference.spinning = t.opt::<bool>(&mut issues, "spinning").unwrap_or(false);
        t.finish(&mut issues);
    }

    let mut telemetry =
        TelemetryConfig { listen: Some(std::net::SocketAddr::from(([127, 0, 0, 1], 9464))), console_token: None };
    if let Some(mut t) = root.table(&mut issues, "telemetry", false) {
        if let Some(l) = t.opt::<String>(&mut issues, "listen") {
            telemetry.listen = match l.as_str() {
                "off" | "" => None,
                addr => match addr.parse() {
                    Ok(a) => Some(a),
                    Err(_) => {
                        let s = t.raw("listen").map(|v| v.span());
                        issues.push(
                            &t.field_path("listen"),
                            s.as_ref(),
                            format!("\"{addr}\" is not host:port (e.g. \"127.0.0.1:9464\") or \"off\""),
                        );
                        None
                    }
                },
            };
        }
        // Console (issue 8): the token goes in a header and a cookie, so a plain charset.
        if let Some(tok) = t.opt::<String>(&mut issues, "console_token") {
            let plain = tok.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b));
            if tok.len() < 16 || !plain {
                let s = t.raw("console_token").map(|v| v.span());
                issues.push(
                    &t.field_path("console_token"),
                    s.as_ref(),
                    "must be at least 16 characters of A-Z a-z 0-9 - . _ ~ (e.g. from `openssl rand -hex 16`)",
                );
            } else {
                telemetry.console_token = Some(Secret(tok));
            }
        }
        t.finish(&mut issues);
    }

    let mut model_updates = ModelUpdatesConfig::default();
    if let Some(mut t) = root.table(&mut issues, "model_updates", false) {
        (model_updates.trusted_keys, model_updates.trusted_key_files) =
            read_trusted_keys(&mut t, &mut issues, &base_dir, cwd);
        model_updates.allow_unsigned = t.opt::<bool>(&mut issues, "allow_unsigned").unwrap_or(false);
        if let Some(n) = t.num_in::<u64>(&mut issues, "max_bytes", 1, 8 << 30, "bytes") {
            model_updates.max_bytes = n;
        }
        if let Some(n) = t.num_in::<u64>(&mut issues, "timeout_secs", 1, 3600, "seconds") {
            model_updates.timeout = Duration::from_secs(n);
        }
        if let Some(f) = t.opt::<String>(&mut issues, "ca_file") {
            let path = resolve_path(&base_dir, cwd, &f);
            match read_ca_file(&path) {
                Ok(_) => model_updates.ca_file = Some(path),
                Err(e) => {
                    let s = t.raw("ca_file").map(|v| v.span());
                    issues.push(&t.field_path("ca_file"), s.as_ref(), e);
                }
            }
        }
        // At least the active version and the one to roll back to.
        if let Some(n) = t.num_in::<usize>(&mut issues, "keep_versions", 2, 100, "versions") {
            model_updates.keep_versions = n;
        }
        for prefix in t.opt::<Vec<String>>(&mut issues, "allowed_urls").unwrap_or_default() {
            match url_prefix(&prefix) {
                Ok(u) => model_updates.allowed_urls.push(u),
                Err(e) => {
                    let s = t.raw("allowed_urls").map(|v| v.span());
                    issues.push(&t.field_path("allowed_urls"), s.as_ref(), format!("{prefix:?}: {e}"));
                }
            }
        }
        if let Some(d) = t.opt::<String>(&mut issues, "local_dir") {
            let path = resolve_path(&base_dir, cwd, &d);
            match path.canonicalize() {
                Ok(p) if p.is_dir() => model_updates.local_dir = Some(p),
                _ => {
                    let s = t.raw("local_dir").map(|v| v.span());
                    issues.push(&t.field_path("local_dir"), s.as_ref(), format!("{} is not a folder", path.display()));
                }
            }
        }
        model_updates.allow_downgrade = t.opt::<bool>(&mut issues, "allow_downgrade").unwrap_or(false);
        t.finish(&mut issues);
    }

    let mut control = ControlConfig::default();
    if let Some(mut t) = root.table(&mut issues, "control", false) {
        let before_keys = issues.list.len();
        (control.trusted_keys, control.trusted_key_files) = read_trusted_keys(&mut t, &mut issues, &base_dir, cwd);
        control.require_signed = t.opt::<bool>(&mut issues, "require_signed").unwrap_or(false);
        if control.require_signed && control.trusted_keys.is_empty() && issues.list.len() == before_keys {
            let s = t.raw("require_signed").map(|v| v.span());
            issues.push(
                &t.field_path("require_signed"),
                s.as_ref(),
                "needs trusted_keys: no command could be accepted",
            );
        }
        t.finish(&mut issues);
    }

    let mut models = Vec::new();
    let before = issues.list.len();
    let model_tables = root.tables(&mut issues, "models");
    // "At least one" only when nothing was said already (e.g. `[models]` written as a table).
    if model_tables.is_empty() && issues.list.len() == before {
        issues.push("models", None, "at least one [[models]] entry is required");
    }
    // Every name seen, including those of models whose manifest failed.
    let mut model_names_seen: Vec<String> = Vec::new();
    for mut t in model_tables {
        let name = t.req::<String>(&mut issues, "name");
        let manifest = t.req::<String>(&mut issues, "manifest");
        if let Some(n) = &name {
            if model_names_seen.contains(n) {
                issues.push(
                    &t.field_path("name"),
                    t.raw("name").map(|v| v.span()).as_ref(),
                    format!("duplicate model name \"{n}\""),
                );
            }
            model_names_seen.push(n.clone());
        }
        if let (Some(name), Some(manifest)) = (name, manifest) {
            let span = t.raw("manifest").map(|v| v.span());
            let path = resolve_path(&base_dir, cwd, &manifest);
            match ModelSpec::load(&path) {
                Ok(spec) => models.push(ModelConfig { name, manifest: path, spec }),
                Err(e) => {
                    let mut message = e.to_string();
                    let in_base = base_dir.join(&manifest);
                    if Path::new(&manifest).is_relative() && !path.exists() && in_base != path {
                        message.push_str(&format!(
                            " (tried {} first: relative paths resolve against the config file's folder, \
                             then the working directory)",
                            in_base.display()
                        ));
                    }
                    issues.push(&t.field_path("manifest"), span.as_ref(), message);
                }
            }
        }
        t.finish(&mut issues);
    }
    // Names of models whose manifests failed still count as known, so their cameras
    // don't get a second, misleading "unknown model" error.
    let model_names: HashSet<String> = root_model_names(doc.get_ref());
    let labels: HashMap<&str, &[String]> = models.iter().map(|m| (m.name.as_str(), &m.spec.labels[..])).collect();
    // A failed manifest leaves its labels unknown: members are then not checked.
    let all_models_loaded = models.len() == model_names.len();
    let class_groups = match root.table(&mut issues, "class_groups", false) {
        Some(t) => read_class_groups(&mut issues, t, &models, all_models_loaded),
        None => Vec::new(),
    };

    let mut cameras: Vec<CameraConfig> = Vec::new();
    let before = issues.list.len();
    let camera_tables = root.tables(&mut issues, "cameras");
    if camera_tables.is_empty() && issues.list.len() == before {
        issues.push("cameras", None, "at least one [[cameras]] entry is required");
    }
    // Every id seen, including those of cameras with other problems.
    let mut camera_ids: Vec<String> = Vec::new();
    for mut t in camera_tables {
        if let Some(c) = read_camera(&mut issues, &mut t, &model_names, &labels, &class_groups, &mut camera_ids) {
            cameras.push(c);
        }
        t.finish(&mut issues);
    }
    root.finish(&mut issues);

    match (agent, mqtt) {
        (Some(agent), Some(mut mqtt)) if issues.list.is_empty() => {
            if mqtt.client_id.is_empty() {
                mqtt.client_id = format!("lookout-{}-{}", agent.site, agent.id);
            }
            Ok(Config {
                file: std::path::absolute(file).unwrap_or_else(|_| file.to_path_buf()),
                agent,
                mqtt,
                inference,
                outbox,
                telemetry,
                model_updates,
                control,
                models,
                class_groups,
                cameras,
            })
        }
        _ => {
            // File order reads best; problems without a line (missing sections) go last.
            let mut list = issues.list;
            list.sort_by_key(|i| i.line.unwrap_or(usize::MAX));
            Err(ConfigError { issues: list })
        }
    }
}

/// Reads one camera given as JSON (a `camera.add` / `camera.update` command) with the
/// same keys, defaults and checks as a `[[cameras]]` table in `config`'s file. Returns
/// every problem as `camera.<field>: <message>`.
/// `trusted_keys`: ed25519 public key files, each reported on the key's line if unusable.
fn read_trusted_keys(
    t: &mut TableReader<'_, '_>,
    issues: &mut Issues<'_>,
    base_dir: &Path,
    cwd: &Path,
) -> (Vec<ed25519_dalek::VerifyingKey>, Vec<PathBuf>) {
    let (mut keys, mut files) = (Vec::new(), Vec::new());
    for f in t.opt::<Vec<String>>(issues, "trusted_keys").unwrap_or_default() {
        let path = resolve_path(base_dir, cwd, &f);
        match crate::model::signature::read_public(&path) {
            Ok(k) => {
                keys.push(k);
                files.push(path);
            }
            Err(e) => {
                let s = t.raw("trusted_keys").map(|v| v.span());
                issues.push(&t.field_path("trusted_keys"), s.as_ref(), e.to_string());
            }
        }
    }
    (keys, files)
}

/// An `allowed_urls` entry: an http(s) URL whose path ends in `/`, so that a prefix match
/// can never run into a longer host name or a sibling folder.
fn url_prefix(s: &str) -> Result<url::Url, String> {
    let u = url::Url::parse(s).map_err(|e| e.to_string())?;
    if !matches!(u.scheme(), "http" | "https") {
        return Err("must be an http:// or https:// URL".into());
    }
    if u.host().is_none() || !u.username().is_empty() || u.password().is_some() {
        return Err("must name a host, without user or password".into());
    }
    if !u.path().ends_with('/') || u.query().is_some() || u.fragment().is_some() {
        return Err("must end with / (a folder) and have no query or fragment".into());
    }
    Ok(u)
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

fn read_camera(
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
        motion: MotionPolicy { enabled: motion_on, threshold: motion_threshold.clamp(1, 255) as u8, keepalive },
        id: id?,
        url: url?,
        model: model?,
        fps,
        min_score: min_score.map(|s| s as f32),
        transport,
        decode,
        decoder,
        reconnect: ReconnectPolicy { min: rmin, max: rmax.max(rmin) },
    })
}

fn root_model_names(doc: &toml::de::DeTable<'_>) -> HashSet<String> {
    doc.iter()
        .find(|(k, _)| k.get_ref() == "models")
        .and_then(|(_, v)| v.get_ref().as_array())
        .map(|arr| {
            arr.iter()
                .filter_map(|m| m.get_ref().as_table())
                .filter_map(|t| t.iter().find(|(k, _)| k.get_ref() == "name"))
                .filter_map(|(_, v)| v.get_ref().as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Ids become MQTT topic segments: no `/`, `+`, `#`, spaces or control characters.
fn check_segment(issues: &mut Issues<'_>, t: &mut TableReader<'_, '_>, key: &str, value: &str) {
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

/// URLs with their secrets masked, for logs, replies, errors and printing (`redact`).
pub use redact::{redact_secrets_in, redact_url, redact_urls_in};

fn check_rtsp_url(u: &str) -> Result<(), String> {
    let parsed = url::Url::parse(u).map_err(|e| format!("not a valid URL ({e}): \"{}\"", redact_url(u)))?;
    if !matches!(parsed.scheme(), "rtsp" | "rtsps" | "rtspt") {
        return Err(format!("expected an rtsp:// URL, got scheme \"{}\"", parsed.scheme()));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err("URL has no host".into());
    }
    Ok(())
}

/// `mqtt://host[:port]` (also `tcp://`) or `mqtts://host[:port]` to host, port and
/// whether TLS is on.
pub fn parse_mqtt_url(u: &str) -> Result<(String, u16, bool), String> {
    let parsed = url::Url::parse(u).map_err(|e| format!("not a valid URL ({e}): \"{}\"", redact_url(u)))?;
    let tls = match parsed.scheme() {
        "mqtt" | "tcp" => false,
        "mqtts" | "ssl" => true,
        other => return Err(format!("expected mqtt://host[:port] or mqtts://host[:port], got scheme \"{other}\"")),
    };
    let host = parsed.host_str().filter(|h| !h.is_empty()).ok_or("URL has no host")?;
    let port = parsed.port().unwrap_or(if tls { 8883 } else { 1883 });
    Ok((host.trim_start_matches('[').trim_end_matches(']').to_string(), port, tls))
}

/// `password`, `password_file` or `password_env`: at most one.
fn read_password(t: &mut TableReader<'_, '_>, issues: &mut Issues<'_>, base_dir: &Path, cwd: &Path) -> Option<Secret> {
    let inline = t.opt::<String>(issues, "password");
    let file = t.opt::<String>(issues, "password_file");
    let env = t.opt::<String>(issues, "password_env");
    if [inline.is_some(), file.is_some(), env.is_some()].iter().filter(|b| **b).count() > 1 {
        issues.push(&t.field_path("password"), Some(t.span()), "set only one of password, password_file, password_env");
        return None;
    }
    if let Some(p) = inline {
        return Some(Secret(p));
    }
    if let Some(path) = file {
        let span = t.raw("password_file").map(|v| v.span());
        let path = resolve_path(base_dir, cwd, &path);
        return match std::fs::read_to_string(&path) {
            Ok(s) => Some(Secret(s.lines().next().unwrap_or("").to_string())),
            Err(e) => {
                let msg = format!("cannot read {}: {e}", path.display());
                issues.push(&t.field_path("password_file"), span.as_ref(), msg);
                None
            }
        };
    }
    let var = env?;
    match std::env::var(&var) {
        Ok(v) => Some(Secret(v)),
        Err(_) => {
            let span = t.raw("password_env").map(|v| v.span());
            issues.push(&t.field_path("password_env"), span.as_ref(), format!("environment variable {var} is not set"));
            None
        }
    }
}

/// Relative paths resolve against the config file's folder first, then the working
/// directory; an absolute path is taken as is.
fn resolve_path(base_dir: &Path, cwd: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() {
        return p.to_path_buf();
    }
    let in_base = base_dir.join(p);
    if in_base.exists() { in_base } else { cwd.join(p) }
}

#[cfg(test)]
mod tests;

/// Class names (labels or `[class_groups]` names) to the model's class ids, reporting
/// unknown ones; `None` labels (the model failed to load, already reported) accept every
/// name and give no ids.
fn read_classes(
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

/// `[class_groups]`: every problem reported, the valid groups kept, sorted by name.
fn read_class_groups(
    issues: &mut Issues<'_>,
    mut t: TableReader<'_, '_>,
    models: &[ModelConfig],
    check_members: bool,
) -> Vec<ClassGroup> {
    let mut groups = Vec::new();
    let keys = t.keys();
    if keys.len() > MAX_CLASS_GROUPS {
        let s = t.span().clone();
        issues.push("class_groups", Some(&s), format!("at most {MAX_CLASS_GROUPS} groups, found {}", keys.len()));
    }
    for name in keys.into_iter().take(MAX_CLASS_GROUPS) {
        let Some(members) = t.opt::<Vec<String>>(issues, &name) else { continue };
        let span = t.raw(&name).map(|v| v.span());
        let field = t.field_path(&name);
        let mut problems = Vec::new();
        if name.is_empty() || name.len() > 64 || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-".contains(&b))
        {
            problems.push("a group name is 1 to 64 of A-Z a-z 0-9 _ -".to_string());
        }
        if let Some(m) = models.iter().find(|m| m.spec.labels.contains(&name)) {
            problems.push(format!("\"{name}\" is a class of model \"{}\": a group needs a name of its own", m.name));
        }
        if members.is_empty() || members.len() > 256 {
            problems.push(format!("needs 1 to 256 class names, found {}", members.len()));
        }
        for (i, m) in members.iter().enumerate() {
            if members[..i].contains(m) {
                problems.push(format!("\"{m}\" is listed twice"));
            } else if check_members && !models.iter().any(|md| md.spec.labels.contains(m)) {
                let mut all: Vec<&str> =
                    models.iter().flat_map(|md| md.spec.labels.iter().map(String::as_str)).collect();
                all.sort_unstable();
                all.dedup();
                problems.push(format!("\"{m}\" is not a class of any model (their classes: {})", all.join(", ")));
            }
        }
        if problems.is_empty() {
            groups.push(ClassGroup { name, members });
        } else {
            for p in problems {
                issues.push(&field, span.as_ref(), p);
            }
        }
    }
    t.finish(issues);
    groups.sort_by(|a, b| a.name.cmp(&b.name));
    groups
}

/// A rule's name: non-empty, unique among the camera's zones (or lines).
fn check_rule_name(issues: &mut Issues<'_>, t: &mut TableReader<'_, '_>, name: &str, seen: &mut Vec<String>) {
    let s = t.raw("name").map(|v| v.span());
    if name.trim().is_empty() {
        issues.push(&t.field_path("name"), s.as_ref(), "must not be empty");
    } else if seen.iter().any(|n| n == name) {
        issues.push(&t.field_path("name"), s.as_ref(), format!("duplicate name \"{name}\""));
    }
    seen.push(name.to_string());
}

/// Normalised points: every coordinate in [0, 1].
fn read_points(issues: &mut Issues<'_>, t: &mut TableReader<'_, '_>, key: &str) -> Option<Vec<Point>> {
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

fn read_zones(
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

fn read_lines(
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

/// The certificates of a PEM file (`[model_updates] ca_file`), read at load to refuse a bad one
/// early and again by each download; at least one.
pub fn read_ca_file(path: &Path) -> Result<Vec<ureq::tls::Certificate<'static>>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut certs = Vec::new();
    for item in ureq::tls::parse_pem(&pem) {
        match item {
            Ok(ureq::tls::PemItem::Certificate(c)) => certs.push(c),
            Ok(_) => {}
            Err(e) => return Err(format!("{}: not PEM: {e}", path.display())),
        }
    }
    if certs.is_empty() {
        return Err(format!("{}: no certificate in it", path.display()));
    }
    Ok(certs)
}
