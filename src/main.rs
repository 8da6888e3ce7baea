//! The `tollgate` command line.
//!
//! - `tollgate run [--config FILE] [--bootstrap-server HOST:PORT]... [--listen ADDR] [--admin-listen ADDR]`
//! - `tollgate check-config FILE`
//! - `tollgate mirror [--config FILE] [--until-caught-up]`
//! - `tollgate loadgen [--bootstrap-server ADDR] [--topic T] [--rate N] ...`
//!
//! Errors are one line on stderr that says what to do, and a non-zero exit.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tollgate::control::config::Config;

#[derive(Parser)]
#[command(name = "tollgate", version, about = "Kafka wire-protocol proxy")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    Run {
        /// Configuration file (TOML). Without one, built-in defaults and environment overrides apply.
        #[arg(long, short = 'c')]
        config: Option<PathBuf>,
        /// Upstream bootstrap server (repeat or comma-separate); overrides upstream.bootstrap_servers.
        #[arg(long = "bootstrap-server", value_delimiter = ',')]
        bootstrap_servers: Vec<String>,
        /// Bootstrap listener address; overrides proxy.listen.
        #[arg(long)]
        listen: Option<String>,
        /// Admin HTTP listener address; overrides admin.listen.
        #[arg(long = "admin-listen")]
        admin_listen: Option<String>,
    },
    /// Generate steady traffic with a real Kafka client: produce at a fixed rate and read it
    /// back in a consumer group (used by the local stack).
    Loadgen {
        #[arg(long = "bootstrap-server", default_value = "127.0.0.1:9092")]
        bootstrap_server: String,
        #[arg(long, default_value = "tollgate-demo")]
        topic: String,
        #[arg(long, default_value = "tollgate-demo-readers")]
        group: String,
        /// Messages per second.
        #[arg(long, default_value_t = 100)]
        rate: u64,
        /// Message size in bytes.
        #[arg(long, default_value_t = 200)]
        size: usize,
        /// Stop after this many seconds (default: run until interrupted).
        #[arg(long)]
        duration_secs: Option<u64>,
    },
    /// Copy the `tiered.topics` from the primary (`upstream`) to the secondary cluster,
    /// partition-for-partition, writing MirrorMaker 2-format offset syncs for exact offset
    /// translation. Resumes exactly after a restart. Runs until SIGTERM/SIGINT.
    Mirror {
        /// Configuration file (TOML): `upstream.bootstrap_servers` and the `tiered` section.
        #[arg(long, short = 'c')]
        config: Option<PathBuf>,
        /// Exit once every partition has reached the primary's end.
        #[arg(long)]
        until_caught_up: bool,
    },
    /// Ask a running Tollgate's admin listener whether it is healthy (for a container
    /// HEALTHCHECK, where no HTTP client is installed): exit 0 on HTTP 200, 1 otherwise.
    Health {
        /// The admin listener (admin.listen).
        #[arg(long, default_value = "127.0.0.1:9644")]
        admin: String,
        /// `/healthz` (the process answers) or `/readyz` (it serves clients).
        #[arg(long, default_value = "/readyz")]
        path: String,
    },
    /// The consumer table in a terminal, for one instance or a whole tier (repeat --admin):
    /// read rates (hot and cold), lag, status, tier and serving cluster per group.
    Top {
        /// Admin listeners (`host:port`) of the instances to show; repeat or comma-separate.
        #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:9644")]
        admin: Vec<String>,
        /// Seconds between refreshes.
        #[arg(long, default_value_t = 3)]
        interval: u64,
        /// Print the table once and exit.
        #[arg(long)]
        once: bool,
        /// The admin token (for `admin.protect_reads`).
        #[arg(long)]
        token_file: Option<PathBuf>,
    },
    /// Validate a configuration file (with environment overrides applied) and exit.
    CheckConfig {
        /// The configuration file to check (and the registry it names, if any).
        file: Option<PathBuf>,
        /// Check this consumer registry file (see config/registry.toml).
        #[arg(long)]
        registry: Option<PathBuf>,
    },
}

fn load(path: Option<&std::path::Path>) -> Result<Config, String> {
    Config::load(path, std::env::vars())
        .and_then(Config::validate)
        .map_err(|e| e.to_string())
}

/// `check-config`: the config file, the registry it names, and/or a registry file given
/// with `--registry`. Exit 2 with one line naming the file, entry and key on error.
fn check_config(file: Option<PathBuf>, registry: Option<PathBuf>) -> ExitCode {
    if file.is_none() && registry.is_none() {
        eprintln!("tollgate: check-config needs a config FILE and/or --registry FILE");
        return ExitCode::from(2);
    }
    let mut registries: Vec<PathBuf> = registry.into_iter().collect();
    if let Some(file) = &file {
        match load(Some(file)) {
            Ok(c) => {
                println!("{}: ok", file.display());
                registries.extend(c.governance.registry.map(PathBuf::from));
            }
            Err(e) => {
                eprintln!("tollgate: {e}");
                return ExitCode::from(2);
            }
        }
    }
    for r in registries {
        match tollgate::control::registry::Registry::load(&r) {
            Ok(reg) => println!(
                "{}: ok ({} consumer entries, {} standalone, mode {})",
                r.display(),
                reg.consumers.len(),
                reg.standalone.len(),
                reg.mode.label()
            ),
            Err(e) => {
                eprintln!("tollgate: {e}");
                return ExitCode::from(2);
            }
        }
    }
    ExitCode::SUCCESS
}

