//! `tollgate top`: the console's consumer table in a terminal, for one instance or a tier.
//!
//! What `kafka-consumer-groups --describe` would be if it knew read bandwidth and
//! temperature: one row per group with its owner, read rate (hot and cold), lag in records and
//! seconds, status and reason, tier, and which cluster serves it. It reads `GET /v1/console`
//! from every admin address it is given and merges them: read rates add up (each instance
//! counts the bytes it served), lag and status are the tier's (every instance computes the
//! same), and a group on the secondary anywhere shows so.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::time::Duration;

use serde_json::Value;

/// One merged row.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Row {
    pub(crate) group: String,
    pub(crate) owner: String,
    pub(crate) hot: f64,
    pub(crate) cold: f64,
    pub(crate) lag_records: Option<i64>,
    pub(crate) lag_seconds: f64,
    pub(crate) status: String,
    pub(crate) problems: String,
    pub(crate) tier: String,
    pub(crate) served_by: String,
}

/// `GET path` on an admin listener (`host:port`), with an optional bearer token.
pub fn get(admin: &str, path: &str, token: Option<&str>) -> anyhow::Result<String> {
    let addr = std::net::ToSocketAddrs::to_socket_addrs(admin)?
        .next()
        .ok_or_else(|| anyhow::anyhow!("{admin}: no address"))?;
    let timeout = Duration::from_secs(5);
    let mut s = std::net::TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {admin}\r\n{auth}Connection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow::anyhow!("{admin}: not an HTTP answer"))?;
    let status = head.lines().next().unwrap_or_default();
    anyhow::ensure!(status.contains(" 200"), "{admin}{path}: {status}");
    Ok(body.to_string())
}

/// Merge the `/v1/console` documents of a tier's instances into one row per group.
pub fn merge(docs: &[Value]) -> Vec<Row> {
    let mut rows: BTreeMap<String, Row> = BTreeMap::new();
    for doc in docs {
        for g in doc["groups"].as_array().into_iter().flatten() {
            let name = g["group"].as_str().unwrap_or_default().to_string();
            let r = rows.entry(name.clone()).or_insert_with(|| Row {
                group: name,
                ..Row::default()
            });
            r.hot += g["hot_bytes_per_second"].as_f64().unwrap_or(0.0);
            r.cold += g["cold_bytes_per_second"].as_f64().unwrap_or(0.0);
            let text = |k: &str| g[k].as_str().unwrap_or_default().to_string();
            if r.status.is_empty() || r.status == "NO DATA" {
                r.owner = text("owner");
                r.lag_records = g["lag_records"].as_i64();
                r.lag_seconds = g["lag_seconds"].as_f64().unwrap_or(0.0);
                r.status = text("status");
                r.tier = text("tier");
                r.problems = g["problems"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(",");
            }
            let served = text("served_by");
            r.served_by = match (r.served_by.as_str(), served.as_str()) {
                ("", s) | (s, "") => s.to_string(),
                (a, b) if a == b => a.to_string(),
                _ => "both".to_string(),
            };
        }
    }
    let mut out: Vec<Row> = rows.into_values().collect();
    out.sort_by(|a, b| {
        (b.hot + b.cold)
            .total_cmp(&(a.hot + a.cold))
            .then(a.group.cmp(&b.group))
    });
    out
}

fn rate(b: f64) -> String {
    let units = ["B/s", "KB/s", "MB/s", "GB/s"];
    let mut v = b;
    let mut i = 0;
    while v >= 1000.0 && i < units.len() - 1 {
        v /= 1000.0;
        i += 1;
    }
    format!("{v:.1} {}", units[i])
}

/// The table, as printed.
pub fn render(rows: &[Row]) -> String {
    let header = [
        "GROUP",
        "OWNER",
        "READ",
        "HOT",
        "COLD",
        "LAG",
        "LAG(s)",
        "STATUS",
        "TIER",
        "SERVED BY",
    ];
    let cells: Vec<[String; 10]> = rows
        .iter()
        .map(|r| {
            let status = if r.problems.is_empty() {
                r.status.clone()
            } else {
                format!("{} ({})", r.status, r.problems)
            };
            [
                r.group.clone(),
                r.owner.clone(),
                rate(r.hot + r.cold),
                rate(r.hot),
                rate(r.cold),
                r.lag_records.map_or("-".into(), |l| l.to_string()),
                format!("{:.1}", r.lag_seconds),
                status,
                r.tier.clone(),
                r.served_by.clone(),
            ]
        })
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cols: Vec<&str>| {
        cols.iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    let mut out = vec![line(header.to_vec())];
    out.extend(
        cells
            .iter()
            .map(|r| line(r.iter().map(String::as_str).collect())),
    );
    out.join("\n") + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tier_adds_read_rates_and_keeps_the_tier_wide_lag() {
        let a = serde_json::json!({"groups": [
            {"group": "g", "owner": "search", "hot_bytes_per_second": 1000.0,
             "cold_bytes_per_second": 0.0, "lag_records": 5, "lag_seconds": 1.5,
             "status": "OK", "problems": [], "tier": "primary", "served_by": "primary"}]});
        let b = serde_json::json!({"groups": [
            {"group": "g", "owner": "search", "hot_bytes_per_second": 500.0,
             "cold_bytes_per_second": 2000.0, "lag_records": 5, "lag_seconds": 1.5,
             "status": "OK", "problems": [], "tier": "primary", "served_by": "secondary"},
            {"group": "idle", "status": "NO DATA", "problems": [], "served_by": ""}]});
        let rows = merge(&[a, b]);
        assert_eq!(rows[0].group, "g");
        assert_eq!((rows[0].hot, rows[0].cold), (1500.0, 2000.0));
        assert_eq!(rows[0].served_by, "both");
        assert_eq!(rows[1].status, "NO DATA");
        let text = render(&rows);
        assert!(text.starts_with("GROUP"));
        assert!(text.contains("3.5 KB/s"), "{text}");
    }
}
