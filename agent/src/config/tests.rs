use std::path::PathBuf;

use super::*;
use crate::rules::ReferencePoint;
use crate::rules::geometry::Point;
use crate::source::motion::{CompressedMotionPolicy, MotionPolicy};

/// Where the config under test claims to live; it does not need to exist.
const FILE: &str = "/etc/lookout/site.toml";
/// A working directory with nothing in it, so relative paths only resolve against FILE's folder.
const NO_CWD: &str = "/nonexistent-lookout-cwd";

/// The minimal config of the spec; `MANIFEST` stands for the real model manifest's path.
const MINIMAL: &str = r#"[agent]
site = "site-1"
id = "gw-1"
[mqtt]
url = "mqtt://127.0.0.1:1883"
[[models]]
name = "person"
manifest = "MANIFEST"
[[cameras]]
id = "cam-1"
url = "rtsp://127.0.0.1:8554/cam1"
model = "person"
fps = 2.0
min_score = 0.5
"#;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn manifest() -> PathBuf {
    repo().join("models/ssdlite-mobilenetv2-person/manifest.toml")
}

/// `src` with `MANIFEST` replaced by the real manifest's absolute path.
fn with_manifest(src: &str) -> String {
    src.replace("MANIFEST", manifest().to_str().expect("UTF-8 path"))
}

fn minimal() -> String {
    with_manifest(MINIMAL)
}

fn parse_ok(src: &str) -> Config {
    match parse(Path::new(FILE), src, Path::new(NO_CWD)) {
        Ok(c) => c,
        Err(e) => panic!("expected a valid config, got:\n{e}\nfor:\n{src}"),
    }
}

fn issues(src: &str) -> Vec<Issue> {
    match parse(Path::new(FILE), src, Path::new(NO_CWD)) {
        Ok(_) => panic!("expected the config to be refused:\n{src}"),
        Err(e) => e.issues,
    }
}

/// The one issue about `field`; fails listing all issues if there is none or several.
fn only<'a>(issues: &'a [Issue], field: &str) -> &'a Issue {
    let found: Vec<_> = issues.iter().filter(|i| i.field == field).collect();
    assert_eq!(found.len(), 1, "expected exactly one issue at `{field}`, got:\n{issues:#?}");
    found[0]
}

/// 1-based line of the only line of `src` containing `needle`.
fn line_of(src: &str, needle: &str) -> usize {
    let lines: Vec<_> = src.lines().enumerate().filter(|(_, l)| l.contains(needle)).map(|(i, _)| i + 1).collect();
    assert_eq!(lines.len(), 1, "`{needle}` should occur on exactly one line of:\n{src}");
    lines[0]
}

/// Asserts the issue at `field` is on the line containing `needle` and its message contains `says`.
fn assert_issue(issues: &[Issue], src: &str, field: &str, needle: &str, says: &str) {
    let issue = only(issues, field);
    assert_eq!(issue.line, Some(line_of(src, needle)), "line of {issue:?}");
    assert!(issue.message.contains(says), "message of `{field}` should contain {says:?}: {issue:?}");
    assert_eq!(issue.file, Path::new(FILE));
}

/// A fresh, empty folder under the system temp dir, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let dir = std::env::temp_dir().join(format!("lookout-config-{tag}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn minimal_config_parses_with_its_values() {
    let c = parse_ok(&minimal());
    assert_eq!(c.file, Path::new(FILE));
    assert_eq!((c.agent.site.as_str(), c.agent.id.as_str()), ("site-1", "gw-1"));
    assert_eq!(c.agent.onnxruntime, None);
    assert_eq!((c.mqtt.host.as_str(), c.mqtt.port), ("127.0.0.1", 1883));
    assert_eq!(c.models.len(), 1);
    assert_eq!(c.models[0].name, "person");
    assert_eq!(c.models[0].manifest, manifest());
    assert_eq!(c.models[0].spec.name, "ssdlite-mobilenetv2-person");
    assert!(c.model("person").is_some() && c.model("car").is_none());
    assert_eq!(c.cameras.len(), 1);
    let cam = &c.cameras[0];
    assert_eq!(
        (cam.id.as_str(), cam.url.as_str(), cam.model.as_str()),
        ("cam-1", "rtsp://127.0.0.1:8554/cam1", "person")
    );
    assert_eq!(cam.fps, 2.0);
    assert_eq!(cam.min_score, Some(0.5));
}

#[test]
fn omitted_optional_keys_take_their_documented_defaults() {
    let src = minimal().replace("fps = 2.0\n", "").replace("min_score = 0.5\n", "").replace(":1883", "");
    let c = parse_ok(&src);
    assert_eq!(c.mqtt.port, 1883);
    assert_eq!(c.mqtt.client_id, "lookout-site-1-gw-1");
    assert_eq!(c.mqtt.keep_alive, Duration::from_secs(30));
    assert_eq!(c.mqtt.max_inflight, 100);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()).min(4);
    assert_eq!((c.inference.threads, c.inference.workers), (cores, 1));
    assert_eq!(c.inference.max_batch, 2);
    assert!(!c.inference.spinning);
    let cam = &c.cameras[0];
    assert_eq!(cam.fps, 1.0);
    assert_eq!(cam.min_score, None);
    assert_eq!(cam.transport, Transport::Tcp);
    assert_eq!(cam.decode, DecodePolicy::Auto);
    assert_eq!(cam.reconnect, ReconnectPolicy { min: Duration::from_secs(1), max: Duration::from_secs(30) });
}

#[test]
fn every_optional_key_is_read_when_given() {
    let src = minimal().replace("[agent]\n", "[agent]\nonnxruntime = \"lib/libonnxruntime.so.1\"\n")
        + r#"transport = "udp"
decode = "keyframes"
reconnect_min_secs = 0.5
reconnect_max_secs = 10
[inference]
threads = 3
workers = 5
max_batch = 16
spinning = true
"#;
    let src = src.replace("[mqtt]\n", "[mqtt]\nclient_id = \"gw\"\nkeep_alive_secs = 60\nmax_inflight = 10\n");
    let c = parse_ok(&src);
    // Not found beside the config nor in the working directory: the working directory's path.
    assert_eq!(c.agent.onnxruntime, Some(PathBuf::from(NO_CWD).join("lib/libonnxruntime.so.1")));
    assert_eq!(c.mqtt.client_id, "gw");
    assert_eq!(c.mqtt.keep_alive, Duration::from_secs(60));
    assert_eq!(c.mqtt.max_inflight, 10);
    assert_eq!((c.inference.threads, c.inference.max_batch, c.inference.spinning), (3, 16, true));
    assert_eq!(c.inference.workers, 5);
    let cam = &c.cameras[0];
    assert_eq!((cam.transport, cam.decode), (Transport::Udp, DecodePolicy::Keyframes));
    assert_eq!(cam.reconnect, ReconnectPolicy { min: Duration::from_millis(500), max: Duration::from_secs(10) });
}

#[test]
fn unknown_keys_are_reported_with_their_line_and_the_accepted_keys() {
    let src = format!("debug = true\n{}", minimal())
        .replace("id = \"gw-1\"\n", "id = \"gw-1\"\nsight = \"x\"\n")
        .replace("fps = 2.0\n", "fps = 2.0\nframerate = 5\n");
    let all = issues(&src);
    assert_eq!(all.len(), 3, "{all:#?}");
    assert_issue(&all, &src, "debug", "debug = true", "unknown field");
    assert!(
        only(&all, "debug").message.contains(
            "agent, mqtt, outbox, inference, telemetry, model_updates, control, site, models, class_groups, cameras"
        ),
        "{all:#?}"
    );
    assert_issue(
        &all,
        &src,
        "agent.sight",
        "sight",
        "unknown field, expected one of: site, id, onnxruntime, state_dir",
    );
    assert_issue(&all, &src, "cameras[0].framerate", "framerate", "unknown field");
    let listed = &only(&all, "cameras[0].framerate").message;
    for key in ["id", "url", "model", "fps", "min_score", "transport", "decode", "reconnect_min_secs"] {
        assert!(listed.contains(key), "{listed} should list {key}");
    }
}

