//! A private mosquitto broker on a free loopback port: for the demo when no broker is
//! configured, and for the end-to-end tests. Killed when dropped.

use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

pub struct Mosquitto {
    child: Child,
    port: u16,
    dir: PathBuf,
    /// Keep the persistence folder (after a graceful stop, for a restart).
    keep: bool,
}

impl Mosquitto {
    /// Starts mosquitto on a free port and waits until it accepts connections.
    pub fn start() -> anyhow::Result<Self> {
        Self::start_on(free_port()?)
    }

    /// The broker's process id (the benchmarks pin it to a CPU).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Starts mosquitto on `port` (e.g. again after a restart in a test).
    pub fn start_on(port: u16) -> anyhow::Result<Self> {
        Self::start_with(port, "")
    }

    /// Starts mosquitto on a free port in its own process group, for the demo: Ctrl-C in
    /// a terminal signals the whole foreground group, and a broker stopped with the agent
    /// would take the messages of the agent's drain with it. Its owner stops it when
    /// dropped, after the agent; [`stop_detached`] on the way out without unwinding.
    pub fn start_detached() -> anyhow::Result<Self> {
        Self::spawn(free_port()?, "", true)
    }

    /// Starts mosquitto on `port` with extra configuration lines (more listeners, TLS).
    /// Sessions and queued messages persist in a folder kept across restarts on the same
    /// port (graceful stops only: see [`Mosquitto::terminate`]). In the caller's process
    /// group: a test interrupted with Ctrl-C takes its brokers with it.
    pub fn start_with(port: u16, extra: &str) -> anyhow::Result<Self> {
        Self::spawn(port, extra, false)
    }

    fn spawn(port: u16, extra: &str, detached: bool) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("lookout-mosquitto-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let conf = dir.join("mosquitto.conf");
        // `user root` keeps mosquitto from switching to its own user, who could not write
        // the persistence folder; it is ignored when not started as root.
        std::fs::write(
            &conf,
            format!(
                "user root\nlistener {port} 127.0.0.1\nallow_anonymous true\npersistence true\n\
                 persistence_location {}/\nlog_dest stderr\n{extra}\n",
                dir.display()
            ),
        )?;
        let mut cmd = Command::new("mosquitto");
        cmd.arg("-c").arg(&conf).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        if detached {
            cmd.process_group(0);
        }
        let child = cmd.spawn().context("cannot start mosquitto (install it with scripts/setup.sh)")?;
        if detached {
            DETACHED.lock().unwrap_or_else(|e| e.into_inner()).push(child.id());
        }
        let mut broker = Self { child, port, dir, keep: false };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err() {
            if let Ok(Some(status)) = broker.child.try_wait() {
                bail!("mosquitto exited at start ({status}); is port {port} in use?");
            }
            if Instant::now() > deadline {
                bail!("mosquitto did not listen on port {port} within 10 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(broker)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// Stops it gracefully (SIGTERM), so it saves sessions and queued messages; a later
    /// `start_with` on the same port picks them up.
    pub fn terminate(mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let _ = self.child.wait();
        self.keep = true;
    }
}

/// Brokers started in their own process group and not yet stopped.
static DETACHED: Mutex<Vec<u32>> = Mutex::new(Vec::new());

/// Kills the brokers [`Mosquitto::start_detached`] started: for an exit that skips their
/// owners' drop (a second Ctrl-C), which would otherwise leave them running.
pub fn stop_detached() {
    for pid in DETACHED.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
        let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        // Forget the pid before it is reaped and can be reused.
        DETACHED.lock().unwrap_or_else(|e| e.into_inner()).retain(|&p| p != self.child.id());
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?.local_addr()?.port())
}
