//! The SASL inspection state machine (`security::sasl`): handshakes, authenticate requests
//! and broker answers in any order, as a client pipelining hostile exchanges would cause.
//! Invariants: nothing panics; a step is confirmed only with a success answer; and the name
//! a confirmed step yields is the one its *own* exchange's first request claimed, whatever
//! was sent after it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate::security::sasl::{Exchange, Outcome, Step};

const MECHANISMS: [&str; 6] = [
    "PLAIN",
    "SCRAM-SHA-256",
    "SCRAM-SHA-512",
    "OAUTHBEARER",
    "GSSAPI",
    "other",
];

/// A step as sent, with the first request of its exchange.
struct Sent {
    step: Step,
    first: Vec<u8>,
}

fuzz_target!(|data: &[u8]| {
    let mut exchange = Exchange::default();
    let mut first: Option<Vec<u8>> = None;
    let mut sent: Vec<Sent> = Vec::new();
    let mut rest = data;
    while let Some((&op, tail)) = rest.split_first() {
        rest = tail;
        match op % 3 {
            0 => {
                exchange.begin(MECHANISMS[(op as usize / 3) % MECHANISMS.len()]);
                first = None;
            }
            1 => {
                let len = (op as usize / 3).min(rest.len());
                let (auth, tail) = rest.split_at(len);
                rest = tail;
                let step = exchange.request(auth, "sub");
                let first = first.get_or_insert_with(|| auth.to_vec()).clone();
                if sent.len() < 64 {
                    sent.push(Sent { step, first });
                }
            }
            _ => {
                let Some(s) = sent.get((op as usize / 3) % sent.len().max(1)) else {
                    continue;
                };
                let code = if op & 0x80 != 0 { 58 } else { 0 };
                let auth: &[u8] = if op & 0x40 != 0 { b"v=sig" } else { b"" };
                check(s, code, auth);
            }
        }
    }
});

fn check(s: &Sent, code: i16, auth: &[u8]) {
    match s.step.outcome(code, auth) {
        Outcome::Authenticated(name) => {
            assert_eq!(code, 0, "confirmed by a refusal");
            assert!(!name.is_empty() && name.len() <= 256);
            assert!(!name.chars().any(char::is_control));
            // The name, as the mechanism writes it, is in its exchange's first request.
            let written = match s.step.label {
                "PLAIN" => name.clone(),
                l if l.starts_with("SCRAM") => {
                    format!("n={}", name.replace('=', "=3D").replace(',', "=2C"))
                }
                _ => return,
            };
            let first = String::from_utf8_lossy(&s.first);
            assert!(first.contains(&written), "{name} was not claimed by its exchange");
        }
        Outcome::AuthenticatedOpaque => assert_eq!(code, 0, "confirmed by a refusal"),
        Outcome::Pending => {}
    }
}
