//! The agent's configuration: one TOML file, read strictly and validated all at once.
//!
//! Every key, its type and its default is documented on the field below and in
//! `docs/CONFIG.md`. [`load`] reports every problem it finds (unknown keys, missing
//! keys, wrong types, bad values, references to unknown models, duplicate ids), each
//! naming the file, the field and the line, so one `lookout check-config` run shows
//! the installer everything to fix.

mod camera;
mod classes;
mod mqtt;
mod reader;

mod redact;
mod site;
mod updates;

use std::collections::{BTreeMap, HashMap, HashSet};

use std::fmt;

use std::path::{Path, PathBuf};

use std::time::Duration;

pub use camera::{
    CameraConfig, DecodePolicy, DecoderPolicy, ReconnectPolicy, RtspClient, SnapshotPolicy, Transport, camera_from_json,
};
pub use classes::{ClassGroup, MAX_CLASS_GROUPS};
pub use mqtt::{MqttConfig, MqttTls, Secret, parse_mqtt_url};
pub use reader::Issue;
pub use site::{CoordinatorLoss, SiteConfig, SiteTls};
pub use updates::{ControlConfig, ModelUpdatesConfig, read_ca_file};

use camera::{check_segment, read_camera};
use classes::read_class_groups;
use mqtt::read_mqtt;
use updates::{read_control, read_model_updates};

use reader::{Issues, Keyword, TableReader};

use crate::infer::manifest::ModelSpec;

use crate::publish::outbox::OutboxFullPolicy;

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
    /// `[site]` (optional): membership of a site coordinated through etcd.
    pub site: Option<SiteConfig>,
    pub models: Vec<ModelConfig>,
    /// `[class_groups]`, sorted by name.
    pub class_groups: Vec<ClassGroup>,
    pub cameras: Vec<CameraConfig>,
    /// The `[[cameras]]` tables as written, by id, as JSON (the keys of `camera.add`):
    /// the base a change of one part (the console's rules editor) is applied to.
    pub camera_sources: BTreeMap<String, serde_json::Value>,
}

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

/// `[inference]` (optional section)
#[derive(Debug, Clone)]
pub struct InferenceConfig {
    /// `threads` (default: the number of cores, at most 4; 1 to 64): ONNX Runtime
    /// intra-op threads per session.
    pub threads: usize,
    /// `workers` (default 1; 1 to 64, with `threads × workers` at most 64): sessions per
    /// model, each on a thread of its own, taking frames from the model's cameras in turn,
    /// so several cameras' frames are analysed at once without intra-op overhead. Pays
    /// only when one session cannot keep up: on the 2-core test machine two one-thread
    /// workers held 6–30 % more frames at saturation but cost 13–18 % more CPU per frame
    /// below it (docs/BENCHMARKS.md).
    pub workers: usize,
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
    /// The execution providers to try, in order (from the model's `[[models]] providers`;
    /// `[Cpu]` unless a model says otherwise).
    pub providers: Vec<Provider>,
}

impl Default for InferenceConfig {
    fn default() -> Self {
        InferenceConfig {
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()).min(4),
            workers: 1,
            max_batch: 2,
            max_wait: Duration::from_millis(10),
            spinning: false,
            providers: vec![Provider::Cpu],
        }
    }
}

/// An ONNX Runtime execution provider a model may run on (`[[models]] providers`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    /// NVIDIA CUDA (needs the `onnxruntime-gpu` build of ONNX Runtime and CUDA).
    Cuda,
    /// NVIDIA TensorRT (same, plus TensorRT).
    TensorRt,
    /// Intel OpenVINO: a plugin provider registered with ONNX Runtime, or a build that has it.
    OpenVino,
    /// Qualcomm QNN (NPU/DSP): likewise.
    Qnn,
    /// ONNX Runtime's own CPU kernels: always there, so last when listed.
    Cpu,
}

impl Provider {
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Cuda => "cuda",
            Provider::TensorRt => "tensorrt",
            Provider::OpenVino => "openvino",
            Provider::Qnn => "qnn",
            Provider::Cpu => "cpu",
        }
    }
}

