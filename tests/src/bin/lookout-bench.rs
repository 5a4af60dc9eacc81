//! Benchmarks (not tests: numbers are recorded in docs/BENCHMARKS.md, never asserted).
//!
//! lookout-bench model                 ONNX Runtime throughput of each bundled model
//! lookout-bench streams --streams 8   the real agent on N RTSP streams of the clip
//! lookout-bench events                the real agent on one pass of the vtest clip: events per type
//! lookout-bench snapshot              cost of one snapshot (decoded I420 frame → scaled JPEG)
//! lookout-bench ingest --streams 64   where a stream's ingest cost goes, stage by stage
//! lookout-bench console --streams 8   agent CPU with the console closed, open on one camera, and a grid
//! lookout-bench site                  a site on a 3-member etcd: failover times, etcd traffic, standby memory
//!
//! `scripts/bench.sh` runs the set recorded in docs/BENCHMARKS.md.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand};
use lookout::config::InferenceConfig;
use lookout::infer::Detector;
use lookout::infer::manifest::ModelSpec;
use lookout_e2e::*;

#[path = "../bench/site.rs"]
mod site;

#[derive(Parser)]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Images/s of each bundled model at each batch size and thread count.
    Model {
        /// Manifests to measure; default: every bundled model (models/*/manifest.toml
        /// whose model file is present).
        #[arg(long)]
        manifest: Vec<PathBuf>,
        #[arg(long, value_delimiter = ',', default_values_t = [1usize, 8])]
        batch: Vec<usize>,
        #[arg(long, value_delimiter = ',', default_values_t = [1usize, 2])]
        threads: Vec<usize>,
        /// Seconds to measure each combination.
        #[arg(long, default_value_t = 8)]
        seconds: u64,
        /// Turn ONNX Runtime's intra-op spin-waiting on (the agent's default is off).
        #[arg(long)]
        spinning: bool,
    },
    /// Outbox append + ack throughput and per-message latency for fsync policies.
    Outbox {
        /// Messages per run.
        #[arg(long, default_value_t = 5000)]
        messages: u64,
        /// Payload bytes (a detections message with a few people is ~500-700).
        #[arg(long, default_value_t = 600)]
        bytes: usize,
        /// fsync intervals to try, in ms (0 = after every message).
        #[arg(long, value_delimiter = ',', default_values_t = [0u64, 100, 200, 1000])]
        fsync_ms: Vec<u64>,
    },
    /// The lookout binary on N streams of the clip (H.264, 10 fps, 1 s GOP).
    Streams {
        #[arg(long, default_value_t = 1)]
        streams: usize,
        /// Analysed fps per camera.
        #[arg(long, default_value_t = 1.0)]
        fps: f64,
        /// Seconds before measuring (connect, first keyframes).
        #[arg(long, default_value_t = 15)]
        warmup: u64,
        /// Seconds measured.
        #[arg(long, default_value_t = 30)]
        seconds: u64,
        /// The model's manifest; default: the person model (the scale rows' model).
        #[arg(long)]
        manifest: Option<PathBuf>,
        /// ONNX Runtime intra-op threads per session; default: the agent's (1).
        #[arg(long)]
        threads: Option<usize>,
        /// Sessions (worker threads) per model; default: the agent's (1).
        #[arg(long)]
        workers: Option<usize>,
        /// `[inference] max_batch`; default: the agent's.
        #[arg(long)]
        max_batch: Option<usize>,
        /// `[inference] max_wait_ms`; default: the agent's.
        #[arg(long)]
        max_wait_ms: Option<u64>,
        /// Every camera's `rtsp_client` ("gstreamer" or "shared"); default: the agent's.
        #[arg(long)]
        rtsp_client: Option<String>,
        /// Print the capture → durable breakdown by stage after the row.
        #[arg(long)]
        stages: bool,
        /// The RTSP server and the broker on the last CPU, the agent on the others (on 2
        /// CPUs: one core each), so that the agent's CPU per stream is measured without
        /// the server's work on its cores.
        #[arg(long)]
        pin_server: bool,
    },
    /// N cameras of the quiet ground-truth scene (122 s, someone crossing a tenth of the
    /// time): agent CPU and every camera's crossings and zone events against the truth,
    /// with `compressed_motion` on (auto) and off.
    Quiet {
        #[arg(long, default_value_t = 16)]
        streams: usize,
        /// The model's manifest; default: the person model.
        #[arg(long)]
        manifest: Option<PathBuf>,
    },
    /// The comparison peers (tests/peers) on N streams of the clip, as the streams
    /// benchmark serves them: the Python agent (full decode + onnxruntime + paho) and
    /// Frigate-style ffmpeg ingest; CPU of each peer's whole process group.
    Peers {
        #[arg(long, default_value_t = 16)]
        streams: usize,
        /// The peers' venv python (`tests/peers/setup.sh` prints it).
        #[arg(long)]
        python: PathBuf,
        /// The model file the Python agent runs.
        #[arg(long)]
        model: Option<PathBuf>,
        #[arg(long, default_value_t = 20)]
        warmup: u64,
        #[arg(long, default_value_t = 30)]
        seconds: u64,
    },
    /// One pass of the vtest clip (79.5 s) through the agent with a counting line and a
    /// zone: the events it produced per type, tracks and crossings (reported, not judged:
    /// the clip has no ground truth).
    Events {
        /// Analysed fps.
        #[arg(long, default_value_t = 5.0)]
        fps: f64,
        /// The model's manifest; default: the agent's default (COCO) model.
        #[arg(long)]
        manifest: Option<PathBuf>,
    },
    /// Encoding one snapshot from a 768×576 I420 frame (the vtest frame), as the event
    /// stage does when a track's best frame improves.
    Snapshot {
        #[arg(long, value_delimiter = ',', default_values_t = [320u32, 640, 768])]
        max_side: Vec<u32>,
        #[arg(long, default_value_t = 200)]
        iterations: u32,
    },
    /// CPU per stream of GStreamer ingest cut at each stage (in this process, the
    /// server in its own): RTSP + depay only, + parse, + keyframe-only decode, + decode
    /// of every frame.
    Ingest {
        #[arg(long, default_value_t = 32)]
        streams: usize,
        #[arg(long, default_value_t = 10)]
        warmup: u64,
        #[arg(long, default_value_t = 20)]
        seconds: u64,
    },
    /// The agent's CPU on N streams of the clip with the console closed, then open on one
    /// camera's page (its frame polled as the page does), then a grid page of up to 24
    /// tiles, then closed again; each phase measured for `seconds`.
    Console {
        #[arg(long, default_value_t = 8)]
        streams: usize,
        /// Analysed fps per camera.
        #[arg(long, default_value_t = 5.0)]
        fps: f64,
        #[arg(long, default_value_t = 15)]
        warmup: u64,
        #[arg(long, default_value_t = 30)]
        seconds: u64,
        /// Times the four phases are repeated (a shared machine is noisy).
        #[arg(long, default_value_t = 1)]
        rounds: usize,
    },
    /// A site of real agents on a real 3-member etcd: failover time over `kills` SIGKILLs at
    /// the default lease TTL; etcd traffic per member and standby memory per site camera
    /// with `cameras` site cameras on `gateways` gateways.
    Site {
        #[arg(long, default_value_t = 10)]
        kills: usize,
        #[arg(long, default_value_t = 12)]
        gateways: usize,
        #[arg(long, default_value_t = 750)]
        cameras: usize,
        /// Seconds of steady state measured.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
    },
}