#[test]
fn missing_required_keys_are_reported_at_their_table_header() {
    let src = minimal()
        .replace("site = \"site-1\"\n", "")
        .replace("url = \"rtsp://127.0.0.1:8554/cam1\"\n", "")
        .replace(&format!("manifest = \"{}\"\n", manifest().display()), "");
    let all = issues(&src);
    assert_eq!(all.len(), 3, "{all:#?}");
    assert_issue(&all, &src, "agent.site", "[agent]", "missing required field");
    assert_issue(&all, &src, "models[0].manifest", "[[models]]", "missing required field");
    assert_issue(&all, &src, "cameras[0].url", "[[cameras]]", "missing required field");
}

#[test]
fn missing_sections_are_reported() {
    let without_mqtt = minimal().replace("[mqtt]\nurl = \"mqtt://127.0.0.1:1883\"\n", "");
    let all = issues(&without_mqtt);
    assert_eq!(all.len(), 1, "{all:#?}");
    assert_eq!(all[0].field, "mqtt");
    assert_eq!(all[0].line, None);
    assert!(all[0].message.contains("missing required section"), "{all:#?}");

    let only_agent_and_mqtt = "[agent]\nsite = \"s\"\nid = \"g\"\n[mqtt]\nurl = \"mqtt://b\"\n";
    let all = issues(only_agent_and_mqtt);
    assert_eq!(all.len(), 2, "{all:#?}");
    assert!(only(&all, "models").message.contains("at least one [[models]]"), "{all:#?}");
    assert!(only(&all, "cameras").message.contains("at least one [[cameras]]"), "{all:#?}");

    let all = issues("");
    let fields: Vec<_> = all.iter().map(|i| i.field.as_str()).collect();
    assert_eq!(fields, ["agent", "mqtt", "models", "cameras"]);
}

#[test]
fn wrong_types_say_what_was_expected() {
    let src = minimal().replace("fps = 2.0", "fps = \"fast\"").replace("min_score = 0.5", "min_score = true");
    let all = issues(&src);
    assert_eq!(all.len(), 2, "{all:#?}");
    assert_issue(&all, &src, "cameras[0].fps", "fps = \"fast\"", "expected a number, found string");
    assert_issue(&all, &src, "cameras[0].min_score", "min_score = true", "expected a number, found boolean");

    let src = with_manifest("[agent]\nsite = 7\nid = \"g\"\n[mqtt]\nurl = \"mqtt://b\"\nkeep_alive_secs = 2.5\n");
    let all = issues(&src);
    assert_issue(&all, &src, "agent.site", "site = 7", "expected a string, found integer");
    assert_issue(&all, &src, "mqtt.keep_alive_secs", "keep_alive_secs", "expected a whole number, found float");
}

#[test]
fn cameras_written_as_a_table_are_reported_once() {
    let src = minimal().replace("[[cameras]]", "[cameras]");
    let all = issues(&src);
    assert_eq!(all.len(), 1, "one issue, not a second \"at least one camera\": {all:#?}");
    assert_issue(&all, &src, "cameras", "[cameras]", "expected an array of tables, found table");
}

#[test]
fn camera_naming_an_unknown_model_is_reported_with_the_known_ones() {
    let src = minimal().replace("model = \"person\"", "model = \"persn\"");
    let all = issues(&src);
    assert_eq!(all.len(), 1, "{all:#?}");
    assert_issue(&all, &src, "cameras[0].model", "persn", "unknown model \"persn\" (models: person)");
}

#[test]
fn duplicate_camera_id_is_reported_on_the_second_camera() {
    let second = "[[cameras]]\nid = \"cam-1\"\nurl = \"rtsp://10.0.0.2/s\"\nmodel = \"person\"\n";
    let src = minimal() + second;
    let all = issues(&src);
    assert_eq!(all.len(), 1, "{all:#?}");
    assert_eq!(all[0].field, "cameras[1].id");
    assert_eq!(all[0].line, Some(16), "the second camera's id line: {all:#?}");
    assert!(all[0].message.contains("duplicate camera id \"cam-1\""), "{all:#?}");
}

#[test]
fn duplicate_camera_id_is_reported_even_when_the_first_camera_has_other_problems() {
    let second = "[[cameras]]\nid = \"cam-1\"\nurl = \"rtsp://10.0.0.2/s\"\nmodel = \"person\"\n";
    let src = minimal().replace("url = \"rtsp://127.0.0.1:8554/cam1\"\n", "") + second;
    let all = issues(&src);
    assert_eq!(all.len(), 2, "{all:#?}");
    assert_eq!(only(&all, "cameras[0].url").message, "missing required field");
    assert!(only(&all, "cameras[1].id").message.contains("duplicate camera id"), "{all:#?}");
}

#[test]
fn duplicate_model_name_is_reported_on_the_second_model() {
    let src = minimal().replace(
        "[[cameras]]",
        &format!("[[models]]\nname = \"person\" # again\nmanifest = \"{}\"\n[[cameras]]", manifest().display()),
    );
    let all = issues(&src);
    assert_eq!(all.len(), 1, "{all:#?}");
    assert_issue(&all, &src, "models[1].name", "# again", "duplicate model name \"person\"");
}

#[test]
fn duplicate_model_name_is_reported_even_when_the_first_manifest_failed() {
    let first = "[[models]]\nname = \"person\"\nmanifest = \"/nonexistent/manifest.toml\"\n";
    let src = minimal().replace("[[models]]\n", &format!("{first}[[models]]\n"));
    let all = issues(&src);
    assert_eq!(all.len(), 2, "{all:#?}");
    assert!(only(&all, "models[0].manifest").message.contains("/nonexistent/manifest.toml"), "{all:#?}");
    assert_eq!(only(&all, "models[1].name").line, Some(10), "{all:#?}");
    assert!(only(&all, "models[1].name").message.contains("duplicate model name \"person\""), "{all:#?}");
}

#[test]
fn camera_url_must_be_an_rtsp_url() {
    let second = "[[cameras]]\nid = \"cam-2\"\nurl = \"not a url\"\nmodel = \"person\"\n";
    let third = "[[cameras]]\nid = \"cam-3\"\nurl = \"rtsp://\"\nmodel = \"person\"\n";
    let src = minimal().replace("rtsp://127.0.0.1:8554/cam1", "http://x") + second + third;
    let all = issues(&src);
    assert_eq!(all.len(), 3, "{all:#?}");
    assert_issue(&all, &src, "cameras[0].url", "http://x", "expected an rtsp:// URL, got scheme \"http\"");
    assert_issue(&all, &src, "cameras[1].url", "not a url", "not a valid URL");
    assert_issue(&all, &src, "cameras[2].url", "\"rtsp://\"", "no host");
}

#[test]
fn rtsps_and_credentials_are_accepted_in_camera_urls() {
    let src = minimal().replace("rtsp://127.0.0.1:8554/cam1", "rtsps://admin:p%40ss@cam.local:322/live");
    assert_eq!(parse_ok(&src).cameras[0].url, "rtsps://admin:p%40ss@cam.local:322/live");
}

#[test]
fn mqtt_url_must_be_an_mqtt_url() {
    let src = minimal().replace("mqtt://127.0.0.1:1883", "http://broker:1883");
    let all = issues(&src);
    assert_eq!(all.len(), 1, "{all:#?}");
    assert_issue(
        &all,
        &src,
        "mqtt.url",
        "http://broker",
        "expected mqtt://host[:port] or mqtts://host[:port], got scheme \"http\"",
    );

    let src = minimal().replace("mqtt://127.0.0.1:1883", "broker:1883");
    let all = issues(&src);
    assert_issue(&all, &src, "mqtt.url", "broker:1883", "expected mqtt://host[:port]");
}

#[test]
fn ids_that_are_not_topic_segments_are_reported_on_their_line() {
    let src = minimal().replace("id = \"gw-1\"", "id = \"gw/1\"").replace("id = \"cam-1\"", "id = \"cam+1\"");
    let all = issues(&src);
    assert_eq!(all.len(), 2, "{all:#?}");
    assert_issue(&all, &src, "agent.id", "gw/1", "\"gw/1\" must be 1–64 characters of letters, digits");
    assert_issue(&all, &src, "cameras[0].id", "cam+1", "\"cam+1\" must be 1–64 characters");

    let src = minimal().replace("site = \"site-1\"", "site = \"\"");
    assert_issue(&issues(&src), &src, "agent.site", "site = \"\"", "must be 1–64 characters");
}

