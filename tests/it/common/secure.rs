//! Security fixtures for the tests.
//!
//! (`secure_brokers.rs` picks Apache Kafka's own listeners or these fixtures in front of
//! tansu; `benches/tls.rs` includes this file alone.)
//! - [`Pki`]: a CA, a server certificate for `localhost`/`127.0.0.1`, and client
//!   certificates by common name, made with rcgen and written as PEM files.
//! - [`TlsRelay`]: terminates TLS (rustls) and forwards plaintext to a tansu broker that
//!   advertises the relay's port: a TLS broker as far as Tollgate can tell.
//! - [`SaslFront`]: a broker's SASL listener in front of tansu. It answers SaslHandshake and
//!   SaslAuthenticate itself (server side of PLAIN and SCRAM-SHA-256/512, RFC 5802), forwards
//!   ApiVersions (adding the SASL APIs if tansu leaves them out), closes a connection that
//!   sends anything else before authenticating, and relays the rest unchanged once the client
//!   has. Failures answer SASL_AUTHENTICATION_FAILED (58) with Kafka's message, then close.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use bytes::{BufMut, Bytes, BytesMut};
use hmac::{Hmac, Mac};
use kafka_protocol::messages::{
    api_versions_response::ApiVersion, ApiKey, ApiVersionsResponse, ResponseHeader,
    SaslAuthenticateRequest, SaslAuthenticateResponse, SaslHandshakeRequest, SaslHandshakeResponse,
};
use kafka_protocol::protocol::{Decodable, StrBytes};
use sha2::{Digest, Sha256, Sha512};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// PEM files of a test PKI.
pub struct Pki {
    pub dir: tempfile::TempDir,
    ca: rcgen::Certificate,
    ca_key: rcgen::KeyPair,
}

impl Pki {
    pub fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name = dn("tollgate test CA");
        let ca = params.self_signed(&ca_key).unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        let pki = Pki { dir, ca, ca_key };
        pki.issue(
            "server",
            &["localhost", "127.0.0.1"],
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        );
        pki
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// `(cert, key)` of the server certificate.
    pub fn server(&self) -> (PathBuf, PathBuf) {
        self.pair("server")
    }

    /// `(cert, key)` of a client certificate with subject `CN=<cn>,O=Tollgate Tests`.
    pub fn client(&self, cn: &str) -> (PathBuf, PathBuf) {
        if !self.dir.path().join(format!("{cn}.crt")).exists() {
            self.issue(cn, &[], rcgen::ExtendedKeyUsagePurpose::ClientAuth);
        }
        self.pair(cn)
    }

    /// One PEM with the client's key and certificate (the Java client's PEM keystore).
    pub fn client_keystore(&self, cn: &str) -> PathBuf {
        let (cert, key) = self.client(cn);
        let path = self.dir.path().join(format!("{cn}.keystore.pem"));
        let text = std::fs::read_to_string(key).unwrap() + &std::fs::read_to_string(cert).unwrap();
        std::fs::write(&path, text).unwrap();
        path
    }

    fn pair(&self, name: &str) -> (PathBuf, PathBuf) {
        let d = self.dir.path();
        (d.join(format!("{name}.crt")), d.join(format!("{name}.key")))
    }

    fn issue(&self, name: &str, sans: &[&str], usage: rcgen::ExtendedKeyUsagePurpose) {
        let key = rcgen::KeyPair::generate().unwrap();
        let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
        let mut params = rcgen::CertificateParams::new(sans).unwrap();
        params.distinguished_name = dn(name);
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &self.ca, &self.ca_key).unwrap();
        let (c, k) = self.pair(name);
        std::fs::write(c, cert.pem()).unwrap();
        std::fs::write(k, key.serialize_pem()).unwrap();
    }
}

fn dn(cn: &str) -> rcgen::DistinguishedName {
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::OrganizationName, "Tollgate Tests");
    dn.push(rcgen::DnType::CommonName, cn);
    dn
}

