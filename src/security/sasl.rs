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
pub(crate) enum Mechanism {
    Plain,
    Scram,
    OAuthBearer,
    /// Passed through; the principal is not learned.
    Opaque,
}

impl Mechanism {
    pub(crate) fn from_name(name: &str) -> Mechanism {
        match name {
            "PLAIN" => Mechanism::Plain,
            "SCRAM-SHA-256" | "SCRAM-SHA-512" => Mechanism::Scram,
            "OAUTHBEARER" => Mechanism::OAuthBearer,
            _ => Mechanism::Opaque,
        }
    }
}

/// One connection's SASL exchange in progress: what the requests sent so far claim. The
/// broker's answers are judged by the [`Step`] each request was given, never by this
/// (mutable) state, so requests pipelined after a step cannot change what its answer means.
#[derive(Debug, Default, Clone)]
pub struct Exchange {
    mechanism: Option<Mechanism>,
    /// The mechanism's name as a metric label (a fixed set: clients choose the name).
    label: &'static str,
    /// SaslAuthenticate requests sent since the handshake.
    steps: u32,
    /// The name the first step claimed.
    claimed: Claim,
}

/// What the first SaslAuthenticate of an exchange claims.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) enum Claim {
    /// No step yet, or a mechanism whose tokens name nobody Tollgate can read.
    #[default]
    Unread,
    /// The name the client claims (not yet confirmed by the broker).
    Name(String),
    /// A message Tollgate refuses to interpret: it would read a different name than the
    /// broker (an OAUTHBEARER message with a key twice). Tollgate answers it itself.
    Ambiguous,
}

/// One SaslAuthenticate request, as sent: its exchange's mechanism, its step number and
/// the claim of its exchange at the time. The broker's answer to *this* request is judged
/// against it ([`Step::outcome`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    mechanism: Option<Mechanism>,
    /// The mechanism as a metric label.
    pub label: &'static str,
    number: u32,
    claim: Claim,
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
    /// A SaslHandshake for `mechanism` starts a new exchange. Steps already sent keep their
    /// own [`Step`]: their answers still mean what they meant when they were sent.
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

    /// A SaslAuthenticate request carrying `auth` is on its way to the broker: its step.
    pub fn request(&mut self, auth: &[u8], claim: &str) -> Step {
        self.steps += 1;
        if self.steps == 1 {
            self.claimed = match self.mechanism {
                Some(Mechanism::Plain) => plain_name(auth).map_or(Claim::Unread, Claim::Name),
                Some(Mechanism::Scram) => scram_name(auth).map_or(Claim::Unread, Claim::Name),
                Some(Mechanism::OAuthBearer) => oauth_claim(auth, claim),
                _ => Claim::Unread,
            };
        }
        Step {
            mechanism: self.mechanism,
            label: if self.label.is_empty() {
                "none"
            } else {
                self.label
            },
            number: self.steps,
            claim: self.claimed.clone(),
        }
    }
}

impl Step {
    /// Whether Tollgate must answer this request itself instead of forwarding it.
    pub(crate) fn is_ambiguous(&self) -> bool {
        self.claim == Claim::Ambiguous
    }

