//! Tollgate's own SASL login, for the connections it opens itself (control queries, the
//! secondary cluster's reads): PLAIN and SCRAM-SHA-256/512 (RFC 5802/7677), client side.
//!
//! This is the message logic only; [`crate::brokers::upstream::ControlClient`] carries the messages in
//! SaslHandshake v1 and SaslAuthenticate requests. The cryptography is RustCrypto's (`hmac`,
//! `sha2`, `pbkdf2`). No maintained crate does SCRAM-SHA-512 on the client side (`scram`
//! 0.6 is SHA-256 only; `scram-rs` is source-available, not open source), so the message
//! handling, a few lines, is written here. The `rdkafka` clients (state store, mirror) log in
//! with librdkafka's own SASL from the same settings.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::Rng;
use sha2::{Digest, Sha256, Sha512};

/// A mechanism Tollgate can log in with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mechanism {
    Plain,
    ScramSha256,
    ScramSha512,
}

impl Mechanism {
    pub(crate) fn parse(name: &str) -> Option<Mechanism> {
        match name {
            "PLAIN" => Some(Mechanism::Plain),
            "SCRAM-SHA-256" => Some(Mechanism::ScramSha256),
            "SCRAM-SHA-512" => Some(Mechanism::ScramSha512),
            _ => None,
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Mechanism::Plain => "PLAIN",
            Mechanism::ScramSha256 => "SCRAM-SHA-256",
            Mechanism::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

/// A login that does not go through.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LoginError {
    #[error("cannot read the password file {path}: {source}")]
    Secret {
        path: String,
        source: std::io::Error,
    },
    #[error("unexpected server message: {0}")]
    Protocol(&'static str),
    #[error("the server's signature does not verify (not the broker that holds our credentials)")]
    ServerSignature,
}

/// Read a secret from a file, without its trailing newline.
pub(crate) fn read_secret(path: &str) -> Result<String, LoginError> {
    let text = std::fs::read_to_string(path).map_err(|source| LoginError::Secret {
        path: path.to_string(),
        source,
    })?;
    Ok(text.trim_end_matches(['\r', '\n']).to_string())
}

/// Credentials and the mechanism to use them with.
#[derive(Clone)]
pub(crate) struct Credentials {
    pub(crate) mechanism: Mechanism,
    pub(crate) username: String,
    password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("mechanism", &self.mechanism)
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// From the config (reads the password file now).
    pub(crate) fn load(cfg: &super::SaslLoginConfig) -> Result<Credentials, LoginError> {
        Ok(Credentials {
            mechanism: Mechanism::parse(&cfg.mechanism).ok_or(LoginError::Protocol("mechanism"))?,
            username: cfg.username.clone(),
            password: read_secret(&cfg.password_file)?,
        })
    }

    #[cfg(test)]
    pub(crate) fn new(mechanism: Mechanism, username: &str, password: &str) -> Credentials {
        Credentials {
            mechanism,
            username: username.into(),
            password: password.into(),
        }
    }

    /// Start a login: the first message to send.
    pub(crate) fn start(&self) -> (Login, Vec<u8>) {
        match self.mechanism {
            Mechanism::Plain => {
                let msg = format!("\0{}\0{}", self.username, self.password);
                (Login::Done, msg.into_bytes())
            }
            Mechanism::ScramSha256 | Mechanism::ScramSha512 => {
                let nonce: String = rand::thread_rng()
                    .sample_iter(&rand::distributions::Alphanumeric)
                    .take(24)
                    .map(char::from)
                    .collect();
                let user = self.username.replace('=', "=3D").replace(',', "=2C");
                let bare = format!("n={user},r={nonce}");
                let first = format!("n,,{bare}").into_bytes();
                let state = Login::ServerFirst {
                    creds: self.clone(),
                    nonce,
                    bare,
                };
                (state, first)
            }
        }
    }
}

/// Where a login stands.
pub(crate) enum Login {
    /// Waiting for the server-first message (SCRAM).
    ServerFirst {
        creds: Credentials,
        nonce: String,
        bare: String,
    },
    /// Waiting for the server-final message, to check the server's signature.
    ServerFinal { expected: Vec<u8> },
    /// Nothing more to send; the broker's success answer ends it.
    Done,
}

/// Fewest and most PBKDF2 iterations accepted from a server (Kafka's minimum is 4096; a
/// server asking for billions would stall the login).
const ITERATIONS: std::ops::RangeInclusive<u32> = 4096..=10_000_000;

impl Login {
    /// The server answered `msg`: the next message to send, if any.
    pub(crate) fn step(self, msg: &[u8]) -> Result<(Login, Option<Vec<u8>>), LoginError> {
        match self {
            Login::ServerFirst { creds, nonce, bare } => {
                let (reply, expected) = scram_final(&creds, &nonce, &bare, msg)?;
                Ok((Login::ServerFinal { expected }, Some(reply)))
            }
            Login::ServerFinal { expected } => {
                let text = std::str::from_utf8(msg).map_err(|_| LoginError::Protocol("utf-8"))?;
                let v = text
                    .split(',')
                    .find_map(|f| f.strip_prefix("v="))
                    .ok_or(LoginError::Protocol("server-final without v="))?;
                let got = B64.decode(v).map_err(|_| LoginError::Protocol("base64"))?;
                if got != expected {
                    return Err(LoginError::ServerSignature);
                }
                Ok((Login::Done, None))
            }
            Login::Done => Ok((Login::Done, None)),
        }
    }
}

/// The client-final message for server-first `msg`, and the server signature to expect.
fn scram_final(
    creds: &Credentials,
    nonce: &str,
    bare: &str,
    msg: &[u8],
) -> Result<(Vec<u8>, Vec<u8>), LoginError> {
    let server_first = std::str::from_utf8(msg).map_err(|_| LoginError::Protocol("utf-8"))?;
    let field = |k: &str| server_first.split(',').find_map(|f| f.strip_prefix(k));
    let combined = field("r=").ok_or(LoginError::Protocol("no nonce"))?;
    if !combined.starts_with(nonce) || combined.len() == nonce.len() {
        return Err(LoginError::Protocol("server nonce does not extend ours"));
    }
    let salt = B64
        .decode(field("s=").ok_or(LoginError::Protocol("no salt"))?)
        .map_err(|_| LoginError::Protocol("salt is not base64"))?;
    let iterations: u32 = field("i=")
        .and_then(|i| i.parse().ok())
        .filter(|i| ITERATIONS.contains(i))
        .ok_or(LoginError::Protocol("iteration count out of range"))?;
    let without_proof = format!("c=biws,r={combined}");
    let auth_message = format!("{bare},{server_first},{without_proof}");
    let (proof, server_sig) = match creds.mechanism {
        Mechanism::ScramSha512 => {
            proofs::<Sha512, Hmac<Sha512>>(&creds.password, &salt, iterations, &auth_message)
        }
        _ => proofs::<Sha256, Hmac<Sha256>>(&creds.password, &salt, iterations, &auth_message),
    };
    let reply = format!("{without_proof},p={}", B64.encode(proof));
    Ok((reply.into_bytes(), server_sig))
}

/// The client proof and the server signature of RFC 5802 §3.
/// `D` is the hash, `M` its HMAC.
fn proofs<D, M>(
    password: &str,
    salt: &[u8],
    iterations: u32,
    auth_message: &str,
) -> (Vec<u8>, Vec<u8>)
where
    D: Digest,
    M: Mac + hmac::digest::KeyInit + hmac::digest::FixedOutput + Clone + Sync,
{
    let mut salted = vec![0u8; <D as Digest>::output_size()];
    pbkdf2::pbkdf2::<M>(password.as_bytes(), salt, iterations, &mut salted)
        .expect("HMAC takes keys of any length");
    let hmac = |key: &[u8], data: &[u8]| {
        let mut m = <M as hmac::digest::KeyInit>::new_from_slice(key)
            .expect("HMAC takes keys of any length");
        Mac::update(&mut m, data);
        Mac::finalize(m).into_bytes().to_vec()
    };
    let client_key = hmac(&salted, b"Client Key");
    let stored_key = D::digest(&client_key).to_vec();
    let signature = hmac(&stored_key, auth_message.as_bytes());
    let proof = client_key
        .iter()
        .zip(&signature)
        .map(|(a, b)| a ^ b)
        .collect();
    let server_key = hmac(&salted, b"Server Key");
    (proof, hmac(&server_key, auth_message.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7677 §3's SCRAM-SHA-256 example, end to end.
    #[test]
    fn rfc7677_example() {
        let creds = Credentials::new(Mechanism::ScramSha256, "user", "pencil");
        let nonce = "rOprNGfwEbeRWgbNEkqO";
        let bare = format!("n=user,r={nonce}");
        let server_first = b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
        let (reply, sig) = scram_final(&creds, nonce, &bare, server_first).unwrap();
        assert_eq!(
            String::from_utf8(reply).unwrap(),
            "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
        );
        assert_eq!(
            B64.encode(sig),
            "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
        );
    }

    #[test]
    fn hostile_server_first() {
        let creds = Credentials::new(Mechanism::ScramSha512, "u", "p");
        let bare = "n=u,r=abc";
        for bad in [
            &b"r=xyz,s=c2FsdA==,i=4096"[..],
            b"r=abc,s=c2FsdA==,i=4096",
            b"r=abcd,s=c2FsdA==,i=1",
            b"r=abcd,s=c2FsdA==,i=4000000000",
            b"r=abcd,s=!!,i=4096",
            b"\xff",
        ] {
            assert!(scram_final(&creds, "abc", bare, bad).is_err());
        }
    }

    #[test]
    fn plain_and_escaping() {
        let (state, msg) = Credentials::new(Mechanism::Plain, "a", "b").start();
        assert_eq!(msg, b"\0a\0b");
        assert!(matches!(state, Login::Done));
        let (_, first) = Credentials::new(Mechanism::ScramSha512, "a,b=c", "p").start();
        assert!(String::from_utf8(first)
            .unwrap()
            .starts_with("n,,n=a=2Cb=3Dc,r="));
    }
}
