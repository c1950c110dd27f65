//! `mediagate origin`: a Media API of its own, so the proxy runs and is tested on one machine.
//!
//! It follows spec/media-api.md: three upload styles, metadata, MediaSet, `…/Content` answered
//! with a redirect to a signed temporary URL it serves itself, HTTP Basic, the error JSON. Media
//! live in a durable store under `--data` (see `store`). It prints
//! `mediagate origin listening on <scheme>://<addr>` once it accepts connections, so whoever
//! started it on port 0 learns the port.

mod auth;
mod journal;
mod service;
mod signing;
mod store;
mod upload;

use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
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

/// Opens the store and serves until the process ends.
pub async fn run(options: OriginOptions) -> io::Result<()> {
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
    let listener = TcpListener::bind(options.listen).await.map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot listen on {}: {e}", options.listen),
        )
    })?;
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
    });
    announce(scheme, local, &options.data)?;
    serve(listener, tls, origin).await
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
) -> io::Result<()> {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: keep serving the connections we have.
                log::warn!("origin: accept failed: {e}");
                continue;
            }
        };
        let origin = origin.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                Some(acceptor) => match acceptor.accept(stream).await {
                    Ok(stream) => serve_connection(stream, peer, origin).await,
                    Err(e) => log::debug!("origin: TLS handshake failed: {e}"),
                },
                None => serve_connection(stream, peer, origin).await,
            }
        });
    }
}

async fn serve_connection<S>(stream: S, peer: SocketAddr, origin: Arc<Origin>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req| {
        let origin = origin.clone();
        async move { origin.handle(req, peer).await }
    });
    if let Err(e) = http1::Builder::new()
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
