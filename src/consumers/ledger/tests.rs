use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::control::config::AuditConfig;

fn registry() -> (tempfile::TempDir, Arc<RegistryHandle>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("registry.toml");
    std::fs::write(
        &path,
        "[[consumer]]\ngroup = \"billing\"\nowner = \"billing-team\"\ncontact = \"c\"\n\
         topics = [\"orders\"]\nlag_slo_seconds = 60\n\
         [[producer]]\nclient_id = \"web\"\nowner = \"web-team\"\ncontact = \"c\"\n\
         topics = [\"clicks\"]\n",
    )
    .unwrap();
    let r = Arc::new(RegistryHandle::open(&path).unwrap());
    (dir, r)
}

/// A ledger whose audit trail is never started: its events stay in the queue, where the
/// test reads them.
fn ledger() -> (
    tempfile::TempDir,
    Ledger,
    std::sync::mpsc::Receiver<crate::control::audit::Msg>,
) {
    let (dir, registry) = registry();
    let metrics = Arc::new(Metrics::new());
    let audit = Arc::new(Audit::new(AuditConfig::default(), metrics.clone()));
    let rx = audit.take_queue().unwrap();
    (dir, Ledger::new(audit, registry, metrics), rx)
}

fn usage(rx: &std::sync::mpsc::Receiver<crate::control::audit::Msg>) -> Vec<Usage> {
    let mut out: Vec<Usage> = rx
        .try_iter()
        .filter_map(|m| match m {
            crate::control::audit::Msg::Event(e) => match e.what {
                What::Usage(u) => Some(u),
                _ => None,
            },
            _ => None,
        })
        .collect();
    out.sort_by(|a, b| {
        (&a.direction, &a.subject, &a.topic).cmp(&(&b.direction, &b.subject, &b.topic))
    });
    out
}

fn part(
    topic: &str,
    partition: i32,
    first: i64,
    last: i64,
    hot: bool,
    secondary: bool,
) -> PartRead<'_> {
    PartRead {
        part: Part {
            topic,
            partition,
            first,
            last,
            bytes: 100,
            records: (last - first + 1) as u64,
        },
        hot,
        secondary,
    }
}

#[test]
fn a_window_rolls_reads_and_writes_up_per_subject_and_topic_with_owners() {
    let (_d, l, rx) = ledger();
    let by = ReadBy {
        group: "billing",
        grouped: true,
        principal: "ANONYMOUS",
        client_id: "rdkafka",
    };
    l.reads(
        by,
        &[
            part("orders", 0, 0, 9, true, false),
            part("orders", 1, 5, 9, false, true),
        ],
        0.5,
    );
    l.reads(by, &[part("orders", 0, 10, 19, true, false)], 0.1);
    let written = [Part {
        topic: "clicks",
        partition: 2,
        first: 40,
        last: 49,
        bytes: 1000,
        records: 10,
    }];
    l.writes("ANONYMOUS", "web", &written);
    l.writes("ANONYMOUS", "someone", &written);
    l.throttled(Direction::Read, "billing", Duration::from_millis(1500));
    l.roll(false);
    assert!(usage(&rx).is_empty(), "the window has not ended");
    l.roll(true);
    let u = usage(&rx);
    assert_eq!(u.len(), 4, "{u:#?}");
    // Reads of billing on orders: two answers, two partitions.
    let orders = u.iter().find(|u| u.topic == "orders").unwrap();
    assert_eq!(
        (orders.owner.as_str(), orders.subject.as_str()),
        ("billing-team", "billing")
    );
    assert_eq!(
        (
            orders.counted.bytes,
            orders.counted.records,
            orders.counted.hot_bytes,
            orders.counted.cold_bytes
        ),
        (300, 25, 200, 100)
    );
    assert_eq!(orders.counted.secondary_bytes, 100);
    assert!(
        (orders.counted.secondary_seconds - 0.5).abs() < 1e-9,
        "only the answer the secondary served"
    );
    assert_eq!(
        orders.offsets,
        vec![
            Covered {
                partition: 0,
                first: 0,
                last: 19
            },
            Covered {
                partition: 1,
                first: 5,
                last: 9
            }
        ]
    );
    // The hold is the group's, not a topic's.
    let held = u
        .iter()
        .find(|u| u.direction == "read" && u.topic.is_empty())
        .unwrap();
    assert!((held.counted.throttled_seconds - 1.5).abs() < 1e-9);
    assert_eq!(held.owner, "billing-team");
    // Writes: the registered producer by its entry, the other unregistered.
    let web = u.iter().find(|u| u.subject == "client:web").unwrap();
    assert_eq!(
        (web.owner.as_str(), web.counted.records, web.counted.bytes),
        ("web-team", 10, 1000)
    );
    assert_eq!(
        web.offsets,
        vec![Covered {
            partition: 2,
            first: 40,
            last: 49
        }]
    );
    let other = u
        .iter()
        .find(|u| u.subject == "ANONYMOUS/client:someone")
        .unwrap();
    assert_eq!(other.owner, UNREGISTERED);
    // The next window starts empty.
    l.roll(true);
    assert!(usage(&rx).is_empty());
}

#[test]
fn invented_names_fold_into_one_row_past_the_cap() {
    let (_d, l, rx) = ledger();
    for i in 0..MAX_ROWS + 50 {
        let group = format!("g{i}");
        let by = ReadBy {
            group: &group,
            grouped: true,
            principal: "p",
            client_id: "c",
        };
        l.reads(by, &[part("t", 0, 0, 0, true, false)], 0.0);
    }
    l.roll(true);
    let u = usage(&rx);
    assert_eq!(u.len(), MAX_ROWS + 1);
    let other = u.iter().find(|u| u.subject == OTHER).unwrap();
    assert_eq!(other.counted.records, 50);
    assert_eq!(
        u.iter().map(|u| u.counted.records).sum::<u64>(),
        (MAX_ROWS + 50) as u64
    );
}
