//! Unit tests of loading, environment overrides and validation.

use super::*;

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn every_config_key_is_in_the_reference_and_the_example() {
    let example = include_str!("../../../config/tollgate.toml");
    let documented: Vec<&str> = reference::KEYS
        .iter()
        .flat_map(|k| k.keys)
        .copied()
        .collect();
    let value = toml::Value::try_from(Config::default()).unwrap();
    let mut n = 0;
    for (section, table) in value.as_table().unwrap() {
        for (key, v) in table.as_table().unwrap() {
            let full = format!("{section}.{key}");
            // A nested table (`proxy.sasl`) is documented key by key, or as `proxy.sasl.*`.
            let found = match v.as_table() {
                Some(_) => documented
                    .iter()
                    .any(|d| d.starts_with(&format!("{full}."))),
                None => documented.contains(&full.as_str()),
            };
            assert!(found, "{full} is missing from config::reference::KEYS");
            assert!(
                example.contains(key.as_str()),
                "{key} is missing from config/tollgate.toml"
            );
            n += 1;
        }
    }
    assert!(n >= 15);
}

#[test]
fn the_reference_names_real_keys_and_shows_the_codes_defaults() {
    let example = include_str!("../../../config/tollgate.toml");
    let mut value = toml::Value::try_from(Config::default()).unwrap();
    // Optional tables are unset by default; check their keys against their own defaults.
    let tls = toml::Value::try_from(crate::security::ServerTlsConfig::default()).unwrap();
    value["proxy"]
        .as_table_mut()
        .unwrap()
        .insert("tls".into(), tls);
    for row in reference::KEYS {
        assert!(
            !reference::default_cell(&value, row).is_empty(),
            "{:?}: no default shown",
            row.keys
        );
        for key in row.keys {
            let (section, rest) = key.split_once('.').unwrap();
            assert!(value.get(section).is_some(), "{key}: no section {section}");
            let name = rest.rsplit('.').find(|p| *p != "*").unwrap();
            assert!(
                example.contains(name),
                "{key} is not in config/tollgate.toml"
            );
            // A note on the default must still show the code's value.
            let code = rest
                .split('.')
                .try_fold(&value[section], |v, p| v.get(p))
                .filter(|v| !v.is_table());
            if let (Some(code), false) = (code, row.default_note.is_empty()) {
                let shown = match code {
                    toml::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                assert!(
                    row.default_note.contains(&shown),
                    "{key}: the note {:?} does not show the default {shown}",
                    row.default_note
                );
            }
        }
    }
}

#[test]
fn the_configuration_reference_is_generated() {
    crate::check_generated_doc("docs/configuration.md", &reference::reference_markdown());
}

#[test]
fn defaults_validate() {
    Config::load(None, vec![]).unwrap().validate().unwrap();
}

#[test]
fn example_configs_load_and_validate() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut n = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("tollgate")
            && path.extension().is_some_and(|e| e == "toml")
        {
            Config::load(Some(&path), vec![])
                .and_then(Config::validate)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            n += 1;
        }
    }
    assert!(n >= 1, "no example configs found");
}

#[test]
fn unknown_keys_are_rejected_with_their_name() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("c.toml");
    std::fs::write(&p, "[upstream]\nbootstrap_server = [\"a:1\"]\n").unwrap();
    let e = Config::load(Some(&p), vec![]).unwrap_err().to_string();
    assert!(e.contains("bootstrap_server"), "{e}");
}

#[test]
fn env_overrides_every_kind_of_key() {
    let c = Config::load(
        None,
        env(&[
            ("TOLLGATE_UPSTREAM__BOOTSTRAP_SERVERS", "k1:9092, k2:9093"),
            ("TOLLGATE_PROXY__MAX_CONNECTIONS", "7"),
            ("TOLLGATE_PROXY__ADVERTISED_HOST", "proxy.example"),
            ("TOLLGATE_LOG__LEVEL", "debug"),
            ("TOLLGATE_ADMIN__LISTEN", "127.0.0.1:1"),
            ("TOLLGATE_UNRELATED", "ignored: no double underscore"),
        ]),
    )
    .unwrap();
    assert_eq!(c.upstream.bootstrap_servers, vec!["k1:9092", "k2:9093"]);
    assert_eq!(c.proxy.max_connections, 7);
    assert_eq!(c.proxy.advertised_host.as_deref(), Some("proxy.example"));
    assert_eq!(c.log.level, "debug");
    assert_eq!(c.admin.listen, "127.0.0.1:1");
}

#[test]
fn env_typos_are_errors() {
    let e = Config::load(None, env(&[("TOLLGATE_UPSTREM__X", "1")]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("TOLLGATE_UPSTREM__X"), "{e}");
    let e = Config::load(None, env(&[("TOLLGATE_PROXY__MAX_CONECTIONS", "1")]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("max_conections"), "{e}");
}

#[test]
fn validation_names_the_bad_key() {
    type Case = (fn(&mut Config), &'static str);
    let cases: Vec<Case> = vec![
        (|c| c.proxy.listen = "nope".into(), "proxy.listen"),
        (
            |c| c.upstream.bootstrap_servers = vec![],
            "upstream.bootstrap_servers",
        ),
        (
            |c| c.upstream.bootstrap_servers = vec!["host-without-port".into()],
            "upstream.bootstrap_servers",
        ),
        (|c| c.proxy.max_frame_bytes = 10, "proxy.max_frame_bytes"),
        (
            |c| {
                c.proxy.listen = "0.0.0.0:9105".into();
                c.proxy.broker_port_base = 9100;
            },
            "proxy.broker_port_base",
        ),
        (
            |c| c.proxy.broker_port_base = 65_500,
            "proxy.broker_port_base",
        ),
    ];
    for (mutate, key) in cases {
        let mut c = Config::default();
        mutate(&mut c);
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains(key), "expected {key} in {e}");
    }
}

#[test]
fn advertised_host_defaults() {
    let mut c = Config::default();
    assert_eq!(c.advertised_host(), "127.0.0.1");
    c.proxy.listen = "10.1.2.3:9092".into();
    assert_eq!(c.advertised_host(), "10.1.2.3");
    c.proxy.advertised_host = Some("tollgate.svc".into());
    assert_eq!(c.advertised_host(), "tollgate.svc");
}

#[test]
fn a_choice_setting_outside_its_words_is_refused_by_its_key() {
    for (var, key) in [
        ("TOLLGATE_LOG__FORMAT", "log.format"),
        ("TOLLGATE_TIERED__LAG_UNIT", "tiered.lag_unit"),
        ("TOLLGATE_TIERED__MIRROR", "tiered.mirror"),
        ("TOLLGATE_TIERED__TOPIC_NAMING", "tiered.topic_naming"),
        (
            "TOLLGATE_TIERED__OFFSET_SYNCS_CLUSTER",
            "tiered.offset_syncs_cluster",
        ),
    ] {
        let err = Config::load(None, env(&[(var, "yaml")])).unwrap_err();
        assert!(
            err.to_string().starts_with(&format!(
                "invalid value for `{key}`: \"yaml\" is not one of"
            )),
            "{err}"
        );
    }
    let c = Config::load(None, env(&[("TOLLGATE_TIERED__MIRROR", "mirrormaker2")])).unwrap();
    assert_eq!(c.tiered.mirror, Mirror::MirrorMaker2);
}