/// `top`: exit 1 when no instance answers.
fn top(admins: &[String], interval: u64, once: bool, token_file: Option<PathBuf>) -> ExitCode {
    let token = match token_file.map(|p| std::fs::read_to_string(&p)) {
        Some(Ok(t)) => Some(t.trim().to_string()),
        Some(Err(e)) => {
            eprintln!("tollgate top: token file: {e}");
            return ExitCode::from(2);
        }
        None => None,
    };
    loop {
        let mut docs = Vec::new();
        let mut errors = Vec::new();
        for a in admins {
            match tollgate::admin::top::get(a, "/v1/console", token.as_deref())
                .and_then(|body| Ok(serde_json::from_str(&body)?))
            {
                Ok(doc) => docs.push(doc),
                Err(e) => errors.push(format!("{e:#}")),
            }
        }
        let table = tollgate::admin::top::render(&tollgate::admin::top::merge(&docs));
        if !once {
            print!("\x1b[H\x1b[2J");
        }
        print!("{table}");
        for e in &errors {
            eprintln!("tollgate top: {e}");
        }
        if once {
            return if docs.is_empty() {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            };
        }
        std::thread::sleep(std::time::Duration::from_secs(interval.max(1)));
    }
}

/// `health`: one plain HTTP GET to the admin listener, 2 s at most.
fn health(admin: &str, path: &str) -> ExitCode {
    use std::io::{Read, Write};
    let timeout = std::time::Duration::from_secs(2);
    let status = (|| -> std::io::Result<String> {
        let addr = std::net::ToSocketAddrs::to_socket_addrs(admin)?
            .next()
            .ok_or_else(|| std::io::Error::other("no address"))?;
        let mut s = std::net::TcpStream::connect_timeout(&addr, timeout)?;
        s.set_read_timeout(Some(timeout))?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n"
        )?;
        let mut head = [0u8; 64];
        let n = s.read(&mut head)?;
        Ok(String::from_utf8_lossy(&head[..n]).into_owned())
    })();
    match status {
        Ok(line) if line.starts_with("HTTP/1.1 200") => ExitCode::SUCCESS,
        Ok(line) => {
            eprintln!(
                "tollgate health: {}",
                line.lines().next().unwrap_or("no answer")
            );
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("tollgate health: {admin}: {e}");
            ExitCode::from(1)
        }
    }
}

/// `mirror`: exit 2 on a bad config, 1 when the mirror stops on an error.
fn mirror(config: Option<PathBuf>, until_caught_up: bool) -> ExitCode {
    let cfg = match load(config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tollgate: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging(&cfg);
    let opts = match tollgate::tiered::mirror::MirrorOptions::from_config(&cfg, until_caught_up) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("tollgate mirror: {e}");
            return ExitCode::from(2);
        }
    };
    // SIGTERM / SIGINT: stop after the record in hand, flushing what was sent.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = stop.clone();
    std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(wait_for_signal());
        flag.store(true, std::sync::atomic::Ordering::SeqCst);
    });
    match tollgate::tiered::mirror::run(&opts, stop) {
        Ok(s) => {
            eprintln!(
                "tollgate mirror: {} records, {} offset syncs written",
                s.records, s.syncs
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tollgate mirror: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(config: &Config) {
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| config.log.level.clone());
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if config.log.format == tollgate::control::config::LogFormat::Json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { file, registry } => check_config(file, registry),
        Command::Health { admin, path } => health(&admin, &path),
        Command::Top {
            admin,
            interval,
            once,
            token_file,
        } => top(&admin, interval, once, token_file),
        Command::Mirror {
            config,
            until_caught_up,
        } => mirror(config, until_caught_up),
        Command::Loadgen {
            bootstrap_server,
            topic,
            group,
            rate,
            size,
            duration_secs,
        } => match tollgate::loadgen::steady(
            &bootstrap_server,
            &topic,
            &group,
            rate,
            size,
            duration_secs.map(std::time::Duration::from_secs),
        ) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("tollgate loadgen: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Run {
            config,
            bootstrap_servers,
            listen,
            admin_listen,
        } => {
            let mut cfg = match Config::load(config.as_deref(), std::env::vars()) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("tollgate: {e}");
                    return ExitCode::from(2);
                }
            };
            if !bootstrap_servers.is_empty() {
                cfg.upstream.bootstrap_servers = bootstrap_servers;
            }
            if let Some(l) = listen {
                cfg.proxy.listen = l;
            }
            if let Some(a) = admin_listen {
                cfg.admin.listen = a;
            }
            let cfg = match cfg.validate() {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("tollgate: {e}");
                    return ExitCode::from(2);
                }
            };
            init_logging(&cfg);
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .expect("tokio runtime");
            runtime.block_on(run(cfg))
        }
    }
}

async fn run(cfg: Config) -> ExitCode {
    let running = match tollgate::proxy::start(cfg).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tollgate: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "tollgate: listening on {} (admin http://{}/metrics)",
        running.bootstrap_addr, running.admin_addr
    );
    wait_for_signal().await;
    tracing::info!("shutdown signal received; draining connections");
    running.shutdown().await;
    ExitCode::SUCCESS
}

async fn wait_for_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("install SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