fn main() -> anyhow::Result<()> {
    match Args::parse().cmd {
        Cmd::Model { manifest, batch, threads, seconds, spinning } => {
            bench_model(&manifest, &batch, &threads, seconds, spinning)
        }
        Cmd::Outbox { messages, bytes, fsync_ms } => bench_outbox(messages, bytes, &fsync_ms),
        Cmd::Streams {
            streams,
            fps,
            warmup,
            seconds,
            manifest,
            threads,
            workers,
            max_batch,
            max_wait_ms,
            rtsp_client,
            stages,
            pin_server,
        } => {
            let rt = tokio::runtime::Runtime::new()?;
            let camera_extra = rtsp_client.map(|c| format!("rtsp_client = \"{c}\"\n")).unwrap_or_default();
            let pin = if pin_server { Some(Pinning::split()?) } else { None };
            let setup = StreamOptions {
                manifest,
                threads,
                workers,
                max_batch,
                max_wait_ms,
                camera_extra,
                pin,
                ..StreamOptions::default()
            };
            rt.block_on(bench_streams(streams, fps, warmup, seconds, &setup, stages))
        }
        Cmd::Peers { streams, python, model, warmup, seconds } => {
            let model = model.unwrap_or_else(|| person_manifest().with_file_name("model.onnx"));
            bench_peers(streams, &python, &model, warmup, seconds)
        }
        Cmd::Quiet { streams, manifest } => {
            tokio::runtime::Runtime::new()?.block_on(bench_quiet(streams, manifest.as_deref()))
        }
        Cmd::Events { fps, manifest } => {
            let manifest = manifest.unwrap_or_else(city_manifest);
            tokio::runtime::Runtime::new()?.block_on(vtest_events(fps, &manifest))
        }
        Cmd::Snapshot { max_side, iterations } => bench_snapshot(&max_side, iterations),
        Cmd::Ingest { streams, warmup, seconds } => bench_ingest(streams, warmup, seconds),
        Cmd::Console { streams, fps, warmup, seconds, rounds } => bench_console(streams, fps, warmup, seconds, rounds),
        Cmd::Site { kills, gateways, cameras, seconds } => {
            tokio::runtime::Runtime::new()?.block_on(site::bench_site(kills, gateways, cameras, seconds))
        }
    }
}

/// The bundled models and their variants: `models/*/manifest.toml` and
/// `manifest.int8.toml` whose model file is there (a candidate made by its conversion
/// script may not be).
fn bundled_manifests() -> anyhow::Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(workspace().join("models"))? {
        let dir = entry?.path();
        for m in [dir.join("manifest.toml"), dir.join("manifest.int8.toml")] {
            if m.is_file() && ModelSpec::load(&m).is_ok() {
                found.push(m);
            }
        }
    }
    found.sort();
    Ok(found)
}

fn bench_model(
    manifests: &[PathBuf],
    batches: &[usize],
    threads: &[usize],
    seconds: u64,
    spinning: bool,
) -> anyhow::Result<()> {
    let manifests = if manifests.is_empty() { bundled_manifests()? } else { manifests.to_vec() };
    let env = lookout::infer::runtime::environment(None)?;
    // A real frame (vtest, 6 people), scaled to each input size and preprocessed by the
    // agent's own path (the model's element type and layout), batched as the agent does.
    let path = workspace().join("models/ssdlite-mobilenetv2-person/reference/vtest_frame200.png");
    let img = image::open(&path).with_context(|| path.display().to_string())?.to_rgb8();
    println!("| model | threads | batch | images/s | ms/image | run median ms | run p90 ms |");
    println!("|---|---|---|---|---|---|---|");
    for manifest in &manifests {
        let spec = ModelSpec::load(manifest)?;
        for &t in threads {
            let cfg = InferenceConfig {
                threads: t,
                workers: 1,
                max_batch: 64,
                max_wait: Duration::ZERO,
                spinning,
                providers: vec![lookout::config::Provider::Cpu],
            };
            let mut det = Detector::new(&spec, &cfg, &env)?;
            for &b in batches {
                let frames = det.image_frames(&img, b, 0.5);
                for _ in 0..3 {
                    det.detect(&frames)?;
                }
                let start = Instant::now();
                let mut images = 0;
                let mut runs_ms = Vec::new();
                while start.elapsed() < Duration::from_secs(seconds) {
                    let r = Instant::now();
                    det.detect(&frames)?;
                    runs_ms.push(r.elapsed().as_secs_f64() * 1000.0);
                    images += b;
                }
                let secs = start.elapsed().as_secs_f64();
                runs_ms.sort_by(f64::total_cmp);
                let pct = |p: f64| runs_ms[((runs_ms.len() - 1) as f64 * p) as usize];
                println!(
                    "| {} {} | {t} | {b} | {:.1} | {:.1} | {:.1} | {:.1} |",
                    spec.name,
                    spec.version,
                    images as f64 / secs,
                    secs * 1000.0 / images as f64,
                    pct(0.5),
                    pct(0.9)
                );
            }
        }
    }
    Ok(())
}

