//! Command line.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "lookout", version, about = "Edge video analytics: RTSP cameras in, detections out over MQTT")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent.
    Run {
        /// The config file (TOML).
        #[arg(long, short)]
        config: PathBuf,
        /// Seconds to wait at shutdown for MQTT to acknowledge what was published.
        #[arg(long, default_value_t = 5)]
        grace_secs: u64,
        /// Print per-camera counters as one JSON line on stdout at exit.
        #[arg(long)]
        summary: bool,
    },
    /// Validate a config file (and the models it names) without starting anything.
    CheckConfig {
        /// The config file (TOML).
        config: PathBuf,
    },
    /// Check one camera before adding it: codec, resolution, frame rate, keyframe
    /// interval, bitrate, and the model's detections on one frame (written as a JPEG).
    Probe {
        /// The camera's rtsp:// URL.
        url: String,
        /// Seconds to watch the stream (two keyframes are needed for their interval).
        #[arg(long, default_value_t = 6)]
        seconds: u64,
        /// RTSP over UDP instead of TCP.
        #[arg(long)]
        udp: bool,
        /// Model manifest (default: the bundled person detector).
        #[arg(long)]
        manifest: Option<PathBuf>,
        /// Report detections at or above this score.
        #[arg(long, default_value_t = 0.5)]
        min_score: f32,
        /// Where to write the frame with boxes drawn.
        #[arg(long, default_value = "probe.jpg")]
        out: PathBuf,
    },
    /// Model maintenance: keys, signing and verifying manifests (see models/README.md).
    #[command(subcommand)]
    Model(ModelCommand),
    /// Signed commands: sign a command for one agent (see docs/EVENTS.md, "Signed commands").
    #[command(subcommand)]
    Command(CommandCommand),
    /// A site of many gateways (the config's `[site]` section): its camera inventory and
    /// status, read from and written to etcd (see docs/INSTALL.md).
    #[command(subcommand)]
    Site(SiteCommand),
    /// Run everything locally: the bundled clip served over RTSP, a local broker, the
    /// default model; prints one line per published message.
    Demo {
        /// Number of cameras (all showing the bundled clip).
        #[arg(long, default_value_t = 2)]
        cameras: usize,
        /// Use this broker (mqtt://host:port) instead of starting mosquitto.
        #[arg(long)]
        mqtt: Option<String>,
        /// Analysed frames per second per camera.
        #[arg(long, default_value_t = 2.0)]
        fps: f64,
        /// Stop after this many seconds (default: run until Ctrl-C).
        #[arg(long)]
        seconds: Option<u64>,
    },
}

#[derive(Debug, Subcommand)]
pub enum ModelCommand {
    /// Create an ed25519 key pair for signing model manifests.
    Keygen {
        /// Where to write the secret key (created readable by its owner only).
        #[arg(long)]
        secret: PathBuf,
        /// Where to write the public key (what gateways trust).
        #[arg(long)]
        public: PathBuf,
    },
    /// Add or replace a manifest's signature (over every other field, the artifact's sha256 included).
    Sign {
        manifest: PathBuf,
        /// The secret key file.
        #[arg(long)]
        key: PathBuf,
    },
    /// Check a manifest's signature and the artifact it names.
    Verify {
        manifest: PathBuf,
        /// The public key file.
        #[arg(long)]
        pubkey: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum CommandCommand {
    /// Sign a command's JSON payload, read from stdin, for one agent; prints the signed
    /// payload to publish on `lookout/v1/{site}/{agent}/commands/{name}`.
    Sign {
        /// The command, as in its topic (e.g. `camera.remove`).
        name: String,
        /// The secret key file (`lookout model keygen`).
        #[arg(long)]
        key: PathBuf,
        /// The agent it is for: `{site}/{agent id}`.
        #[arg(long)]
        agent: String,
        /// Seconds until it expires (1 to 600).
        #[arg(long, default_value_t = 300)]
        expires_in: u64,
    },
}

#[derive(Debug, Subcommand)]
pub enum SiteCommand {
    /// The site's camera inventory: one list for every gateway of the site.
    #[command(subcommand)]
    Camera(SiteCameraCommand),
    /// Members, capacity, load, the leader, which gateway runs each camera, and the
    /// cameras that fit nowhere.
    Status {
        /// A config file with a `[site]` section (its `[agent] site` names the site).
        #[arg(long, short)]
        config: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum SiteCameraCommand {
    /// Add a camera: the same JSON as `camera.add`, from a file or `-` for stdin.
    Add {
        #[arg(long, short)]
        config: PathBuf,
        file: PathBuf,
    },
    /// Replace a camera's settings (same JSON as `add`; the id names the camera).
    Update {
        #[arg(long, short)]
        config: PathBuf,
        file: PathBuf,
    },
    /// Remove a camera from the site.
    Remove {
        #[arg(long, short)]
        config: PathBuf,
        id: String,
    },
    /// List the cameras and where each runs (URLs without credentials).
    List {
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long)]
        json: bool,
    },
}
