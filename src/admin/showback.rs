//! `GET /v1/showback?window=1h[&format=csv]`: what each owner produced, read and cost.
//!
//! Recomputed on each call from the usage windows in the audit topic
//! ([`crate::control::audit`]), written by every instance of the tier: the numbers survive
//! restarts and add up across instances without a store of their own. A usage window
//! counts when it ended within the last `window` (`90s`, `15m`, `1h`, `7d`, or seconds; at
//! most `audit.retention_ms`). The window being filled now is not in it yet: the answer's
//! `to_ms` says up to when it is complete (within `audit.window_seconds`).
//!
//! Per owner (the registry entry's; `unregistered` for subjects no entry covers), and per
//! subject under it (a group, a producer entry, a client):
//! produced bytes and records; read bytes and records, hot and cold; bytes and seconds
//! served by the secondary cluster; seconds held by a budget; refusals; and, when
//! `[showback]` sets rates, the cost.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use crate::control::audit::{now_ms, Usage};
use crate::control::config::ShowbackConfig;

/// How long one showback read of the audit topic may take.
pub(crate) const READ_TIMEOUT: Duration = Duration::from_secs(30);
const GIB: f64 = (1u64 << 30) as f64;

/// The counters of one owner or subject.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub(crate) struct Totals {
    pub(crate) produced_bytes: u64,
    pub(crate) produced_records: u64,
    pub(crate) read_bytes: u64,
    pub(crate) read_records: u64,
    pub(crate) read_hot_bytes: u64,
    pub(crate) read_cold_bytes: u64,
    pub(crate) secondary_bytes: u64,
    pub(crate) secondary_seconds: f64,
    pub(crate) throttled_seconds: f64,
    pub(crate) refusals: u64,
    /// Requests a policy in shadow mode would have refused.
    pub(crate) shadow_refusals: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) cost: Option<f64>,
}

impl Totals {
    fn add(&mut self, u: &Usage) {
        let c = &u.counted;
        match u.direction.as_str() {
            "write" => {
                self.produced_bytes += c.bytes;
                self.produced_records += c.records;
            }
            _ => {
                self.read_bytes += c.bytes;
                self.read_records += c.records;
            }
        }
        self.read_hot_bytes += c.hot_bytes;
        self.read_cold_bytes += c.cold_bytes;
        self.secondary_bytes += c.secondary_bytes;
        self.secondary_seconds += c.secondary_seconds;
        self.throttled_seconds += c.throttled_seconds;
        self.refusals += c.refusals;
        self.shadow_refusals += c.shadow_refusals;
    }

    /// The cost at `rates`, when any rate is set.
    fn priced(&mut self, rates: &ShowbackConfig) {
        let any = [
            rates.produced_per_gib,
            rates.read_hot_per_gib,
            rates.read_cold_per_gib,
            rates.secondary_per_hour,
        ]
        .iter()
        .any(|r| *r > 0.0);
        self.cost = any.then(|| {
            self.produced_bytes as f64 / GIB * rates.produced_per_gib
                + self.read_hot_bytes as f64 / GIB * rates.read_hot_per_gib
                + self.read_cold_bytes as f64 / GIB * rates.read_cold_per_gib
                + self.secondary_seconds / 3600.0 * rates.secondary_per_hour
        });
    }
}

/// One subject under an owner.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct SubjectView {
    /// `read`, `write` or `admin`.
    pub(crate) direction: String,
    pub(crate) subject: String,
    #[serde(flatten)]
    pub(crate) totals: Totals,
}

/// One owner.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct OwnerView {
    pub(crate) owner: String,
    #[serde(flatten)]
    pub(crate) totals: Totals,
    pub(crate) subjects: Vec<SubjectView>,
}

/// The whole answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Showback {
    pub(crate) from_ms: u64,
    pub(crate) to_ms: u64,
    pub(crate) window_seconds: u64,
    /// Usage windows read from the audit topic.
    pub(crate) usage_windows: usize,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub(crate) currency: String,
    pub(crate) owners: Vec<OwnerView>,
}

/// `1h`, `15m`, `90s`, `7d` or plain seconds.
pub(crate) fn parse_window(text: &str) -> Option<u64> {
    let text = text.trim();
    let (digits, unit) = match text.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => text.split_at(i),
        None => (text, "s"),
    };
    let n: u64 = digits.parse().ok()?;
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return None,
    };
    n.checked_mul(scale).filter(|s| *s > 0)
}