/// Appends like the event stage (syncing per the policy), then acks like the MQTT task.
/// Throughput: as fast as possible. Added latency: at a steady 100 messages/s, the time
/// from append until the record is fsynced, i.e. until the agent may publish it.
fn bench_outbox(messages: u64, bytes: usize, fsync_ms: &[u64]) -> anyhow::Result<()> {
    use lookout::publish::outbox::{Outbox, OutboxConfig};
    // On the same disk as the agent's state would be, not tmpfs.
    let root = workspace().join("target/bench-outbox");
    let open = |dir: &std::path::Path| -> anyhow::Result<Outbox> {
        let _ = std::fs::remove_dir_all(dir);
        Ok(Outbox::open(OutboxConfig::new(dir))?.0)
    };
    let topic = "lookout/v1/bench/gw/cameras/cam/detections";
    let payload = vec![b'x'; bytes];
    println!("| fsync interval | appends/s | acks/s | added publish latency p50 ms | p99 ms |");
    println!("|---|---|---|---|---|");
    for &ms in fsync_ms {
        let interval = Duration::from_millis(ms);
        let dir = root.join(format!("fsync-{ms}"));
        let mut outbox = open(&dir)?;
        let mut last_sync = Instant::now();
        let start = Instant::now();
        for _ in 0..messages {
            outbox.append(topic, |_| payload.clone())?;
            if last_sync.elapsed() >= interval {
                outbox.sync()?;
                last_sync = Instant::now();
            }
        }
        outbox.sync()?;
        let appends = messages as f64 / start.elapsed().as_secs_f64();
        let first = outbox.first_pending_seq().unwrap_or(1);
        let start = Instant::now();
        for seq in first..first + messages {
            outbox.ack(seq)?;
        }
        outbox.sync()?;
        let acks = messages as f64 / start.elapsed().as_secs_f64();
        drop(outbox);

        // Paced: 100 messages/s for 5 s.
        let mut outbox = open(&dir)?;
        let mut waiting: Vec<Instant> = Vec::new();
        let mut lat = Vec::new();
        let mut last_sync = Instant::now();
        let t0 = Instant::now();
        for i in 0..500u32 {
            let due = t0 + Duration::from_millis(10) * i;
            if let Some(d) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(d);
            }
            outbox.append(topic, |_| payload.clone())?;
            waiting.push(Instant::now());
            if last_sync.elapsed() >= interval {
                outbox.sync()?;
                let now = Instant::now();
                lat.extend(waiting.drain(..).map(|t| (now - t).as_secs_f64() * 1000.0));
                last_sync = now;
            }
        }
        outbox.sync()?;
        let now = Instant::now();
        lat.extend(waiting.drain(..).map(|t| (now - t).as_secs_f64() * 1000.0));
        lat.sort_by(f64::total_cmp);
        let pct = |p: f64| lat[((lat.len() - 1) as f64 * p) as usize];
        let label = if ms == 0 { "every message".to_string() } else { format!("{ms} ms") };
        println!("| {label} | {appends:.0} | {acks:.0} | {:.1} | {:.1} |", pct(0.5), pct(0.99));
        drop(outbox);
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(())
}

/// CPU seconds (user + system) a process has used so far.
fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = stat.rsplit_once(')').context("stat format")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>()? + f[12].parse::<f64>()?;
    Ok(ticks / 100.0)
}

fn status_field(pid: u32, name: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with(name)).map(|l| l[name.len()..].trim().to_string()))
        .unwrap_or_default()
}

/// What a stream benchmark's agent runs besides its cameras.
#[derive(Default)]
struct StreamOptions {
    /// Model manifest (default: the person model).
    manifest: Option<PathBuf>,
    /// Intra-op threads (default: the agent's).
    threads: Option<usize>,
    /// Sessions per model (default: the agent's).
    workers: Option<usize>,
    /// Frames per model run and how long to wait for them (default: the agent's).
    max_batch: Option<usize>,
    max_wait_ms: Option<u64>,
    /// The rtsp-serve media of every mount (default: the clip, each mount starting one
    /// frame later than the one before, so GOPs are staggered as real cameras' are).
    media: Option<String>,
    /// Appended to every camera's section.
    camera_extra: String,
    /// Where the server and the agent run (default: anywhere).
    pin: Option<Pinning>,
}

/// CPU lists (taskset's syntax) for the peers and for the agent.
#[derive(Clone)]
struct Pinning {
    peers: String,
    agent: String,
}

impl Pinning {
    /// The last online CPU for the peers, the others for the agent.
    fn split() -> anyhow::Result<Self> {
        let online = std::fs::read_to_string("/sys/devices/system/cpu/online")?;
        let last: usize = online.trim().rsplit(['-', ',']).next().and_then(|v| v.parse().ok()).context("cpu list")?;
        anyhow::ensure!(last >= 1, "pinning the server away from the agent needs 2 CPUs");
        let agent = if last == 1 { "0".to_string() } else { format!("0-{}", last - 1) };
        Ok(Self { peers: last.to_string(), agent })
    }

    /// Every thread of `pid` onto `cpus`; threads it starts later inherit it.
    fn apply(pid: u32, cpus: &str) -> anyhow::Result<()> {
        let ok = std::process::Command::new("taskset")
            .args(["-a", "-p", "-c", cpus, &pid.to_string()])
            .stdout(std::process::Stdio::null())
            .status()
            .context("taskset")?
            .success();
        anyhow::ensure!(ok, "taskset -c {cpus} on {pid} failed");
        Ok(())
    }
}

/// A broker, `n` H.264 streams from an RTSP server in a process of its own (so the
/// agent's CPU is the agent's alone) and a config for them with the agent's default
/// inference settings unless `opts` names them and its metrics listener on the returned port.
fn stream_setup(
    n: usize,
    fps: f64,
    name: &str,
    opts: &StreamOptions,
) -> anyhow::Result<(Mosquitto, RtspProcess, PathBuf, u16)> {
    let serve = std::env::current_exe()?.parent().map(|d| d.join("rtsp-serve")).context("exe dir")?;
    let broker = Mosquitto::start()?;
    let mounts: Vec<String> = (0..n)
        .map(|i| match &opts.media {
            Some(m) => format!("/cam{i}={m}"),
            None => format!("/cam{i}=h264@{}", i % 10),
        })
        .collect();
    let mount_refs: Vec<&str> = mounts.iter().map(String::as_str).collect();
    let server = RtspProcess::start(&serve, free_port()?, &mount_refs)?;
    if let Some(p) = &opts.pin {
        Pinning::apply(server.pid(), &p.peers)?;
        Pinning::apply(broker.pid(), &p.peers)?;
    }
    let ids: Vec<String> = (0..n).map(|i| format!("cam-{i}")).collect();
    let cams: Vec<Cam> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| Cam { id, url: server.url(&format!("/cam{i}")), fps, min_score: 0.5 })
        .collect();
    let dir = scratch(name);
    let config = write_config(&dir, &broker.url(), &cams)?;
    let port = free_port()?;
    let threads = opts.threads.map(|t| format!("threads = {t}\n")).unwrap_or_default();
    let workers = opts.workers.map(|w| format!("workers = {w}\n")).unwrap_or_default();
    let batch = opts.max_batch.map(|b| format!("max_batch = {b}\n")).unwrap_or_default();
    let wait = opts.max_wait_ms.map(|w| format!("max_wait_ms = {w}\n")).unwrap_or_default();
    let threads = format!("[inference]\n{threads}{workers}{batch}{wait}");
    let mut text = std::fs::read_to_string(&config)?
        .replace("[inference]\nthreads = 1\n", &threads)
        .replace("listen = \"off\"", &format!("listen = \"127.0.0.1:{port}\""))
        .replace("reconnect_max_secs = 2\n", &format!("reconnect_max_secs = 2\n{}", opts.camera_extra));
    if let Some(m) = &opts.manifest {
        text = text.replace(&person_manifest().display().to_string(), &m.display().to_string());
    }
    std::fs::write(&config, text)?;
    Ok((broker, server, config, port))
}