/// Run `serve` for every connection accepted on `127.0.0.1:{port}`, on a runtime of its own
/// (the tests' blocking librdkafka calls must not starve it). Stops when dropped.
struct Listener {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Listener {
    fn start<F, Fut>(port: u16, serve: F) -> Listener
    where
        F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        super::in_own_runtime(async move {
            let l = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
            ready_tx.send(()).unwrap();
            let serve = Arc::new(serve);
            let accept = async {
                while let Ok((s, _)) = l.accept().await {
                    let _ = s.set_nodelay(true);
                    tokio::spawn(serve(s));
                }
            };
            tokio::select! {
                _ = accept => {}
                _ = stop_rx => {}
            }
        });
        ready_rx.recv().unwrap();
        Listener { stop: Some(stop) }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// TLS in front of a plaintext broker.
pub struct TlsRelay {
    pub port: u16,
    _listener: Listener,
}

impl TlsRelay {
    /// Serve TLS on `port` with `pki`'s server certificate, forwarding to `backend`.
    pub fn start(port: u16, pki: &Pki, backend: String) -> TlsRelay {
        let (cert, key) = pki.server();
        let cfg = tollgate::security::ServerTlsConfig {
            cert_file: cert.display().to_string(),
            key_file: key.display().to_string(),
            ..Default::default()
        };
        let acceptor: tokio_rustls::TlsAcceptor =
            tollgate::security::tls::server_config(&cfg).unwrap().into();
        let listener = Listener::start(port, move |socket| {
            let (acceptor, backend) = (acceptor.clone(), backend.clone());
            async move {
                let Ok(mut tls) = acceptor.accept(socket).await else {
                    return;
                };
                let Ok(mut up) = TcpStream::connect(&backend).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut up).await;
            }
        });
        TlsRelay {
            port,
            _listener: listener,
        }
    }
}

/// A SASL listener in front of a plaintext broker.
pub struct SaslFront {
    pub port: u16,
    _listener: Listener,
}

impl SaslFront {
    /// Users and their passwords; every user may use every mechanism.
    pub fn start(port: u16, backend: String, users: &[(&str, &str)]) -> SaslFront {
        let users: Arc<HashMap<String, String>> = Arc::new(
            users
                .iter()
                .map(|(u, p)| (u.to_string(), p.to_string()))
                .collect(),
        );
        let listener = Listener::start(port, move |socket| {
            let (users, backend) = (users.clone(), backend.clone());
            async move {
                let _ = front(socket, &backend, &users).await;
            }
        });
        SaslFront {
            port,
            _listener: listener,
        }
    }
}

type Io = std::io::Result<()>;

fn io_err(m: &str) -> std::io::Error {
    std::io::Error::other(m.to_string())
}

async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<Bytes> {
    let len = r.read_u32().await? as usize;
    if len > 64 << 20 {
        return Err(io_err("frame too large"));
    }
    let mut buf = BytesMut::with_capacity(4 + len);
    buf.put_u32(len as u32);
    buf.resize(4 + len, 0);
    r.read_exact(&mut buf[4..]).await?;
    Ok(buf.freeze())
}

/// One client connection of the front: authenticate, then relay.
async fn front(mut client: TcpStream, backend: &str, users: &HashMap<String, String>) -> Io {
    let mut up = TcpStream::connect(backend).await?;
    let mut scram: Option<Scram> = None;
    let mut mechanism = String::new();
    loop {
        let frame = read_frame(&mut client).await?;
        let meta =
            tollgate::wire::protocol::parse_request(&frame).map_err(|e| io_err(&e.to_string()))?;
        let mut body = frame.slice(meta.body_offset.ok_or_else(|| io_err("header"))?..);
        let (v, corr) = (meta.api_version, meta.correlation_id);
        let header = ResponseHeader::default().with_correlation_id(corr);
        match meta.api {
            Some(ApiKey::ApiVersions) => {
                up.write_all(&frame).await?;
                let answer = read_frame(&mut up).await?;
                client.write_all(&with_sasl_apis(&answer, v)).await?;
            }
            Some(ApiKey::SaslHandshake) => {
                let r =
                    SaslHandshakeRequest::decode(&mut body, v).map_err(|_| io_err("handshake"))?;
                mechanism = r.mechanism.to_string();
                let known = ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"];
                let answer = SaslHandshakeResponse::default()
                    .with_error_code(if known.contains(&mechanism.as_str()) {
                        0
                    } else {
                        33
                    })
                    .with_mechanisms(known.iter().map(|m| StrBytes::from_static_str(m)).collect());
                let f = tollgate::wire::protocol::encode_response(
                    &header,
                    &answer,
                    ApiKey::SaslHandshake,
                    v,
                )
                .map_err(|e| io_err(&e.to_string()))?;
                client.write_all(&f).await?;
            }
            Some(ApiKey::SaslAuthenticate) => {
                let r =
                    SaslAuthenticateRequest::decode(&mut body, v).map_err(|_| io_err("auth"))?;
                let step = authenticate(&mechanism, &r.auth_bytes, &mut scram, users);
                let answer = match &step {
                    Ok((bytes, _)) => {
                        SaslAuthenticateResponse::default().with_auth_bytes(bytes.clone())
                    }
                    Err(m) => SaslAuthenticateResponse::default()
                        .with_error_code(58)
                        .with_error_message(Some(StrBytes::from_string(m.clone()))),
                };
                let f = tollgate::wire::protocol::encode_response(
                    &header,
                    &answer,
                    ApiKey::SaslAuthenticate,
                    v,
                )
                .map_err(|e| io_err(&e.to_string()))?;
                client.write_all(&f).await?;
                match step {
                    Err(_) => return Ok(()),
                    Ok((_, true)) => break,
                    Ok((_, false)) => {}
                }
            }
            // A broker closes an unauthenticated connection that skips SASL.
            _ => return Ok(()),
        }
    }
    tokio::io::copy_bidirectional(&mut client, &mut up).await?;
    Ok(())
}

/// The ApiVersions answer with SaslHandshake v0-1 and SaslAuthenticate v0-2 in it.
fn with_sasl_apis(frame: &Bytes, version: i16) -> Bytes {
    let Ok((header, mut r)) = tollgate::wire::protocol::decode_response::<ApiVersionsResponse>(
        frame,
        ApiKey::ApiVersions,
        version,
    ) else {
        return frame.clone();
    };
    for (key, max) in [(ApiKey::SaslHandshake, 1), (ApiKey::SaslAuthenticate, 2)] {
        if !r.api_keys.iter().any(|k| k.api_key == key as i16) {
            r.api_keys.push(
                ApiVersion::default()
                    .with_api_key(key as i16)
                    .with_min_version(0)
                    .with_max_version(max),
            );
        }
    }
    tollgate::wire::protocol::encode_response(&header, &r, ApiKey::ApiVersions, version).unwrap()
}

const FAILED: &str =
    "Authentication failed during authentication due to invalid credentials with SASL mechanism";

/// One step: the bytes to answer and whether the client is now authenticated.
fn authenticate(
    mechanism: &str,
    auth: &[u8],
    scram: &mut Option<Scram>,
    users: &HashMap<String, String>,
) -> Result<(Bytes, bool), String> {
    let fail = || format!("{FAILED} {mechanism}");
    match mechanism {
        "PLAIN" => {
            let parts: Vec<&[u8]> = auth.split(|b| *b == 0).collect();
            let [authzid, user, pass] = parts[..] else {
                return Err(fail());
            };
            let user = std::str::from_utf8(user).map_err(|_| fail())?;
            let ok = (authzid.is_empty() || authzid == user.as_bytes())
                && users.get(user).is_some_and(|p| p.as_bytes() == pass);
            if ok {
                Ok((Bytes::new(), true))
            } else {
                Err(fail())
            }
        }
        "SCRAM-SHA-256" | "SCRAM-SHA-512" => match scram.take() {
            None => {
                let (s, first) = Scram::first(mechanism, auth, users).ok_or_else(fail)?;
                *scram = Some(s);
                Ok((Bytes::from(first), false))
            }
            Some(s) => s
                .finish(auth)
                .map(|f| (Bytes::from(f), true))
                .ok_or_else(fail),
        },
        _ => Err(fail()),
    }
}

/// The server side of one SCRAM exchange.
struct Scram {
    sha512: bool,
    password: String,
    salt: Vec<u8>,
    nonce: String,
    auth_prefix: String,
}

const ITERATIONS: u32 = 4096;

impl Scram {
    fn first(
        mechanism: &str,
        auth: &[u8],
        users: &HashMap<String, String>,
    ) -> Option<(Scram, String)> {
        let text = std::str::from_utf8(auth).ok()?;
        let bare = text.strip_prefix("n,,")?;
        let user = bare.split(',').find_map(|f| f.strip_prefix("n="))?;
        let user = user.replace("=2C", ",").replace("=3D", "=");
        let cnonce = bare.split(',').find_map(|f| f.strip_prefix("r="))?;
        let password = users.get(&user)?.clone();
        let salt: Vec<u8> = (0..16).map(|_| rand::random::<u8>()).collect();
        let nonce = format!("{cnonce}{:016x}", rand::random::<u64>());
        let server_first = format!("r={nonce},s={},i={ITERATIONS}", B64.encode(&salt));
        let s = Scram {
            sha512: mechanism == "SCRAM-SHA-512",
            password,
            salt,
            nonce,
            auth_prefix: format!("{bare},{server_first}"),
        };
        Some((s, server_first))
    }

