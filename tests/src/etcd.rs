//! A real etcd cluster on loopback (Debian's `etcd-server`, installed by scripts/setup.sh),
//! a TCP proxy a test can cut to isolate one agent from it, and readers of `lookout site
//! status --json`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::free_port;

struct Member {
    name: String,
    client: u16,
    peer: u16,
    child: Option<Child>,
}

/// A 3-member (or n-member) etcd cluster, each member in its own process and folder.
pub struct EtcdCluster {
    dir: PathBuf,
    members: Vec<Member>,
    initial: String,
}

impl EtcdCluster {
    /// Starts `n` members and waits until the cluster has a leader.
    pub fn start(dir: &Path, n: usize) -> anyhow::Result<Self> {
        let mut members = Vec::new();
        for i in 0..n {
            members.push(Member { name: format!("n{}", i + 1), client: free_port()?, peer: free_port()?, child: None });
        }
        let initial =
            members.iter().map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer)).collect::<Vec<_>>().join(",");
        let mut c = Self { dir: dir.to_path_buf(), members, initial };
        for i in 0..n {
            c.spawn(i)?;
        }
        c.wait_for_leader(Duration::from_secs(30))?;
        Ok(c)
    }

    fn spawn(&mut self, i: usize) -> anyhow::Result<()> {
        let m = &self.members[i];
        let data = self.dir.join(format!("etcd-{}", m.name));
        let log = std::fs::File::create(self.dir.join(format!("etcd-{}.log", m.name)))?;
        let client = format!("http://127.0.0.1:{}", m.client);
        let peer = format!("http://127.0.0.1:{}", m.peer);
        let child = Command::new("etcd")
            .args(["--name", &m.name, "--data-dir"])
            .arg(&data)
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &self.initial, "--initial-cluster-token", "lookout-e2e"])
            .args(["--initial-cluster-state", "new", "--log-level", "warn"])
            // Half of etcd's default timings, as the tests run half the default lease TTL:
            // a new etcd leader is elected in the same share of a lease as in production.
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting etcd (scripts/setup.sh installs etcd-server)")?;
        self.members[i].child = Some(child);
        Ok(())
    }

    /// Every member's client URL.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| format!("http://127.0.0.1:{}", m.client)).collect()
    }

    pub fn client_port(&self, i: usize) -> u16 {
        self.members[i].client
    }

    /// SIGKILL member `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts member `i` again on its data folder.
    pub fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        self.kill(i);
        self.spawn(i)
    }

    /// `etcdctl endpoint status` over the running members: whether one is the leader.
    pub fn has_leader(&self) -> bool {
        let eps = self.endpoints().join(",");
        let out = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &eps, "--command-timeout=1s", "endpoint", "status", "-w", "json"])
            .output();
        let Ok(out) = out else { return false };
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(&out.stdout) else { return false };
        v.as_array().is_some_and(|a| {
            a.iter().any(|s| {
                s["Status"]["leader"].as_u64().is_some_and(|l| l != 0 && s["Status"]["header"]["member_id"] == l)
            })
        })
    }

    pub fn wait_for_leader(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        while !self.has_leader() {
            if Instant::now() > deadline {
                bail!("etcd elected no leader within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(())
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}

/// Forwards a loopback port to `target` until [`cut`](Self::cut): then every connection
/// through it is closed and new ones are refused, as if the network between them failed.
pub struct TcpProxy {
    pub port: u16,
    cut: tokio_util::sync::CancellationToken,
    conns: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl TcpProxy {
    pub async fn start(target: u16) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let port = listener.local_addr()?.port();
        let cut = tokio_util::sync::CancellationToken::new();
        let conns: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::default();
        let (stop, list) = (cut.clone(), conns.clone());
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    a = listener.accept() => a,
                    _ = stop.cancelled() => return,
                };
                let Ok((mut inbound, _)) = accepted else { continue };
                let conn = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(("127.0.0.1", target)).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                list.lock().expect("proxy lock").push(conn);
            }
        });
        Ok(Self { port, cut, conns })
    }

    /// Closes every connection and the listening port.
    pub fn cut(&self) {
        self.cut.cancel();
        for c in self.conns.lock().expect("proxy lock").drain(..) {
            c.abort();
        }
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.cut();
    }
}

/// Camera → agent in `lookout site status --json` output.
pub fn site_assignment(status: &serde_json::Value) -> std::collections::BTreeMap<String, String> {
    status["assignment"]
        .as_object()
        .map(|m| m.iter().map(|(c, a)| (c.clone(), a.as_str().unwrap_or_default().to_string())).collect())
        .unwrap_or_default()
}

/// In `lookout site status --json` output: `members` members, the table covers `n`
/// cameras, and every member runs exactly what it is assigned.
pub fn site_settled(status: &serde_json::Value, members: usize, n: usize) -> bool {
    use std::collections::BTreeSet;
    let a = site_assignment(status);
    let Some(ms) = status["members"].as_array() else { return false };
    a.len() == n
        && ms.len() == members
        && ms.iter().all(|m| {
            let agent = m["agent"].as_str().unwrap_or_default();
            let mine: BTreeSet<&str> = a.iter().filter(|(_, x)| *x == agent).map(|(c, _)| c.as_str()).collect();
            let running: BTreeSet<&str> = m["running"]
                .as_array()
                .map(|r| r.iter().filter_map(serde_json::Value::as_str).collect())
                .unwrap_or_default();
            mine == running
        })
}