impl Keyword for Provider {
    const ALL: &'static [(&'static str, Self)] = &[
        ("cpu", Provider::Cpu),
        ("cuda", Provider::Cuda),
        ("tensorrt", Provider::TensorRt),
        ("openvino", Provider::OpenVino),
        ("qnn", Provider::Qnn),
    ];
}

/// `[telemetry]` (optional section)
#[derive(Debug, Clone)]
pub struct TelemetryConfig {
    /// `listen` (default "127.0.0.1:9464"; "off" disables): where `/readyz`, `/healthz`
    /// and `/metrics` are served. Loopback by default: it is for the gateway itself.
    pub listen: Option<std::net::SocketAddr>,
    /// `console_token` (default none): required by the console when set; without
    /// it the console is served only on a loopback `listen`. 16+ of `A-Z a-z 0-9 - . _ ~`.
    pub console_token: Option<Secret>,
    /// `console_viewer_token` (default none): a second token that opens the console
    /// read-only (pictures, events, counts; no editor). Same charset; needs
    /// `console_token` and must differ from it.
    pub console_viewer_token: Option<Secret>,
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
    /// `providers` (default `["cpu"]`): the execution providers to try, in order of
    /// preference; the first that loads the model runs it. Without `"cpu"` (which must
    /// then come last) a model no listed provider can run is refused.
    pub providers: Vec<Provider>,
}

impl Config {
    pub fn model(&self, name: &str) -> Option<&ModelConfig> {
        self.models.iter().find(|m| m.name == name)
    }

    /// The inference settings for model `name`: `[inference]` with its providers.
    pub fn inference_for(&self, name: &str) -> InferenceConfig {
        let providers = self.model(name).map_or_else(|| vec![Provider::Cpu], |m| m.providers.clone());
        InferenceConfig { providers, ..self.inference.clone() }
    }
}

