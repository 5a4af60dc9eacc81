//! The agent's configuration: one TOML file, read strictly and validated all at once.
//!
//! Every key, its type and its default is documented on the field below and in
//! `docs/CONFIG.md`. [`load`] reports every problem it finds (unknown keys, missing
//! keys, wrong types, bad values, references to unknown models, duplicate ids), each
//! naming the file, the field and the line, so one `lookout check-config` run shows
//! the installer everything to fix.

mod reader;

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use reader::Issue;
use reader::{Issues, Keyword, TableReader};

use crate::infer::model::ModelSpec;

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
    pub models: Vec<ModelConfig>,
    pub cameras: Vec<CameraConfig>,
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
}

/// `[mqtt]`
#[derive(Debug, Clone)]
pub struct MqttConfig {
    /// `url` (required): `mqtt://host[:port]` (port defaults to 1883).
    pub host: String,
    pub port: u16,
    /// `client_id` (default `lookout-{site}-{id}`).
    pub client_id: String,
    /// `keep_alive_secs` (default 30).
    pub keep_alive: Duration,
    /// `max_inflight` (default 100): QoS 1 publishes awaiting PUBACK.
    pub max_inflight: u16,
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
    /// `spinning` (default false): ONNX Runtime's intra-op spin-wait. Off because spinning
    /// made latency erratic on a busy 2-core gateway (see docs/BENCHMARKS.md).
    pub spinning: bool,
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
#[derive(Debug, Clone)]
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
    /// `reconnect_min_secs` / `reconnect_max_secs` (defaults 1 and 30).
    pub reconnect: ReconnectPolicy,
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

    let agent = root.table(&mut issues, "agent", true).map(|mut t| {
        let site = t.req::<String>(&mut issues, "site");
        let id = t.req::<String>(&mut issues, "id");
        let onnxruntime = t.opt::<String>(&mut issues, "onnxruntime").map(|p| resolve_path(&base_dir, cwd, &p));
        for (key, value) in [("site", &site), ("id", &id)] {
            if let Some(v) = value {
                check_segment(&mut issues, &mut t, key, v);
            }
        }
        t.finish(&mut issues);
        (site, id, onnxruntime)
    });

