//! Certificate subjects rendered exactly as Java renders them. Kafka maps an mTLS principal
//! by applying `ssl.principal.mapping.rules` to `X500Principal.getName()` (RFC 2253); a
//! different rendering would let a certificate map to another principal through Tollgate
//! than through the broker. Each case is a real certificate (rcgen), rendered by Tollgate and
//! by the JDK on this machine, and must come out identical; then Kafka-style rules are
//! applied to both renderings.

use std::path::{Path, PathBuf};
use std::process::Command;

use rcgen::{
    BmpString, CertificateParams, DistinguishedName, DnType, DnValue, Ia5String, KeyPair,
    PrintableString, TeletexString, UniversalString,
};
use tollgate::security::tls::{subject_dn, MappingRules};

fn java_subjects(pems: &[PathBuf]) -> Vec<String> {
    let classes = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("x500-java");
    std::fs::create_dir_all(&classes).unwrap();
    let src = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/java/SubjectDn.java");
    let ok = Command::new("javac")
        .args(["-d"])
        .arg(&classes)
        .arg(src)
        .status()
        .expect("javac (a JDK) is needed for this test")
        .success();
    assert!(ok, "javac failed");
    let out = Command::new("java")
        .arg("-cp")
        .arg(&classes)
        .arg("SubjectDn")
        .args(pems)
        .output()
        .expect("java");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

/// A self-signed certificate with `dn` as subject: its DER, written as PEM to `dir/name`.
fn cert(dir: &Path, name: &str, dn: DistinguishedName) -> (PathBuf, Vec<u8>) {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name = dn;
    let key = KeyPair::generate().unwrap();
    let c = params.self_signed(&key).unwrap();
    let path = dir.join(format!("{name}.pem"));
    std::fs::write(&path, c.pem()).unwrap();
    (path, c.der().to_vec())
}

fn dn(entries: Vec<(DnType, DnValue)>) -> DistinguishedName {
    let mut d = DistinguishedName::new();
    for (t, v) in entries {
        d.push(t, v);
    }
    d
}

const TITLE: &[u64] = &[2, 5, 4, 12];
const EMAIL: &[u64] = &[1, 2, 840, 113549, 1, 9, 1];
const DC: &[u64] = &[0, 9, 2342, 19200300, 100, 1, 25];
const UID: &[u64] = &[0, 9, 2342, 19200300, 100, 1, 1];

fn cases() -> Vec<(&'static str, DistinguishedName)> {
    use DnType::*;
    let utf8 = |s: &str| DnValue::Utf8String(s.into());
    vec![
        (
            "plain",
            dn(vec![
                (OrganizationName, utf8("Example")),
                (CommonName, utf8("billing")),
            ]),
        ),
        (
            "specials",
            dn(vec![(CommonName, utf8("a,b+c\"d\\e<f>g;h=i#j"))]),
        ),
        ("edges", dn(vec![(CommonName, utf8(" lead and trail  "))])),
        ("hash", dn(vec![(CommonName, utf8("#first"))])),
        ("unicode", dn(vec![(CommonName, utf8("Zoë 日本"))])),
        ("nul", dn(vec![(CommonName, utf8("a\0b"))])),
        // The case: an attribute Java does not name, whose text looks like a CN.
        (
            "title",
            dn(vec![
                (CommonName, utf8("real")),
                (CustomDnType(TITLE.to_vec()), utf8("CN=admin")),
            ]),
        ),
        (
            "email",
            dn(vec![
                (
                    CustomDnType(EMAIL.to_vec()),
                    DnValue::Ia5String(Ia5String::try_from("a@b.example").unwrap()),
                ),
                (CommonName, utf8("c")),
            ]),
        ),
        (
            "dc-uid",
            dn(vec![
                (CustomDnType(DC.to_vec()), utf8("example")),
                (CustomDnType(UID.to_vec()), utf8("u1")),
                (CommonName, utf8("d")),
            ]),
        ),
        (
            "bmp",
            dn(vec![(
                CommonName,
                DnValue::BmpString(BmpString::try_from("bmp-name").unwrap()),
            )]),
        ),
        (
            "universal",
            dn(vec![(
                CommonName,
                DnValue::UniversalString(UniversalString::try_from("uni").unwrap()),
            )]),
        ),
        (
            "teletex",
            dn(vec![(
                CommonName,
                DnValue::TeletexString(TeletexString::try_from("tele").unwrap()),
            )]),
        ),
        (
            "printable",
            dn(vec![
                (
                    CountryName,
                    DnValue::PrintableString(PrintableString::try_from("DE").unwrap()),
                ),
                (
                    CommonName,
                    DnValue::Ia5String(Ia5String::try_from("ia5").unwrap()),
                ),
            ]),
        ),
        (
            "more",
            dn(vec![
                (LocalityName, utf8("Berlin")),
                (StateOrProvinceName, utf8("BE")),
                (OrganizationalUnitName, utf8("svc")),
                (CommonName, utf8("e")),
            ]),
        ),
    ]
}

#[test]
fn subjects_render_exactly_as_java_renders_them() {
    let dir = tempfile::tempdir().unwrap();
    let made: Vec<(&str, PathBuf, Vec<u8>)> = cases()
        .into_iter()
        .map(|(name, d)| {
            let (p, der) = cert(dir.path(), name, d);
            (name, p, der)
        })
        .collect();
    let java = java_subjects(&made.iter().map(|m| m.1.clone()).collect::<Vec<_>>());
    assert_eq!(java.len(), made.len());
    let mut wrong = Vec::new();
    for ((name, _, der), expected) in made.iter().zip(&java) {
        let ours = subject_dn(der).unwrap_or_default();
        if &ours != expected {
            wrong.push(format!("{name}: java {expected:?}, tollgate {ours:?}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));

    // A greedy rule over Java's rendering finds the real CN, never the title's text.
    let rules = MappingRules::parse(&["RULE:^.*CN=([^,]+).*$/$1/".to_string()]).unwrap();
    let title = made.iter().position(|m| m.0 == "title").unwrap();
    assert_eq!(rules.apply(&java[title]).as_deref(), Some("real"));
    assert_eq!(
        rules.apply(&subject_dn(&made[title].2).unwrap()).as_deref(),
        Some("real")
    );
}

/// Kafka's rules use Java's replacement syntax: `$1` followed by a letter or `_` is group 1
/// and then that character (the regex crate would read a group named `1_svc`).
#[test]
fn replacements_follow_javas_syntax() {
    let r = |rule: &str| MappingRules::parse(&[rule.to_string()]).unwrap();
    assert_eq!(
        r("RULE:^CN=([^,]+),O=(.*)$/$1_svc/")
            .apply("CN=billing,O=Ex")
            .as_deref(),
        Some("billing_svc")
    );
    assert_eq!(
        r("RULE:^CN=([^,]+),O=(.*)$/$2x$1/")
            .apply("CN=b,O=E")
            .as_deref(),
        Some("Exb")
    );
    // `$12` with two groups is group 1 and then `2`, as in Java.
    assert_eq!(
        r("RULE:^CN=([^,]+),O=(.*)$/$12/")
            .apply("CN=b,O=E")
            .as_deref(),
        Some("b2")
    );
    // `\$` is a literal dollar sign.
    assert_eq!(
        r("RULE:^CN=([^,]+).*$/\\$$1/").apply("CN=b,O=E").as_deref(),
        Some("$b")
    );
    // A group that does not exist is a configuration error, not an empty name.
    assert!(MappingRules::parse(&["RULE:^CN=(.*)$/$2/".to_string()]).is_err());
}
