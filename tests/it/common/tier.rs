//! A tier as it is deployed: Tollgate processes behind a connection-level round-robin TCP
//! balancer (each new connection goes to the next live instance, like a Kubernetes Service or
//! an L4 load balancer without session affinity).
//!
//! Instance `i` binds its bootstrap and broker listeners on `127.0.0.{2+i}` with the same
//! ports; the balancer listens on `127.0.0.1` on those ports and every instance advertises
//! `127.0.0.1`, so every connection of every client, bootstrap or broker, goes through the
//! balancer. Every instance sees every client at 127.0.0.1 (the balancer's address), as
//! instances behind a balancer without the PROXY protocol do.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{free_port, http_get};

/// The round-robin balancer: one listener per port, shared rotation over the backends.
pub struct Balancer {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    /// Connections sent to each backend.
    pub sent: Arc<Vec<AtomicUsize>>,
}

impl Balancer {
    /// Serve on listeners bound earlier (so that nothing takes their ports meanwhile),
    /// forwarding to `{backend}:{port}`.
    pub fn start_on(listeners: Vec<std::net::TcpListener>, backends: Vec<String>) -> Balancer {
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let sent: Arc<Vec<AtomicUsize>> =
            Arc::new(backends.iter().map(|_| AtomicUsize::new(0)).collect());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let counts = sent.clone();
        super::in_own_runtime(async move {
            let next = Arc::new(AtomicUsize::new(0));
            let backends = Arc::new(backends);
            for l in listeners {
                let port = l.local_addr().unwrap().port();
                l.set_nonblocking(true).unwrap();
                let l = tokio::net::TcpListener::from_std(l).expect("balancer listens");
                tokio::spawn(accept(
                    l,
                    port,
                    backends.clone(),
                    next.clone(),
                    counts.clone(),
                ));
            }
            ready_tx.send(()).unwrap();
            let _ = stop_rx.await;
        });
        ready_rx.recv().unwrap();
        Balancer {
            stop: Some(stop),
            sent,
        }
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

async fn accept(
    l: tokio::net::TcpListener,
    port: u16,
    backends: Arc<Vec<String>>,
    next: Arc<AtomicUsize>,
    sent: Arc<Vec<AtomicUsize>>,
) {
    loop {
        let Ok((mut client, _)) = l.accept().await else {
            continue;
        };
        let backends = backends.clone();
        let start = next.fetch_add(1, Ordering::SeqCst);
        let sent = sent.clone();
        tokio::spawn(async move {
            // The next instance in turn; a dead one (connection refused) is skipped.
            for k in 0..backends.len() {
                let i = (start + k) % backends.len();
                let Ok(mut up) = tokio::net::TcpStream::connect((backends[i].as_str(), port)).await
                else {
                    continue;
                };
                sent[i].fetch_add(1, Ordering::SeqCst);
                let _ = up.set_nodelay(true);
                let _ = client.set_nodelay(true);
                let _ = tokio::io::copy_bidirectional(&mut client, &mut up).await;
                return;
            }
        });
    }
}

/// Ports shared by every instance of a tier: bootstrap, and the one broker listener.
#[derive(Debug, Clone, Copy)]
pub struct TierPorts {
    pub bootstrap: u16,
    pub broker: u16,
}

impl TierPorts {
    /// Two ports, held by the balancer's listeners from now on: nothing else (another test's
    /// client connections, say) can take them before the balancer serves.
    pub fn reserve() -> (TierPorts, Vec<std::net::TcpListener>) {
        let bind = || std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
        let (b, k) = (bind(), bind());
        let port = |l: &std::net::TcpListener| l.local_addr().unwrap().port();
        (
            TierPorts {
                bootstrap: port(&b),
                broker: port(&k),
            },
            vec![b, k],
        )
    }

    /// What clients put in `bootstrap.servers`.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.bootstrap)
    }
}

/// One `tollgate run` process.
pub struct Instance {
    pub index: usize,
    pub admin: SocketAddr,
    child: Child,
    pub log: PathBuf,
}

impl Instance {
    /// Start instance `index` of a tier in front of `broker_addr`; `extra` is appended to
    /// its config file (TOML).
    pub async fn start(
        index: usize,
        ports: TierPorts,
        broker_addr: &str,
        dir: &Path,
        extra: &str,
    ) -> Instance {
        let ip = backend_ip(index);
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let config = format!(
            r#"
[proxy]
listen = "{ip}:{bootstrap}"
advertised_host = "127.0.0.1"
broker_bind_host = "{ip}"
broker_port_base = {broker}
max_brokers = 1
shutdown_grace_ms = 2000
[upstream]
bootstrap_servers = ["{broker_addr}"]
startup_timeout_ms = 20000
[admin]
listen = "{admin}"
[tier]
{extra}
"#,
            bootstrap = ports.bootstrap,
            broker = ports.broker,
        );
        let path = dir.join(format!("tollgate-{index}.toml"));
        std::fs::write(&path, config).unwrap();
        let log = dir.join(format!("tollgate-{index}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_tollgate"))
            .args(["run", "-c"])
            .arg(&path)
            .env(
                "RUST_LOG",
                std::env::var("TIER_LOG").unwrap_or_else(|_| "tollgate=info".into()),
            )
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn tollgate");
        let inst = Instance {
            index,
            admin,
            child,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Ok((200, _))) =
                tokio::time::timeout(Duration::from_secs(2), try_get(admin, "/readyz")).await
            {
                return inst;
            }
            assert!(
                Instant::now() < deadline,
                "instance {index} never became ready: {}",
                std::fs::read_to_string(&inst.log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The process id (for /proc: open files, memory).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// How the process ended, if it has.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// SIGKILL: no drain, no goodbye.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub async fn get(&self, path: &str) -> (u16, String) {
        http_get(self.admin, path).await
    }

    pub async fn json(&self, path: &str) -> Option<serde_json::Value> {
        let (code, body) = self.get(path).await;
        (code == 200).then(|| serde_json::from_str(&body).unwrap())
    }

    pub async fn metrics(&self) -> String {
        self.get("/metrics").await.1
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn try_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).await?;
    let status = buf
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok((status, buf))
}

pub fn backend_ip(index: usize) -> String {
    format!("127.0.0.{}", 2 + index)
}

/// A tier of `n` instances behind a balancer.
pub struct Tier {
    pub ports: TierPorts,
    pub instances: Vec<Instance>,
    pub balancer: Balancer,
    pub dir: tempfile::TempDir,
}

impl Tier {
    pub async fn start(n: usize, broker_addr: &str, extra: &str) -> Tier {
        let dir = tempfile::tempdir().unwrap();
        let (ports, listeners) = TierPorts::reserve();
        let mut instances = Vec::new();
        for i in 0..n {
            instances.push(Instance::start(i, ports, broker_addr, dir.path(), extra).await);
        }
        let balancer = Balancer::start_on(listeners, (0..n).map(backend_ip).collect());
        Tier {
            ports,
            instances,
            balancer,
            dir,
        }
    }

    pub fn bootstrap(&self) -> String {
        self.ports.bootstrap()
    }

    /// Sum of a metric over every instance (see [`super::sum_series`]).
    pub async fn sum(&self, metric: &str, labels: &[(&str, &str)]) -> f64 {
        let mut total = 0.0;
        for i in &self.instances {
            total += super::sum_series(&i.metrics().await, metric, labels);
        }
        total
    }

    /// Every instance's log, for failure messages.
    pub fn logs(&self) -> String {
        self.instances
            .iter()
            .map(|i| format!("--- instance {} ---\n{}", i.index, i.log_text()))
            .collect()
    }
}