async fn bench_streams(
    n: usize,
    fps: f64,
    warmup: u64,
    seconds: u64,
    opts: &StreamOptions,
    stages: bool,
) -> anyhow::Result<()> {
    let (broker, server, config, port) = stream_setup(n, fps, &format!("bench-{n}"), opts)?;
    let ids: Vec<String> = (0..n).map(|i| format!("cam-{i}")).collect();
    let rec = Recorder::start(broker.port(), "lookout/v1/+/+/cameras/+/detections").await?;
    let agent = AgentProcess::start(&config)?;
    let pid = agent.pid().context("agent pid")?;
    let pin_agent = || opts.pin.as_ref().map_or(Ok(()), |p| Pinning::apply(pid, &p.agent));
    pin_agent()?;
    tokio::time::sleep(Duration::from_secs(warmup)).await;
    // Again once every camera's threads exist, in case one started while taskset ran.
    pin_agent()?;
    let analysed = |metrics: &str| -> Vec<f64> {
        ids.iter()
            .map(|id| {
                let series = format!("lookout_frames_analysed_total{{camera=\"{id}\"}} ");
                metrics.lines().find_map(|l| l.strip_prefix(&series)).and_then(|v| v.trim().parse().ok()).unwrap_or(0.0)
            })
            .collect()
    };
    let (sys0, inst0) = (std::time::SystemTime::now(), Instant::now());
    let m0 = http_get(port, "/metrics")?.1;
    let (cpu0, a0) = (cpu_seconds(pid)?, analysed(&m0));
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let m1 = http_get(port, "/metrics")?.1;
    let (cpu1, a1) = (cpu_seconds(pid)?, analysed(&m1));
    let win = inst0.elapsed().as_secs_f64();
    let rss_kb =
        status_field(pid, "VmRSS:").split_whitespace().next().and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    let threads = status_field(pid, "Threads:");
    let (status, summary) = agent.stop()?;
    anyhow::ensure!(status.success(), "agent failed: {status}");
    let s: serde_json::Value = serde_json::from_str(summary.trim())?;
    let cams = s["cameras"].as_array().context("summary")?;
    let sum = |k: &str| cams.iter().filter_map(|c| c[k].as_u64()).sum::<u64>();
    let cpu = (cpu1 - cpu0) / win * 100.0;
    let mut rates: Vec<f64> = a0.iter().zip(&a1).map(|(b, e)| (e - b) / win).collect();
    rates.sort_by(f64::total_cmp);
    let total_rate: f64 = rates.iter().sum();
    // Capture → publish: the message's capture `ts` to its arrival at a subscriber on the
    // same machine (fsync batching included).
    let mut latency_ms: Vec<f64> = rec
        .snapshot()
        .iter()
        .filter(|r| r.at >= inst0)
        .filter_map(|r| {
            let ts = r.json["ts"].as_str()?;
            let captured = time::OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339).ok()?;
            let arrived = sys0 + (r.at - inst0);
            let arrived = time::OffsetDateTime::from(arrived);
            Some((arrived - captured).as_seconds_f64() * 1000.0)
        })
        .collect();
    latency_ms.sort_by(f64::total_cmp);
    let pct = |v: &[f64], p: f64| if v.is_empty() { f64::NAN } else { v[((v.len() - 1) as f64 * p) as usize] };
    println!(
        "| {n} | {fps} | {cpu:.0} % | {:.2} % | {:.0} MB | {:.1} MB | {threads} | {:.2} / {:.2} / {:.2} | {total_rate:.1} | {:.0} / {:.0} ms | {} | {}/{} |",
        cpu / n as f64,
        rss_kb / 1024.0,
        rss_kb / 1024.0 / n as f64,
        pct(&rates, 0.0),
        pct(&rates, 0.5),
        pct(&rates, 1.0),
        pct(&latency_ms, 0.5),
        pct(&latency_ms, 0.99),
        sum("replaced_frames") + sum("undecoded_frames"),
        sum("decoded_frames"),
        sum("encoded_frames"),
    );
    if stages {
        let total = (pct(&latency_ms, 0.5), pct(&latency_ms, 0.99));
        print_stages(n, &m0, &m1, total);
    }
    drop(server);
    Ok(())
}

/// Cumulative counts per bucket of `lookout_stage_seconds{stage}` between two scrapes,
/// with the buckets' upper bounds (seconds).
fn stage_buckets(m0: &str, m1: &str, stage: &str) -> Vec<(f64, f64)> {
    let read = |m: &str| -> Vec<(f64, f64)> {
        let prefix = format!("lookout_stage_seconds_bucket{{stage=\"{stage}\",le=\"");
        m.lines()
            .filter_map(|l| l.strip_prefix(&prefix))
            .filter_map(|rest| {
                let (le, v) = rest.split_once("\"} ")?;
                let le = if le == "+Inf" { f64::INFINITY } else { le.parse().ok()? };
                Some((le, v.trim().parse().ok()?))
            })
            .collect()
    };
    let (a, b) = (read(m0), read(m1));
    let cum: Vec<(f64, f64)> =
        b.iter().map(|(le, v)| (*le, v - a.iter().find(|(l, _)| l == le).map_or(0.0, |x| x.1))).collect();
    cum
}

/// The smallest bucket bound below which a fraction `p` of the counts lie.
fn bucket_quantile(cum: &[(f64, f64)], p: f64) -> f64 {
    let total = cum.last().map_or(0.0, |x| x.1);
    if total <= 0.0 {
        return f64::NAN;
    }
    cum.iter().find(|(_, c)| *c >= p * total).map_or(f64::INFINITY, |x| x.0)
}