/// Add up `usage` per owner and subject, priced at `rates`.
pub(crate) fn showback(
    usage: &[Usage],
    from_ms: u64,
    to_ms: u64,
    rates: &ShowbackConfig,
) -> Showback {
    // Each window is added to its owner's totals and to its subject's under the owner.
    type Subjects<'a> = BTreeMap<(&'a str, &'a str), Totals>;
    let mut owners: BTreeMap<&str, (Totals, Subjects)> = BTreeMap::new();
    for u in usage {
        let (totals, subjects) = owners.entry(&u.owner).or_default();
        totals.add(u);
        let key = (u.direction.as_str(), u.subject.as_str());
        subjects.entry(key).or_default().add(u);
    }
    let owners = owners
        .into_iter()
        .map(|(owner, (mut totals, subjects))| {
            let subjects = subjects
                .into_iter()
                .map(|((direction, subject), mut t)| {
                    t.priced(rates);
                    SubjectView {
                        direction: direction.into(),
                        subject: subject.into(),
                        totals: t,
                    }
                })
                .collect();
            totals.priced(rates);
            OwnerView {
                owner: owner.into(),
                totals,
                subjects,
            }
        })
        .collect();
    Showback {
        from_ms,
        to_ms,
        window_seconds: (to_ms - from_ms) / 1000,
        usage_windows: usage.len(),
        currency: rates.currency.clone(),
        owners,
    }
}

/// One line per owner, with a header.
pub(crate) fn csv(s: &Showback) -> String {
    let mut out = String::from(
        "owner,produced_bytes,produced_records,read_bytes,read_records,read_hot_bytes,\
         read_cold_bytes,secondary_bytes,secondary_seconds,throttled_seconds,refusals,\
         shadow_refusals,cost\n",
    );
    for o in &s.owners {
        let t = &o.totals;
        let cost = t.cost.map(|c| format!("{c:.4}")).unwrap_or_default();
        out.push_str(&format!(
            "{},{},{},{},{},{},{},{},{:.3},{:.3},{},{},{}\n",
            csv_field(&o.owner),
            t.produced_bytes,
            t.produced_records,
            t.read_bytes,
            t.read_records,
            t.read_hot_bytes,
            t.read_cold_bytes,
            t.secondary_bytes,
            t.secondary_seconds,
            t.throttled_seconds,
            t.refusals,
            t.shadow_refusals,
            cost
        ));
    }
    out
}

/// Quoted when it holds a comma, a quote or a line break (RFC 4180).
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// The window's bounds: from `window` seconds ago to now.
pub(crate) fn bounds(window_seconds: u64) -> (u64, u64) {
    let to = now_ms();
    (to.saturating_sub(window_seconds * 1000), to)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u(owner: &str, direction: &str, subject: &str, bytes: u64, records: u64) -> Usage {
        Usage {
            owner: owner.into(),
            direction: direction.into(),
            subject: subject.into(),
            counted: crate::control::audit::Counted {
                bytes,
                records,
                hot_bytes: if direction == "read" { bytes } else { 0 },
                ..Default::default()
            },
            ..Usage::default()
        }
    }

    #[test]
    fn windows_add_up_per_owner_and_subject_and_are_priced() {
        let usage = [
            u("web", "write", "client:web", 1 << 30, 10),
            u("web", "write", "client:web", 1 << 30, 5),
            u("web", "read", "web-reader", 1 << 29, 3),
            u("unregistered", "read", "(none)", 7, 1),
        ];
        let rates = ShowbackConfig {
            currency: "USD".into(),
            produced_per_gib: 0.1,
            read_hot_per_gib: 0.02,
            ..ShowbackConfig::default()
        };
        let s = showback(&usage, 0, 3_600_000, &rates);
        assert_eq!(s.window_seconds, 3600);
        let web = s.owners.iter().find(|o| o.owner == "web").unwrap();
        assert_eq!(web.totals.produced_bytes, 2 << 30);
        assert_eq!(web.totals.produced_records, 15);
        assert_eq!(web.totals.read_records, 3);
        assert!((web.totals.cost.unwrap() - (0.2 + 0.01)).abs() < 1e-9);
        assert_eq!(web.subjects.len(), 2);
        let text = csv(&s);
        assert!(text.starts_with("owner,produced_bytes"));
        assert!(text.contains("\nweb,2147483648,15,536870912,3,"), "{text}");
        // No rates: no cost.
        let s = showback(&usage, 0, 1000, &ShowbackConfig::default());
        assert!(s.owners.iter().all(|o| o.totals.cost.is_none()));
    }

    #[test]
    fn windows_parse_with_units_and_odd_ones_are_refused() {
        assert_eq!(parse_window("90"), Some(90));
        assert_eq!(parse_window("15m"), Some(900));
        assert_eq!(parse_window("1h"), Some(3600));
        assert_eq!(parse_window("7d"), Some(604_800));
        for bad in ["", "0", "h", "1w", "-1h", "1.5h", "99999999999999999999d"] {
            assert_eq!(parse_window(bad), None, "{bad}");
        }
        assert_eq!(csv_field("a,b"), "\"a,b\"");
    }
}