/// `[[models]] providers`: known names, no repeats, `"cpu"` last if present.
fn read_providers(issues: &mut Issues<'_>, t: &mut TableReader<'_, '_>) -> Vec<Provider> {
    let Some(names) = t.opt::<Vec<String>>(issues, "providers") else { return vec![Provider::Cpu] };
    let span = t.raw("providers").map(|v| v.span());
    let mut out: Vec<Provider> = Vec::new();
    for n in &names {
        match Provider::ALL.iter().find(|(k, _)| k == n) {
            Some((_, p)) if out.contains(p) => {
                issues.push(&t.field_path("providers"), span.as_ref(), format!("\"{n}\" is listed twice"))
            }
            Some((_, p)) => out.push(*p),
            None => issues.push(
                &t.field_path("providers"),
                span.as_ref(),
                format!(
                    "unknown provider {:?}, expected some of \"cuda\", \"tensorrt\", \"openvino\", \"qnn\", \"cpu\"",
                    n.chars().take(40).collect::<String>()
                ),
            ),
        }
    }
    if names.is_empty() {
        issues.push(
            &t.field_path("providers"),
            span.as_ref(),
            "must name at least one provider (\"cpu\" always works)",
        );
    }
    if out.iter().position(|p| *p == Provider::Cpu).is_some_and(|i| i + 1 != out.len()) {
        issues.push(
            &t.field_path("providers"),
            span.as_ref(),
            "\"cpu\" must come last: it always loads, so a provider after it would never be tried",
        );
    }
    if out.is_empty() { vec![Provider::Cpu] } else { out }
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

    let mqtt = root.table(&mut issues, "mqtt", true).and_then(|t| read_mqtt(t, &mut issues, &base_dir, cwd));

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

    let mut inference = InferenceConfig::default();
    if let Some(mut t) = root.table(&mut issues, "inference", false) {
        if let Some(n) = t.num_in::<usize>(&mut issues, "threads", 1, 64, "threads") {
            inference.threads = n;
        }
        if let Some(n) = t.num_in::<usize>(&mut issues, "workers", 1, 64, "workers") {
            inference.workers = n;
        }
        if inference.threads * inference.workers > 64 {
            let s = t.raw("workers").or_else(|| t.raw("threads")).map(|v| v.span());
            issues.push(&t.field_path("workers"), s.as_ref(), "threads × workers must be at most 64");
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

    let mut telemetry = TelemetryConfig {
        listen: Some(std::net::SocketAddr::from(([127, 0, 0, 1], 9464))),
        console_token: None,
        console_viewer_token: None,
    };
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
        // A token goes in a header and a cookie, so a plain charset.
        let token = |t: &mut TableReader<'_, '_>, issues: &mut Issues<'_>, key: &str| {
            let tok = t.opt::<String>(issues, key)?;
            let plain = tok.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b));
            if tok.len() < 16 || !plain {
                let s = t.raw(key).map(|v| v.span());
                issues.push(
                    &t.field_path(key),
                    s.as_ref(),
                    "must be at least 16 characters of A-Z a-z 0-9 - . _ ~ (e.g. from `openssl rand -hex 16`)",
                );
                return None;
            }
            Some(Secret(tok))
        };
        telemetry.console_token = token(&mut t, &mut issues, "console_token");
        let viewer = token(&mut t, &mut issues, "console_viewer_token");
        if let Some(v) = viewer {
            let s = t.raw("console_viewer_token").map(|v| v.span());
            match &telemetry.console_token {
                None => issues.push(
                    &t.field_path("console_viewer_token"),
                    s.as_ref(),
                    "needs console_token (the token that may change settings)",
                ),
                Some(full) if full.expose() == v.expose() => {
                    issues.push(&t.field_path("console_viewer_token"), s.as_ref(), "must differ from console_token")
                }
                Some(_) => telemetry.console_viewer_token = Some(v),
            }
        }
        t.finish(&mut issues);
    }

    let model_updates = match root.table(&mut issues, "model_updates", false) {
        Some(t) => read_model_updates(t, &mut issues, &base_dir, cwd),
        None => ModelUpdatesConfig::default(),
    };

    let control = match root.table(&mut issues, "control", false) {
        Some(t) => read_control(t, &mut issues, &base_dir, cwd),
        None => ControlConfig::default(),
    };

    let site = root.table(&mut issues, "site", false).and_then(|t| site::read_site(t, &mut issues, &base_dir, cwd));
    let site_declared = doc.get_ref().iter().any(|(k, _)| k.get_ref() == "site");
    // `lookout/v1/{site}/site` is the site's own retained message.
    if site_declared && agent.as_ref().is_some_and(|a| a.id == "site") {
        issues.push(
            "agent.id",
            None,
            "\"site\" is reserved with a [site] section (the site's own topic); choose another id",
        );
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
        let providers = read_providers(&mut issues, &mut t);
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
                Ok(spec) => models.push(ModelConfig { name, manifest: path, spec, providers }),
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
    // A site member may run only the site's cameras.
    if camera_tables.is_empty() && issues.list.len() == before && !site_declared {
        issues.push("cameras", None, "at least one [[cameras]] entry is required (or a [site] to take cameras from)");
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
                site,
                models,
                class_groups,
                cameras,
                camera_sources: camera_sources(src),
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

fn camera_sources(src: &str) -> BTreeMap<String, serde_json::Value> {
    let Ok(doc) = toml::from_str::<toml::Table>(src) else { return BTreeMap::new() };
    let Some(toml::Value::Array(cams)) = doc.get("cameras") else { return BTreeMap::new() };
    cams.iter()
        .filter_map(|c| {
            let id = c.get("id")?.as_str()?.to_string();
            Some((id, serde_json::to_value(c).ok()?))
        })
        .collect()
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

/// URLs with their secrets masked, for logs, replies, errors and printing (`redact`).
pub(crate) use redact::percent_decode;
pub use redact::{redact_secrets_in, redact_url, redact_urls_in};

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