/// One row per stage: p50 / p99 (bucket upper bounds) and the mean, from the agent's
/// histograms over the measured window; the MQTT hop is what the total leaves.
fn print_stages(n: usize, m0: &str, m1: &str, total_ms: (f64, f64)) {
    let mean = |m0: &str, m1: &str, stage: &str| -> f64 {
        let get = |m: &str, k: &str| -> f64 {
            let key = format!("lookout_stage_seconds_{k}{{stage=\"{stage}\"}} ");
            m.lines().find_map(|l| l.strip_prefix(&key)).and_then(|v| v.trim().parse().ok()).unwrap_or(0.0)
        };
        let (s, c) = (get(m1, "sum") - get(m0, "sum"), get(m1, "count") - get(m0, "count"));
        if c > 0.0 { s / c * 1000.0 } else { f64::NAN }
    };
    let mut means = 0.0;
    for stage in ["pipeline", "queue", "inference", "events", "durable"] {
        let cum = stage_buckets(m0, m1, stage);
        let m = mean(m0, m1, stage);
        means += m;
        println!(
            "| {n} | {stage} | ≤ {:.0} ms | ≤ {:.0} ms | {m:.0} ms |",
            bucket_quantile(&cum, 0.5) * 1000.0,
            bucket_quantile(&cum, 0.99) * 1000.0
        );
    }
    println!(
        "| {n} | capture → publish (measured at the subscriber) | {:.0} ms | {:.0} ms | |",
        total_ms.0, total_ms.1
    );
    println!("| {n} | sum of the stages' means | | | {means:.0} ms |");
}

/// The rules used on the vtest clip: a vertical line across the middle of the square
/// (people cross it both ways) and the lower-left quarter as a zone.
const VTEST_RULES: &str = r#"lost_after = 2
count_interval = 10
[[cameras.zones]]
name = "lower_left"
polygon = [[0.0, 0.5], [0.5, 0.5], [0.5, 1.0], [0.0, 1.0]]
loiter_seconds = 10
max_objects = 3
[[cameras.lines]]
name = "middle"
points = [[0.5, 0.0], [0.5, 1.0]]
directions = ["east", "west"]
"#;

async fn vtest_events(fps: f64, manifest: &Path) -> anyhow::Result<()> {
    use std::collections::{BTreeMap, BTreeSet};
    let units = std::sync::Arc::new(clip(Codec::H264)?);
    let pass = Duration::from_secs_f64(units.len() as f64 / 10.0);
    let server = RtspServer::start(
        0,
        vec![("/vtest".into(), Media::Clip { codec: Codec::H264, units, fps: 10, loop_from: 0 })],
    )?;
    let broker = Mosquitto::start()?;
    let dir = scratch("bench-events");
    let config =
        write_config(&dir, &broker.url(), &[Cam { id: "vtest", url: server.url("/vtest"), fps, min_score: 0.5 }])?;
    let text = std::fs::read_to_string(&config)?;
    let text = text.replace(&person_manifest().display().to_string(), &manifest.display().to_string());
    std::fs::write(&config, text + VTEST_RULES)?;
    let rec = Recorder::start(broker.port(), "lookout/v1/test-site/gw-test/cameras/vtest/#").await?;
    let agent = AgentProcess::start(&config)?;
    // One pass from the agent's first frame; the clip loops after that.
    rec.wait_for(Duration::from_secs(30), "the first detections", |m| {
        m.iter().any(|r| r.topic.ends_with("/detections"))
    })
    .await?;
    tokio::time::sleep(pass).await;
    let (status, _) = agent.stop()?;
    anyhow::ensure!(status.success(), "agent failed");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let all = rec.snapshot();
    let mut per_type: BTreeMap<String, usize> = BTreeMap::new();
    let mut tracks = BTreeSet::new();
    let mut crossings: BTreeMap<String, usize> = BTreeMap::new();
    let mut dwell = Vec::new();
    let mut objects: BTreeMap<String, usize> = BTreeMap::new();
    for r in all.iter().filter(|r| r.topic.ends_with("/events")) {
        let ty = r.json["type"].as_str().unwrap_or("?").to_string();
        if ty == "object.new" {
            *objects.entry(r.json["object"]["class"].as_str().unwrap_or("?").to_string()).or_default() += 1;
        }
        if let Some(t) = r.json["object"]["track_id"].as_u64() {
            tracks.insert(t);
        }
        if ty == "line.cross" {
            *crossings.entry(r.json["line"]["direction"].as_str().unwrap_or("?").to_string()).or_default() += 1;
        }
        if ty == "object.end" {
            dwell.push(r.json["object"]["dwell_seconds"].as_f64().unwrap_or(0.0));
        }
        *per_type.entry(ty).or_default() += 1;
    }
    let snapshots = all.iter().filter(|r| r.topic.contains("/snapshots/")).count();
    let snapshot_bytes: usize = all.iter().filter(|r| r.topic.contains("/snapshots/")).map(|r| r.payload.len()).sum();
    let counts = all.iter().filter(|r| r.topic.ends_with("/counts")).count();
    dwell.sort_by(f64::total_cmp);
    let model = manifest.parent().and_then(|d| d.file_name()).map(|n| n.to_string_lossy()).unwrap_or_default();
    println!(
        "vtest clip, one pass ({:.1} s) at {fps} analysed fps, model {model}, line \"middle\" at x = 0.5:",
        pass.as_secs_f64()
    );
    println!("| event type | count |\n|---|---|");
    for (t, n) in &per_type {
        println!("| {t} | {n} |");
    }
    println!("tracks: {}; crossings: {crossings:?}; counts messages: {counts}", tracks.len());
    println!("objects per class: {objects:?}");
    if !dwell.is_empty() {
        println!("dwell seconds per object: median {:.1}, max {:.1}", dwell[dwell.len() / 2], dwell[dwell.len() - 1]);
    }
    if let Some(mean) = snapshot_bytes.checked_div(snapshots) {
        println!("snapshots: {snapshots}, mean {mean} bytes");
    }
    let bad = rec.violations();
    anyhow::ensure!(bad.is_empty(), "schema violations: {bad:?}");
    Ok(())
}