#[test]
fn fps_must_be_above_zero_and_at_most_60() {
    for bad in ["0", "-1", "0.0", "61"] {
        let src = minimal().replace("fps = 2.0", &format!("fps = {bad}"));
        let all = issues(&src);
        assert_eq!(all.len(), 1, "{all:#?}");
        assert_issue(&all, &src, "cameras[0].fps", "fps =", "must be > 0 and ≤ 60");
    }
    let src = minimal().replace("fps = 2.0", "fps = 3");
    assert_eq!(parse_ok(&src).cameras[0].fps, 3.0, "an integer fps is accepted");
}

#[test]
fn min_score_must_lie_in_zero_to_one() {
    for bad in ["1.5", "0", "-0.2"] {
        let src = minimal().replace("min_score = 0.5", &format!("min_score = {bad}"));
        let all = issues(&src);
        assert_eq!(all.len(), 1, "{all:#?}");
        assert_issue(&all, &src, "cameras[0].min_score", "min_score", &format!("must be in (0, 1], got {bad}"));
    }
    let src = minimal().replace("min_score = 0.5", "min_score = 1");
    assert_eq!(parse_ok(&src).cameras[0].min_score, Some(1.0));
}

#[test]
fn unknown_keyword_lists_the_accepted_values() {
    let src = minimal() + "transport = \"carrier-pigeon\"\ndecode = 3\n";
    let all = issues(&src);
    assert_eq!(all.len(), 2, "{all:#?}");
    assert_issue(
        &all,
        &src,
        "cameras[0].transport",
        "carrier-pigeon",
        "unknown value \"carrier-pigeon\", expected one of \"tcp\", \"udp\"",
    );
    assert_issue(&all, &src, "cameras[0].decode", "decode = 3", "expected one of \"auto\", \"keyframes\", \"all\"");
}

#[test]
fn bad_numeric_limits_in_mqtt_inference_and_reconnect_are_reported() {
    let src = minimal().replace("[mqtt]\n", "[mqtt]\nkeep_alive_secs = 1\nmax_inflight = 0\n")
        + "reconnect_min_secs = 10\nreconnect_max_secs = 5\n[inference]\nthreads = 0\nworkers = 65\nmax_batch = 65\n";
    let all = issues(&src);
    assert_eq!(all.len(), 6, "{all:#?}");
    assert_issue(&all, &src, "mqtt.keep_alive_secs", "keep_alive_secs", "must be from 5 to 3600 seconds, got 1");
    assert_issue(&all, &src, "mqtt.max_inflight", "max_inflight", "between 1 and 65535");
    assert_issue(
        &all,
        &src,
        "cameras[0].reconnect_max_secs",
        "reconnect_max_secs",
        "reconnect_min_secs ≤ reconnect_max_secs",
    );
    assert_issue(&all, &src, "inference.threads", "threads", "must be from 1 to 64 threads, got 0");
    assert_issue(&all, &src, "inference.workers", "workers", "must be from 1 to 64 workers, got 65");
    assert_issue(&all, &src, "inference.max_batch", "max_batch", "between 1 and 64");
}

#[test]
fn invalid_toml_is_one_issue_with_its_line() {
    let src = minimal().replace("fps = 2.0", "fps = 2.0.0");
    let all = issues(&src);
    assert_eq!(all.len(), 1, "{all:#?}");
    assert_eq!(all[0].field, "");
    assert_eq!(all[0].line, Some(line_of(&src, "fps =")), "{all:#?}");
    assert!(all[0].message.starts_with("not valid TOML: "), "{all:#?}");

    let src = "[agent]\nsite = \"s\"\n[agent\n";
    let all = issues(src);
    assert_eq!(all.len(), 1, "{all:#?}");
    assert_eq!(all[0].line, Some(3), "{all:#?}");
}

#[test]
fn missing_manifest_is_reported_by_path_without_an_unknown_model_error_on_its_camera() {
    let src = MINIMAL.replace("MANIFEST", "/nonexistent/person/manifest.toml");
    let all = issues(&src);
    assert_eq!(all.len(), 1, "only the manifest, not cameras[0].model too: {all:#?}");
    assert_issue(&all, &src, "models[0].manifest", "manifest =", "/nonexistent/person/manifest.toml");
    assert!(all[0].message.contains("cannot read model manifest"), "{all:#?}");
}

#[test]
fn missing_relative_manifest_names_every_place_looked_in() {
    let src = MINIMAL.replace("MANIFEST", "person/manifest.toml");
    let all = issues(&src);
    assert_eq!(all.len(), 1, "{all:#?}");
    let m = &all[0].message;
    assert!(m.contains("/etc/lookout/person/manifest.toml"), "{m}");
    assert!(m.contains(&format!("{NO_CWD}/person/manifest.toml")), "{m}");
}

#[test]
fn manifest_whose_model_file_does_not_match_its_sha256_is_refused() {
    let dir = TempDir::new("sha");
    let real = manifest();
    let real_dir = real.parent().expect("manifest folder");
    std::fs::copy(&real, dir.0.join("manifest.toml")).expect("copy manifest");
    std::fs::copy(real_dir.join("labels.txt"), dir.0.join("labels.txt")).expect("copy labels");
    std::fs::write(dir.0.join("model.onnx"), b"not the model").expect("write fake model");

    let src = MINIMAL.replace("MANIFEST", dir.0.join("manifest.toml").to_str().expect("UTF-8 path"));
    let all = issues(&src);
    assert_eq!(all.len(), 1, "{all:#?}");
    assert_issue(&all, &src, "models[0].manifest", "manifest =", "sha256");
    assert!(all[0].message.contains("model.onnx"), "{all:#?}");
    assert!(all[0].message.contains("e4d205d75e8ed1c21f8f18bf548ae763a2d2e804eba8e3639e04ce9186c76653"), "{all:#?}");
}

#[test]
fn relative_manifest_resolves_against_the_config_folder_then_the_working_directory() {
    let src = MINIMAL.replace("MANIFEST", "ssdlite-mobilenetv2-person/manifest.toml");
    let models = repo().join("models");

    // Config in models/: found beside the config, whatever the working directory.
    let c = parse(&models.join("x.toml"), &src, Path::new(NO_CWD)).expect("resolved beside the config");
    assert_eq!(c.models[0].manifest, models.join("ssdlite-mobilenetv2-person/manifest.toml"));

    // Config elsewhere: found in the working directory.
    let c = parse(Path::new(FILE), &src, &models).expect("resolved in the working directory");
    assert_eq!(c.models[0].manifest, models.join("ssdlite-mobilenetv2-person/manifest.toml"));

    // Both have one: the config's folder wins.
    let dir = TempDir::new("resolve");
    let c = parse(&models.join("x.toml"), &src, &dir.0).expect("resolved beside the config");
    assert_eq!(c.models[0].manifest, models.join("ssdlite-mobilenetv2-person/manifest.toml"));
}

#[test]
fn reports_every_problem_at_once_with_file_field_and_line() {
    let src = with_manifest(
        r#"# A config with one mistake per section.
lookout = 1
[agent]
site = "site-1"
id = "gw/1"
[mqtt]
url = "http://broker"
[inference]
max_batch = 0
[[models]]
name = "person"
manifest = "MANIFEST"
[[models]]
name = "car"
manifest = "/nonexistent/car/manifest.toml"
[[cameras]]
id = "door"
url = "rtsp://10.0.0.1/s"
model = "person"
fps = 0
[[cameras]]
id = "door"
url = "http://10.0.0.2/s"
model = "bus"
transport = "carrier-pigeon"
[[cameras]]
id = "yard"
url = "rtsp://10.0.0.3/s"
model = "car"
min_score = true
"#,
    );
    let err = parse(Path::new(FILE), &src, Path::new(NO_CWD)).expect_err("nine problems");
    let expected = [
        (5, "agent.id", "\"gw/1\" must be 1–64 characters"),
        (7, "mqtt.url", "expected mqtt://host[:port] or mqtts://host[:port], got scheme \"http\""),
        (9, "inference.max_batch", "must be between 1 and 64"),
        (15, "models[1].manifest", "cannot read model manifest /nonexistent/car/manifest.toml"),
        (20, "cameras[0].fps", "must be > 0 and ≤ 60, got 0"),
        (22, "cameras[1].id", "duplicate camera id \"door\""),
        (23, "cameras[1].url", "expected an rtsp:// URL, got scheme \"http\""),
        (24, "cameras[1].model", "unknown model \"bus\" (models: car, person)"),
        (25, "cameras[1].transport", "unknown value \"carrier-pigeon\""),
        (30, "cameras[2].min_score", "expected a number, found boolean"),
        (
            2,
            "lookout",
            "unknown field, expected one of: agent, mqtt, outbox, inference, telemetry, model_updates, control, site, models, class_groups, cameras",
        ),
    ];
    assert_eq!(err.issues.len(), expected.len(), "{err}");
    let shown = err.to_string();
    let mut lines = shown.lines();
    assert_eq!(lines.next(), Some("11 problems in the configuration:"));
    let rest: Vec<_> = lines.map(str::trim).collect();
    for (line, field, says) in expected {
        let issue = only(&err.issues, field);
        assert_eq!(issue.line, Some(line), "{issue:?}");
        assert!(issue.message.contains(says), "{issue:?} should say {says:?}");
        let prefix = format!("{FILE}:{line}: {field}: {says}");
        assert!(rest.iter().any(|l| l.starts_with(&prefix)), "no line starting {prefix:?} in:\n{shown}");
    }
}