    /// Check the client-final proof; the server-final message.
    fn finish(self, auth: &[u8]) -> Option<String> {
        let text = std::str::from_utf8(auth).ok()?;
        let (without_proof, proof) = text.rsplit_once(",p=")?;
        if without_proof
            .split(',')
            .find_map(|f| f.strip_prefix("r="))?
            != self.nonce
        {
            return None;
        }
        let proof = B64.decode(proof).ok()?;
        let auth_message = format!("{},{without_proof}", self.auth_prefix);
        let (stored, client_sig, server_sig) = if self.sha512 {
            keys::<Sha512, Hmac<Sha512>>(&self.password, &self.salt, &auth_message)
        } else {
            keys::<Sha256, Hmac<Sha256>>(&self.password, &self.salt, &auth_message)
        };
        if proof.len() != client_sig.len() {
            return None;
        }
        let client_key: Vec<u8> = proof.iter().zip(&client_sig).map(|(a, b)| a ^ b).collect();
        let recovered = if self.sha512 {
            Sha512::digest(&client_key).to_vec()
        } else {
            Sha256::digest(&client_key).to_vec()
        };
        (recovered == stored).then(|| format!("v={}", B64.encode(server_sig)))
    }
}

/// (StoredKey, ClientSignature, ServerSignature) of RFC 5802 §3.
fn keys<D, M>(password: &str, salt: &[u8], auth_message: &str) -> (Vec<u8>, Vec<u8>, Vec<u8>)
where
    D: Digest,
    M: Mac + hmac::digest::KeyInit + hmac::digest::FixedOutput + Clone + Sync,
{
    let mut salted = vec![0u8; <D as Digest>::output_size()];
    pbkdf2::pbkdf2::<M>(password.as_bytes(), salt, ITERATIONS, &mut salted).unwrap();
    let hmac = |key: &[u8], data: &[u8]| {
        let mut m = <M as hmac::digest::KeyInit>::new_from_slice(key).unwrap();
        Mac::update(&mut m, data);
        Mac::finalize(m).into_bytes().to_vec()
    };
    let stored = D::digest(hmac(&salted, b"Client Key")).to_vec();
    let client_sig = hmac(&stored, auth_message.as_bytes());
    let server_sig = hmac(&hmac(&salted, b"Server Key"), auth_message.as_bytes());
    (stored, client_sig, server_sig)
}

/// A file holding `secret`, in `dir`.
pub fn secret_file(dir: &Path, name: &str, secret: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, format!("{secret}\n")).unwrap();
    p.display().to_string()
}