fn bench_snapshot(sides: &[u32], iterations: u32) -> anyhow::Result<()> {
    use gstreamer as gst;
    use gstreamer_video as gst_video;
    use gstreamer_video::prelude::*;
    use lookout::camera::Original;
    use lookout::event::snapshot;
    gst::init()?;
    let path = workspace().join("models/ssdlite-mobilenetv2-person/reference/vtest_frame200.png");
    let img = image::open(&path).with_context(|| path.display().to_string())?.to_rgb8();
    let (w, h) = img.dimensions();
    // RGB → I420 with GStreamer's converter: the decoder's output format.
    let rgb_info = gst_video::VideoInfo::builder(gst_video::VideoFormat::Rgb, w, h).build()?;
    let i420_info = gst_video::VideoInfo::builder(gst_video::VideoFormat::I420, w, h).build()?;
    let mut rgb = gst::Buffer::with_size(rgb_info.size())?;
    {
        let b = rgb.get_mut().context("buffer")?;
        let mut f =
            gst_video::VideoFrameRef::from_buffer_ref_writable(b, &rgb_info).map_err(|_| anyhow::anyhow!("map"))?;
        let stride = f.plane_stride()[0] as usize;
        let data = f.plane_data_mut(0)?;
        for (y, row) in img.as_raw().chunks_exact(w as usize * 3).enumerate() {
            data[y * stride..y * stride + row.len()].copy_from_slice(row);
        }
    }
    let conv = gst_video::VideoConverter::new(&rgb_info, &i420_info, None)?;
    let src = gst_video::VideoFrame::from_buffer_readable(rgb, &rgb_info).map_err(|_| anyhow::anyhow!("map"))?;
    let out = gst::Buffer::with_size(i420_info.size())?;
    let mut dst = gst_video::VideoFrame::from_buffer_writable(out, &i420_info).map_err(|_| anyhow::anyhow!("map"))?;
    conv.frame(&src, &mut dst);
    let frame = Original { buffer: dst.into_buffer(), caps: i420_info.to_caps()? };
    println!("| encoder | max side | JPEG size | bytes | ms per snapshot (median) | p90 |");
    println!("|---|---|---|---|---|---|");
    type Encoder = fn(&Original, u32, u8) -> Result<snapshot::Jpeg, String>;
    let encoders: [(&str, Encoder); 2] = [
        ("image crate (RGB), before", snapshot::encode_with_image),
        ("jpegenc (libjpeg-turbo, I420), now", snapshot::encode_with_jpegenc),
    ];
    for (name, encode) in encoders {
        for &side in sides {
            let mut ms = Vec::new();
            let mut last = None;
            for _ in 0..iterations {
                let t = Instant::now();
                last = Some(encode(&frame, side, 80).map_err(anyhow::Error::msg)?);
                ms.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            ms.sort_by(f64::total_cmp);
            let j = last.context("no iterations")?;
            println!(
                "| {name} | {side} | {}×{} | {} | {:.2} | {:.2} |",
                j.width,
                j.height,
                j.bytes.len(),
                ms[ms.len() / 2],
                ms[ms.len() * 9 / 10]
            );
        }
    }
    Ok(())
}

/// Per-stream CPU and threads of ingest pipelines cut at each stage, against the clip
/// served by `rtsp-serve` (a separate process, so this process's CPU is ingest alone).
fn bench_ingest(streams: usize, warmup: u64, seconds: u64) -> anyhow::Result<()> {
    use gstreamer as gst;
    use gstreamer::prelude::*;
    gst::init()?;
    let serve = std::env::current_exe()?.parent().map(|d| d.join("rtsp-serve")).context("exe dir")?;
    let mounts: Vec<String> = (0..streams).map(|i| format!("/cam{i}=h264")).collect();
    let refs: Vec<&str> = mounts.iter().map(String::as_str).collect();
    let server = RtspProcess::start(&serve, free_port()?, &refs)?;
    let src = "rtspsrc location={url} protocols=tcp latency=200 drop-on-latency=true ! rtph264depay";
    // Keyframes only, as the agent's gate does at analysis rates ≤ the keyframe rate.
    let key = "identity drop-buffer-flags=delta-unit";
    let stages: [(&str, String); 5] = [
        ("RTSP (rtspsrc, jitter buffer) + depay", format!("{src} ! fakesink sync=false")),
        ("+ h264parse", format!("{src} ! h264parse ! fakesink sync=false")),
        (
            "+ decode keyframes (1 per s)",
            format!("{src} ! h264parse ! {key} ! avdec_h264 max-threads=1 ! fakesink sync=false"),
        ),
        (
            "+ decode every frame (10 fps)",
            format!("{src} ! h264parse ! avdec_h264 max-threads=1 ! fakesink sync=false"),
        ),
        (
            "+ decode keyframes, jitter buffer off (latency=0)",
            format!(
                "rtspsrc location={{url}} protocols=tcp latency=0 buffer-mode=none ! rtph264depay ! h264parse ! {key} ! avdec_h264 max-threads=1 ! fakesink sync=false"
            ),
        ),
    ];
    let me = std::process::id();
    println!("{streams} streams of the clip (H.264 768×576, 10 fps, 1 s GOP):");
    println!("| pipeline | CPU per stream (% of one core) | threads per stream |");
    println!("|---|---|---|");
    for (name, desc) in stages {
        let threads0: f64 = status_field(me, "Threads:").trim().parse().unwrap_or(0.0);
        let mut pipelines = Vec::new();
        for i in 0..streams {
            let d = desc.replace("{url}", &server.url(&format!("/cam{i}")));
            let p =
                gst::parse::launch(&d)?.downcast::<gst::Pipeline>().map_err(|_| anyhow::anyhow!("not a pipeline"))?;
            p.set_state(gst::State::Playing)?;
            pipelines.push(p);
        }
        std::thread::sleep(Duration::from_secs(warmup));
        let (c0, t0) = (cpu_seconds(me)?, Instant::now());
        std::thread::sleep(Duration::from_secs(seconds));
        let (c1, win) = (cpu_seconds(me)?, t0.elapsed().as_secs_f64());
        let threads: f64 = status_field(me, "Threads:").trim().parse().unwrap_or(0.0);
        for p in &pipelines {
            let _ = p.set_state(gst::State::Null);
        }
        println!(
            "| {name} | {:.2} % | {:.1} |",
            (c1 - c0) / win * 100.0 / streams as f64,
            (threads - threads0) / streams as f64
        );
    }
    // The same streams through an RTSP client on tokio: one runtime of two workers for all
    // of them, RTP over the RTSP connection, depacketized into access units that carry
    // their keyframe flag (what the agent's gate needs, before any decoding).
    // Its threads are counted by name: GStreamer keeps the stopped pipelines' pooled
    // threads, so the process's count says nothing here.
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).thread_name("retina-rt").enable_all().build()?;
    let counts = Arc::new((AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)));
    let mut tasks = Vec::new();
    for i in 0..streams {
        let url = url::Url::parse(&server.url(&format!("/cam{i}")))?;
        tasks.push(rt.spawn(retina_receive(url, counts.clone())));
    }
    std::thread::sleep(Duration::from_secs(warmup));
    let frames0 = counts.0.load(Ordering::Relaxed);
    let (c0, t0) = (cpu_seconds(me)?, Instant::now());
    std::thread::sleep(Duration::from_secs(seconds));
    let (c1, win) = (cpu_seconds(me)?, t0.elapsed().as_secs_f64());
    let threads = std::fs::read_dir("/proc/self/task")?
        .flatten()
        .filter(|t| std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim() == "retina-rt"))
        .count() as f64;
    let fps = (counts.0.load(Ordering::Relaxed) - frames0) as f64 / win / streams as f64;
    for t in &tasks {
        t.abort();
    }
    rt.shutdown_timeout(Duration::from_secs(2));
    let failed = counts.2.load(Ordering::Relaxed);
    println!(
        "| RTSP + depacketize with retina on tokio (2 runtime threads for all streams; {fps:.1} access units/s per stream, {} keyframes, {failed} sessions failed) | {:.2} % | {:.2} |",
        counts.1.load(Ordering::Relaxed),
        (c1 - c0) / win * 100.0 / streams as f64,
        threads / streams as f64
    );
    drop(server);
    Ok(())
}

