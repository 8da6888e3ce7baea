//! What ships in `deploy/` is valid: the Prometheus rules pass `promtool check rules`
//! (promtool is fetched by scripts/install-test-deps, like the test broker).

mod common;

use std::path::PathBuf;
use std::process::Command;

#[test]
fn prometheus_rules_pass_promtool() {
    // Make sure the test dependencies (promtool among them) are installed.
    let _ = common::tansu_bin();
    let cache = std::env::var("TOLLGATE_CACHE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/tollgate"));
    let mut promtool = cache.join("promtool-2.42/promtool");
    if !promtool.exists() {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/install-test-deps");
        assert!(Command::new(script).status().unwrap().success());
        promtool = cache.join("promtool-2.42/promtool");
    }
    let rules = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/prometheus/tollgate-rules.yaml"
    );
    let out = Command::new(&promtool)
        .args(["check", "rules", rules])
        .output()
        .expect("run promtool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool rejects the rules:\n{text}");
    assert!(text.contains("SUCCESS"), "{text}");
}
