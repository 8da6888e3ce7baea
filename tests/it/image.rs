//! The container image, built on this machine and run against a real broker.
//!
//! `deploy/image/build.sh` assembles the image with buildah (no registry here; see the
//! script). This test builds it around the binary under test, checks its configuration (user,
//! entrypoint, health check, stop signal, ports), then runs the image's binary in a container
//! with `buildah run --isolation chroot` against tansu and produces and consumes through it.
//! `podman run` cannot start containers in this sandbox (crun's setrlimit is refused), which is
//! why the container is started by buildah; the image is the same.
//!
//! Needs buildah and debootstrap (scripts/install-test-deps) and root.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

fn buildah(args: &[&str]) -> std::process::Output {
    Command::new("buildah")
        .args(args)
        .env("STORAGE_DRIVER", "vfs")
        .output()
        .expect("buildah runs (scripts/install-test-deps installs it)")
}

fn build_image(tag: &str) {
    let out = Command::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/image/build.sh"
    ))
    .args(["--binary", env!("CARGO_BIN_EXE_tollgate"), "--tag", tag])
    .stderr(Stdio::inherit())
    .output()
    .unwrap();
    assert!(out.status.success(), "deploy/image/build.sh failed");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), tag);
}

/// A working container from the image; removed on drop.
struct Container(String);

impl Container {
    fn from(image: &str) -> Container {
        let out = buildah(&["from", image]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Container(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Run `args` in the container as the image's user, on the host network, with `env`.
    fn spawn(&self, env: &[&str], args: &[&str]) -> Running {
        let mut cmd = Command::new("buildah");
        cmd.args(["run", "--isolation", "chroot", "--network", "host"]);
        for e in env {
            cmd.args(["--env", e]);
        }
        let child = cmd
            .args([&self.0, "--"])
            .args(args)
            .env("STORAGE_DRIVER", "vfs")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Running(child)
    }

    fn run(&self, args: &[&str]) -> std::process::Output {
        let mut full = vec![
            "run",
            "--isolation",
            "chroot",
            "--network",
            "host",
            &self.0,
            "--",
        ];
        full.extend_from_slice(args);
        buildah(&full)
    }
}

/// A process started in the container; killed on drop (a failed test leaves nothing behind).
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = buildah(&["rm", &self.0]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_image_runs_as_a_non_root_user_and_serves_clients() {
    let tag = "localhost/tollgate:test";
    build_image(tag);
    let out = buildah(&["inspect", "--type", "image", tag]);
    let image: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let config = &image["Docker"]["config"];
    assert_eq!(config["User"], "10001:10001");
    assert_eq!(config["Entrypoint"][0], "/usr/local/bin/tollgate");
    assert_eq!(config["StopSignal"], "SIGTERM");
    let check: Vec<&str> = config["Healthcheck"]["Test"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(&check[..3], ["CMD", "/usr/local/bin/tollgate", "health"]);
    let ports = &config["ExposedPorts"];
    for port in ["9092", "9644", "9100-9199"] {
        let exposed = ports.get(port).or_else(|| ports.get(format!("{port}/tcp")));
        assert!(exposed.is_some(), "{port} in {ports}");
    }

    let broker = Broker::start();
    broker.create_topic("image", 2);
    let c = Container::from(tag);
    let who = c.run(&["id", "-u"]);
    assert_eq!(String::from_utf8_lossy(&who.stdout).trim(), "10001");
    let listen = format!("127.0.0.1:{}", free_port());
    let admin = format!("127.0.0.1:{}", free_port());
    // Any free broker port (other tests use the default 9100 range).
    let mut running = c.spawn(
        &["TOLLGATE_PROXY__BROKER_PORT_BASE=0"],
        &[
            "/usr/local/bin/tollgate",
            "run",
            "--config",
            "/etc/tollgate/tollgate.toml",
            "--bootstrap-server",
            &broker.addr(),
            "--listen",
            &listen,
            "--admin-listen",
            &admin,
        ],
    );
    let admin_addr: std::net::SocketAddr = admin.parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let listening = tokio::net::TcpStream::connect(admin_addr).await.is_ok();
        if listening && http_get(admin_addr, "/readyz").await.0 == 200 {
            break;
        }
        assert!(
            running.0.try_wait().unwrap().is_none(),
            "the container exited"
        );
        assert!(Instant::now() < deadline, "not ready within 60 s");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // The image's own health check, run in the container as the runtime would.
    let health = c.run(&["/usr/local/bin/tollgate", "health", "--admin", &admin]);
    assert!(
        health.status.success(),
        "{}",
        String::from_utf8_lossy(&health.stderr)
    );

    let p = producer(&listen, "image-producer");
    produce_known(&p, "image", 50, "img").await;
    let got = read_all_async(listen.clone(), "image", 2, 50, Duration::from_secs(30)).await;
    assert_eq!(got.len(), 50);
    drop(p);

    // SIGTERM to the process in the container, as a runtime stops it (its PID is visible
    // here: chroot isolation shares the host's PID namespace). It drains and exits 0, and so
    // does the container.
    let pgrep = Command::new("pgrep")
        .args(["-x", "tollgate"])
        .output()
        .unwrap();
    let pids: Vec<String> = String::from_utf8_lossy(&pgrep.stdout)
        .lines()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&admin))
        })
        .map(str::to_string)
        .collect();
    assert_eq!(
        pids.len(),
        1,
        "one tollgate process for this container: {pids:?}"
    );
    let term = Command::new("kill")
        .args(["-TERM", &pids[0]])
        .status()
        .unwrap();
    assert!(term.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = running.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the container did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "the container exited with {status}");
}
