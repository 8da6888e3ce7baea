//! Rate-limited refusal logging: one line per (reason, client instance) per interval.

use std::collections::HashMap;

use crate::layers::request::ConnInfo;

/// One refusal log line per (reason, client instance) per [`LOG_INTERVAL`], saying how many
/// were left out since the last; the metric counts every refusal. Clients retry refused reads many times
/// a second, and an unbounded log is a denial of service of its own.
#[derive(Default)]
pub(crate) struct LogLimiter(std::sync::Mutex<HashMap<String, (std::time::Instant, u64)>>);

/// The [`LogLimiter`] key of a refusal: its reason and the client instance (principal,
/// client id, address).
pub(crate) fn log_key(reason: &str, client_id: &str, conn: &ConnInfo) -> String {
    format!(
        "{reason}|{}|{client_id}|{}",
        &conn.principal(),
        conn.peer.ip()
    )
}

/// See [`LogLimiter`].
pub(crate) const LOG_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);
/// Most keys a [`LogLimiter`] remembers.
const LOG_KEYS: usize = 10_000;

impl LogLimiter {
    /// Keys remembered (for tests).
    #[cfg(test)]
    pub(crate) fn keys(&self) -> usize {
        self.0.lock().expect("lock").len()
    }

    /// `Some(suppressed since the last line)` when a line for `key` is due now.
    pub(crate) fn admit(&self, key: String) -> Option<u64> {
        let now = std::time::Instant::now();
        let mut m = self.0.lock().expect("lock");
        if m.len() >= LOG_KEYS {
            m.retain(|_, (t, _)| now.duration_since(*t) < LOG_INTERVAL);
            if m.len() >= LOG_KEYS {
                m.clear();
            }
        }
        match m.get_mut(&key) {
            Some((t, n)) if now.duration_since(*t) < LOG_INTERVAL => {
                *n += 1;
                None
            }
            Some((t, n)) => {
                let suppressed = *n;
                (*t, *n) = (now, 0);
                Some(suppressed)
            }
            None => {
                m.insert(key, (now, 0));
                Some(0)
            }
        }
    }
}
