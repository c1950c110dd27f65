//! `mediagate proxy`: the sidecar. A pingora server with two services: the proxy on
//! `server.listen` (see `gateway` for the phases) and the operator's listener on
//! `server.metrics_listen` (see `admin`).

mod access;
mod admin;
mod busy_poll;
mod client_limits;
mod content;
mod credentials;
mod framing;
mod fresh_hit;
mod gateway;
mod idempotent;
mod reject;
mod reload;
mod replay;
mod upstream;

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use pingora::services::background::background_service;

use pingora::apps::http_app::HttpServer;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::{RunArgs, Server};
use pingora::services::listening::Service;

pub use gateway::Gateway;

use crate::access_log::AccessLog;
use crate::cache::Cache;
use crate::config::Config;
use content::ContentResolver;

/// How long pingora waits for runtimes to stop once the grace period is over.
const RUNTIME_SHUTDOWN_SECS: u64 = 1;

/// How long a process started with `--upgrade` waits for the running one's sockets: pingora
/// 0.9.1 tries to accept on `upgrade_sock` 7 times, 1 s apart (fixed; its
/// `upgrade_sock_connect_accept_max_retries` setting is not used).
const UPGRADE_WAIT_SECS: u64 = 6;

/// Builds the server and runs it until a signal ends it; SIGHUP reloads `path`. Returns only
/// on a start-up error.
///
/// With `upgrade`, the listening sockets come from the running proxy instead of being bound:
/// pingora waits on `server.upgrade_sock` for them, and the running proxy sends them there when
/// it gets SIGQUIT (see the README, "Binary upgrades").
pub fn run(config: Config, path: &Path, upgrade: bool) -> Result<(), String> {
    if upgrade {
        // The ports are the running proxy's until it hands them over: a bind would fail.
        ensure_can_wait_for_sockets(&config.server.upgrade_sock)?;
    } else {
        // pingora reports a busy port only in its log; check first so the error is plain.
        ensure_can_listen(config.server.listen, "server.listen")?;
        ensure_can_listen(config.server.metrics_listen, "server.metrics_listen")?;
    }
    for warning in config.warnings() {
        log::warn!("{warning}");
    }
    exit_when_a_listener_cannot_bind();
    let quota = crate::quota::backend(&config)?;
    let settings = Arc::new(ArcSwap::from_pointee(gateway::Settings::new(&config)?));
    crate::metrics::init();
    let cache = Cache::leak(config.cache.memory.bytes(), cache_lock_age(&config));

    // Kept here as well as in the gateway: the lines it holds at exit are written out once
    // pingora has stopped.
    let access_log = if config.server.access_log {
        AccessLog::to_stdout()
    } else {
        AccessLog::off()
    };
    let mut server = Server::new_with_opt_and_conf(server_opt(upgrade), server_conf(&config));
    // Everything that can fail is made before the sockets are taken over: once an upgrade has
    // them, this process must serve.
    let lasting = gateway::Lasting {
        quota: quota.clone(),
        cache,
        content: ContentResolver::new(&server.configuration),
        ledger: crate::idempotency::ledger(&config)?,
        spool: spool_dir(&config)?,
        replayer: replay::Replayer::new(&server.configuration),
        busy_poll: busy_poll::BusyPoll::new(config.server.busy_poll.get(), config.server.threads),
        access_log: access_log.clone(),
    };
    if upgrade {
        log::info!(
            "upgrade: waiting up to {UPGRADE_WAIT_SECS} s on {} for the running proxy's listening \
             sockets: send it SIGQUIT",
            config.server.upgrade_sock.display()
        );
    }
    // In upgrade mode this blocks until the sockets arrive; if they do not, pingora logs
    // "Bootstrap failed" and exits 1.
    server.bootstrap();
    if upgrade {
        log::info!("upgrade: listening sockets received from the running proxy");
    }
    let gateway = Gateway::new(settings.clone(), lasting);

    // Every client connection is counted and watched before pingora reads it.
    client_limits::register_metrics();
    let app = client_limits::Limited::new(
        pingora::proxy::http_proxy(&server.configuration, gateway),
        client_limits::ClientLimits::new(&config.server),
    )
    .counted_in(crate::metrics::metrics().client_connections.clone())
    .letting_heads_in_on_shutdown();
    let mut proxy = Service::new("mediagate proxy".to_string(), app);
    proxy.add_tcp(&config.server.listen.to_string());

    // The same watch over its connections: the shipped Kubernetes manifest has it listen on
    // every address, and pingora alone would let any peer there hold connections for ever.
    let admin_app = client_limits::Limited::new(
        HttpServer::new_app(admin::AdminApp::new(
            config.server.listen,
            quota.clone(),
            settings.clone(),
            cache,
        )),
        client_limits::ClientLimits::for_admin(&config.server),
    );
    let mut admin = Service::new("mediagate admin".to_string(), admin_app);
    admin.add_tcp(&config.server.metrics_listen.to_string());

    let reloader = reload::Reloader::new(path.to_path_buf(), config.clone(), settings, cache);
    server.add_service(proxy);
    server.add_service(admin);
    server.add_service(background_service("config reload", reloader));
    log::info!(
        "mediagate proxy on {} → {}, metrics on {}",
        config.server.listen,
        config.upstream.url,
        config.server.metrics_listen
    );
    // Returns once a signal has stopped every service (SIGTERM or SIGQUIT after their grace
    // period, SIGINT at once).
    server.run(RunArgs::default());
    // The uploads pingora cut off when the grace period ran out were settled as failed as their
    // requests were dropped: their counts go back to the fleet before this sidecar goes.
    quota.finish(QUOTA_EXIT_WAIT);
    access_log.write_out_waiting(ACCESS_LOG_EXIT_WAIT);
    std::process::exit(0)
}