    /// The broker answered this step with `error_code` and `auth` bytes.
    pub fn outcome(&self, error_code: i16, auth: &[u8]) -> Outcome {
        if error_code != 0 {
            return Outcome::Pending;
        }
        let done = match self.mechanism {
            Some(Mechanism::Plain) => self.number == 1,
            Some(Mechanism::Scram) => self.number == 2 && auth.starts_with(b"v="),
            // A success answer with bytes is the error challenge of a refused token.
            Some(Mechanism::OAuthBearer) => self.number == 1 && auth.is_empty(),
            // Opaque mechanisms (GSSAPI): success answers also carry intermediate steps, so
            // nothing here says when the broker is done, nor who the client is.
            Some(Mechanism::Opaque) | None => false,
        };
        match (done, &self.claim) {
            (true, Claim::Name(name)) => Outcome::Authenticated(name.clone()),
            (true, _) => Outcome::AuthenticatedOpaque,
            (false, _) => Outcome::Pending,
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
    // As Kafka decodes a saslname (ScramFormatter): `=2C` and `=3D` are the only escapes; any
    // other `=` makes the name invalid (the broker refuses it).
    let commas = user.replace("=2C", ",");
    if commas.replace("=3D", "").contains('=') {
        return None;
    }
    name(commas.replace("=3D", "=").as_bytes())
}

/// OAUTHBEARER initial response (RFC 7628): `gs2-header \x01 key=value \x01 ... \x01\x01`,
/// with the token in `auth=Bearer <jwt>`. Kafka's parser keeps the *last* value of a key
/// given twice; rather than guess, a message with any key twice is [`Claim::Ambiguous`].
/// The claim is read from the JWT payload without verifying it (the broker verifies).
fn oauth_claim(auth: &[u8], claim: &str) -> Claim {
    let Ok(text) = std::str::from_utf8(auth) else {
        return Claim::Unread;
    };
    let mut keys = std::collections::HashSet::new();
    let mut token = None;
    for kv in text.split('\x01').skip(1).filter(|kv| !kv.is_empty()) {
        let key = kv.split_once('=').map_or(kv, |(k, _)| k);
        if !keys.insert(key) {
            return Claim::Ambiguous;
        }
        if let Some(value) = kv.strip_prefix("auth=") {
            token = Some(value);
        }
    }
    token
        .and_then(|t| jwt_claim(t, claim))
        .map_or(Claim::Unread, Claim::Name)
}

/// The `claim` of a `Bearer <jwt>` value, read without verifying the token.
fn jwt_claim(token: &str, claim: &str) -> Option<String> {
    let (scheme, jwt) = token.trim().split_once(' ')?;
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
        assert_eq!(step.outcome(58, b""), Outcome::Pending);
        let mut e = exchange("PLAIN");
        let step = e.request(b"admin\0alice\0secret", "sub");
        assert_eq!(step.outcome(0, b""), Outcome::Authenticated("admin".into()));
        let mut e = exchange("PLAIN");
        let step = e.request(b"no separators", "sub");
        assert_eq!(step.outcome(0, b""), Outcome::AuthenticatedOpaque);
    }

    #[test]
    fn scram_needs_the_server_final() {
        let mut e = exchange("SCRAM-SHA-512");
        let s1 = e.request(b"n,,n=bil=2Cling,r=abc", "sub");
        // The server-first is a success answer too: not yet authenticated.
        assert_eq!(
            s1.outcome(0, b"r=abcdef,s=c2FsdA==,i=4096"),
            Outcome::Pending
        );
        let s2 = e.request(b"c=biws,r=abcdef,p=proof", "sub");
        assert_eq!(
            s2.outcome(0, b"v=c2lnbmF0dXJl"),
            Outcome::Authenticated("bil,ling".into())
        );
        // A wrong password: the broker refuses the final step.
        let mut e = exchange("SCRAM-SHA-256");
        let s1 = e.request(b"n,,n=alice,r=abc", "sub");
        s1.outcome(0, b"r=abcdef,s=c2FsdA==,i=4096");
        let s2 = e.request(b"c=biws,r=abcdef,p=bad", "sub");
        assert_eq!(s2.outcome(58, b""), Outcome::Pending);
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
            s.outcome(0, b""),
            Outcome::Authenticated("svc-billing".into())
        );
        // A refused token: success answer carrying the error challenge.
        let mut e = exchange("OAUTHBEARER");
        let s = e.request(msg.as_bytes(), "azp");
        assert_eq!(
            s.outcome(0, br#"{"status":"invalid_token"}"#),
            Outcome::Pending
        );
        assert_eq!(oauth_claim(b"garbage", "sub"), Claim::Unread);
    }

    #[test]
    fn an_oauthbearer_message_with_a_key_twice_is_ambiguous() {
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let jwt = |sub: &str| {
            format!(
                "{}.{}.sig",
                b64(r#"{"alg":"none"}"#),
                b64(&format!(r#"{{"sub":"{sub}"}}"#))
            )
        };
        let twice = format!(
            "n,,\x01auth=Bearer {}\x01auth=Bearer {}\x01\x01",
            jwt("admin"),
            jwt("alice")
        );
        let mut e = exchange("OAUTHBEARER");
        let s = e.request(twice.as_bytes(), "sub");
        assert!(s.is_ambiguous());
        assert_eq!(s.outcome(0, b""), Outcome::AuthenticatedOpaque);
        let other_key_twice = format!(
            "n,,\x01host=a\x01auth=Bearer {}\x01host=b\x01\x01",
            jwt("alice")
        );
        assert_eq!(
            oauth_claim(other_key_twice.as_bytes(), "sub"),
            Claim::Ambiguous
        );
    }

    /// The forgery of issue 26: handshake, authenticate(alice, right password), handshake,
    /// authenticate(admin, wrong password), all pipelined. The broker accepts the first and
    /// refuses the second: the connection is alice, whatever order the answers are judged in.
    #[test]
    fn pipelined_steps_are_judged_by_what_each_claimed() {
        let mut e = exchange("PLAIN");
        let alice = e.request(b"\0alice\0right", "sub");
        e.begin("PLAIN");
        let admin = e.request(b"\0admin\0wrong", "sub");
        assert_eq!(
            alice.outcome(0, b""),
            Outcome::Authenticated("alice".into())
        );
        assert_eq!(admin.outcome(34, b""), Outcome::Pending);
        // SCRAM: a second client-first pipelined before the first exchange's final step
        // does not rename it.
        let mut e = exchange("SCRAM-SHA-256");
        let first = e.request(b"n,,n=alice,r=abc", "sub");
        let fin = e.request(b"c=biws,r=abcdef,p=proof", "sub");
        e.begin("SCRAM-SHA-256");
        let _other = e.request(b"n,,n=admin,r=abc", "sub");
        assert_eq!(
            first.outcome(0, b"r=abcdef,s=c2FsdA==,i=4096"),
            Outcome::Pending
        );
        assert_eq!(
            fin.outcome(0, b"v=c2ln"),
            Outcome::Authenticated("alice".into())
        );
    }

    #[test]
    fn hostile_names_are_not_names() {
        assert_eq!(plain_name(b"\0\0pw"), None);
        assert_eq!(plain_name(&[0, b'a', b'\n', 0, b'p']), None);
        let long = format!("n,,n={},r=x", "a".repeat(MAX_NAME + 1));
        assert_eq!(scram_name(long.as_bytes()), None);
        assert_eq!(scram_name(b"n,,r=x"), None);
        // Only =2C and =3D are escapes; a stray `=` is not a name (Kafka refuses it).
        assert_eq!(scram_name(b"n,,n=a=b,r=x"), None);
        assert_eq!(scram_name(b"n,,n==3D3Dww,r=x").as_deref(), Some("=3Dww"));
        assert_eq!(scram_name(b"n,,n=a=3Db=2Cc,r=x").as_deref(), Some("a=b,c"));
    }
}