#[test]
fn unreadable_file_is_one_issue_naming_it() {
    let err = load(Path::new("/nonexistent/lookout.toml")).expect_err("no such file");
    assert_eq!(err.issues.len(), 1);
    assert_eq!(err.issues[0].line, None);
    assert!(err.to_string().contains("/nonexistent/lookout.toml: cannot read: "), "{err}");
}

#[test]
fn shipped_example_config_is_valid() {
    let file = repo().join("configs/example.toml");
    let c = match load(&file) {
        Ok(c) => c,
        Err(e) => panic!("{e}"),
    };
    assert_eq!(c.cameras.len(), 2);
    assert_eq!(c.models.len(), 2);
    assert_eq!(c.class_groups.len(), 1);
    assert!(c.cameras.iter().any(|cam| cam.transport == Transport::Udp && cam.decode == DecodePolicy::All));
}

#[test]
fn password_never_appears_in_debug_output_or_errors() {
    let src = minimal().replace(
        "url = \"mqtt://127.0.0.1:1883\"\n",
        "url = \"mqtt://127.0.0.1:1883\"\nusername = \"gw\"\npassword = \"hunter2-s3cret\"\n",
    );
    let c = parse_ok(&src);
    assert_eq!(c.mqtt.password.as_ref().map(Secret::expose), Some("hunter2-s3cret"));
    assert!(!format!("{c:?}").contains("hunter2"), "the password leaked into Debug output");
    // A config with a problem elsewhere: the error lists it, never the password.
    let bad = src.replace("fps = 2.0", "fps = 0");
    let err = ConfigError { issues: issues(&bad) }.to_string();
    assert!(err.contains("cameras[0].fps") && !err.contains("hunter2"), "{err}");
}

#[test]
fn password_comes_from_one_of_inline_file_or_environment() {
    let dir = TempDir::new("password");
    let file = dir.0.join("pw");
    std::fs::write(&file, "from-file\nignored second line\n").unwrap();
    let with = |lines: &str| {
        minimal().replace("url = \"mqtt://127.0.0.1:1883\"\n", &format!("url = \"mqtt://127.0.0.1:1883\"\n{lines}"))
    };
    let c = parse_ok(&with(&format!("password_file = \"{}\"\n", file.display())));
    assert_eq!(c.mqtt.password.as_ref().map(Secret::expose), Some("from-file"));
    // PATH is always set; its value stands in for a secret.
    let c = parse_ok(&with("password_env = \"PATH\"\n"));
    assert_eq!(c.mqtt.password.as_ref().map(Secret::expose), std::env::var("PATH").ok().as_deref());
    let src = with("password_env = \"LOOKOUT_TEST_SURELY_UNSET_VAR\"\n");
    assert_issue(&issues(&src), &src, "mqtt.password_env", "password_env", "LOOKOUT_TEST_SURELY_UNSET_VAR is not set");
    let src = with("password = \"a\"\npassword_env = \"PATH\"\n");
    assert!(only(&issues(&src), "mqtt.password").message.contains("only one of"));
}

#[test]
fn tls_keys_need_an_mqtts_url_and_existing_files() {
    let src = minimal().replace(
        "url = \"mqtt://127.0.0.1:1883\"\n",
        "url = \"mqtt://127.0.0.1:1883\"\nca_file = \"/nonexistent/ca.pem\"\nclient_cert = \"/nonexistent/c.pem\"\n",
    );
    let all = issues(&src);
    assert_issue(&all, &src, "mqtt.ca_file", "ca_file", "/nonexistent/ca.pem is not a readable file");
    assert!(only(&all, "mqtt.url").message.contains("use an mqtts:// URL"), "{all:#?}");
    assert!(only(&all, "mqtt.client_key").message.contains("go together"), "{all:#?}");
    let c = parse_ok(&minimal().replace("mqtt://127.0.0.1:1883", "mqtts://broker.example"));
    assert_eq!((c.mqtt.port, c.mqtt.tls.is_some()), (8883, true));
}

#[test]
fn outbox_section_has_safe_defaults_and_checked_limits() {
    let c = parse_ok(&minimal());
    assert_eq!(c.agent.state_dir, Path::new("/var/lib/lookout"));
    assert_eq!(c.outbox.max_bytes, 256 << 20);
    assert_eq!(c.outbox.fsync_interval, Duration::from_millis(200));
    assert_eq!(c.outbox.full_policy, crate::publish::outbox::OutboxFullPolicy::DropOldest);
    let src = format!("{}\n[outbox]\nmax_bytes = 10000\nsegment_bytes = 8192\nfull_policy = \"keep_all\"\n", minimal());
    let all = issues(&src);
    assert_issue(&all, &src, "outbox.max_bytes", "max_bytes", "at least twice segment_bytes");
    assert_issue(&all, &src, "outbox.full_policy", "full_policy", "\"drop_oldest\", \"drop_newest\"");
}

#[test]
fn mqtt_max_message_bytes_defaults_to_one_mib_and_is_bounded() {
    assert_eq!(parse_ok(&minimal()).mqtt.max_message_bytes, 1 << 20);
    let with = |n: u64| minimal().replace("[mqtt]\n", &format!("[mqtt]\nmax_message_bytes = {n}\n"));
    assert_eq!(parse_ok(&with(65536)).mqtt.max_message_bytes, 65536);
    assert_eq!(parse_ok(&with(16 << 20)).mqtt.max_message_bytes, 16 << 20);
    for n in [65535, (16 << 20) + 1] {
        let src = with(n);
        assert_issue(&issues(&src), &src, "mqtt.max_message_bytes", "max_message_bytes", "between 65536");
    }
}

/// The rules example of docs/CONFIG.md, verbatim.
const RULES: &str = r#"
[[cameras.zones]]
name = "entrance"
polygon = [[0.1, 0.5], [0.5, 0.5], [0.5, 1.0], [0.1, 1.0]]
loiter_seconds = 30      # optional
max_objects = 5          # optional
[[cameras.lines]]
name = "gate"
points = [[0.5, 0.0], [0.5, 1.0]]   # A, B
directions = ["east", "west"]
"#;

#[test]
fn zones_and_lines_are_read_as_written_in_the_spec() {
    let c = parse_ok(&(minimal() + RULES));
    let cam = &c.cameras[0];
    let z = &cam.rules.zones[0];
    assert_eq!(z.name, "entrance");
    assert_eq!(z.polygon.len(), 4);
    assert_eq!(z.polygon[2], Point::new(0.5, 1.0));
    assert_eq!(z.loiter, Some(Duration::from_secs(30)));
    assert_eq!(z.max_objects, Some(5));
    assert!(z.classes.is_empty());
    let l = &cam.rules.lines[0];
    assert_eq!((l.name.as_str(), l.a, l.b), ("gate", Point::new(0.5, 0.0), Point::new(0.5, 1.0)));
    assert_eq!(l.directions, ["east".to_string(), "west".to_string()]);
    assert_eq!(cam.rules.reference, ReferencePoint::BottomCenter);
    // Defaults: fps 2 → lost_after max(5, 1.5) = 5 s; counts every minute; snapshots on.
    assert_eq!(cam.lost_after, Duration::from_secs(5));
    assert_eq!(cam.count_interval, Duration::from_secs(60));
    assert_eq!(cam.rules.update_interval, None);
    assert_eq!(cam.snapshots, SnapshotPolicy { enabled: true, max_side: 640, quality: 80 });
}

