//! A site of three gateways against real peers: a 3-member etcd cluster on loopback, three
//! real `lookout` agents, one RTSP server with 13 cameras, mosquitto, and the real
//! `lookout site` CLI. One test, in phases that share the set-up (each phase starts from
//! what the previous one left):
//!
//! 1. cameras added through the CLI spread within capacity, each analysed by exactly one
//!    gateway (from the MQTT messages), the CLI refusing duplicates, invalid cameras and
//!    local ids, a gateway refusing `camera.add/remove` of a site camera; the leader's
//!    retained `lookout.site/1`, a gateway's metrics and its console page (in Chromium)
//!    show the same table;
//! 2. SIGKILL one agent: its cameras publish from the others within TTL + 10 s;
//! 3. restart it: it rejoins, and only cameras moving to it move, at most its share + one;
//! 4. one etcd member killed: nothing moves; quorum lost: `keep` holds every camera where
//!    it runs;
//! 5. one agent cut off from etcd alone (through TCP proxies the test closes): it stops
//!    its site cameras before anyone else starts them (capture times from MQTT) and ends
//!    every track it had on them;
//! 6. a camera removed through the CLI stops everywhere.
//!
//! A second, small test joins a gateway and the CLI to a single etcd member over mutual
//! TLS as an etcd user limited to the site's prefix.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use lookout_e2e::etcd::{EtcdCluster, TcpProxy, site_assignment, site_settled};
use lookout_e2e::*;
use serde_json::{Value, json};

const SITE: &str = "test-site";
const TTL: u64 = 5;
const CAPACITY: f64 = 6.0;
const CAMERAS: usize = 12;
const WAIT: Duration = Duration::from_secs(90);

fn agent_config(
    dir: &Path,
    id: &str,
    broker: &str,
    endpoints: &[String],
    local: Option<&str>,
    listen: Option<u16>,
) -> PathBuf {
    let d = dir.join(id);
    std::fs::create_dir_all(&d).expect("agent dir");
    let eps = endpoints.iter().map(|e| format!("\"{e}\"")).collect::<Vec<_>>().join(", ");
    let mut s = format!(
        "[agent]\nsite = \"{SITE}\"\nid = \"{id}\"\nstate_dir = \"{}\"\n\n[mqtt]\nurl = \"{broker}\"\n\n\
         [inference]\nthreads = 1\n\n[telemetry]\nlisten = \"off\"\n\n[[models]]\nname = \"person\"\nmanifest = \"{}\"\n\n\
         [site]\nendpoints = [{eps}]\ncapacity = {CAPACITY}\nlease_ttl_secs = {TTL}\nsettle_secs = 2\n",
        d.join("state").display(),
        person_manifest().display()
    );
    if let Some(cam) = local {
        // A local camera whose id the site may not take (it never connects: nothing listens there).
        s.push_str(&format!(
            "\n[[cameras]]\nid = \"{cam}\"\nurl = \"rtsp://127.0.0.1:9/none\"\nmodel = \"person\"\nreconnect_max_secs = 30\n"
        ));
    }
    if let Some(port) = listen {
        s = s.replace("listen = \"off\"", &format!("listen = \"127.0.0.1:{port}\""));
    }
    let path = d.join("lookout.toml");
    std::fs::write(&path, s).expect("write config");
    path
}

