//! The principal of a client's SASL exchange with the broker, learned without holding any
//! secret: Tollgate passes SaslHandshake and SaslAuthenticate through unchanged, reads the
//! name the client claims, and trusts it only when the broker accepts the exchange.
//!
//! | mechanism | name read from | confirmed by the broker's |
//! |---|---|---|
//! | PLAIN | the authorization id, else the authentication id | success answer |
//! | SCRAM-SHA-256/512 | `n=` of the client-first message | success answer carrying `v=` (server-final) |
//! | OAUTHBEARER | a claim of the token (`proxy.sasl.oauthbearer_principal_claim`) | success answer with no challenge |
//!
//! The password, the SCRAM proof and the token's signature are never kept (only the claimed
//! name is). Tollgate does not verify the token: the broker does, and a forged token fails
//! there. A failed exchange leaves the connection's principal as it was (the broker closes
//! the connection). A KIP-368 re-authentication runs the same way on a live connection; the
//! new principal applies from the broker's success answer on. GSSAPI and other mechanisms
//! pass through, but their principal is inside opaque tokens: such connections stay
//! unauthenticated in Tollgate's eyes.

use base64::Engine;

/// The SASL mechanisms whose principal Tollgate can read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    Plain,
    Scram,
    OAuthBearer,
    /// Passed through; the principal is not learned.
    Opaque,
}

impl Mechanism {
    pub fn from_name(name: &str) -> Mechanism {
        match name {
            "PLAIN" => Mechanism::Plain,
            "SCRAM-SHA-256" | "SCRAM-SHA-512" => Mechanism::Scram,
            "OAUTHBEARER" => Mechanism::OAuthBearer,
            _ => Mechanism::Opaque,
        }
    }
}

/// One connection's SASL exchange in progress.
#[derive(Debug, Default, Clone)]
pub struct Exchange {
    mechanism: Option<Mechanism>,
    /// The mechanism's name as a metric label (a fixed set: clients choose the name).
    label: &'static str,
    /// SaslAuthenticate requests sent since the handshake.
    steps: u32,
    /// The name claimed so far, not yet confirmed.
    claimed: Option<String>,
}

/// What one SaslAuthenticate step means for the connection.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// More steps follow (or the broker refused; it then closes the connection).
    Pending,
    /// The broker accepted the exchange: the connection's principal is now `User:<name>`.
    Authenticated(String),
    /// The broker accepted the exchange, but the claimed name could not be read (not UTF-8,
    /// too long): the connection counts as authenticated, its principal stays unknown.
    AuthenticatedOpaque,
}

impl Exchange {
    /// A SaslHandshake for `mechanism` starts a new exchange.
    pub fn begin(&mut self, mechanism: &str) {
        *self = Exchange {
            mechanism: Some(Mechanism::from_name(mechanism)),
            label: match mechanism {
                "PLAIN" => "PLAIN",
                "SCRAM-SHA-256" => "SCRAM-SHA-256",
                "SCRAM-SHA-512" => "SCRAM-SHA-512",
                "OAUTHBEARER" => "OAUTHBEARER",
                "GSSAPI" => "GSSAPI",
                _ => "other",
            },
            ..Exchange::default()
        };
    }

    /// The mechanism of the exchange, as a label (`none` before a handshake).
    pub fn mechanism_name(&self) -> &'static str {
        if self.label.is_empty() {
            "none"
        } else {
            self.label
        }
    }

    /// A SaslAuthenticate request carrying `auth` is on its way to the broker. Returns the
    /// step number (1 for the first).
    pub fn request(&mut self, auth: &[u8], claim: &str) -> u32 {
        self.steps += 1;
        if self.steps == 1 {
            self.claimed = match self.mechanism {
                Some(Mechanism::Plain) => plain_name(auth),
                Some(Mechanism::Scram) => scram_name(auth),
                Some(Mechanism::OAuthBearer) => oauth_name(auth, claim),
                _ => None,
            };
        }
        self.steps
    }

    /// The broker answered step `step` with `error_code` and `auth` bytes.
    pub fn response(&mut self, step: u32, error_code: i16, auth: &[u8]) -> Outcome {
        if error_code != 0 {
            self.claimed = None;
            return Outcome::Pending;
        }
        let done = match self.mechanism {
            Some(Mechanism::Plain) => step == 1,
            Some(Mechanism::Scram) => step == 2 && auth.starts_with(b"v="),
            // A success answer with bytes is the error challenge of a refused token.
            Some(Mechanism::OAuthBearer) => step == 1 && auth.is_empty(),
            // Opaque mechanisms (GSSAPI): success answers also carry intermediate steps, so
            // nothing here says when the broker is done, nor who the client is.
            Some(Mechanism::Opaque) | None => false,
        };
        match (done, self.claimed.take()) {
            (true, Some(name)) => Outcome::Authenticated(name),
            (true, None) => Outcome::AuthenticatedOpaque,
            (false, claimed) => {
                self.claimed = claimed;
                Outcome::Pending
            }
        }
    }
}

/// Bound on a claimed name: longer is not a name a broker would accept.
const MAX_NAME: usize = 256;