#[test]
fn lifecycle_and_snapshot_keys_are_read_and_classes_become_ids() {
    let src = minimal().replace("min_score = 0.5\n", "min_score = 0.5\nfps = 0.5\n").replace("fps = 2.0\n", "")
        + "lost_after = 12\ncount_interval = 10\nupdate_interval = 30\nreference_point = \"center\"\n"
        + "snapshots = false\nsnapshot_max_side = 320\nsnapshot_quality = 60\n"
        + &RULES.replace("max_objects = 5", "classes = [\"person\"]");
    let cam = &parse_ok(&src).cameras[0];
    assert_eq!(cam.lost_after, Duration::from_secs(12));
    assert_eq!(cam.count_interval, Duration::from_secs(10));
    assert_eq!(cam.rules.update_interval, Some(Duration::from_secs(30)));
    assert_eq!(cam.rules.reference, ReferencePoint::Center);
    assert_eq!(cam.snapshots, SnapshotPolicy { enabled: false, max_side: 320, quality: 60 });
    assert_eq!(cam.rules.zones[0].classes, vec![0]);
    // At 0.5 fps the lost_after default is 3 frames: 6 s.
    let slow = minimal().replace("fps = 2.0", "fps = 0.5");
    assert_eq!(parse_ok(&slow).cameras[0].lost_after, Duration::from_secs(6));
}

#[test]
fn bad_zones_and_lines_are_all_reported_with_their_lines() {
    let src = minimal()
        + r#"
[[cameras.zones]]
name = "bow"
polygon = [[0.0, 0.0], [1.0, 1.0], [1.0, 0.0], [0.0, 1.0]]
[[cameras.zones]]
name = "bow"
polygon = [[0.1, 0.1], [1.5, 0.1], [0.1, 0.9]]
loiter_seconds = -1
classes = ["car"]
[[cameras.zones]]
name = "flat"
polygon = [[0.1, 0.1], [0.2, 0.2]]
[[cameras.lines]]
name = "gate"
points = [[0.5, 0.0], [0.5, 0.0]]
directions = ["in", "in"]
[[cameras.lines]]
name = "no-dirs"
points = [[0.5, 0.0], [0.5, 1.0], [0.6, 1.0]]
colour = "red"
"#;
    let all = issues(&src);
    assert_issue(&all, &src, "cameras[0].zones[0].polygon", "[[0.0, 0.0], [1.0, 1.0]", "crosses itself");
    assert_issue(&all, &src, "cameras[0].zones[1].polygon", "[[0.1, 0.1], [1.5", "point 1 is outside the frame");
    assert_issue(
        &all,
        &src,
        "cameras[0].zones[1].loiter_seconds",
        "loiter_seconds = -1",
        "must be from 0.1 to 86400 seconds",
    );
    assert_issue(&all, &src, "cameras[0].zones[1].classes", "classes = [\"car\"]", "unknown class \"car\"");
    assert!(only(&all, "cameras[0].zones[1].name").message.contains("duplicate name \"bow\""));
    assert_issue(&all, &src, "cameras[0].zones[2].polygon", "[[0.1, 0.1], [0.2, 0.2]]", "at least 3 points");
    assert_issue(&all, &src, "cameras[0].lines[0].points", "[[0.5, 0.0], [0.5, 0.0]]", "the same");
    assert_issue(&all, &src, "cameras[0].lines[0].directions", "[\"in\", \"in\"]", "two different");
    assert_issue(&all, &src, "cameras[0].lines[1].points", "[0.6, 1.0]]", "exactly 2 points");
    // Missing keys are reported at their table's header, the line above its name.
    let missing = only(&all, "cameras[0].lines[1].directions");
    assert_eq!(missing.line, Some(line_of(&src, "name = \"no-dirs\"") - 1), "{missing:?}");
    assert_issue(&all, &src, "cameras[0].lines[1].colour", "colour = ", "unknown field");
}

#[test]
fn bad_lifecycle_and_snapshot_values_are_reported() {
    let src = minimal()
        + "lost_after = 0\ncount_interval = 0.5\nupdate_interval = -3\nsnapshot_max_side = 10\nsnapshot_quality = 0\n"
        + "reference_point = \"feet\"\n";
    let all = issues(&src);
    assert_issue(&all, &src, "cameras[0].lost_after", "lost_after = 0", "must be from 0.1 to 3600 seconds");
    assert_issue(&all, &src, "cameras[0].count_interval", "count_interval", "must be from 1 to 86400 seconds");
    assert_issue(&all, &src, "cameras[0].update_interval", "update_interval", "must be from 0.1 to 3600 seconds");
    assert_issue(&all, &src, "cameras[0].snapshot_max_side", "snapshot_max_side", "32 to 4096");
    assert_issue(&all, &src, "cameras[0].snapshot_quality", "snapshot_quality", "1 to 100");
    assert_issue(&all, &src, "cameras[0].reference_point", "reference_point", "\"bottom_center\", \"center\"");
}

#[test]
fn motion_gating_is_on_by_default_and_its_keys_are_read_and_checked() {
    let cam = &parse_ok(&minimal()).cameras[0];
    assert_eq!(
        cam.motion,
        MotionPolicy {
            enabled: true,
            threshold: 8,
            keepalive: Duration::from_secs(10),
            compressed: CompressedMotionPolicy::Auto
        }
    );
    let src = minimal() + "motion = false\nmotion_threshold = 20\nkeepalive = 30\ncompressed_motion = \"off\"\n";
    let cam = &parse_ok(&src).cameras[0];
    assert_eq!(
        cam.motion,
        MotionPolicy {
            enabled: false,
            threshold: 20,
            keepalive: Duration::from_secs(30),
            compressed: CompressedMotionPolicy::Off
        }
    );
    let bad = minimal() + "motion_threshold = 0\nkeepalive = 0\ncompressed_motion = \"sometimes\"\n";
    let all = issues(&bad);
    assert_issue(&all, &bad, "cameras[0].compressed_motion", "compressed_motion", "\"auto\", \"off\"");
    assert_issue(&all, &bad, "cameras[0].motion_threshold", "motion_threshold", "1 to 255");
    assert_issue(&all, &bad, "cameras[0].keepalive", "keepalive", "must be from 0.1 to 3600 seconds");
}

#[test]
fn trusted_keys_are_read_and_bad_key_files_are_reported() {
    let dir = TempDir::new("keys");
    let (_, public) = crate::model::signature::keygen().expect("keygen");
    std::fs::write(dir.0.join("release.pub"), public).expect("write");
    std::fs::write(dir.0.join("junk.pub"), "not a key").expect("write");
    let file = dir.0.join("lookout.toml");
    let src = minimal() + "[model_updates]\ntrusted_keys = [\"release.pub\"]\n";
    let c = parse(&file, &src, Path::new(NO_CWD)).expect("valid");
    assert_eq!(c.model_updates.trusted_keys.len(), 1);
    assert!(!c.model_updates.allow_unsigned);
    assert!(parse_ok(&minimal()).model_updates.trusted_keys.is_empty(), "no section: no trusted keys");
    let bad = minimal() + "[model_updates]\ntrusted_keys = [\"junk.pub\", \"missing.pub\"]\n";
    let Err(e) = parse(&file, &bad, Path::new(NO_CWD)) else { panic!("refused") };
    let keys: Vec<&Issue> = e.issues.iter().filter(|i| i.field == "model_updates.trusted_keys").collect();
    assert_eq!(keys.len(), 2, "{:#?}", e.issues);
    assert!(keys[0].message.contains("junk.pub") && keys[0].message.contains("not a public key"), "{:?}", keys[0]);
    assert!(keys[1].message.contains("missing.pub"), "{:?}", keys[1]);
}

