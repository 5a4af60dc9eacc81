//! `lookout demo` stopped the way a terminal stops it: Ctrl-C sends SIGINT to the whole
//! foreground process group, the demo's own broker included.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lookout_e2e::*;

/// The demo run as a terminal's foreground job: its stdout lines so far (filled by a
/// thread), its log file and its broker's port.
struct Demo {
    child: std::process::Child,
    lines: Arc<Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
    log_path: std::path::PathBuf,
    port: u16,
}

impl Demo {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    fn out(&self) -> String {
        self.lines.lock().expect("lines").join("\n")
    }

    /// SIGINT to its whole process group, as Ctrl-C in a terminal.
    fn ctrl_c(&self) {
        let group = format!("-{}", self.child.id());
        assert!(Command::new("kill").args(["-INT", "--", &group]).status().expect("kill").success());
    }

    fn wait(&mut self, secs: u64) -> std::process::ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(s) = self.child.try_wait().expect("wait") {
                // Its stdout is closed: the reader has every line.
                if let Some(r) = self.reader.take() {
                    let _ = r.join();
                }
                return s;
            }
            if Instant::now() > deadline {
                let _ = Command::new("kill").args(["-KILL", "--", &format!("-{}", self.child.id())]).status();
                panic!("the demo did not stop within {secs} s of SIGINT\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The demo's broker's pid, found by its configuration folder (named after the demo's
    /// pid and the broker's port).
    fn broker_pid(&self) -> u32 {
        let conf = format!("lookout-mosquitto-{}-{}/mosquitto.conf", self.child.id(), self.port);
        std::fs::read_dir("/proc")
            .expect("/proc")
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .find(|pid| {
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                String::from_utf8_lossy(&cmdline).contains(&conf)
            })
            .unwrap_or_else(|| panic!("no process runs {conf}"))
    }

    fn broker_gone(&self) -> bool {
        std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err()
    }
}

fn start_demo(name: &str, lines_wanted: usize) -> Demo {
    let dir = scratch(name);
    let log_path = dir.join("demo.log");
    let log = std::fs::File::create(&log_path).expect("log");
    // Its own process group, as a shell gives a foreground job: the SIGINT reaches every
    // process in it, as Ctrl-C would, and nothing of this test.
    let mut child = Command::new(lookout_bin())
        .args(["demo", "--cameras", "1", "--fps", "5"])
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .process_group(0)
        .spawn()
        .expect("lookout demo");
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let reader = {
        let (out, lines) = (child.stdout.take().expect("stdout"), lines.clone());
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                lines.lock().expect("lines").push(l);
            }
        })
    };
    let log_text = || std::fs::read_to_string(&log_path).unwrap_or_default();
    // Running: analysed frames' messages come back through the demo's broker (not only
    // the camera's status, which comes at connect, before any frame).
    let analysed = |l: &&String| l.starts_with("cam-1") && !l.contains("  status ");
    let deadline = Instant::now() + Duration::from_secs(90);
    while lines.lock().expect("lines").iter().filter(analysed).count() < lines_wanted {
        assert!(Instant::now() < deadline, "not {lines_wanted} messages from the demo in 90 s\n{}", log_text());
        assert!(child.try_wait().expect("wait").is_none(), "the demo exited\n{}", log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
    let port = lines
        .lock()
        .expect("lines")
        .iter()
        .find_map(|l| l.trim().strip_prefix("watch:")?.split(" -p ").nth(1)?.split_whitespace().next()?.parse().ok())
        .expect("the demo names its broker's port");
    Demo { child, lines, reader: Some(reader), log_path, port }
}

#[test]
fn ctrl_c_on_the_demo_drains_to_its_broker_before_the_broker_stops() {
    let mut demo = start_demo("demo-ctrl-c", 10);
    demo.ctrl_c();
    let status = demo.wait(40);
    let (log, out) = (demo.log(), demo.out());
    assert!(status.success(), "{status}\n{log}\n{out}");
    assert!(!log.contains("unacknowledged"), "the broker went before the agent drained:\n{log}");
    assert!(log.contains("outbox empty: everything acknowledged"), "{log}");
    // Everything published was acknowledged, so the broker had it all.
    let summary = out.lines().find(|l| l.starts_with("stopped:")).unwrap_or_else(|| panic!("no summary:\n{out}"));
    let n = |word: &str| -> u64 {
        let before = summary.split(word).next().unwrap_or("");
        before.split_whitespace().last().and_then(|v| v.parse().ok()).unwrap_or(u64::MAX)
    };
    assert!(n(" messages published") > 0 && n(" messages published") == n(" acknowledged"), "{summary}");
    // And the broker is gone with the demo, not left behind.
    assert!(demo.broker_gone(), "the demo's broker outlived it");
}

#[test]
fn a_second_ctrl_c_exits_at_once_and_takes_the_demos_broker_along() {
    let mut demo = start_demo("demo-ctrl-c-twice", 1);
    // A frozen broker acknowledges nothing, so the drain the first Ctrl-C starts cannot
    // finish before the second arrives (its final counts wait for a PUBACK).
    let broker = demo.broker_pid().to_string();
    let signal = |sig: &str| Command::new("kill").args([sig, &broker]).status().expect("kill");
    assert!(signal("-STOP").success());
    demo.ctrl_c();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !demo.log().contains("signal received, draining") {
        assert!(Instant::now() < deadline, "no drain after Ctrl-C\n{}", demo.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    demo.ctrl_c();
    let status = demo.wait(10);
    // SIGKILL takes a stopped process too; SIGCONT is only for a broker left behind.
    signal("-CONT");
    assert_eq!(status.code(), Some(130), "{}", demo.log());
    let deadline = Instant::now() + Duration::from_secs(5);
    while !demo.broker_gone() {
        assert!(Instant::now() < deadline, "the demo's broker outlived it\n{}", demo.log());
        std::thread::sleep(Duration::from_millis(100));
    }
}