/// How long the last access log lines may wait for standard output at exit.
const ACCESS_LOG_EXIT_WAIT: Duration = Duration::from_secs(2);
/// How long the last quota settles may take at exit (a few Redis calls' timeouts).
const QUOTA_EXIT_WAIT: Duration = Duration::from_secs(2);

/// The spool directory, when `uploads.retry` is on: created, and swept of a crash's leftovers.
fn spool_dir(config: &Config) -> Result<Option<Arc<crate::spool::SpoolDir>>, String> {
    let retry = &config.uploads.retry;
    if retry.attempts == 0 {
        return Ok(None);
    }
    crate::spool::SpoolDir::open(retry).map(Some).map_err(|e| {
        format!(
            "uploads.retry.spool_dir: {}: {e}",
            retry.spool_dir.display()
        )
    })
}

/// How long one fill may hold a key's cache lock before the requests waiting on it stop waiting
/// and go upstream themselves: a slow upstream answer, at most.
fn cache_lock_age(config: &Config) -> Duration {
    config.upstream.connect_timeout.get() + config.upstream.read_timeout.get()
}

/// pingora's command-line options, which mediagate's own command line stands in for: only
/// `--upgrade` is passed on.
fn server_opt(upgrade: bool) -> Option<Opt> {
    upgrade.then(|| Opt {
        upgrade: true,
        ..Opt::default()
    })
}

fn server_conf(config: &Config) -> ServerConf {
    ServerConf {
        threads: config.server.threads,
        // On SIGTERM pingora stops accepting, lets in-flight requests run for the grace period,
        // then stops. Its default grace period is 300 s: always set ours.
        grace_period_seconds: Some(config.server.grace_period.whole_secs_ceil()),
        // SIGQUIT sends the listening sockets here, to a new process started with --upgrade.
        upgrade_sock: config.server.upgrade_sock.to_string_lossy().into_owned(),
        graceful_shutdown_timeout_seconds: Some(RUNTIME_SHUTDOWN_SECS),
        upstream_keepalive_pool_size: config.upstream.keepalive_pool,
        // With a CA file, only that CA is trusted for the upstream; otherwise the system roots.
        ca_file: config
            .upstream
            .ca_file
            .as_ref()
            .map(|p| p.to_string_lossy().into_owned()),
        ..ServerConf::default()
    }
}

/// pingora panics when it cannot create the upgrade socket: check its directory first.
fn ensure_can_wait_for_sockets(upgrade_sock: &Path) -> Result<(), String> {
    let dir = upgrade_sock.parent().unwrap_or(Path::new("/"));
    if dir.is_dir() {
        Ok(())
    } else {
        Err(format!(
            "server.upgrade_sock: {}: the directory {} does not exist",
            upgrade_sock.display(),
            dir.display()
        ))
    }
}

/// pingora binds a service's sockets when the service starts, retrying a port in use for 30 s,
/// and a failure there ("Failed to build listeners") panics only that service's thread: the
/// proxy would run on without its port, or without `/metrics` and `/readyz`. The check above makes that rare (the port must be taken
/// in between, or refused by the kernel for another reason); when it happens, the process ends
/// as it does for any other start-up error.
fn exit_when_a_listener_cannot_bind() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if message.starts_with("Failed to build listeners") {
            log::error!("a listening socket could not be opened: exiting");
            std::process::exit(1);
        }
    }));
}

fn ensure_can_listen(addr: SocketAddr, key: &str) -> Result<(), String> {
    TcpListener::bind(addr)
        .map(drop)
        .map_err(|e| format!("{key}: cannot listen on {addr}: {e}"))
}