#[test]
fn console_token_is_read_and_defaults_to_none() {
    assert!(parse_ok(&minimal()).telemetry.console_token.is_none());
    let src = minimal() + "[telemetry]\nlisten = \"0.0.0.0:9464\"\nconsole_token = \"0123456789abcdef-XYZ\"\n";
    let c = parse_ok(&src);
    assert_eq!(c.telemetry.console_token.as_ref().map(Secret::expose), Some("0123456789abcdef-XYZ"));
    assert!(!format!("{c:?}").contains("0123456789abcdef"), "the token leaked into Debug output");
}

#[test]
fn a_viewer_token_needs_the_console_token_and_must_differ_from_it() {
    let base = minimal() + "[telemetry]\nconsole_token = \"0123456789abcdef-XYZ\"\n";
    let c = parse_ok(&(base.clone() + "console_viewer_token = \"viewer-0123456789ab\"\n"));
    assert_eq!(c.telemetry.console_viewer_token.as_ref().map(Secret::expose), Some("viewer-0123456789ab"));
    assert!(!format!("{c:?}").contains("viewer-0123456789ab"), "the token leaked into Debug output");
    let alone = minimal() + "[telemetry]\nconsole_viewer_token = \"viewer-0123456789ab\"\n";
    assert_issue(
        &issues(&alone),
        &alone,
        "telemetry.console_viewer_token",
        "console_viewer_token",
        "needs console_token",
    );
    let same = base + "console_viewer_token = \"0123456789abcdef-XYZ\"\n";
    assert_issue(&issues(&same), &same, "telemetry.console_viewer_token", "console_viewer_token", "must differ");
}

#[test]
fn short_or_unsafe_console_token_is_reported_on_its_line() {
    for bad in ["short", "has space and is long enough", "semi;colon-0123456789"] {
        let src = minimal() + &format!("[telemetry]\nconsole_token = \"{bad}\"\n");
        assert_issue(&issues(&src), &src, "telemetry.console_token", "console_token", "at least 16 characters");
    }
}

#[test]
fn update_limits_have_defaults_and_a_ca_file_without_a_certificate_is_reported() {
    let c = parse_ok(&minimal());
    assert_eq!(c.model_updates.max_bytes, 512 << 20);
    assert_eq!(c.model_updates.timeout, Duration::from_secs(300));
    assert_eq!(c.model_updates.keep_versions, 3);
    assert!(c.model_updates.ca_file.is_none());
    let dir = TempDir::new("ca");
    std::fs::write(dir.0.join("empty.pem"), "no certificate here\n").expect("write");
    let file = dir.0.join("lookout.toml");
    let bad = minimal() + "[model_updates]\nca_file = \"empty.pem\"\nkeep_versions = 1\ntimeout_secs = 0\n";
    let Err(e) = parse(&file, &bad, Path::new(NO_CWD)) else { panic!("refused") };
    let fields: Vec<&str> = e.issues.iter().map(|i| i.field.as_str()).collect();
    for f in ["model_updates.ca_file", "model_updates.keep_versions", "model_updates.timeout_secs"] {
        assert!(fields.contains(&f), "{f} not reported: {:#?}", e.issues);
    }
}

/// Numbers at the edges of what TOML can say.
const EDGE_NUMBERS: &[&str] = &["nan", "+nan", "-nan", "inf", "-inf", "1e20", "1e300", "9223372036854775807"];

/// Every numeric key of a camera, of a zone and of the sections.
const CAMERA_NUMBERS: &[&str] = &[
    "fps",
    "min_score",
    "reconnect_min_secs",
    "reconnect_max_secs",
    "stall_seconds",
    "lost_after",
    "count_interval",
    "update_interval",
    "keepalive",
    "snapshot_max_side",
    "snapshot_quality",
    "motion_threshold",
];
const SECTION_NUMBERS: &[(&str, &str)] = &[
    ("mqtt", "keep_alive_secs"),
    ("mqtt", "max_inflight"),
    ("outbox", "max_bytes"),
    ("outbox", "max_age_secs"),
    ("outbox", "fsync_interval_ms"),
    ("outbox", "segment_bytes"),
    ("inference", "threads"),
    ("inference", "max_batch"),
    ("inference", "max_wait_ms"),
    ("model_updates", "max_bytes"),
    ("model_updates", "timeout_secs"),
    ("model_updates", "keep_versions"),
];
const ZONE: &str = "[[cameras.zones]]\nname = \"z\"\npolygon = [[0.1, 0.1], [0.9, 0.1], [0.5, 0.9]]\n";

/// `minimal()` with `key = value` placed in its section (`""` = the camera, `"zone"` = a zone).
fn with_number(section: &str, key: &str, value: &str) -> String {
    match section {
        "" => minimal().replace("fps = 2.0\nmin_score = 0.5\n", "") + &format!("{key} = {value}\n"),
        "zone" => minimal() + ZONE + &format!("{key} = {value}\n"),
        "mqtt" => minimal().replace("[mqtt]\n", &format!("[mqtt]\n{key} = {value}\n")),
        s => minimal() + &format!("[{s}]\n{key} = {value}\n"),
    }
}

#[test]
fn non_finite_and_huge_numbers_are_reported_on_their_line_not_a_panic() {
    let mut places: Vec<(&str, &str)> = CAMERA_NUMBERS.iter().map(|k| ("", *k)).collect();
    places.extend_from_slice(SECTION_NUMBERS);
    places.extend([("zone", "loiter_seconds"), ("zone", "max_objects")]);
    for (section, key) in places {
        for n in EDGE_NUMBERS {
            let src = with_number(section, key, n);
            let all = issues(&src);
            let found =
                all.iter().any(|i| i.field.ends_with(key) && i.line == Some(line_of(&src, &format!("{key} ="))));
            assert!(found, "{key} = {n} not reported on its line: {all:#?}");
        }
    }
}

#[test]
fn durations_out_of_range_name_their_bounds() {
    let src = with_number("", "reconnect_min_secs", "1e20");
    assert_issue(
        &issues(&src),
        &src,
        "cameras[0].reconnect_min_secs",
        "reconnect_min_secs",
        "must be from 0.01 to 3600",
    );
    let src = with_number("", "stall_seconds", "nan");
    assert_issue(
        &issues(&src),
        &src,
        "cameras[0].stall_seconds",
        "stall_seconds",
        "expected a finite number, found nan",
    );
    let src = with_number("zone", "loiter_seconds", "1e300");
    assert_issue(
        &issues(&src),
        &src,
        "cameras[0].zones[0].loiter_seconds",
        "loiter_seconds",
        "must be from 0.1 to 86400",
    );
    // rumqttc keeps the keep-alive in 16 bits: 65536 would have wrapped to 0.
    let src = with_number("mqtt", "keep_alive_secs", "65536");
    assert_issue(&issues(&src), &src, "mqtt.keep_alive_secs", "keep_alive_secs", "must be from 5 to 3600 seconds");
}

/// A config whose model really loads, for `camera_from_json` (parsed once: it hashes the model).
fn shared_config() -> &'static Config {
    static CONFIG: std::sync::OnceLock<Config> = std::sync::OnceLock::new();
    CONFIG.get_or_init(|| parse_ok(&minimal()))
}

#[test]
fn commands_with_huge_durations_are_refused_with_the_field() {
    let cam = |extra: serde_json::Value| {
        let mut c = serde_json::json!({"id": "c2", "url": "rtsp://h/s", "model": "person"});
        c.as_object_mut().expect("object").extend(extra.as_object().expect("object").clone());
        c
    };
    let err =
        camera_from_json(&cam(serde_json::json!({"reconnect_min_secs": 1e20})), shared_config()).expect_err("refused");
    assert!(err.iter().any(|e| e.starts_with("camera.reconnect_min_secs: must be from 0.01 to 3600")), "{err:?}");
    let zone = serde_json::json!({"zones": [{"name": "z", "polygon": [[0.1, 0.1], [0.9, 0.1], [0.5, 0.9]], "loiter_seconds": 1e300}]});
    let err = camera_from_json(&cam(zone), shared_config()).expect_err("refused");
    assert!(err.iter().any(|e| e.starts_with("camera.zones[0].loiter_seconds: must be from 0.1")), "{err:?}");
    let err = camera_from_json(&cam(serde_json::json!({"fps": 1e-300, "count_interval": -0.0})), shared_config())
        .expect_err("refused");
    assert_eq!(err.len(), 2, "{err:?}");
}

mod fuzz {
    use proptest::prelude::*;
    use serde_json::{Value, json};

