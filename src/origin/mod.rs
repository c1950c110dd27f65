//! `mediagate origin`: a Media API of its own, so the proxy runs and is tested on one machine.
//!
//! It follows spec/media-api.md: three upload styles, metadata, MediaSet, `…/Content` answered
//! with a redirect to a signed temporary URL it serves itself, HTTP Basic, the error JSON. Media
//! live in a durable store under `--data` (see `store`). It prints
//! `mediagate origin listening on <scheme>://<addr>` once it accepts connections, so whoever
//! started it on port 0 learns the port.

mod auth;
mod body;
mod journal;
mod service;
mod signing;
mod store;
mod upload;

use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_rustls::rustls;
use tokio_rustls::TlsAcceptor;

pub use service::Origin;
pub use signing::{now_epoch, Signer};

/// The account an origin uses when none is configured: it then accepts any credentials.
pub const OPEN_ACCOUNT_SID: &str = "AC0123456789abcdef0123456789abcdef";

pub struct OriginOptions {
    pub listen: SocketAddr,
    pub data: PathBuf,
    pub account_sid: Option<String>,
    pub auth_token: Option<String>,
    pub tls: Option<(PathBuf, PathBuf)>,
    /// How long temporary URLs stay valid (the real service: 300 s).
    pub url_ttl_secs: u64,
    /// A `Cache-Control` value for every successful read, to rehearse upstreams that forbid
    /// or limit caching.
    pub cache_control: Option<String>,
}

/// How long the origin waits on a client that stops sending.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    /// From the moment a request head is awaited (on a new connection, or on a kept-alive one
    /// after the previous answer) to its end; past it the connection is closed. It also bounds
    /// a TLS handshake.
    pub header_read: Duration,
    /// The longest wait for the next bytes of a request body; past it the request is answered
    /// 408 and its staging file removed.
    pub body_idle: Duration,
}

/// A request head must be in within 90 s. The wait for the next head on a kept-alive connection
/// counts too, so this stays above the proxy's pool idle time (60 s, `proxy::upstream`): a
/// connection the proxy takes from its pool must not be one the origin is closing.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(90);
/// A request body may pause for up to 60 s between bytes.
pub const BODY_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

impl Default for Timeouts {
    fn default() -> Timeouts {
        Timeouts {
            header_read: HEADER_READ_TIMEOUT,
            body_idle: BODY_IDLE_TIMEOUT,
        }
    }
}

/// After a failed accept (out of file descriptors, say), the pause before the next one: the
/// error would otherwise come back at once, and the loop would spin a core.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Opens the store and serves until the process ends.
pub async fn run(options: OriginOptions) -> io::Result<()> {
    let listener = TcpListener::bind(options.listen).await.map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot listen on {}: {e}", options.listen),
        )
    })?;
    run_on(listener, options, Timeouts::default()).await
}

/// `run` on a listener the caller bound (`options.listen` is not used) with these timeouts: for
/// tests, which learn the port before the origin starts and cannot wait the default timeouts.
pub async fn run_on(
    listener: TcpListener,
    options: OriginOptions,
    timeouts: Timeouts,
) -> io::Result<()> {
    let tls = match &options.tls {
        Some((cert, key)) => Some(tls_acceptor(cert, key)?),
        None => None,
    };
    let store = store::Store::open(&options.data)?;
    let signer = Signer::load_or_create(&options.data)?.with_ttl(options.url_ttl_secs);
    let cache_control = options
        .cache_control
        .as_deref()
        .map(http::HeaderValue::from_str)
        .transpose()
        .map_err(|_| io::Error::other("--cache-control: not a valid header value"))?;
    let local = listener.local_addr()?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let account = match (&options.account_sid, &options.auth_token) {
        (Some(sid), Some(token)) => auth::Account::new(sid.clone(), Some(token)),
        (sid, _) => {
            log::warn!("origin: no --account-sid/--auth-token: every request is let in");
            auth::Account::new(sid.clone().unwrap_or_else(|| OPEN_ACCOUNT_SID.into()), None)
        }
    };
    let origin = Arc::new(Origin {
        store,
        signer,
        account,
        journal: journal::Journal::default(),
        cache_control,
        scheme,
        fallback_host: local.to_string(),
        body_idle: timeouts.body_idle,
    });
    announce(scheme, local, &options.data)?;
    serve(listener, tls, origin, timeouts.header_read).await
}

fn announce(scheme: &str, local: SocketAddr, data: &Path) -> io::Result<()> {
    let mut out = io::stdout().lock();
    writeln!(
        out,
        "mediagate origin listening on {scheme}://{local} (store: {})",
        data.display()
    )?;
    out.flush()
}

async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    origin: Arc<Origin>,
    header_read: Duration,
) -> io::Result<()> {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: keep serving the connections we have,
                // and give them time to end before trying again.
                log::warn!("origin: accept failed: {e}");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let origin = origin.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                Some(acceptor) => {
                    match tokio::time::timeout(header_read, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => serve_connection(stream, peer, origin, header_read).await,
                        Ok(Err(e)) => log::debug!("origin: TLS handshake failed: {e}"),
                        Err(_) => log::debug!("origin: TLS handshake from {peer} timed out"),
                    }
                }
                None => serve_connection(stream, peer, origin, header_read).await,
            }
        });
    }
}

async fn serve_connection<S>(
    stream: S,
    peer: SocketAddr,
    origin: Arc<Origin>,
    header_read: Duration,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req| {
        let origin = origin.clone();
        async move { origin.handle(req, peer).await }
    });
    if let Err(e) = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read)
        .serve_connection(TokioIo::new(stream), service)
        .await
    {
        log::debug!("origin: connection ended: {e}");
    }
}

fn tls_acceptor(cert: &Path, key: &Path) -> io::Result<TlsAcceptor> {
    let read = |path: &Path| {
        std::fs::read(path)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))
    };
    let certs =
        rustls_pemfile::certs(&mut read(cert)?.as_slice()).collect::<Result<Vec<_>, _>>()?;
    let key = rustls_pemfile::private_key(&mut read(key)?.as_slice())?
        .ok_or_else(|| io::Error::other(format!("{}: no private key", key.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(io::Error::other)?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(io::Error::other)?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// `run` on a runtime of its own, for the command line.
pub fn run_blocking(options: OriginOptions) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    runtime
        .block_on(run(options))
        .map_err(|e| format!("origin: {e}"))
}