fn name(bytes: &[u8]) -> Option<String> {
    let s = std::str::from_utf8(bytes).ok()?;
    (!s.is_empty() && s.len() <= MAX_NAME && !s.chars().any(char::is_control))
        .then(|| s.to_string())
}

/// PLAIN: `authzid NUL authcid NUL password`; the principal is the authzid when given (Kafka
/// requires it to equal the authcid).
fn plain_name(auth: &[u8]) -> Option<String> {
    let mut parts = auth.splitn(3, |b| *b == 0);
    let authzid = parts.next()?;
    let authcid = parts.next()?;
    parts.next()?;
    name(if authzid.is_empty() { authcid } else { authzid })
}

/// SCRAM client-first: `gs2-header client-first-bare`, e.g. `n,,n=alice,r=nonce`; the name
/// is `n=` with `=2C` and `=3D` decoded.
fn scram_name(auth: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(auth).ok()?;
    let mut fields = text.splitn(3, ',');
    let (_cb, _authzid, bare) = (fields.next()?, fields.next()?, fields.next()?);
    let user = bare.split(',').find_map(|f| f.strip_prefix("n="))?;
    name(user.replace("=2C", ",").replace("=3D", "=").as_bytes())
}

/// OAUTHBEARER initial response (RFC 7628): `gs2-header \x01 auth=Bearer <jwt> \x01 ... \x01`.
/// The claim is read from the JWT payload without verifying it (the broker verifies).
fn oauth_name(auth: &[u8], claim: &str) -> Option<String> {
    let text = std::str::from_utf8(auth).ok()?;
    let token = text
        .split('\x01')
        .find_map(|kv| kv.strip_prefix("auth="))?
        .trim();
    let (scheme, jwt) = token.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let payload = jwt.trim().split('.').nth(1)?;
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let value: serde_json::Value = serde_json::from_slice(&json).ok()?;
    name(value.get(claim)?.as_str()?.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exchange(mech: &str) -> Exchange {
        let mut e = Exchange::default();
        e.begin(mech);
        e
    }

    #[test]
    fn plain_confirmed_by_success_only() {
        let mut e = exchange("PLAIN");
        let step = e.request(b"\0alice\0secret", "sub");
        assert_eq!(e.response(step, 58, b""), Outcome::Pending);
        let mut e = exchange("PLAIN");
        let step = e.request(b"admin\0alice\0secret", "sub");
        assert_eq!(
            e.response(step, 0, b""),
            Outcome::Authenticated("admin".into())
        );
        let mut e = exchange("PLAIN");
        let step = e.request(b"no separators", "sub");
        assert_eq!(e.response(step, 0, b""), Outcome::AuthenticatedOpaque);
    }

    #[test]
    fn scram_needs_the_server_final() {
        let mut e = exchange("SCRAM-SHA-512");
        let s1 = e.request(b"n,,n=bil=2Cling,r=abc", "sub");
        // The server-first is a success answer too: not yet authenticated.
        assert_eq!(
            e.response(s1, 0, b"r=abcdef,s=c2FsdA==,i=4096"),
            Outcome::Pending
        );
        let s2 = e.request(b"c=biws,r=abcdef,p=proof", "sub");
        assert_eq!(
            e.response(s2, 0, b"v=c2lnbmF0dXJl"),
            Outcome::Authenticated("bil,ling".into())
        );
        // A wrong password: the broker refuses the final step.
        let mut e = exchange("SCRAM-SHA-256");
        let s1 = e.request(b"n,,n=alice,r=abc", "sub");
        e.response(s1, 0, b"r=abcdef,s=c2FsdA==,i=4096");
        let s2 = e.request(b"c=biws,r=abcdef,p=bad", "sub");
        assert_eq!(e.response(s2, 58, b""), Outcome::Pending);
    }

    #[test]
    fn oauthbearer_reads_the_claim() {
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let jwt = format!(
            "{}.{}.sig",
            b64(r#"{"alg":"none"}"#),
            b64(r#"{"sub":"svc-billing","azp":"x"}"#)
        );
        let msg = format!("n,,\x01auth=Bearer {jwt}\x01\x01");
        let mut e = exchange("OAUTHBEARER");
        let s = e.request(msg.as_bytes(), "sub");
        assert_eq!(
            e.response(s, 0, b""),
            Outcome::Authenticated("svc-billing".into())
        );
        // A refused token: success answer carrying the error challenge.
        let mut e = exchange("OAUTHBEARER");
        let s = e.request(msg.as_bytes(), "azp");
        assert_eq!(
            e.response(s, 0, br#"{"status":"invalid_token"}"#),
            Outcome::Pending
        );
        assert_eq!(oauth_name(b"garbage", "sub"), None);
    }

    #[test]
    fn hostile_names_are_not_names() {
        assert_eq!(plain_name(b"\0\0pw"), None);
        assert_eq!(plain_name(&[0, b'a', b'\n', 0, b'p']), None);
        let long = format!("n,,n={},r=x", "a".repeat(MAX_NAME + 1));
        assert_eq!(scram_name(long.as_bytes()), None);
        assert_eq!(scram_name(b"n,,r=x"), None);
    }
}