    let mqtt = root.table(&mut issues, "mqtt", true).map(|mut t| {
        let url = t.req::<String>(&mut issues, "url");
        let endpoint = url.and_then(|u| match parse_mqtt_url(&u) {
            Ok(hp) => Some(hp),
            Err(e) => {
                issues.push(&t.field_path("url"), t.raw("url").map(|v| v.span()).as_ref(), e);
                None
            }
        });
        let client_id = t.opt::<String>(&mut issues, "client_id");
        let keep_alive = t.opt::<u64>(&mut issues, "keep_alive_secs").unwrap_or(30);
        if keep_alive < 5 {
            issues.push(
                &t.field_path("keep_alive_secs"),
                t.raw("keep_alive_secs").map(|v| v.span()).as_ref(),
                "must be ≥ 5",
            );
        }
        let max_inflight = t.opt::<u64>(&mut issues, "max_inflight").unwrap_or(100);
        if !(1..=u16::MAX as u64).contains(&max_inflight) {
            issues.push(
                &t.field_path("max_inflight"),
                t.raw("max_inflight").map(|v| v.span()).as_ref(),
                "must be between 1 and 65535",
            );
        }
        t.finish(&mut issues);
        (endpoint, client_id, Duration::from_secs(keep_alive), max_inflight.clamp(1, u16::MAX as u64) as u16)
    });

    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let mut inference = InferenceConfig { threads: cores.min(4), max_batch: 2, spinning: false };
    if let Some(mut t) = root.table(&mut issues, "inference", false) {
        if let Some(n) = t.opt::<usize>(&mut issues, "threads") {
            if n == 0 {
                issues.push(&t.field_path("threads"), t.raw("threads").map(|v| v.span()).as_ref(), "must be ≥ 1");
            }
            inference.threads = n.max(1);
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
        inference.spinning = t.opt::<bool>(&mut issues, "spinning").unwrap_or(false);
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

    let mut cameras: Vec<CameraConfig> = Vec::new();
    let before = issues.list.len();
    let camera_tables = root.tables(&mut issues, "cameras");
    if camera_tables.is_empty() && issues.list.len() == before {
        issues.push("cameras", None, "at least one [[cameras]] entry is required");
    }
    // Every id seen, including those of cameras with other problems.
    let mut camera_ids: Vec<String> = Vec::new();
    for mut t in camera_tables {
        if let Some(c) = read_camera(&mut issues, &mut t, &model_names, &mut camera_ids) {
            cameras.push(c);
        }
        t.finish(&mut issues);
    }
    root.finish(&mut issues);

    match (agent, mqtt) {
        (
            Some((Some(site), Some(id), onnxruntime)),
            Some((Some((host, port)), client_id, keep_alive, max_inflight)),
        ) if issues.list.is_empty() => {
            let client_id = client_id.unwrap_or_else(|| format!("lookout-{site}-{id}"));
            Ok(Config {
                file: std::path::absolute(file).unwrap_or_else(|_| file.to_path_buf()),
                agent: AgentConfig { site, id, onnxruntime },
                mqtt: MqttConfig { host, port, client_id, keep_alive, max_inflight },
                inference,
                models,
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

fn read_camera(
    issues: &mut Issues<'_>,
    t: &mut TableReader<'_, '_>,
    model_names: &HashSet<String>,
    seen_ids: &mut Vec<String>,
) -> Option<CameraConfig> {
    let id = t.req::<String>(issues, "id");
    let url = t.req::<String>(issues, "url");
    let model = t.req::<String>(issues, "model");
    let fps = t.opt::<f64>(issues, "fps").unwrap_or(1.0);
    let min_score = t.opt::<f64>(issues, "min_score");
    let transport = t.keyword(issues, "transport", Transport::Tcp);
    let decode = t.keyword(issues, "decode", DecodePolicy::Auto);
    let rmin = t.opt::<f64>(issues, "reconnect_min_secs").unwrap_or(1.0);
    let rmax = t.opt::<f64>(issues, "reconnect_max_secs").unwrap_or(30.0);

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
    if !(fps > 0.0 && fps <= 60.0) {
        let s = span_of(t, "fps");
        issues.push(&t.field_path("fps"), s.as_ref(), format!("must be > 0 and ≤ 60, got {fps}"));
    }
    if let Some(ms) = min_score
        && !(ms > 0.0 && ms <= 1.0)
    {
        let s = span_of(t, "min_score");
        issues.push(&t.field_path("min_score"), s.as_ref(), format!("must be in (0, 1], got {ms}"));
    }
    if !(rmin > 0.0 && rmax >= rmin) {
        let s = span_of(t, "reconnect_max_secs");
        issues.push(
            &t.field_path("reconnect_max_secs"),
            s.as_ref(),
            "need 0 < reconnect_min_secs ≤ reconnect_max_secs",
        );
    }
    Some(CameraConfig {
        id: id?,
        url: url?,
        model: model?,
        fps,
        min_score: min_score.map(|s| s as f32),
        transport,
        decode,
        reconnect: ReconnectPolicy {
            min: Duration::from_secs_f64(rmin.max(0.01)),
            max: Duration::from_secs_f64(rmax.max(rmin).max(0.01)),
        },
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

fn check_rtsp_url(u: &str) -> Result<(), String> {
    let parsed = url::Url::parse(u).map_err(|e| format!("not a valid URL ({e}): \"{u}\""))?;
    if !matches!(parsed.scheme(), "rtsp" | "rtsps" | "rtspt") {
        return Err(format!("expected an rtsp:// URL, got scheme \"{}\"", parsed.scheme()));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err("URL has no host".into());
    }
    Ok(())
}

/// `mqtt://host[:port]` (also `tcp://`) to host and port.
pub fn parse_mqtt_url(u: &str) -> Result<(String, u16), String> {
    let parsed = url::Url::parse(u).map_err(|e| format!("not a valid URL ({e}): \"{u}\""))?;
    if !matches!(parsed.scheme(), "mqtt" | "tcp") {
        return Err(format!(
            "expected mqtt://host[:port], got scheme \"{}\" (TLS comes with mqtts:// later)",
            parsed.scheme()
        ));
    }
    let host = parsed.host_str().filter(|h| !h.is_empty()).ok_or("URL has no host")?;
    Ok((host.trim_start_matches('[').trim_end_matches(']').to_string(), parsed.port().unwrap_or(1883)))
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
