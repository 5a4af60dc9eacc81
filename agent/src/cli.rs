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