/// `lookout site …` with its exit code, stdout and stderr.
fn site_cli(args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(lookout_bin()).arg("site").args(args).output().expect("lookout site");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn add_camera(config: &Path, dir: &Path, camera: &Value) -> (i32, String) {
    let f = dir.join(format!("{}.json", camera["id"].as_str().unwrap_or("camera")));
    std::fs::write(&f, camera.to_string()).expect("camera json");
    let (code, out, err) = site_cli(&["camera", "add", "-c", path(config), path(&f)]);
    (code, format!("{out}{err}"))
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn status(config: &Path) -> Value {
    let (code, out, err) = site_cli(&["status", "--json", "-c", path(config)]);
    assert_eq!(code, 0, "site status failed: {err}");
    serde_json::from_str(&out).expect("status JSON")
}

/// Waits until `cond` holds over `lookout site status`.
async fn wait_status(config: &Path, what: &str, cond: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let s = status(config);
        if cond(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}; last status:\n{s:#}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// A detections message's (agent, camera, capture time).
fn detection(m: &Received) -> Option<(String, String, SystemTime)> {
    let rest = m.topic.strip_prefix(&format!("lookout/v1/{SITE}/"))?;
    let mut parts = rest.split('/');
    let (agent, kind, camera, what) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if kind != "cameras" || what != "detections" {
        return None;
    }
    let ts = m.json["ts"].as_str()?;
    let t = time::OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339).ok()?;
    let t = SystemTime::UNIX_EPOCH + Duration::from_nanos(u64::try_from(t.unix_timestamp_nanos()).ok()?);
    Some((agent.to_string(), camera.to_string(), t))
}

/// Camera → agents that analysed frames it captured at or after `since`.
fn analysed_by(msgs: &[Received], since: SystemTime) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (agent, camera, ts) in msgs.iter().filter_map(detection) {
        if ts >= since {
            out.entry(camera).or_default().insert(agent);
        }
    }
    out
}

fn cameras_of(a: &BTreeMap<String, String>, agent: &str) -> Vec<String> {
    a.iter().filter(|(_, x)| *x == agent).map(|(c, _)| c.clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_spreads_cameras_fails_over_and_fences_a_gateway_cut_off_from_etcd() {
    let dir = scratch("site");
    let mut etcd = EtcdCluster::start(&dir, 3).expect("etcd cluster");
    let broker = Mosquitto::start().expect("mosquitto");
    let serve = PathBuf::from(env!("CARGO_BIN_EXE_rtsp-serve"));
    let mounts: Vec<String> = (1..=CAMERAS + 1).map(|i| format!("/cam{i}=h264")).collect();
    let mounts: Vec<&str> = mounts.iter().map(String::as_str).collect();
    let rtsp = RtspProcess::start(&serve, free_port().expect("port"), &mounts).expect("rtsp server");
    let rec = Recorder::start(broker.port(), &format!("lookout/v1/{SITE}/#")).await.expect("recorder");

    // gw-c reaches etcd only through proxies the test can cut.
    let mut proxies = Vec::new();
    for i in 0..3 {
        proxies.push(TcpProxy::start(etcd.client_port(i)).await.expect("proxy"));
    }
    let via_proxies: Vec<String> = proxies.iter().map(|p| format!("http://127.0.0.1:{}", p.port)).collect();
    let direct = etcd.endpoints();
    let console = free_port().expect("port");
    let cfg_a = agent_config(&dir, "gw-a", &broker.url(), &direct, None, None);
    let cfg_b = agent_config(&dir, "gw-b", &broker.url(), &direct, Some("local-1"), Some(console));
    let cfg_c = agent_config(&dir, "gw-c", &broker.url(), &via_proxies, None, None);
    let mut agents: BTreeMap<&str, AgentProcess> = BTreeMap::new();
    for (id, cfg) in [("gw-a", &cfg_a), ("gw-b", &cfg_b), ("gw-c", &cfg_c)] {
        agents.insert(id, AgentProcess::start(cfg).expect("agent"));
    }
    wait_status(&cfg_a, "three members", |s| s["members"].as_array().is_some_and(|m| m.len() == 3)).await;

    // 1. The inventory, through the CLI, while the agents run.
    let cam = |i: usize| {
        json!({"id": format!("cam{i}"), "url": rtsp.url(&format!("/cam{i}")), "model": "person", "fps": 1.0,
               "min_score": 0.3, "reconnect_max_secs": 2})
    };
    for i in 1..=CAMERAS {
        let (code, out) = add_camera(&cfg_a, &dir, &cam(i));
        assert_eq!(code, 0, "adding cam{i}: {out}");
    }
    let (code, out) = add_camera(&cfg_a, &dir, &cam(1));
    assert!(code == 2 && out.contains("exists"), "a duplicate is refused: {code} {out}");
    let (code, out) = add_camera(&cfg_a, &dir, &json!({"id": "bad", "url": "http://x", "model": "nope", "fps": 0}));
    assert!(code == 2 && out.contains("model") && out.contains("fps"), "every problem listed: {out}");
    let (code, out) = add_camera(&cfg_a, &dir, &json!({"id": "local-1", "url": rtsp.url("/cam1"), "model": "person"}));
    assert!(code == 2 && out.contains("gw-b"), "a local camera's id is refused: {out}");

    let s = wait_status(&cfg_a, "12 cameras spread over 3 gateways", |s| {
        site_settled(s, 3, CAMERAS)
            && s["members"]
                .as_array()
                .is_some_and(|ms| ms.iter().all(|m| m["assigned"].as_array().map_or(0, Vec::len) >= 3))
    })
    .await;
    let table = site_assignment(&s);
    for m in s["members"].as_array().expect("members") {
        assert!(m["load"].as_f64().expect("load") <= CAPACITY, "within capacity: {m}");
    }
    let since = SystemTime::now();
    let seen = rec
        .wait_for(WAIT, "every camera analysed", |msgs| analysed_by(msgs, since).len() == CAMERAS)
        .await
        .expect("detections");
    for (camera, by) in analysed_by(&seen, since) {
        assert_eq!(by.len(), 1, "{camera} analysed by exactly one gateway, got {by:?}");
        assert_eq!(by.first(), table.get(&camera), "{camera} analysed where it is assigned");
    }
    // A gateway refuses local commands that name a site camera, with why.
    let op = Operator::connect(broker.port(), &format!("lookout/v1/{SITE}/gw-b")).await.expect("operator");
    let mine = cameras_of(&table, "gw-b");
    for (name, payload) in [
        ("camera.add", json!({"request_id": "site-1", "camera": cam(1)})),
        ("camera.remove", json!({"request_id": "site-2", "id": mine[0]})),
    ] {
        let reply = op.call(name, payload, WAIT).await.expect("reply");
        assert_eq!(reply["error"]["code"], "site_camera", "{name}: {reply}");
    }
    drop(op);

    // gw-b's console and metrics show the same site.
    let api = http_request(console, "GET", "/api/status", &[]).expect("console").json().expect("json");
    assert_eq!(api["site"]["members"].as_array().map(Vec::len), Some(3), "{api}");
    assert_eq!(api["site"]["assignment"], serde_json::to_value(&table).expect("table"), "{api}");
    let metrics = http_request(console, "GET", "/metrics", &[]).expect("metrics").text();
    let metric = |name: &str| {
        metrics.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<f64>().ok()).expect(name)
    };
    let mine = cameras_of(&table, "gw-b").len() as f64;
    assert_eq!(metric("lookout_site_members"), 3.0);
    assert_eq!(metric("lookout_site_assigned_cameras"), mine);
    assert_eq!(metric("lookout_site_running_cameras"), mine);
    assert_eq!(metric("lookout_site_unassigned_cameras"), 0.0);
    assert!(metric("lookout_site_lease_renewals_total") >= 1.0 && metric("lookout_site_member") == 1.0, "{metrics}");

    // And the agent page draws it: a row per member and per site camera.
    let browser = lookout_e2e::browser::Browser::start().expect("headless chromium");
    browser.goto(&format!("http://127.0.0.1:{console}/agent")).expect("open the console");
    let script = "return [document.querySelectorAll('#site .site-members tr').length, \
                  document.querySelectorAll('#site .site-cameras tr').length, document.body.innerText]";
    let deadline = Instant::now() + Duration::from_secs(30);
    let drawn = loop {
        let v = browser.eval(script).unwrap_or_default();
        if v[0] == 4 && v[1] == CAMERAS + 1 {
            break v;
        }
        assert!(Instant::now() < deadline, "the site panel: {v}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(drawn[2].as_str().is_some_and(|t| t.contains("(leader)")), "the leader is marked: {drawn}");
    drop(browser);

    // The platform sees the same table in the leader's retained `lookout.site/1`.
    let site_topic = format!("lookout/v1/{SITE}/site");
    let want: Value = serde_json::to_value(&table).expect("table");
    rec.wait_for(WAIT, "lookout.site/1 with the table", |msgs| {
        msgs.iter()
            .rev()
            .find(|m| m.topic == site_topic)
            .is_some_and(|m| m.json["assignment"] == want && m.json["members"].as_array().is_some_and(|a| a.len() == 3))
    })
    .await
    .expect("the site message");
    println!(
        "spread: {:?}",
        s["members"]
            .as_array()
            .map(|ms| ms.iter().map(|m| (m["agent"].clone(), m["load"].clone())).collect::<Vec<_>>())
    );

    // 2. SIGKILL gw-a: its cameras come back from the others.
    let orphans = cameras_of(&table, "gw-a");
    drop(agents.remove("gw-a"));
    let (killed, killed_wall) = (Instant::now(), SystemTime::now());
    let msgs = rec
        .wait_for(WAIT, "gw-a's cameras analysed elsewhere", |msgs| {
            let by = analysed_by(msgs, killed_wall);
            orphans.iter().all(|c| by.get(c).is_some_and(|a| a.iter().any(|x| x != "gw-a")))
        })
        .await
        .expect("failover");
    let failover = orphans
        .iter()
        .map(|c| {
            msgs.iter()
                .filter(|m| m.at >= killed && detection(m).is_some_and(|(a, cam, _)| &cam == c && a != "gw-a"))
                .map(|m| m.at - killed)
                .min()
                .expect("a message after the kill")
        })
        .max()
        .expect("gw-a had cameras");
    println!("failover after SIGKILL: {failover:?} (TTL {TTL} s, {} cameras)", orphans.len());
    assert!(failover <= Duration::from_secs(TTL + 10), "failover took {failover:?}");

    // 3. gw-a rejoins: only cameras moving to it move, at most its share plus one.
    let before = wait_status(&cfg_b, "two members running everything", |s| site_settled(s, 2, CAMERAS)).await;
    agents.insert("gw-a", AgentProcess::start(&cfg_a).expect("gw-a again"));
    let after = wait_status(&cfg_b, "gw-a given cameras again", |s| {
        site_settled(s, 3, CAMERAS) && cameras_of(&site_assignment(s), "gw-a").len() >= 3
    })
    .await;
    let (old, new) = (site_assignment(&before), site_assignment(&after));
    let moved: Vec<&String> = new.keys().filter(|c| old.get(*c) != new.get(*c)).collect();
    assert!(moved.iter().all(|c| new[*c] == "gw-a"), "only moves towards the rejoined gateway: {moved:?}");
    assert!(moved.len() <= CAMERAS / 3 + 1, "at most its share plus one camera moved: {moved:?}");
    println!("rejoin moved {} cameras", moved.len());

    // 4. One etcd member down: nothing moves. Quorum lost: `keep` holds everything.
    etcd.kill(0);
    let t0 = SystemTime::now();
    let window = |from: SystemTime| {
        let rec = &rec;
        async move {
            let until = from + Duration::from_secs(2 * TTL);
            rec.wait_for(WAIT, "a window of detections", |msgs| {
                msgs.iter().filter_map(detection).any(|(_, _, ts)| ts > until)
                    && analysed_by(msgs, until - Duration::from_secs(TTL)).len() == CAMERAS
            })
            .await
            .expect("detections")
        }
    };
    let msgs = window(t0).await;
    let by = analysed_by(&msgs, t0 + Duration::from_secs(TTL));
    for (c, a) in &new {
        assert_eq!(
            by.get(c).map(|s| s.iter().collect::<Vec<_>>()),
            Some(vec![a]),
            "{c} stays on {a} with one etcd member down"
        );
    }
    assert_eq!(site_assignment(&status(&cfg_b)), new, "nothing moved with one member down");
    etcd.kill(1);
    let t1 = SystemTime::now();
    let msgs = window(t1).await;
    let by = analysed_by(&msgs, t1 + Duration::from_secs(TTL));
    for (c, a) in &new {
        assert_eq!(by.get(c).map(|s| s.iter().collect::<Vec<_>>()), Some(vec![a]), "{c} kept on {a} without quorum");
    }
    etcd.restart(0).expect("etcd n1");
    etcd.restart(1).expect("etcd n2");
    etcd.wait_for_leader(WAIT).expect("quorum back");
    let back = wait_status(&cfg_b, "the site after quorum returns", |s| site_settled(s, 3, CAMERAS)).await;
    assert_eq!(site_assignment(&back), new, "nothing moved when quorum came back");
    for (id, a) in &agents {
        assert!(
            !a.log().contains("stopping the site cameras"),
            "{id} never stopped its cameras: etcd was never lost alone"
        );
    }

    // 5. gw-c cut off from etcd: it stops its cameras before anyone else starts them.
    let cut_cams = cameras_of(&new, "gw-c");
    for p in &proxies {
        p.cut();
    }
    let cut_wall = SystemTime::now();
    let msgs = rec
        .wait_for(WAIT, "gw-c's cameras analysed elsewhere", |msgs| {
            let by = analysed_by(msgs, cut_wall);
            cut_cams.iter().all(|c| by.get(c).is_some_and(|a| a.iter().any(|x| x != "gw-c")))
        })
        .await
        .expect("gw-c's cameras moved");
    for c in &cut_cams {
        let of = |pred: &dyn Fn(&str) -> bool| {
            msgs.iter()
                .filter_map(detection)
                .filter(|(a, cam, _)| cam == c && pred(a))
                .map(|(_, _, ts)| ts)
                .collect::<Vec<_>>()
        };
        let last_c = of(&|a| a == "gw-c").into_iter().max().expect("gw-c ran it");
        let first_other = of(&|a| a != "gw-c").into_iter().filter(|ts| *ts >= cut_wall).min().expect("another runs it");
        let gap = first_other.duration_since(last_c).unwrap_or_else(|e| panic!("{c}: overlap of {:?}", e.duration()));
        println!("{c}: gw-c's last frame {gap:?} before the new gateway's first");
    }
    assert!(agents["gw-c"].log().contains("stopping the site cameras"), "gw-c says why it stopped");
    // Alive, gw-c ends every track it had on the cameras it gave up (the new gateway starts
    // its own).
    let events = format!("lookout/v1/{SITE}/gw-c/cameras/");
    rec.wait_for(WAIT, "gw-c's tracks on its old cameras ended", |msgs| {
        let of = |kind: &str| -> BTreeSet<(String, u64)> {
            msgs.iter()
                .filter(|m| m.topic.starts_with(&events) && m.topic.ends_with("/events") && m.json["type"] == kind)
                .filter_map(|m| {
                    let cam = m.json["camera"].as_str()?.to_string();
                    cut_cams.contains(&cam).then_some((cam, m.json["object"]["track_id"].as_u64()?))
                })
                .collect()
        };
        let (new, end) = (of("object.new"), of("object.end"));
        !new.is_empty() && new.is_subset(&end)
    })
    .await
    .expect("every track gw-c started on them ended");

    // 6. A camera removed through the CLI stops everywhere.
    let (code, out, err) = site_cli(&["camera", "remove", "-c", path(&cfg_a), "cam1"]);
    assert_eq!(code, 0, "remove: {out}{err}");
    wait_status(&cfg_a, "cam1 gone", |s| {
        site_settled(s, 2, CAMERAS - 1)
            && s["members"].as_array().is_some_and(|ms| {
                ms.iter().all(|m| !m["running"].as_array().is_some_and(|r| r.iter().any(|x| x == "cam1")))
            })
    })
    .await;
    let (code, _, _) = site_cli(&["camera", "remove", "-c", path(&cfg_a), "cam1"]);
    assert_eq!(code, 2, "removing it again is refused");
    drop(agents);
    assert!(rec.violations().is_empty(), "every message matched its schema: {:?}", rec.violations());
}

/// A gateway and the CLI reach etcd over mutual TLS as an etcd user limited to the site's
/// prefix; `site camera update` changes a running camera; the password never shows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_joins_over_mutual_tls_as_an_etcd_user_limited_to_its_site() {
    let dir = scratch("site-tls");
    make_pki(&dir, "etcd");
    let (client_port, peer_port) = (free_port().expect("port"), free_port().expect("port"));
    let url = format!("https://127.0.0.1:{client_port}");
    let peer = format!("http://127.0.0.1:{peer_port}");
    let f = |name: &str| dir.join(name).display().to_string();
    let mut etcd = std::process::Command::new("etcd")
        .args(["--name", "t1", "--data-dir", &f("etcd-data"), "--log-level", "warn"])
        .args(["--listen-client-urls", &url, "--advertise-client-urls", &url])
        .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
        .args(["--initial-cluster", &format!("t1={peer}")])
        .args(["--cert-file", &f("etcd-server.pem"), "--key-file", &f("etcd-server.key")])
        .args(["--trusted-ca-file", &f("etcd-ca.pem"), "--client-cert-auth"])
        .stderr(std::fs::File::create(dir.join("etcd.log")).expect("log"))
        .spawn()
        .expect("etcd");
    let ctl = |args: &[&str]| {
        std::process::Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &url, "--cacert", &f("etcd-ca.pem"), "--cert", &f("etcd-client.pem")])
            .args(["--key", &f("etcd-client.key"), "--command-timeout=3s"])
            .args(args)
            .output()
            .expect("etcdctl")
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ctl(&["endpoint", "health"]).status.success() {
        assert!(Instant::now() < deadline, "etcd over TLS never became healthy");
        std::thread::sleep(Duration::from_millis(200));
    }
    for args in [
        &["user", "add", "root:root-pw-1"][..],
        &["role", "add", "lookout"],
        &["role", "grant-permission", "lookout", "--prefix=true", "readwrite", &format!("lookout/v1/{SITE}/")],
        &["user", "add", "lookout:s3cret-etcd-pw"],
        &["user", "grant-role", "lookout", "lookout"],
        &["auth", "enable"],
    ] {
        let out = ctl(args);
        assert!(out.status.success(), "etcdctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }

    let d = dir.join("gw-tls");
    std::fs::create_dir_all(&d).expect("dir");
    std::fs::write(d.join("etcd-password"), "s3cret-etcd-pw\n").expect("password");
    let text = format!(
        "[agent]\nsite = \"{SITE}\"\nid = \"gw-tls\"\nstate_dir = \"{}\"\n\n[mqtt]\nurl = \"mqtt://127.0.0.1:{}\"\n\n\
         [inference]\nthreads = 1\n\n[telemetry]\nlisten = \"off\"\n\n[[models]]\nname = \"person\"\nmanifest = \"{}\"\n\n\
         [site]\nendpoints = [\"{url}\"]\nca_file = \"{}\"\nclient_cert = \"{}\"\nclient_key = \"{}\"\n\
         username = \"lookout\"\npassword_file = \"{}\"\ncapacity = 4\n",
        d.join("state").display(),
        free_port().expect("port"),
        person_manifest().display(),
        f("etcd-ca.pem"),
        f("etcd-client.pem"),
        f("etcd-client.key"),
        d.join("etcd-password").display()
    );
    let cfg = d.join("lookout.toml");
    std::fs::write(&cfg, &text).expect("config");
    let agent = AgentProcess::start(&cfg).expect("agent");
    wait_status(&cfg, "the gateway a member over TLS", |s| s["members"].as_array().is_some_and(|m| m.len() == 1)).await;

    let camera = json!({"id": "cam-t", "url": "rtsp://127.0.0.1:9/none", "model": "person", "fps": 1.0});
    let (code, out) = add_camera(&cfg, &d, &camera);
    assert_eq!(code, 0, "{out}");
    wait_status(&cfg, "cam-t running on gw-tls", |s| site_settled(s, 1, 1) && site_assignment(s)["cam-t"] == "gw-tls")
        .await;
    let updated = json!({"id": "cam-t", "url": "rtsp://127.0.0.1:9/none", "model": "person", "fps": 2.0});
    let file = d.join("cam-t-2.json");
    std::fs::write(&file, updated.to_string()).expect("json");
    let (code, out, err) = site_cli(&["camera", "update", "-c", path(&cfg), path(&file)]);
    assert_eq!(code, 0, "update: {out}{err}");
    wait_status(&cfg, "the update running", |s| s["members"][0]["load"].as_f64() == Some(2.0)).await;
    let (code, out, err) = site_cli(&["camera", "update", "-c", path(&cfg), path(&dir.join("missing.json"))]);
    assert_ne!(code, 0, "updating from a missing file fails: {out}{err}");

    // A wrong password is refused by etcd, and no password is ever shown.
    std::fs::write(d.join("etcd-password"), "wrong-pw-9\n").expect("password");
    let (code, out, err) = site_cli(&["status", "-c", path(&cfg)]);
    assert_eq!(code, 1, "a refused login is an etcd failure: {out}{err}");
    let (_, log) = agent.stop().expect("stop");
    let log = format!("{log}{}", std::fs::read_to_string(d.join("lookout.log")).unwrap_or_default());
    for secret in ["s3cret-etcd-pw", "wrong-pw-9"] {
        assert!(!log.contains(secret) && !out.contains(secret) && !err.contains(secret), "{secret} leaked");
    }
    let _ = etcd.kill();
    let _ = etcd.wait();
}
