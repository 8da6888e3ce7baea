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

/// The Kubernetes manifest protects the admin API: a token from a Secret, and a
/// NetworkPolicy that opens the admin port to the monitoring namespace only.
#[test]
fn kubernetes_manifest_protects_the_admin_port() {
    let m = include_str!("../deploy/kubernetes/tollgate.yaml");
    assert!(m.contains("token_file = \"/var/run/secrets/tollgate-admin/token\""));
    assert!(m.contains("mountPath: /var/run/secrets/tollgate-admin"));
    assert!(m.contains("secretName: tollgate-admin"));
    let policy = m
        .split("kind: NetworkPolicy")
        .nth(1)
        .expect("a NetworkPolicy");
    let (open, admin) = policy.split_once("- from:").expect("a from rule");
    assert!(
        !open.contains("9644"),
        "the admin port is not in the open rule"
    );
    assert!(admin.contains("kubernetes.io/metadata.name: monitoring"));
    assert!(admin.contains("port: 9644"));
}
