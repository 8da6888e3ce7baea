//! The `tollgate` binary as an operator runs it: config checks, clear start-up errors,
//! running with no config file, and SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

/// A `tollgate` child process, killed when dropped: a failed assertion must not leave it
/// running (it would hold its ports for the tests after it).
struct Running(std::process::Child);

impl std::ops::Deref for Running {
    type Target = std::process::Child;
    fn deref(&self) -> &std::process::Child {
        &self.0
    }
}

impl std::ops::DerefMut for Running {
    fn deref_mut(&mut self) -> &mut std::process::Child {
        &mut self.0
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn tollgate() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tollgate"));
    c.env("RUST_LOG", "warn");
    c
}

#[test]
fn check_config_accepts_the_examples_and_names_bad_keys() {
    let ok = tollgate()
        .args([
            "check-config",
            concat!(env!("CARGO_MANIFEST_DIR"), "/config/tollgate.toml"),
        ])
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[proxy]\nmax_frame_bytes = 10\n").unwrap();
    let out = tollgate().arg("check-config").arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("proxy.max_frame_bytes"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");

    std::fs::write(&bad, "[upstream]\nbootstrap = [\"x:1\"]\n").unwrap();
    let out = tollgate().arg("check-config").arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bootstrap"));

    let out = tollgate()
        .arg("check-config")
        .arg(&bad)
        .env("TOLLGATE_PROXY__NOPE", "1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn check_config_validates_the_registry_and_names_entry_and_key() {
    let ok = tollgate()
        .args([
            "check-config",
            "--registry",
            concat!(env!("CARGO_MANIFEST_DIR"), "/config/registry.toml"),
        ])
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains("consumer entries"));

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("registry.toml");
    std::fs::write(
        &bad,
        "[[consumer]]\ngroup = \"g\"\nowner = \"o\"\ncontact = \"c\"\nlag_slo_seconds = 5\n",
    )
    .unwrap();
    let out = tollgate()
        .arg("check-config")
        .arg("--registry")
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("consumer[0] (g): topics"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");

    // A config naming a registry checks the registry too.
    let cfg = dir.path().join("tollgate.toml");
    std::fs::write(
        &cfg,
        format!("[governance]\nregistry = {:?}\n", bad.display().to_string()),
    )
    .unwrap();
    let out = tollgate().arg("check-config").arg(&cfg).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("topics"));
}

#[test]
fn unreachable_bootstrap_servers_fail_fast_with_a_clear_message() {
    let dead = format!("127.0.0.1:{}", free_port());
    let started = Instant::now();
    let out = tollgate()
        .args([
            "run",
            "--bootstrap-server",
            &dead,
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .env("TOLLGATE_UPSTREAM__STARTUP_TIMEOUT_MS", "1500")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(started.elapsed() < Duration::from_secs(10));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot reach the upstream Kafka cluster"),
        "{err}"
    );
    assert!(err.contains(&dead), "{err}");
    assert!(err.contains("--bootstrap-server"), "says what to do: {err}");
}

#[test]
fn a_port_in_use_is_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = tollgate()
        .args([
            "run",
            "--bootstrap-server",
            "127.0.0.1:1",
            "--listen",
            &addr,
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("cannot listen on {addr}")), "{err}");
    assert!(err.contains("--listen"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_without_a_config_file_and_exits_zero_on_sigterm() {
    // Zero config: no broker-port or node-id setting. tansu's node id is 111, outside the
    // old default range 0..=99; it is served on 9100 + 111 mod 100 = 9111. tansu on purpose:
    // the node id is the point (Apache Kafka's test node is 1).
    let broker = Broker::tansu();
    broker.create_topic("cli", 1);
    let listen = format!("127.0.0.1:{}", free_port());
    let admin = format!("127.0.0.1:{}", free_port());
    let mut child = tollgate()
        .args([
            "run",
            "--bootstrap-server",
            &broker.addr(),
            "--listen",
            &listen,
            "--admin-listen",
            &admin,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map(Running)
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.contains(&listen), "{line}");

    let (status, body) = http_get(admin.parse().unwrap(), "/readyz").await;
    assert_eq!((status, body.trim()), (200, "ready"));
    let (_, brokers) = http_get(admin.parse().unwrap(), "/v1/brokers").await;
    assert!(
        brokers.contains("\"node_id\": 111") && brokers.contains("127.0.0.1:9111"),
        "{brokers}"
    );
    let p = producer(&listen, "cli-producer");
    produce_known(&p, "cli", 20, "cli").await;
    let got = read_all_async(listen.clone(), "cli", 1, 20, Duration::from_secs(20)).await;
    assert_eq!(got.len(), 20);
    drop(p);

    // SIGHUP with no registry configured: logged, nothing to reload; the process keeps serving
    // (SIGHUP's default action would end it).
    let hup = Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        child.try_wait().unwrap().is_none(),
        "SIGHUP must not end tollgate"
    );
    let (status, _) = http_get(admin.parse().unwrap(), "/readyz").await;
    assert_eq!(status, 200);

    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "tollgate did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_registry() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let registry = dir.path().join("registry.toml");
    let entry = |group: &str| {
        format!(
            "[[consumer]]\ngroup = \"{group}\"\nowner = \"o\"\ncontact = \"c\"\ntopics = [\"t\"]\nlag_slo_seconds = 60\n"
        )
    };
    std::fs::write(&registry, entry("first")).unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let admin = format!("127.0.0.1:{}", free_port());
    let mut child = tollgate()
        .args([
            "run",
            "--bootstrap-server",
            &broker.addr(),
            "--listen",
            &listen,
        ])
        .args(["--admin-listen", &admin])
        .env("TOLLGATE_PROXY__BROKER_PORT_BASE", "0")
        .env("TOLLGATE_GOVERNANCE__REGISTRY", &registry)
        // No file watch: only the signal can reload.
        .env("TOLLGATE_GOVERNANCE__WATCH_INTERVAL_MS", "0")
        .env("TOLLGATE_STATE__TOPIC", "")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map(Running)
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let admin: std::net::SocketAddr = admin.parse().unwrap();
    assert!(http_get(admin, "/v1/registry")
        .await
        .1
        .contains("\"first\""));

    std::fs::write(&registry, entry("second")).unwrap();
    let hup = Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    while !http_get(admin, "/v1/registry")
        .await
        .1
        .contains("\"second\"")
    {
        assert!(
            Instant::now() < deadline,
            "SIGHUP did not reload the registry"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let text = http_get(admin, "/metrics").await.1;
    assert_eq!(
        metric_value(&text, "tollgate_registry_reloads_total{result=\"ok\"}"),
        1.0
    );
    assert!(child.try_wait().unwrap().is_none());
    let _ = child.kill();
    let _ = child.wait();
}
