//! `lookout demo`: the whole flow on one machine with nothing to set up. The bundled clip
//! is served over RTSP by an in-process server, a private mosquitto is started unless a
//! broker is given, the default model runs, and every published message is printed.
//!
//! The pieces (clip encoding, RTSP server, broker) are also what the end-to-end tests
//! and benchmarks use, so the demo shows exactly what is tested.

pub mod broker;
pub mod media;
pub mod rtsp;
pub mod scene;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio_util::sync::CancellationToken;

use crate::event::Topics;

pub struct DemoOptions {
    pub cameras: usize,
    pub mqtt: Option<String>,
    pub fps: f64,
}

/// The default model: people and vehicles (COCO), for 1.2-1.45x the person model's
/// inference cost (docs/BENCHMARKS.md).
pub const DEFAULT_MODEL: &str = "ssd-mobilenetv2-coco";

/// Where the default model's manifest is, for the demo and the shipped example config:
/// `$LOOKOUT_MODELS`, `./models`, beside the executable's workspace (`cargo run`),
/// then `/usr/share/lookout/models`.
pub fn default_manifest() -> anyhow::Result<PathBuf> {
    let rel = format!("{DEFAULT_MODEL}/manifest.toml");
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Some(d) = std::env::var_os("LOOKOUT_MODELS") {
        dirs.push(d.into());
    }
    dirs.push("models".into());
    if let Ok(exe) = std::env::current_exe() {
        // target/<profile>/lookout → workspace root.
        if let Some(root) = exe.parent().and_then(|p| p.parent()).and_then(|p| p.parent()) {
            dirs.push(root.join("models"));
        }
    }
    if let Some(root) =
        std::env::current_exe().ok().and_then(|e| e.parent().and_then(|p| p.parent()).map(|p| p.to_path_buf()))
    {
        // /usr/bin/lookout → /usr/share/lookout/models (packaged installs).
        dirs.push(root.join("share/lookout/models"));
    }
    dirs.push("/usr/share/lookout/models".into());
    dirs.iter()
        .map(|d| d.join(&rel))
        .find(|p| p.is_file())
        .with_context(|| format!("default model not found; looked for {rel} under {dirs:?}"))
}

pub async fn run(opts: DemoOptions, shutdown: CancellationToken) -> anyhow::Result<()> {
    let units = Arc::new(tokio::task::spawn_blocking(|| media::clip(media::Codec::H264)).await??);
    let mounts = (1..=opts.cameras)
        .map(|i| {
            (
                format!("/cam{i}"),
                rtsp::Media::Clip { codec: media::Codec::H264, units: units.clone(), fps: 10, loop_from: 0 },
            )
        })
        .collect();
    let server = rtsp::RtspServer::start(0, mounts)?;
    let broker = match &opts.mqtt {
        Some(_) => None,
        None => Some(broker::Mosquitto::start_detached()?),
    };
    let mqtt_url = opts.mqtt.clone().or_else(|| broker.as_ref().map(|b| b.url())).unwrap_or_default();

    let manifest = default_manifest()?;
    let state_dir = std::env::temp_dir().join(format!("lookout-demo-{}", std::process::id()));
    let mut toml = format!(
        "# Written by `lookout demo`.\n[agent]\nsite = \"demo\"\nid = \"gw-demo\"\nstate_dir = \"{}\"\n\n\
         [mqtt]\nurl = \"{mqtt_url}\"\n\n[[models]]\nname = \"city\"\nmanifest = \"{}\"\n\n{DEMO_GROUPS}",
        state_dir.display(),
        manifest.display()
    );
    for i in 1..=opts.cameras {
        toml.push_str(&format!(
            "\n[[cameras]]\nid = \"cam-{i}\"\nurl = \"{}\"\nmodel = \"city\"\nfps = {:.1}\nmin_score = 0.5\n{DEMO_RULES}",
            server.url(&format!("/cam{i}")),
            opts.fps
        ));
    }
    let config_path = std::env::temp_dir().join(format!("lookout-demo-{}.toml", std::process::id()));
    std::fs::write(&config_path, &toml)?;
    let config = crate::config::load(&config_path)?;

    let topics = Topics::new(&config.agent.site, &config.agent.id);
    let (host, port, _) = crate::config::parse_mqtt_url(&mqtt_url).map_err(anyhow::Error::msg)?;
    println!("Lookout demo: {} camera(s) of the bundled clip at {} fps", opts.cameras, opts.fps);
    println!("  RTSP:   {}", server.url("/cam1"));
    println!("  config: {}", config_path.display());
    let all = topics.all_cameras();
    println!("  topics: {all} (detections, events, counts, snapshots)");
    if let Some(addr) = config.telemetry.listen {
        println!("  console: http://{addr}/ (cameras, detections, zones and lines; docs/CONSOLE.md)");
    }
    println!("  model:  {DEFAULT_MODEL} (people and vehicles; classes grouped as \"vehicle\")");
    println!(
        "  rules:  line \"middle\" at x = 0.5 (east/west, people), zone \"lower_left\", zone \"parking\" (vehicles), counts every 30 s"
    );
    println!("  watch:  mosquitto_sub -h {host} -p {port} -t '{}' -v", topics.events("+"));
    println!("Ctrl-C stops.\n");

    let printer = tokio::spawn(print_messages(host, port, all, shutdown.clone()));
    let summary = crate::agent::run(config, shutdown, Duration::from_secs(5)).await;
    printer.abort();
    let _ = std::fs::remove_file(&config_path);
    let _ = std::fs::remove_dir_all(&state_dir);
    drop(server);
    // Only now: the agent's drain needed it (it is out of reach of the terminal's Ctrl-C).
    drop(broker);
    let summary = summary?;
    let analysed: u64 = summary.cameras.iter().map(|c| c.analysed_frames).sum();
    let messages: u64 = summary.cameras.iter().map(|c| c.messages).sum();
    println!(
        "\nstopped: {analysed} frames analysed, {messages} messages published, {} acknowledged",
        summary.mqtt_acked
    );
    Ok(())
}

