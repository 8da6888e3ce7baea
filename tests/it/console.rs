//! The console in a real browser: headless Chromium (Debian's package, installed by
//! scripts/install-test-deps) loads `/` from a Tollgate with live traffic on tansu, runs the
//! page's JavaScript, and the rendered DOM must show the live group with a non-zero read
//! rate, its owner from the registry, and a rogue group's refusal; `tollgate top` prints
//! the same table in a terminal. It also saves a
//! screenshot to target/console.png (`TOLLGATE_BLESS=1` copies it to docs/console.png, the
//! one the README shows).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::*;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::Message;

const REGISTRY: &str = r##"
mode = "enforce"
onboarding = "https://wiki.example.com/kafka/onboarding"
[[consumer]]
group = "search-indexer"
owner = "search"
contact = "#search-oncall"
topics = ["console-events"]
lag_slo_seconds = 60
[[consumer]]
group = "billing-invoicer"
owner = "billing"
contact = "#billing-oncall"
topics = ["invoices"]
lag_slo_seconds = 60
"##;

/// A subscribed consumer in `group`: reads up to `want` records within `timeout`.
fn consume(via: &str, client_id: &str, group: &str, want: usize, timeout: Duration) -> usize {
    let c: BaseConsumer = client(via)
        .set("client.id", client_id)
        .set("group.id", group)
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    c.subscribe(&["console-events"]).unwrap();
    let deadline = Instant::now() + timeout;
    let mut got = 0;
    while got < want && Instant::now() < deadline {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
            got += usize::from(m.payload().is_some());
        }
    }
    got
}

fn chromium(args: &[&str], url: &str) -> std::process::Output {
    let profile = tempfile::tempdir().unwrap();
    Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            // Let the page's fetch and first render finish before the dump or screenshot.
            "--virtual-time-budget=5000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .arg(url)
        .output()
        .expect("chromium runs (scripts/install-test-deps installs it)")
}

/// The `data-bps` of the read cell in the row of `group`.
fn read_rate(dom: &str, group: &str) -> Option<f64> {
    let row = dom.split(&format!("<tr data-group=\"{group}\"")).nth(1)?;
    let row = row.split("</tr>").next()?;
    let bps = row.split("data-bps=\"").nth(1)?.split('"').next()?;
    bps.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_shows_live_readers_and_refusals_in_a_browser() {
    let broker = Broker::start();
    broker.create_topic("console-events", 2);
    let dir = tempfile::tempdir().unwrap();
    let registry = dir.path().join("registry.toml");
    std::fs::write(&registry, REGISTRY).unwrap();
    let mut cfg = proxy_config(&[broker.addr()]);
    cfg.governance.registry = Some(registry.display().to_string());
    cfg.lag.evaluate_interval_ms = 500;
    cfg.audit.topic = "console-audit".into();
    cfg.audit.window_seconds = 1;
    let proxy = start_proxy_with(cfg).await;
    let via = proxy.bootstrap_addr.to_string();

    let p = producer(&via, "events-producer");
    produce_known(&p, "console-events", 400, "ev").await;
    let v = via.clone();
    let read = tokio::task::spawn_blocking(move || {
        consume(
            &v,
            "indexer-1",
            "search-indexer",
            400,
            Duration::from_secs(40),
        )
    });
    // The rogue: a group nobody registered, refused at its JoinGroup.
    let v = via.clone();
    let rogue = tokio::task::spawn_blocking(move || {
        consume(
            &v,
            "backfill-script",
            "rogue-backfill",
            1,
            Duration::from_secs(5),
        )
    });
    assert_eq!(read.await.unwrap(), 400);
    assert_eq!(rogue.await.unwrap(), 0);
    // The usage windows of the reads are written (1-second windows).
    tokio::time::sleep(Duration::from_millis(2500)).await;

    let url = format!("http://{}/", proxy.admin_addr);
    let out = chromium(&["--dump-dom"], &url);
    let dom = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        dom.contains("data-loaded=\"true\""),
        "the page did not load its data:\n{dom}"
    );
    let bps = read_rate(&dom, "search-indexer").expect("a row for the live group");
    assert!(bps > 0.0, "the live group reads at {bps} B/s");
    let row = dom
        .split("<tr data-group=\"search-indexer\"")
        .nth(1)
        .unwrap();
    assert!(
        row.contains("#search-oncall"),
        "owner and contact from the registry"
    );
    assert!(row.contains("indexer-1"), "the client id");
    let refusals = dom.split("id=\"refusals\"").nth(1).unwrap();
    assert!(
        refusals.contains("rogue-backfill") && refusals.contains("backfill-script"),
        "the rogue group's refusal and who caused it"
    );
    assert!(dom.contains("https://wiki.example.com/kafka/onboarding"));
    // A registered group nobody runs is listed, not hidden.
    let idle = dom
        .split("<tr data-group=\"billing-invoicer\"")
        .nth(1)
        .expect("idle row");
    assert!(idle.split("</tr>").next().unwrap().contains("NO DATA"));
    // Showback, from the audit topic: the owner's row with the records it read.
    let showback = dom.split("id=\"showback\"").nth(1).unwrap();
    let search = showback
        .split("<td>search</td>")
        .nth(1)
        .expect("the owner's row");
    let search = search.split("</tr>").next().unwrap();
    assert!(search.contains(">400<"), "400 records read: {search}");

    let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console.png");
    let out = chromium(
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=1500,900",
        ],
        &url,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let png = std::fs::read(&shot).unwrap();
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "a real screenshot"
    );
    if std::env::var("TOLLGATE_BLESS").is_ok_and(|v| v == "1") {
        let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs");
        std::fs::create_dir_all(&docs).unwrap();
        std::fs::copy(&shot, docs.join("console.png")).unwrap();
    }
    // The same table in a terminal: `tollgate top`.
    let top = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["top", "--once", "--admin", &proxy.admin_addr.to_string()])
        .output()
        .unwrap();
    assert!(
        top.status.success(),
        "{}",
        String::from_utf8_lossy(&top.stderr)
    );
    let table = String::from_utf8_lossy(&top.stdout);
    let live = table
        .lines()
        .find(|l| l.starts_with("search-indexer"))
        .expect("live row");
    assert!(live.contains("search") && live.contains("OK"), "{table}");
    assert!(table
        .lines()
        .any(|l| l.starts_with("billing-invoicer") && l.contains("NO DATA")));
    drop(p);
    assert!(proxy.shutdown().await);
}