/// Receives one stream with retina until aborted: counts access units and keyframes in
/// `counts` (.0, .1), or a failed session in .2.
async fn retina_receive(url: url::Url, counts: Arc<(AtomicU64, AtomicU64, AtomicU64)>) {
    use futures_util::StreamExt;
    use retina::client::{PlayOptions, Session, SessionOptions, SetupOptions};
    let run = async {
        let mut session = Session::describe(url, SessionOptions::default()).await?;
        let video = session.streams().iter().position(|s| s.media() == "video").context("no video stream")?;
        session.setup(video, SetupOptions::default()).await?;
        let mut demuxed = session.play(PlayOptions::default()).await?.demuxed()?;
        while let Some(item) = demuxed.next().await {
            if let retina::codec::CodecItem::VideoFrame(f) = item? {
                counts.0.fetch_add(1, Ordering::Relaxed);
                if f.is_random_access_point() {
                    counts.1.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        anyhow::Ok(())
    };
    if let Err(e) = run.await {
        counts.2.fetch_add(1, Ordering::Relaxed);
        eprintln!("retina session: {e:#}");
    }
}

/// What a browser does with the console open: each watched camera's frame JSON every
/// `period`, and its JPEG whenever the frame is new (as `console.js` does).
fn watch_cameras(port: u16, ids: &[String], period: Duration, until: Instant) -> anyhow::Result<u64> {
    let mut seen: Vec<Option<u64>> = vec![None; ids.len()];
    let mut jpegs = 0;
    while Instant::now() < until {
        let tick = Instant::now();
        for (id, last) in ids.iter().zip(seen.iter_mut()) {
            let f = http_request(port, "GET", &format!("/api/cameras/{id}/frame"), &[])?.json()?;
            let (Some(seq), Some(url)) = (f["frame"]["seq"].as_u64(), f["frame"]["jpeg"].as_str()) else { continue };
            if *last != Some(seq) {
                anyhow::ensure!(http_request(port, "GET", url, &[])?.code == 200, "no JPEG at {url}");
                *last = Some(seq);
                jpegs += 1;
            }
        }
        std::thread::sleep(period.saturating_sub(tick.elapsed()));
    }
    Ok(jpegs)
}

fn bench_console(n: usize, fps: f64, warmup: u64, seconds: u64, rounds: usize) -> anyhow::Result<()> {
    let (_broker, server, config, port) =
        stream_setup(n, fps, &format!("bench-console-{n}"), &StreamOptions::default())?;
    let ids: Vec<String> = (0..n).map(|i| format!("cam-{i}")).collect();
    let agent = AgentProcess::start(&config)?;
    let pid = agent.pid().context("agent pid")?;
    std::thread::sleep(Duration::from_secs(warmup));
    let encoded = || -> anyhow::Result<f64> {
        let m = http_get(port, "/metrics")?.1;
        m.lines()
            .find_map(|l| l.strip_prefix("lookout_console_frames_encoded_total "))
            .and_then(|v| v.trim().parse().ok())
            .context("no lookout_console_frames_encoded_total")
    };
    let grid: Vec<String> = ids.iter().take(24).cloned().collect();
    let phases: [(&str, &[String], Duration); 4] = [
        ("closed", &[], Duration::ZERO),
        ("open on one camera (its page: frame every 0.7 s)", &ids[..1], Duration::from_millis(700)),
        ("grid open (tiles on screen: frame every 2 s each)", &grid, Duration::from_secs(2)),
        ("closed again", &[], Duration::ZERO),
    ];
    println!("| console | agent CPU (% of one core) | frames encoded | JPEGs fetched |");
    println!("|---|---|---|---|");
    for (round, (name, watched, period)) in (0..rounds).flat_map(|r| phases.iter().map(move |p| (r, *p))) {
        // Let a watch from the previous phase lapse (10 s) before measuring a closed one.
        if watched.is_empty() && (round > 0 || name != "closed") {
            std::thread::sleep(Duration::from_secs(11));
        }
        let (t0, cpu0, e0) = (Instant::now(), cpu_seconds(pid)?, encoded()?);
        let until = t0 + Duration::from_secs(seconds);
        let jpegs = if watched.is_empty() {
            std::thread::sleep(Duration::from_secs(seconds));
            0
        } else {
            watch_cameras(port, watched, period, until)?
        };
        let win = t0.elapsed().as_secs_f64();
        let (cpu1, e1) = (cpu_seconds(pid)?, encoded()?);
        println!(
            "| {name} | {:.1} % | {:.0} ({:.2}/s) | {jpegs} |",
            (cpu1 - cpu0) / win * 100.0,
            e1 - e0,
            (e1 - e0) / win
        );
    }
    let (status, _) = agent.stop()?;
    anyhow::ensure!(status.success(), "agent failed: {status}");
    drop(server);
    Ok(())
}

/// N cameras of the quiet scene at 1 analysed fps, once with `compressed_motion` off and
/// once on (auto): agent CPU over the scene, frames decoded and skipped, and each
/// camera's crossings and zone events against the script's truth.
async fn bench_quiet(n: usize, manifest: Option<&Path>) -> anyhow::Result<()> {
    use std::collections::BTreeMap;
    let scene = quiet_scene();
    // Encode (or load) the scene once before timing anything.
    scene_media(&scene)?;
    println!(
        "| compressed_motion | cameras | agent CPU (% of one core) | per stream | keyframes decoded | skipped before decoding | analysed | line.cross east / west | zone.enter / exit | cameras exactly as the truth | restarts |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for mode in ["off", "auto"] {
        let opts = StreamOptions {
            manifest: manifest.map(Path::to_path_buf),
            media: Some("scene:quiet".into()),
            camera_extra: format!("compressed_motion = \"{mode}\"\n{QUIET_SCENE_RULES}"),
            ..StreamOptions::default()
        };
        let (broker, server, config, port) = stream_setup(n, 1.0, &format!("bench-quiet-{mode}"), &opts)?;
        let rec = Recorder::start(broker.port(), "lookout/v1/+/+/cameras/+/events").await?;
        let agent = AgentProcess::start(&config)?;
        let pid = agent.pid().context("agent pid")?;
        // The scene starts at each camera's connection; measure the whole script plus
        // the tail in which the last tracks end.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let cpu0 = cpu_seconds(pid)?;
        let t0 = Instant::now();
        tokio::time::sleep(Duration::from_secs_f64(scene.duration - 3.0)).await;
        let cpu = (cpu_seconds(pid)? - cpu0) / t0.elapsed().as_secs_f64() * 100.0;
        let metrics = http_get(port, "/metrics")?.1;
        let (status, summary) = agent.stop()?;
        anyhow::ensure!(status.success(), "agent failed: {status}");
        let s: serde_json::Value = serde_json::from_str(summary.trim())?;
        let cams = s["cameras"].as_array().context("summary")?;
        let sum = |k: &str| cams.iter().filter_map(|c| c[k].as_u64()).sum::<u64>();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut per_cam: BTreeMap<String, (Vec<String>, usize, usize)> = BTreeMap::new();
        for r in rec.snapshot() {
            let cam = r.topic.split('/').nth(5).unwrap_or("?").to_string();
            let e = per_cam.entry(cam).or_default();
            match r.json["type"].as_str() {
                Some("line.cross") => e.0.push(r.json["line"]["direction"].as_str().unwrap_or("?").to_string()),
                Some("zone.enter") => e.1 += 1,
                Some("zone.exit") => e.2 += 1,
                _ => {}
            }
        }
        let exact =
            per_cam.values().filter(|(c, en, ex)| *c == ["east", "west", "east"] && *en == 2 && *ex == 2).count();
        let count = |d: &str| per_cam.values().map(|v| v.0.iter().filter(|x| *x == d).count()).sum::<usize>();
        let active =
            metrics.lines().filter(|l| l.starts_with("lookout_activity_gate_active{") && l.ends_with(" 1")).count();
        println!(
            "| {mode} | {n} | {cpu:.1} % | {:.2} % | {} | {} | {} | {} / {} | {} / {} | {exact} of {n} | {} |",
            cpu / n as f64,
            sum("decoded_frames"),
            sum("activity_skipped_frames"),
            sum("analysed_frames"),
            count("east"),
            count("west"),
            per_cam.values().map(|v| v.1).sum::<usize>(),
            per_cam.values().map(|v| v.2).sum::<usize>(),
            sum("restarts"),
        );
        eprintln!("quiet {mode}: activity gate active on {active} of {n} cameras at the end");
        drop(server);
    }
    Ok(())
}

/// CPU seconds (user + system) of every process in process group `pgid`.
fn group_cpu_seconds(pgid: u32) -> f64 {
    let mut ticks = 0.0;
    let Ok(dir) = std::fs::read_dir("/proc") else { return 0.0 };
    for e in dir.flatten() {
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else { continue };
        let Some((_, rest)) = stat.rsplit_once(')') else { continue };
        let f: Vec<&str> = rest.split_whitespace().collect();
        if f.len() > 12 && f[2] == pgid.to_string() {
            ticks += f[11].parse::<f64>().unwrap_or(0.0) + f[12].parse::<f64>().unwrap_or(0.0);
        }
    }
    ticks / 100.0
}

/// The comparison peers on the streams benchmark's streams: each in its own process
/// group, its CPU summed over the group between `warmup` and `warmup + seconds`.
fn bench_peers(n: usize, python: &Path, model: &Path, warmup: u64, seconds: u64) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt;
    let serve = std::env::current_exe()?.parent().map(|d| d.join("rtsp-serve")).context("exe dir")?;
    let broker = Mosquitto::start()?;
    let mounts: Vec<String> = (0..n).map(|i| format!("/cam{i}=h264@{}", i % 10)).collect();
    let mount_refs: Vec<&str> = mounts.iter().map(String::as_str).collect();
    let server = RtspProcess::start(&serve, free_port()?, &mount_refs)?;
    let urls: Vec<String> = (0..n).map(|i| server.url(&format!("/cam{i}"))).collect();
    let peers = workspace().join("tests/peers");
    let run_for = (warmup + seconds + 10).to_string();
    let python_cmd = {
        let mut c = std::process::Command::new(python);
        c.arg(peers.join("python_agent.py"))
            .args(["--model", &model.display().to_string(), "--threads", "2", "--broker-port"])
            .arg(broker.port().to_string())
            .args(["--seconds", &run_for])
            .args(&urls);
        c
    };
    let ffmpeg_cmd = {
        let mut c = std::process::Command::new(peers.join("ffmpeg_ingest.sh"));
        c.args(["--seconds", &run_for]).args(&urls);
        c
    };
    println!("| peer | streams | CPU (% of one core) | per stream | fps per camera min / median (whole run) |");
    println!("|---|---|---|---|---|");
    for (name, mut cmd) in [
        ("Python agent (full decode + onnxruntime + paho)", python_cmd),
        ("ffmpeg ingest, one per camera (no detection)", ffmpeg_cmd),
    ] {
        let child = cmd
            .current_dir(workspace())
            .process_group(0)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        let pgid = child.id();
        std::thread::sleep(Duration::from_secs(warmup));
        let (c0, t0) = (group_cpu_seconds(pgid), Instant::now());
        std::thread::sleep(Duration::from_secs(seconds));
        let cpu = (group_cpu_seconds(pgid) - c0) / t0.elapsed().as_secs_f64() * 100.0;
        let _ = std::process::Command::new("kill").args(["-TERM", "--", &format!("-{pgid}")]).status();
        let out = child.wait_with_output()?;
        let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let mut fps: Vec<f64> = summary["cameras"]
            .as_object()
            .map(|m| m.values().filter_map(|c| c["fps_since_first_frame"].as_f64().or(c["fps"].as_f64())).collect())
            .unwrap_or_default();
        fps.sort_by(f64::total_cmp);
        let at = |p: f64| fps.get(((fps.len().max(1) - 1) as f64 * p) as usize).copied().unwrap_or(f64::NAN);
        println!("| {name} | {n} | {cpu:.0} % | {:.2} % | {:.2} / {:.2} |", cpu / n as f64, at(0.0), at(0.5));
    }
    drop(server);
    Ok(())
}