    use super::*;

    /// A TOML number literal: the edges, or any float or integer.
    fn toml_number() -> impl Strategy<Value = String> {
        prop_oneof![
            prop::sample::select(EDGE_NUMBERS).prop_map(str::to_string),
            prop::sample::select(&["-0.0", "0", "-1", "1e-300", "-9223372036854775808", "0x7fffffffffffffff"][..])
                .prop_map(str::to_string),
            any::<f64>().prop_map(|f| if f.is_nan() {
                "nan".to_string()
            } else if f.is_infinite() {
                if f > 0.0 { "inf".into() } else { "-inf".into() }
            } else {
                format!("{f:e}")
            }),
            any::<i64>().prop_map(|i| i.to_string()),
        ]
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            any::<f64>().prop_map(|f| json!(f)),
            any::<i64>().prop_map(|i| json!(i)),
            any::<u64>().prop_map(|i| json!(i)),
            prop::sample::select(&[1e20, 1e300, -1e300, -0.0, 5e-324][..]).prop_map(|f| json!(f)),
            ".{0,12}".prop_map(|s| json!(s)),
            any::<bool>().prop_map(|b| json!(b)),
            Just(Value::Null),
        ];
        leaf.prop_recursive(2, 8, 4, |inner| {
            prop_oneof![prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        /// Any number in any numeric key of a config file: a list of problems or a config, never a panic.
        #[test]
        fn config_reader_never_panics_on_numbers(
            place in 0..(CAMERA_NUMBERS.len() + SECTION_NUMBERS.len() + 2),
            n in toml_number(),
        ) {
            let (section, key) = if place < CAMERA_NUMBERS.len() {
                ("", CAMERA_NUMBERS[place])
            } else if place < CAMERA_NUMBERS.len() + SECTION_NUMBERS.len() {
                SECTION_NUMBERS[place - CAMERA_NUMBERS.len()]
            } else if place == CAMERA_NUMBERS.len() + SECTION_NUMBERS.len() {
                ("zone", "loiter_seconds")
            } else {
                ("zone", "max_objects")
            };
            // A manifest that is not there: the whole file is still walked, without hashing a model per case.
            let src = with_number(section, key, &n).replace(manifest().to_str().expect("UTF-8"), "/nonexistent/manifest.toml");
            let _ = parse(Path::new(FILE), &src, Path::new(NO_CWD));
        }

        /// Any value for any camera key, from a command: refused or accepted, never a panic.
        #[test]
        fn camera_from_json_never_panics(
            values in prop::collection::vec((prop::sample::select(CAMERA_NUMBERS), json_value()), 0..6),
            zone_value in json_value(),
        ) {
            let mut cam = json!({"id": "c2", "url": "rtsp://h/s", "model": "person"});
            let obj = cam.as_object_mut().expect("object");
            for (k, v) in values {
                obj.insert(k.to_string(), v);
            }
            obj.insert("zones".into(), json!([{"name": "z", "polygon": [[0.1, 0.1], [0.9, 0.1], [0.5, 0.9]],
                "loiter_seconds": zone_value.clone(), "max_objects": zone_value}]));
            let _ = camera_from_json(&cam, shared_config());
        }
    }
}

#[test]
fn control_keys_are_read_and_require_signed_needs_a_key() {
    let dir = TempDir::new("control");
    let (_, public) = crate::model::signature::keygen().expect("keygen");
    std::fs::write(dir.0.join("ops.pub"), public).expect("write");
    let file = dir.0.join("lookout.toml");
    let c = parse_ok(&minimal());
    assert!(c.control.trusted_keys.is_empty() && !c.control.require_signed, "no section: unsigned commands accepted");
    let src = minimal() + "[control]\ntrusted_keys = [\"ops.pub\"]\nrequire_signed = true\n";
    let c = parse(&file, &src, Path::new(NO_CWD)).expect("valid");
    assert_eq!(c.control.trusted_keys.len(), 1);
    assert!(c.control.require_signed);
    let src = minimal() + "[control]\nrequire_signed = true\n";
    assert_issue(&issues(&src), &src, "control.require_signed", "require_signed", "needs trusted_keys");
    let bad = minimal() + "[control]\ntrusted_keys = [\"missing.pub\"]\nrequire_signed = true\n";
    let Err(e) = parse(&file, &bad, Path::new(NO_CWD)) else { panic!("refused") };
    assert_eq!(e.issues.len(), 1, "one problem, the missing file: {:#?}", e.issues);
    assert_eq!(e.issues[0].field, "control.trusted_keys");
}

/// Two models (people only, and COCO), groups, and cameras filtering by group or label.
fn city(groups: &str, person_classes: &str, city_classes: &str) -> String {
    let coco = repo().join("models/ssd-mobilenetv2-coco/manifest.toml");
    let src = format!(
        r#"[agent]
site = "site-1"
id = "gw-1"
[mqtt]
url = "mqtt://127.0.0.1:1883"
[[models]]
name = "person"
manifest = "MANIFEST"
[[models]]
name = "city"
manifest = "{}"
[class_groups]
{groups}
[[cameras]]
id = "square"
url = "rtsp://127.0.0.1:8554/cam1"
model = "person"
[[cameras.lines]]
name = "gate"
points = [[0.5, 0.0], [0.5, 1.0]]
directions = ["in", "out"]
classes = {person_classes}
[[cameras]]
id = "road"
url = "rtsp://127.0.0.1:8554/cam2"
model = "city"
[[cameras.zones]]
name = "kerb"
polygon = [[0.0, 0.5], [1.0, 0.5], [1.0, 1.0]]
classes = {city_classes}
"#,
        coco.display()
    );
    with_manifest(&src)
}

#[test]
fn class_groups_expand_in_filters_to_the_cameras_model() {
    let groups = "vehicle = [\"car\", \"bus\", \"truck\", \"motorcycle\"]\npeople = [\"person\"]";
    let c = parse_ok(&city(groups, "[\"people\"]", "[\"vehicle\", \"bicycle\"]"));
    let names: Vec<&str> = c.class_groups.iter().map(|g| g.name.as_str()).collect();
    assert_eq!(names, ["people", "vehicle"], "sorted by name");
    assert_eq!(c.cameras[0].rules.lines[0].classes, vec![0]);
    // COCO ids: bicycle 1, car 2, motorcycle 3, bus 5, truck 7.
    assert_eq!(c.cameras[1].rules.zones[0].classes, vec![1, 2, 3, 5, 7]);
    let coco = &c.model("city").expect("city").spec.labels;
    assert_eq!(c.class_groups[1].ids_in(coco), vec![2, 3, 5, 7]);
    assert!(c.class_groups[1].ids_in(&c.model("person").expect("person").spec.labels).is_empty());
}

#[test]
fn class_groups_refuse_typos_clashes_and_groups_foreign_to_the_camera() {
    let groups = "vehicle = [\"car\", \"cars\"]\nperson = [\"person\"]\n\"bad name\" = [\"car\"]\nempty = []\ntwice = [\"car\", \"car\"]";
    let src = city(groups, "[\"vehicle\"]", "[\"vehicles\"]");
    let all = issues(&src);
    assert_issue(&all, &src, "class_groups.vehicle", "vehicle = [", "\"cars\" is not a class of any model");
    assert_issue(&all, &src, "class_groups.person", "person = [", "is a class of model \"person\"");
    assert_issue(&all, &src, "class_groups.bad name", "\"bad name\" = [", "1 to 64 of");
    assert_issue(&all, &src, "class_groups.empty", "empty = []", "needs 1 to 256 class names, found 0");
    assert_issue(&all, &src, "class_groups.twice", "twice = [", "\"car\" is listed twice");
    // A refused group is unknown to the cameras too, and a valid one without a class of the
    // camera's model is refused there, naming its members.
    assert_issue(&all, &src, "cameras[1].zones[0].classes", "classes = [\"vehicles\"]", "unknown class \"vehicles\"");
    let ok_group = city("vehicle = [\"car\", \"bus\"]", "[\"vehicle\"]", "[\"vehicle\", \"person\"]");
    let all = issues(&ok_group);
    assert_issue(
        &all,
        &ok_group,
        "cameras[0].lines[0].classes",
        "classes = [\"vehicle\"]",
        "group \"vehicle\" has no class of this camera's model (its members: car, bus",
    );
    assert_eq!(all.len(), 1, "{all:?}");
}

#[test]
fn only_rules_counts_and_snapshots_count_as_the_same_pipeline() {
    let cam = |extra: &str| {
        let src = minimal() + extra;
        parse_ok(&src).cameras.into_iter().next().expect("a camera")
    };
    let base = cam("");
    let zoned = cam(
        "count_interval = 5\nsnapshots = false\n[[cameras.zones]]\nname = \"z\"\npolygon = [[0, 0], [1, 0], [1, 1]]\n",
    );
    assert!(base.same_pipeline(&zoned) && zoned.same_pipeline(&base));
    assert!(!base.same_pipeline(&cam("decode = \"all\"\n")), "another decoding mode restarts the pipeline");
    assert!(!base.same_pipeline(&cam("lost_after = 9\n")), "so does the tracker's patience (it is the tracker's)");
}

#[test]
fn a_site_section_is_read_with_its_defaults_and_a_site_member_needs_no_cameras_of_its_own() {
    assert!(parse_ok(&minimal()).site.is_none(), "no [site]: a gateway on its own, as before");
    let no_cameras = minimal().split("[[cameras]]").next().expect("head").to_string();
    let src = no_cameras.clone()
        + "[site]\nendpoints = [\"http://127.0.0.1:2379\", \"http://127.0.0.1:22379\"]\ncapacity = 48\n";
    let c = parse_ok(&src);
    let site = c.site.expect("[site] read");
    assert_eq!(site.endpoints.len(), 2);
    assert!(site.tls.is_none() && site.username.is_none() && site.password.is_none());
    assert_eq!(site.lease_ttl, Duration::from_secs(10));
    assert_eq!(site.capacity, 48.0);
    assert_eq!(site.on_coordinator_loss, CoordinatorLoss::Keep);
    assert_eq!(site.settle, Duration::from_secs(30));
    assert!(c.cameras.is_empty());
    let refused = issues(&no_cameras);
    assert!(refused.iter().any(|i| i.field == "cameras" && i.message.contains("[site]")), "{refused:?}");
}

#[test]
fn every_problem_of_a_site_section_is_listed_at_once_and_its_password_never_shows() {
    let src = minimal()
        + "[site]\nendpoints = [\"http://127.0.0.1:2379\", \"https://10.0.0.2:2379\", \"etcd.local\", \
           \"http://u:hunter2-secret@10.0.0.3:2379\"]\n\
           password = \"hunter2-secret\"\nlease_ttl_secs = 1\ncapacity = -3\non_coordinator_loss = \"panic\"\n\
           settle_secs = 99999\nclient_cert = \"/nonexistent/cert.pem\"\nspeed = 3\n";
    let all = issues(&src);
    let text = format!("{all:?}");
    for (field, says) in [
        ("site.endpoints", "one scheme"),
        ("site.endpoints", "not a URL"),
        ("site.endpoints", "not in the URL"),
        ("site.username", "needs a username"),
        ("site.lease_ttl_secs", "from 3 to 60"),
        ("site.capacity", "from 0 to 10000"),
        ("site.on_coordinator_loss", "keep"),
        ("site.settle_secs", "from 0 to 3600"),
        ("site.client_cert", "not a readable file"),
        ("site.client_key", "go together"),
        ("site.speed", ""),
    ] {
        assert!(all.iter().any(|i| i.field == field && i.message.contains(says)), "{field}: {says:?} in {text}");
    }
    assert!(!text.contains("hunter2"), "the password never appears in a problem: {text}");
    let no_capacity = minimal() + "[site]\nendpoints = [\"http://127.0.0.1:2379\"]\n";
    assert!(issues(&no_capacity).iter().any(|i| i.field == "site.capacity"), "capacity is required");
    let stop =
        minimal() + "[site]\nendpoints = [\"http://127.0.0.1:2379\"]\ncapacity = 0\non_coordinator_loss = \"stop\"\n";
    assert_eq!(parse_ok(&stop).site.expect("site").on_coordinator_loss, CoordinatorLoss::Stop);
    let reserved = stop.replacen("id = \"gw-1\"", "id = \"site\"", 1);
    assert!(reserved.contains("id = \"site\""), "the fixture's agent id");
    assert!(
        issues(&reserved).iter().any(|i| i.field == "agent.id" && i.message.contains("reserved")),
        "the site topic's id"
    );
}

#[test]
fn model_providers_default_to_cpu_are_read_in_order_and_checked() {
    use crate::config::Provider;
    let c = parse_ok(&minimal());
    assert_eq!(c.models[0].providers, [Provider::Cpu]);
    assert_eq!(c.inference_for("person").providers, [Provider::Cpu]);
    let listed = |line: &str| minimal().replacen("manifest = ", &format!("{line}\nmanifest = "), 1);
    let c = parse_ok(&listed("providers = [\"openvino\", \"cuda\", \"cpu\"]"));
    assert_eq!(c.models[0].providers, [Provider::OpenVino, Provider::Cuda, Provider::Cpu]);
    assert_eq!(c.inference_for("person").providers, c.models[0].providers);
    // No cpu: the model runs on CUDA or is refused.
    assert_eq!(parse_ok(&listed("providers = [\"cuda\"]")).models[0].providers, [Provider::Cuda]);
    for (line, says) in [
        ("providers = [\"cpu\", \"cuda\"]", "\"cpu\" must come last"),
        ("providers = [\"cuda\", \"cuda\"]", "listed twice"),
        ("providers = [\"npu\"]", "unknown provider \"npu\""),
        ("providers = []", "at least one provider"),
        ("providers = \"cuda\"", "expected"),
    ] {
        let src = listed(line);
        assert_issue(&issues(&src), &src, "models[0].providers", "providers", says);
    }
}

#[test]
fn threads_times_workers_is_capped() {
    let src = minimal() + "[inference]\nthreads = 16\nworkers = 8\n";
    let all = issues(&src);
    assert_eq!(all.len(), 1, "{all:#?}");
    assert_issue(&all, &src, "inference.workers", "workers = 8", "threads × workers must be at most 64");
    parse_ok(&(minimal() + "[inference]\nthreads = 16\nworkers = 4\n"));
}

#[test]
fn the_shared_rtsp_client_is_chosen_per_camera_and_refuses_udp_and_other_schemes() {
    let c = parse_ok(&(minimal() + "rtsp_client = \"shared\"\n"));
    assert_eq!(c.cameras[0].client, RtspClient::Shared);
    let c = parse_ok(&(minimal() + "rtsp_client = \"gstreamer\"\n"));
    assert_eq!(c.cameras[0].client, RtspClient::Gstreamer);
    let src = minimal() + "rtsp_client = \"shared\"\ntransport = \"udp\"\n";
    let all = issues(&src);
    assert_eq!(all.len(), 1, "{all:#?}");
    assert_issue(&all, &src, "cameras[0].rtsp_client", "rtsp_client", "TCP only");
    let src = minimal().replace("rtsp://", "rtsps://") + "rtsp_client = \"shared\"\n";
    let all = issues(&src);
    assert_eq!(all.len(), 1, "{all:#?}");
    assert_issue(&all, &src, "cameras[0].rtsp_client", "rtsp_client", "rtsp:// URLs only");
    let src = minimal() + "rtsp_client = \"ffmpeg\"\n";
    assert_issue(&issues(&src), &src, "cameras[0].rtsp_client", "rtsp_client", "unknown value \"ffmpeg\"");
}

#[test]
fn auto_takes_the_shared_client_where_it_can_receive_the_camera_and_rtspsrc_elsewhere() {
    let client = |extra: &str, url: &str| {
        let src = minimal().replace("rtsp://", url) + extra;
        parse_ok(&src).cameras[0].client
    };
    assert_eq!(client("", "rtsp://"), RtspClient::SharedOrGstreamer, "the default is auto");
    assert_eq!(client("rtsp_client = \"auto\"\n", "RTSP://"), RtspClient::SharedOrGstreamer);
    assert_eq!(client("transport = \"udp\"\n", "rtsp://"), RtspClient::Gstreamer);
    assert_eq!(client("", "rtsps://"), RtspClient::Gstreamer);
    assert_eq!(client("rtsp_client = \"auto\"\n", "rtspt://"), RtspClient::Gstreamer);
}