/// Subscribes like a platform would and prints one line per message.
async fn print_messages(host: String, port: u16, topic: String, shutdown: CancellationToken) {
    let mut opts = MqttOptions::new(format!("lookout-demo-viewer-{}", std::process::id()), host, port);
    opts.set_keep_alive(Duration::from_secs(30));
    opts.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut eventloop) = AsyncClient::new(opts, 16);
    if client.subscribe(&topic, QoS::AtLeastOnce).await.is_err() {
        return;
    }
    while !shutdown.is_cancelled() {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::Publish(p))) => println!("{}", describe(&p.payload)),
            Ok(_) => {}
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

/// Platform names for the COCO model's road users.
const DEMO_GROUPS: &str = "[class_groups]\nvehicle = [\"car\", \"bus\", \"truck\", \"motorcycle\"]\n";

/// The demo cameras' rules: the bundled clip is a square people cross in all directions,
/// with vehicles parked at the top right.
const DEMO_RULES: &str = "count_interval = 30\n\
    [[cameras.zones]]\nname = \"lower_left\"\npolygon = [[0.0, 0.5], [0.5, 0.5], [0.5, 1.0], [0.0, 1.0]]\n\
    loiter_seconds = 10\nclasses = [\"person\"]\n\
    [[cameras.zones]]\nname = \"parking\"\npolygon = [[0.75, 0.0], [1.0, 0.0], [1.0, 0.3], [0.75, 0.3]]\n\
    classes = [\"vehicle\"]\n\
    [[cameras.lines]]\nname = \"middle\"\npoints = [[0.5, 0.0], [0.5, 1.0]]\ndirections = [\"east\", \"west\"]\n\
    classes = [\"person\"]\n";

/// One line per message, by kind:
/// `cam-1  2026-11-22T04:17:20.123Z  3 person, 2 car  best 0.93`,
/// `cam-1  2026-11-22T04:17:20.123Z  line.cross  middle east  person #1795…0003`.
pub fn describe(payload: &[u8]) -> String {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(payload) else {
        return format!("(snapshot: JPEG of {} bytes)", payload.len());
    };
    let (camera, ts) = (v["camera"].as_str().unwrap_or("?"), v["ts"].as_str().unwrap_or("?"));
    if let Some(kind) = v["type"].as_str() {
        let what = v["zone"]["name"]
            .as_str()
            .map(|z| format!("zone {z}"))
            .or_else(|| {
                v["line"]["name"].as_str().map(|l| format!("{l} {}", v["line"]["direction"].as_str().unwrap_or("")))
            })
            .unwrap_or_default();
        let object = v["object"]["track_id"]
            .as_u64()
            .map(|t| format!("{} #{t}", v["object"]["class"].as_str().unwrap_or("object")))
            .unwrap_or_default();
        return format!("{camera:<8} {ts}  {kind:<18} {what:<20} {object}");
    }
    if v["schema"] == crate::event::CAMERA_STATUS_SCHEMA {
        return format!("{camera:<8} {ts}  status {}", v["state"].as_str().unwrap_or("?"));
    }
    if v["schema"] == crate::event::COUNTS_SCHEMA {
        // Only what is there: the COCO model has 80 classes.
        let present: Vec<String> = v["classes"]
            .as_object()
            .map(|m| m.iter().filter(|(_, n)| n.as_u64().unwrap_or(0) > 0).map(|(c, n)| format!("{n} {c}")).collect())
            .unwrap_or_default();
        return format!(
            "{camera:<8} {ts}  counts: present [{}] groups {} crossings {}",
            present.join(", "),
            v["groups"],
            v["line_classes"]
        );
    }
    let dets = v["detections"].as_array().map(Vec::as_slice).unwrap_or_default();
    let best = dets.iter().filter_map(|d| d["score"].as_f64()).fold(0.0, f64::max);
    let mut by_class: Vec<(&str, usize)> = Vec::new();
    for d in dets {
        let c = d["class"].as_str().unwrap_or("object");
        match by_class.iter_mut().find(|(k, _)| *k == c) {
            Some((_, n)) => *n += 1,
            None => by_class.push((c, 1)),
        }
    }
    let what: Vec<String> = by_class.iter().map(|(c, n)| format!("{n} {c}")).collect();
    format!(
        "{camera:<8} {ts}  {}  best {best:.2}",
        if what.is_empty() { "nothing".to_string() } else { what.join(", ") }
    )
}
