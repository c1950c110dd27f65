//! Limits that hold off hostile and broken clients, applied to each client connection before
//! pingora reads from it: at most `server.max_connections` connections at once; a request head
//! must arrive within `server.head_timeout` (slowloris), within `server.max_head_size` bytes and
//! `server.max_headers` header lines; a request body must keep up `server.min_body_rate`; a
//! client must take some of its answer within `server.send_timeout` of the proxy having to wait
//! for it; and a kept-alive connection idle for `server.keepalive_timeout` after an answer is
//! closed.
//!
//! pingora has none of these (it allows 1 MiB and 256 headers per head, and each read of a head
//! may take 60 s), so the connection's stream is wrapped (`Watched`): it follows the bytes read
//! to tell heads from bodies, and a client over a limit gets a clear answer (503, 408, 431)
//! written on the socket, then its connection ends. Each refusal is counted in
//! `mediagate_clients_refused_total{reason}`.
//!
//! On shutdown (SIGTERM, or SIGQUIT handing the listeners to an upgraded process) pingora's
//! proxy drops every connection waiting for a request head as soon as it stops accepting:
//! meant for idle kept-alive connections, it also drops a connection accepted a moment before
//! whose client is still sending its first request, which then gets no answer at all. So on the
//! client listener the shutdown (`Limited::cleanup`) first waits, for at most
//! `server.head_timeout` and half of `server.grace_period`, until no connection is in the
//! middle of a head: a fresh connection from its start, a kept-alive one from its next head's
//! first byte past any blank lines.
//!
//! The same wrapper lets an upload's answer outlive its client: a client that goes away once it
//! has sent its whole body (a reset, or a closed socket refusing the answer) reads as having
//! closed, and what is written to it is dropped, so that pingora reads the upstream's answer to
//! its end rather than abandon it at the first failed write. The upload's quota and
//! `Idempotency-Key` are settled by that answer, and the client's retry gets it.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::{SslDigest, TlsRef};
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use pingora::server::ShutdownWatch;
use pingora_prometheus::prometheus::IntGauge;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::{Instant, Sleep};

use crate::api::{ApiError, ErrorCode};
use crate::config::Server;
use crate::metrics::metrics;

/// The window the body rate is measured over.
const RATE_WINDOW: Duration = Duration::from_secs(5);

#[derive(Clone, Debug)]
pub struct ClientLimits {
    pub max_connections: usize,
    pub head_timeout: Duration,
    pub max_head_size: usize,
    pub max_headers: usize,
    /// Bytes per second; 0: no minimum.
    pub min_body_rate: u64,
    /// How long a write may wait for the client to take any of it; 0: for ever.
    pub send_timeout: Duration,
    /// How long a kept-alive connection may wait for its next request; 0: for ever.
    pub keepalive_timeout: Duration,
    /// On shutdown, how long heads on their way may take before pingora drops their
    /// connections: `head_timeout`, and at most half of `grace_period`, so that the requests
    /// they carry (and those already running) have the other half to finish.
    pub shutdown_head_wait: Duration,
}

impl ClientLimits {
    pub fn new(server: &Server) -> ClientLimits {
        ClientLimits {
            max_connections: server.max_connections,
            head_timeout: server.head_timeout.get(),
            max_head_size: usize::try_from(server.max_head_size.bytes()).unwrap_or(usize::MAX),
            max_headers: server.max_headers,
            min_body_rate: server.min_body_rate.bytes(),
            send_timeout: server.send_timeout.get(),
            keepalive_timeout: server.keepalive_timeout.get(),
            shutdown_head_wait: server.head_timeout.get().min(server.grace_period.get() / 2),
        }
    }

    /// The metrics listener's: the same, for at most `ADMIN_MAX_CONNECTIONS` at once (scrapers
    /// and probes hold a few).
    pub fn for_admin(server: &Server) -> ClientLimits {
        ClientLimits {
            max_connections: ADMIN_MAX_CONNECTIONS,
            ..ClientLimits::new(server)
        }
    }
}

/// Connections the metrics listener takes at once.
pub const ADMIN_MAX_CONNECTIONS: usize = 64;

/// Keeps the connection of a request to the metrics listener alive only as its client asked
/// (HTTP/1.1 unless `Connection: close`, HTTP/1.0 with `Connection: keep-alive`), with no
/// timer of pingora's: the connection's watcher times `server.keepalive_timeout`. pingora's
/// HTTP server application keeps every one alive for 60 s otherwise, HTTP/1.0 included,
/// whatever `keepalive_timeout` says. Not while the server shuts down: pingora has turned
/// keep-alive off then. (The proxy's sessions keep alive as asked already.)
pub fn keep_alive_as_asked(session: &mut pingora::protocols::http::ServerSession) {
    use pingora::protocols::http::ServerSession;
    if session.get_keepalive().is_none() {
        return;
    }
    if let ServerSession::H1(h1) = session {
        h1.respect_keepalive();
    }
}

/// Why a client was cut off: the `reason` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cutoff {
    MaxConnections,
    HeadTimeout,
    HeadTooLarge,
    TooManyHeaders,
    SlowBody,
    BadChunk,
    SendTimeout,
}

impl Cutoff {
    const ALL: [Cutoff; 7] = [
        Cutoff::MaxConnections,
        Cutoff::HeadTimeout,
        Cutoff::HeadTooLarge,
        Cutoff::TooManyHeaders,
        Cutoff::SlowBody,
        Cutoff::BadChunk,
        Cutoff::SendTimeout,
    ];

    fn label(self) -> &'static str {
        match self {
            Cutoff::MaxConnections => "max_connections",
            Cutoff::HeadTimeout => "head_timeout",
            Cutoff::HeadTooLarge => "head_too_large",
            Cutoff::TooManyHeaders => "too_many_headers",
            Cutoff::SlowBody => "slow_body",
            Cutoff::BadChunk => "bad_chunk",
            Cutoff::SendTimeout => "send_timeout",
        }
    }

    /// The answer written on the socket before it closes: the error JSON, as every answer of
    /// mediagate's own (a server may answer before it has read the whole request). None for a
    /// client that is not reading: it is in the middle of an answer already.
    fn answer(self) -> Option<Vec<u8>> {
        let (status, phrase, code, message, extra) = self.answer_parts()?;
        let body =
            String::from_utf8_lossy(&ApiError::new(status, code, message).to_json()).into_owned();
        Some(
            format!(
                "HTTP/1.1 {status} {phrase}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n{body}",
                body.len()
            )
            .into_bytes(),
        )
    }

    /// What reads and writes of the connection fail with once it is cut off.
    fn error(self) -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::TimedOut, CutOff(self))
    }

    /// The status of `answer`.
    fn status(self) -> Option<u16> {
        self.answer_parts().map(|(status, ..)| status)
    }

    /// Status, reason phrase, error code, message and extra header lines of `answer`.
    fn answer_parts(self) -> Option<(u16, &'static str, ErrorCode, &'static str, &'static str)> {
        Some(match self {
            Cutoff::SendTimeout => return None,
            Cutoff::MaxConnections => (
                503,
                "Service Unavailable",
                ErrorCode::TooManyConnections,
                "Too many connections",
                "Retry-After: 1\r\n",
            ),
            Cutoff::HeadTimeout => (
                408,
                "Request Timeout",
                ErrorCode::HeadTimeout,
                "The request head was not received in time",
                "",
            ),
            Cutoff::HeadTooLarge | Cutoff::TooManyHeaders => (
                431,
                "Request Header Fields Too Large",
                ErrorCode::HeadTooLarge,
                "The request head is too large",
                "",
            ),
            Cutoff::BadChunk => (
                400,
                "Bad Request",
                ErrorCode::BadRequest,
                "The request body's chunked framing is malformed",
                "",
            ),
            Cutoff::SlowBody => (
                408,
                "Request Timeout",
                ErrorCode::HeadTimeout,
                "The request body arrived too slowly",
                "",
            ),
        })
    }

    fn count(self) {
        metrics()
            .clients_refused
            .with_label_values(&[self.label()])
            .inc();
    }
}

/// Exports every reason at zero from the start.
pub fn register_metrics() {
    for cutoff in Cutoff::ALL {
        metrics()
            .clients_refused
            .with_label_values(&[cutoff.label()]);
    }
}

/// The proxy's application, with its connections counted and watched.
pub struct Limited<A> {
    app: Arc<A>,
    limits: Arc<ClientLimits>,
    open: Arc<AtomicUsize>,
    /// The open connections, exported (the client listener's: `mediagate_client_connections`).
    gauge: Option<IntGauge>,
    /// The heads on their way, for an application that drops connections waiting for one on
    /// shutdown (pingora's proxy; its HTTP server application leaves them be).
    heads: Option<Arc<HeadsOnTheirWay>>,
}

impl<A> Limited<A> {
    pub fn new(app: A, limits: ClientLimits) -> Limited<A> {
        Limited {
            app: Arc::new(app),
            limits: Arc::new(limits),
            open: Arc::new(AtomicUsize::new(0)),
            gauge: None,
            heads: None,
        }
    }

    /// Exports the number of open connections in `gauge`.
    pub fn counted_in(mut self, gauge: IntGauge) -> Limited<A> {
        self.gauge = Some(gauge);
        self
    }

    /// On shutdown, lets the heads on their way in before the application's cleanup.
    pub fn letting_heads_in_on_shutdown(mut self) -> Limited<A> {
        self.heads = Some(Arc::default());
        self
    }
}

/// One open connection, counted until it is dropped.
struct Open {
    count: Arc<AtomicUsize>,
    gauge: Option<IntGauge>,
}

impl Open {
    fn new(count: &Arc<AtomicUsize>, gauge: Option<&IntGauge>) -> (Open, usize) {
        let before = count.fetch_add(1, Ordering::AcqRel);
        if let Some(gauge) = gauge {
            gauge.inc();
        }
        let open = Open {
            count: count.clone(),
            gauge: gauge.cloned(),
        };
        (open, before)
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::AcqRel);
        if let Some(gauge) = &self.gauge {
            gauge.dec();
        }
    }
}

/// How long the shutdown lets the connection tasks spawned just before it run before it counts
/// their heads: each counts its head in its first poll, a matter of microseconds, but on a
/// worker of its own (work stealing) it may not have run yet when the accept loop ends.
const SETTLE: Duration = Duration::from_millis(20);

/// The connections in the middle of a request head: a fresh one from its start, a kept-alive
/// one from its next head's first byte, each until its head is whole or the connection ends.
#[derive(Default)]
struct HeadsOnTheirWay {
    count: AtomicUsize,
    /// Set once the shutdown waits: only then does the last head to end wake it (the `Notify`
    /// takes a lock, which every connection need not pay for).
    draining: AtomicBool,
    none_left: Notify,
}

impl HeadsOnTheirWay {
    fn add(&self) {
        self.count.fetch_add(1, Ordering::SeqCst);
    }

    // SeqCst here and in `wait_until_none`: either the waiter sees this decrement or this sees
    // `draining`, never neither.
    fn remove(&self) {
        if self.count.fetch_sub(1, Ordering::SeqCst) == 1 && self.draining.load(Ordering::SeqCst) {
            self.none_left.notify_waiters();
        }
    }

    fn count(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    /// Waits until no head is on its way, for at most `limit`: answers how many still are.
    async fn wait_until_none(&self, limit: Duration) -> usize {
        self.draining.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + limit;
        loop {
            let none_left = self.none_left.notified();
            tokio::pin!(none_left);
            // Registered before the count is read: a last head ending in between still wakes it.
            none_left.as_mut().enable();
            if self.count() == 0 {
                return 0;
            }
            if tokio::time::timeout_at(deadline, none_left).await.is_err() {
                return self.count();
            }
        }
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for Limited<A> {
    async fn process_new(
        self: &Arc<Self>,
        mut stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let (_open, open) = Open::new(&self.open, self.gauge.as_ref());
        if open >= self.limits.max_connections {
            Cutoff::MaxConnections.count();
            use tokio::io::AsyncWriteExt;
            let answer = Cutoff::MaxConnections.answer().unwrap_or_default();
            let _ = stream.write_all(&answer).await;
            let _ = stream.flush().await;
            return None;
        }
        let watched: Stream = Box::new(Watched::new(
            stream,
            self.limits.clone(),
            self.heads.clone(),
        ));
        self.app.process_new(watched, shutdown).await
    }

    /// Runs once the listener has stopped accepting, before pingora's own cleanup drops every
    /// connection waiting for a head: first, the heads on their way are let in (see the
    /// module's documentation).
    async fn cleanup(&self) {
        if let Some(heads) = &self.heads {
            tokio::time::sleep(SETTLE).await;
            let waiting = heads.count();
            if waiting > 0 {
                let limit = self.limits.shutdown_head_wait;
                log::info!(
                    "shutting down: waiting up to {limit:?} for {waiting} client connection(s) \
                     still sending a request head"
                );
                let left = heads.wait_until_none(limit).await;
                if left > 0 {
                    log::warn!(
                        "shutting down: {left} client connection(s) sent no whole request \
                         head in time: closed"
                    );
                }
            }
        }
        self.app.cleanup().await;
    }
}

/// Where the reading of a connection is.
#[derive(Debug)]
enum Phase {
    /// Reading a request head (`started`: its first byte came).
    Head { started: bool },
    /// Reading a body: `Content-Length` bytes, or chunked until its last chunk.
    Body(BodyLeft),
    /// Between a request and the next: the next head starts once an answer has been written.
    Between,
}

/// A client connection, read under the limits.
pub struct Watched {
    inner: Stream,
    limits: Arc<ClientLimits>,
    phase: Phase,
    /// The head read so far, when it comes in more than one read (kept for the next one).
    head: Vec<u8>,
    /// The empty lines read before the head's first line (httparse skips them; they count
    /// towards `max_head_size`, and are no head by themselves).
    blank: usize,
    /// Whether an answer was written since the last head: the next read starts a new head.
    answered: bool,
    /// The head's deadline, or when the body rate is next judged.
    timer: Pin<Box<Sleep>>,
    timer_on: bool,
    /// The body rate counts only time spent waiting for the client (not time when the proxy
    /// did not read, the upstream being slow): bytes, and that time, since the last judgement.
    window_bytes: u64,
    waited: Duration,
    pending_since: Option<Instant>,
    /// A cutoff decided, answered once.
    cut: Option<Cutoff>,
    /// `send_timeout`'s clock, made at the connection's first write that has to wait, and
    /// whether it runs: from such a wait to the next write the socket takes.
    send_timer: Option<Pin<Box<Sleep>>>,
    send_waiting: bool,
    /// A body was read to its end since the last head: its request (an upload) awaits its
    /// answer.
    body_read: bool,
    /// The client went away while its upload's answer was due, or the connection idled past
    /// `keepalive_timeout`: reads end, writes are dropped.
    gone: bool,
    /// The keep-alive clock: when the wait for the next request began (pingora's first read
    /// of it that found nothing), and a timer that fires at or before that wait's deadline.
    idle_since: Option<Instant>,
    idle_timer: Option<Pin<Box<Sleep>>>,
    /// Where a head on its way is counted (a shutdown waits for it), and whether this
    /// connection's is.
    heads: Option<Arc<HeadsOnTheirWay>>,
    head_counted: bool,
}

impl fmt::Debug for Watched {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Watched")
            .field("phase", &self.phase)
            .finish()
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        self.uncount_head();
    }
}

impl Watched {
    fn new(
        inner: Stream,
        limits: Arc<ClientLimits>,
        heads: Option<Arc<HeadsOnTheirWay>>,
    ) -> Watched {
        let deadline = Instant::now() + limits.head_timeout;
        Watched {
            inner,
            // The first head's clock runs from the connection's start.
            phase: Phase::Head { started: true },
            head: Vec::new(),
            blank: 0,
            limits,
            answered: false,
            timer: Box::pin(tokio::time::sleep_until(deadline)),
            timer_on: true,
            window_bytes: 0,
            waited: Duration::ZERO,
            pending_since: None,
            cut: None,
            send_timer: None,
            send_waiting: false,
            body_read: false,
            gone: false,
            idle_since: None,
            idle_timer: None,
            heads,
            head_counted: false,
        }
        .with_head_counted()
    }

    /// The first head is on its way from the connection's start.
    fn with_head_counted(mut self) -> Watched {
        self.count_head();
        self
    }

    /// Counts this connection's head as on its way, once.
    fn count_head(&mut self) {
        if let Some(heads) = self.heads.as_ref().filter(|_| !self.head_counted) {
            heads.add();
            self.head_counted = true;
        }
    }

    /// The head is whole, or the connection ends.
    fn uncount_head(&mut self) {
        if std::mem::take(&mut self.head_counted) {
            if let Some(heads) = &self.heads {
                heads.remove();
            }
        }
    }

    /// Whether `error`, from the client's socket, says the client went away while its
    /// upload's answer was due; from then on it has.
    fn client_gone(&mut self, error: &std::io::Error) -> bool {
        use std::io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset};
        let gone = self.body_read
            && matches!(self.phase, Phase::Between)
            && matches!(
                error.kind(),
                ConnectionReset | BrokenPipe | ConnectionAborted
            );
        if gone && !self.gone {
            log::debug!("the client left before its upload's answer ({error}); reading it on");
        }
        self.gone |= gone;
        gone
    }

    /// Whether a read into `room` bytes is pingora waiting for a kept-alive connection's next
    /// request: the connection is answered (no head begun) and the read is not the one-byte
    /// probe pingora keeps reading while an answer still streams (to see a client leave), which
    /// must not start the clock: a long download is not idle.
    fn waits_for_next_request(&self, room: usize) -> bool {
        !self.limits.keepalive_timeout.is_zero()
            && room > 1
            && matches!(self.phase, Phase::Head { started: false })
    }

    /// The keep-alive clock, for a wait for the next request that found nothing to read:
    /// whether the connection has now waited `keepalive_timeout` since its wait began.
    ///
    /// pingora's own keep-alive timeout would arm and drop a timer for every request; this one
    /// is armed once and moved only when it fires: it is allowed to fire early (a deadline of
    /// an earlier wait), and then re-armed for the current one. A busy connection pays for one
    /// timer per `keepalive_timeout`, not one per request.
    fn idled_out(&mut self, cx: &mut Context<'_>) -> bool {
        let since = *self.idle_since.get_or_insert_with(Instant::now);
        let deadline = since + self.limits.keepalive_timeout;
        let timer = self
            .idle_timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if timer.is_elapsed() {
            timer.as_mut().reset(deadline);
        }
        while timer.as_mut().poll(cx).is_ready() {
            if Instant::now() >= deadline {
                return true;
            }
            timer.as_mut().reset(deadline);
        }
        false
    }

    fn arm(&mut self, after: Duration) {
        self.timer.as_mut().reset(Instant::now() + after);
        self.timer_on = true;
    }

    /// Follows the bytes just read; a limit they break is returned.
    fn follow(&mut self, mut bytes: &[u8]) -> Result<(), Cutoff> {
        while !bytes.is_empty() {
            match &mut self.phase {
                // A client that sends before its answer (pipelining): a new head all the same.
                Phase::Between => self.start_head(),
                Phase::Head { .. } => match self.follow_head(bytes)? {
                    Some((used, framing)) => {
                        bytes = &bytes[used..];
                        self.uncount_head();
                        self.start_body(framing);
                    }
                    None => break,
                },
                Phase::Body(left) => {
                    let used = left.follow(bytes)?;
                    self.window_bytes += used as u64;
                    bytes = &bytes[used..];
                    if left.done() {
                        self.phase = Phase::Between;
                        self.timer_on = false;
                        self.body_read = true;
                    }
                }
            }
        }
        Ok(())
    }

    /// Adds bytes to the head being read. When it is complete: how many of `bytes` it took,
    /// and how its body is framed.
    fn follow_head(&mut self, bytes: &[u8]) -> Result<Option<(usize, Framing)>, Cutoff> {
        let Phase::Head { started } = &mut self.phase else {
            return Ok(None);
        };
        let first_bytes = !std::mem::replace(started, true);
        // Empty lines before the request line are skipped, as httparse skips them: a run of
        // them is no head (else a client could send one now and then, with no clock running).
        let mut skipped = 0;
        if self.head.is_empty() {
            skipped = bytes
                .iter()
                .take_while(|b| matches!(b, b'\r' | b'\n'))
                .count();
            self.blank += skipped;
        }
        let rest = &bytes[skipped..];
        // Most heads come whole in one read: judged where they lie, without a copy (and with
        // no deadline to set).
        if self.head.is_empty() {
            let fits = |end: &usize| self.blank + end <= self.limits.max_head_size;
            if let Some(end) = find_head_end(rest).filter(fits) {
                let framing = judge_head(&rest[..end], &self.limits)?;
                return Ok(Some((skipped + end, framing)));
            }
        }
        if first_bytes {
            self.arm(self.limits.head_timeout);
        }
        // A request has begun to come: blank lines alone (a stray CRLF after a body) are none.
        if !rest.is_empty() {
            self.count_head();
        }
        let (head, limits) = (&mut self.head, &self.limits);
        let before = head.len();
        head.extend_from_slice(rest);
        // The blank line may straddle two reads.
        let scan_from = before.saturating_sub(3);
        match find_head_end(&head[scan_from..]).map(|i| scan_from + i) {
            Some(end) if self.blank + end <= limits.max_head_size => {
                let framing = judge_head(&head[..end], limits)?;
                head.clear();
                Ok(Some((skipped + end - before, framing)))
            }
            _ if self.blank + head.len() > limits.max_head_size => Err(Cutoff::HeadTooLarge),
            _ => Ok(None),
        }
    }

    fn start_head(&mut self) {
        self.head.clear();
        self.blank = 0;
        self.phase = Phase::Head { started: false };
        self.timer_on = false;
        self.answered = false;
        self.body_read = false;
    }

    fn start_body(&mut self, framing: Framing) {
        match framing {
            Framing::None => {
                self.phase = Phase::Between;
                self.timer_on = false;
            }
            Framing::Length(left) => {
                self.phase = Phase::Body(BodyLeft::Length(left));
                self.start_window();
            }
            Framing::Chunked => {
                self.phase = Phase::Body(BodyLeft::chunked());
                self.start_window();
            }
        }
    }

    fn start_window(&mut self) {
        self.window_bytes = 0;
        self.waited = Duration::ZERO;
        self.timer_on = false;
    }

    fn judging_rate(&self) -> bool {
        self.limits.min_body_rate > 0 && matches!(self.phase, Phase::Body(_))
    }

    /// The body's rate over the time waited for it, once a window's worth was waited.
    fn judge_rate(&mut self) -> Result<(), Cutoff> {
        if !self.judging_rate() || self.waited < RATE_WINDOW {
            return Ok(());
        }
        let needed = self.limits.min_body_rate as f64 * self.waited.as_secs_f64();
        if (self.window_bytes as f64) < needed {
            return Err(Cutoff::SlowBody);
        }
        self.start_window();
        Ok(())
    }

    /// The client keeps the proxy waiting: a late head, or a body too slow.
    fn on_timer(&mut self) -> Result<(), Cutoff> {
        match self.phase {
            Phase::Head { started: true, .. } => Err(Cutoff::HeadTimeout),
            Phase::Body(_) => {
                if let Some(since) = self.pending_since.replace(Instant::now()) {
                    self.waited += since.elapsed();
                }
                self.judge_rate()?;
                // Still waiting: the next judgement comes after another window of it.
                let left = RATE_WINDOW.saturating_sub(self.waited);
                self.arm(left);
                Ok(())
            }
            _ => {
                self.timer_on = false;
                Ok(())
            }
        }
    }

    /// A write, flush or shutdown towards the client, under `send_timeout`: one that waits
    /// starts the clock unless it runs already, one that goes on stops it. A client that takes
    /// nothing for that long is cut off: otherwise it could hold its answer's buffers (a cache
    /// fill's room among them) for as long as it stays connected. Once cut off for it, nothing
    /// more is written, whatever pingora makes of the failed write.
    ///
    /// To a client gone while its upload's answer was due, nothing is sent and `dropped` is
    /// answered (what the write would have answered had it gone through).
    fn send<T>(
        &mut self,
        cx: &mut Context<'_>,
        dropped: T,
        op: impl FnOnce(Pin<&mut Stream>, &mut Context<'_>) -> Poll<std::io::Result<T>>,
    ) -> Poll<std::io::Result<T>> {
        if self.cut == Some(Cutoff::SendTimeout) {
            return Poll::Ready(Err(Cutoff::SendTimeout.error()));
        }
        if self.gone {
            return Poll::Ready(Ok(dropped));
        }
        let sent = op(Pin::new(&mut self.inner), cx);
        if let Poll::Ready(Err(e)) = &sent {
            if self.client_gone(e) {
                return Poll::Ready(Ok(dropped));
            }
        }
        if sent.is_ready() {
            self.send_waiting = false;
            return sent;
        }
        let limit = self.limits.send_timeout;
        if limit.is_zero() {
            return Poll::Pending;
        }
        if !std::mem::replace(&mut self.send_waiting, true) {
            let deadline = Instant::now() + limit;
            match &mut self.send_timer {
                Some(timer) => timer.as_mut().reset(deadline),
                None => self.send_timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
        }
        let expired = self
            .send_timer
            .as_mut()
            .is_some_and(|timer| timer.as_mut().poll(cx).is_ready());
        if expired {
            return Poll::Ready(Err(self.cut_off(cx, Cutoff::SendTimeout)));
        }
        Poll::Pending
    }

    /// Ends the connection for `cutoff`: counted once, its answer written if the socket takes
    /// it at once.
    fn cut_off(&mut self, cx: &mut Context<'_>, cutoff: Cutoff) -> std::io::Error {
        if self.cut.is_none() {
            self.cut = Some(cutoff);
            cutoff.count();
            log::info!("client cut off: {}", cutoff.label());
            match cutoff.answer() {
                Some(answer) => {
                    let _ = Pin::new(&mut self.inner).poll_write(cx, &answer);
                    let _ = Pin::new(&mut self.inner).poll_flush(cx);
                }
                None => reset_on_close(self.inner.id()),
            }
        }
        cutoff.error()
    }
}

/// The error a read or write of a cut-off connection fails with: pingora passes it on as the
/// request's error, which tells `logging` what the client was answered.
#[derive(Debug)]
struct CutOff(Cutoff);

impl fmt::Display for CutOff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.label())
    }
}

impl std::error::Error for CutOff {}

/// The status written to a client cut off in the middle of a request (a body too slow, a bad
/// chunk), if `error` is that cut-off: pingora, which did not write it, has none to report.
pub fn status_written(error: &pingora::Error) -> Option<u16> {
    let io = error.root_cause().downcast_ref::<std::io::Error>()?;
    let CutOff(cutoff) = io.get_ref()?.downcast_ref::<CutOff>()?;
    cutoff.status()
}

/// A client cut off without an answer (it reads nothing) has its connection reset when it
/// closes, not ended in order: the kernel then drops at once what it still holds to send it (up
/// to the socket's send buffer, megabytes), where an orderly close would keep it, probing the
/// client's closed window, for minutes (nginx's `reset_timedout_connection`).
fn reset_on_close(socket: UniqueIDType) {
    #[cfg(unix)]
    {
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        // SAFETY: `socket` is the connection's own descriptor, open while its stream is held;
        // the option only changes how it closes. A failure leaves the orderly close.
        let set = unsafe {
            libc::setsockopt(
                socket,
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&linger as *const libc::linger).cast(),
                std::mem::size_of::<libc::linger>() as libc::socklen_t,
            )
        };
        if set != 0 {
            log::debug!(
                "client connection: no reset on close: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}

/// What is left of a body.
#[derive(Debug)]
enum BodyLeft {
    Length(u64),
    Chunked(Chunked),
}

/// Where a chunked body is (RFC 9112 §7.1), followed byte by byte so that no data can pass for
/// framing: a chunk's size line (with any extension), its data and CRLF, and after the last
/// chunk the trailer lines up to the empty one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunked {
    /// Hex digits of the size so far (`digits`: at least one).
    Size {
        size: u64,
        digits: bool,
    },
    /// Past the size: an extension, up to the line's end.
    Extension {
        size: u64,
    },
    /// The size line's LF.
    SizeLf {
        size: u64,
    },
    Data {
        left: u64,
    },
    DataCr,
    DataLf,
    /// After the last chunk: at the start of a trailer line (`fresh`) or inside one.
    Trailer {
        fresh: bool,
    },
    TrailerLf {
        fresh: bool,
    },
    Done,
    /// A size line without a size: framing two parsers could read two ways.
    Malformed,
}

impl BodyLeft {
    fn chunked() -> BodyLeft {
        BodyLeft::Chunked(Chunked::Size {
            size: 0,
            digits: false,
        })
    }

    /// Follows body bytes; returns how many belong to this body.
    fn follow(&mut self, bytes: &[u8]) -> Result<usize, Cutoff> {
        match self {
            BodyLeft::Length(left) => {
                let take = (*left).min(bytes.len() as u64);
                *left -= take;
                Ok(usize::try_from(take).unwrap_or(bytes.len()))
            }
            BodyLeft::Chunked(state) => {
                let mut i = 0;
                while i < bytes.len() && *state != Chunked::Done {
                    if let Chunked::Data { left } = *state {
                        let take = usize::try_from(left)
                            .unwrap_or(usize::MAX)
                            .min(bytes.len() - i);
                        i += take;
                        let left = left - take as u64;
                        *state = if left == 0 {
                            Chunked::DataCr
                        } else {
                            Chunked::Data { left }
                        };
                        continue;
                    }
                    *state = state.step(bytes[i]);
                    if *state == Chunked::Malformed {
                        return Err(Cutoff::BadChunk);
                    }
                    i += 1;
                }
                Ok(i)
            }
        }
    }

    fn done(&self) -> bool {
        matches!(self, BodyLeft::Length(0) | BodyLeft::Chunked(Chunked::Done))
    }
}

impl Chunked {
    /// One byte of framing. A size line must start with a size (not empty, no sign, no
    /// space): anything else is refused. Past that, other malformed framing is pingora's to
    /// refuse; here it only has to end where the body ends, so an unexpected byte is taken as
    /// part of the line it is in.
    fn step(self, byte: u8) -> Chunked {
        use Chunked::*;
        match (self, byte) {
            (Size { size, .. }, _) if byte.is_ascii_hexdigit() => Size {
                size: size
                    .saturating_mul(16)
                    .saturating_add(u64::from((byte as char).to_digit(16).unwrap_or(0))),
                digits: true,
            },
            (Size { digits: false, .. }, _) => Malformed,
            (Size { size, .. } | Extension { size }, b'\r') => SizeLf { size },
            (Size { size, .. } | Extension { size }, _) => Extension { size },
            (SizeLf { size: 0 }, b'\n') => Trailer { fresh: true },
            (SizeLf { size }, b'\n') => Data { left: size },
            (SizeLf { size }, _) => Extension { size },
            (Data { left }, _) => Data { left },
            (DataCr, b'\r') => DataLf,
            (DataCr, _) => DataCr,
            (DataLf, b'\n') => Size {
                size: 0,
                digits: false,
            },
            (DataLf, _) => DataCr,
            (Trailer { fresh }, b'\r') => TrailerLf { fresh },
            (Trailer { .. }, _) => Trailer { fresh: false },
            (TrailerLf { fresh: true }, b'\n') => Done,
            (TrailerLf { .. }, b'\n') => Trailer { fresh: true },
            (TrailerLf { .. }, _) => Trailer { fresh: false },
            (Done, _) => Done,
            (Malformed, _) => Malformed,
        }
    }
}

enum Framing {
    None,
    Length(u64),
    Chunked,
}

/// Checks a whole head (up to its blank line) against the limits; returns its body's framing.
fn judge_head(head: &[u8], limits: &ClientLimits) -> Result<Framing, Cutoff> {
    if head.len() > limits.max_head_size {
        return Err(Cutoff::HeadTooLarge);
    }
    let mut lines = 0;
    let mut framing = Framing::None;
    let mut line_start = 0;
    for line_end in memchr::memchr_iter(b'\n', head) {
        lines += 1;
        // The request line, one line per header, and the blank line: N headers, N + 2.
        if lines > limits.max_headers + 2 {
            return Err(Cutoff::TooManyHeaders);
        }
        let line = &head[line_start..line_end];
        if lines > 1 {
            match header_framing(line) {
                Some(Framing::Chunked) => framing = Framing::Chunked,
                Some(length) if !matches!(framing, Framing::Chunked) => framing = length,
                _ => {}
            }
        }
        line_start = line_end + 1;
    }
    Ok(framing)
}

/// The end of a head (just past its blank line), if `bytes` hold it. Lines end in CRLF or, as
/// pingora (httparse) accepts too, a bare LF: the blank line is `\r\n` or `\n` after a line's
/// `\n`. (Read as pingora reads it: else the watcher would take an upload's body for more of
/// its head.)
fn find_head_end(bytes: &[u8]) -> Option<usize> {
    memchr::memchr_iter(b'\n', bytes).find_map(|i| match bytes.get(i + 1..) {
        Some([b'\n', ..]) => Some(i + 2),
        Some([b'\r', b'\n', ..]) => Some(i + 3),
        _ => None,
    })
}

/// What one header line says of the body's framing, if anything: `Transfer-Encoding` with
/// `chunked`, or a non-zero `Content-Length`. Malformed framing is pingora's and the proxy's
/// to refuse; here it only decides what to watch, so doubt means "no body".
fn header_framing(line: &[u8]) -> Option<Framing> {
    // Only the two names matter (a line starting with a space is an obsolete fold, which
    // pingora refuses).
    if !line
        .first()
        .is_some_and(|b| matches!(b | 0x20, b't' | b'c'))
    {
        return None;
    }
    let colon = memchr::memchr(b':', line)?;
    let (name, value) = (line[..colon].trim_ascii(), line[colon + 1..].trim_ascii());
    if name.eq_ignore_ascii_case(b"transfer-encoding") {
        let chunked = value
            .windows(b"chunked".len())
            .any(|w| w.eq_ignore_ascii_case(b"chunked"));
        return chunked.then_some(Framing::Chunked);
    }
    if name.eq_ignore_ascii_case(b"content-length") {
        let length = content_length(value)?;
        return (length > 0).then_some(Framing::Length(length));
    }
    None
}

/// A `Content-Length` as pingora reads it: one number, or a list of equal ones (RFC 9110). The
/// proxy refuses such a list (`framing`), but reads past its body first, and this watcher must
/// then see that body where pingora does.
fn content_length(value: &[u8]) -> Option<u64> {
    let mut lengths = value.split(|&b| b == b',').map(|one| {
        std::str::from_utf8(one.trim_ascii())
            .ok()?
            .parse::<u64>()
            .ok()
    });
    let first = lengths.next()??;
    lengths.all(|other| other == Some(first)).then_some(first)
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if let Some(cutoff) = this.cut {
            return Poll::Ready(Err(cutoff.error()));
        }
        if this.gone {
            return Poll::Ready(Ok(()));
        }
        if this.answered && matches!(this.phase, Phase::Between) {
            this.start_head();
        }
        let filled = buf.filled().len();
        let waits_for_next_request = this.waits_for_next_request(buf.remaining());
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                this.idle_since = None;
                if let Some(since) = this.pending_since.take() {
                    this.waited += since.elapsed();
                }
                let new = &buf.filled()[filled..];
                if let Err(cutoff) = this.follow(new).and_then(|()| this.judge_rate()) {
                    return Poll::Ready(Err(this.cut_off(cx, cutoff)));
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                // Time spent waiting counts only for a body's rate.
                if this.pending_since.is_none() && this.judging_rate() {
                    this.pending_since = Some(Instant::now());
                    let left = RATE_WINDOW.saturating_sub(this.waited);
                    this.arm(left);
                }
                while this.timer_on && this.timer.as_mut().poll(cx).is_ready() {
                    if let Err(cutoff) = this.on_timer() {
                        return Poll::Ready(Err(this.cut_off(cx, cutoff)));
                    }
                }
                if waits_for_next_request && this.idled_out(cx) {
                    log::debug!("kept-alive client connection idle: closed");
                    this.gone = true;
                    return Poll::Ready(Ok(()));
                }
                Poll::Pending
            }
            // Read as the end of the stream: pingora lets an upload's client close (its
            // abort-on-close is off for uploads), not reset.
            Poll::Ready(Err(e)) if this.client_gone(&e) => Poll::Ready(Ok(())),
            error => error,
        }
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        // An interim `100 Continue` is not the answer: the body comes after it.
        if !buf.starts_with(b"HTTP/1.1 100 ") && !buf.starts_with(b"HTTP/1.0 100 ") {
            self.answered = true;
        }
        self.send(cx, buf.len(), |inner, cx| inner.poll_write(cx, buf))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.send(cx, (), |inner, cx| inner.poll_flush(cx))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.send(cx, (), |inner, cx| inner.poll_shutdown(cx))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let interim = bufs
            .first()
            .is_some_and(|b| b.starts_with(b"HTTP/1.1 100 "));
        if !interim {
            self.answered = true;
        }
        let all = bufs.iter().map(|b| b.len()).sum();
        self.send(cx, all, |inner, cx| inner.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[async_trait]
impl Shutdown for Watched {
    /// Through `poll_shutdown`, which flushes what is still buffered first: under
    /// `send_timeout`, so that a client reading nothing cannot hold the connection's end.
    async fn shutdown(&mut self) {
        if let Err(e) = tokio::io::AsyncWriteExt::shutdown(self).await {
            log::debug!("client connection shut down: {e}");
        }
    }
}

impl UniqueID for Watched {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for Watched {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for Watched {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for Watched {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest)
    }
}

impl GetSocketDigest for Watched {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest)
    }
}

#[async_trait]
impl Peek for Watched {
    async fn try_peek(&mut self, buf: &mut [u8]) -> std::io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    fn limits() -> ClientLimits {
        ClientLimits {
            max_connections: 1,
            head_timeout: Duration::from_secs(1),
            max_head_size: 1024,
            max_headers: 3,
            min_body_rate: 0,
            send_timeout: Duration::from_secs(1),
            keepalive_timeout: Duration::from_secs(1),
            shutdown_head_wait: Duration::from_secs(1),
        }
    }

    /// A watched connection counting its heads in `heads`, and its client's end.
    fn connection(heads: &Arc<HeadsOnTheirWay>) -> (Watched, DuplexStream) {
        let (client, server) = tokio::io::duplex(4096);
        let watched = Watched::new(Box::new(server), Arc::new(limits()), Some(heads.clone()));
        (watched, client)
    }

    /// Sends `bytes` from the client and reads them on the watched end.
    async fn deliver(watched: &mut Watched, client: &mut DuplexStream, bytes: &[u8]) {
        client.write_all(bytes).await.unwrap();
        let mut buf = vec![0; bytes.len()];
        watched.read_exact(&mut buf).await.unwrap();
    }

    #[tokio::test]
    async fn a_head_is_on_its_way_from_the_connection_or_its_first_byte_to_its_end() {
        let heads = Arc::new(HeadsOnTheirWay::default());
        let (mut watched, mut client) = connection(&heads);
        // A fresh connection's first head: from the start.
        assert_eq!(heads.count(), 1);
        deliver(&mut watched, &mut client, b"GET /a HTTP/1.1\r\n").await;
        assert_eq!(heads.count(), 1);
        deliver(&mut watched, &mut client, b"Host: x\r\n\r\n").await;
        assert_eq!(heads.count(), 0);
        watched.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.unwrap();
        // Kept alive: a stray blank line is no head; a next head from its first byte.
        deliver(&mut watched, &mut client, b"\r\n").await;
        assert_eq!(heads.count(), 0);
        deliver(&mut watched, &mut client, b"GET /b HTTP/1.1\r\n").await;
        assert_eq!(heads.count(), 1);
        // Dropped halfway: no longer counted.
        drop(watched);
        assert_eq!(heads.count(), 0);
    }

    #[tokio::test]
    async fn the_shutdown_waits_for_the_heads_on_their_way_within_its_limit() {
        let heads = Arc::new(HeadsOnTheirWay::default());
        let (mut watched, mut client) = connection(&heads);
        let waiting = tokio::spawn({
            let heads = heads.clone();
            async move { heads.wait_until_none(Duration::from_secs(30)).await }
        });
        // The waiter parks (this runtime has one thread), then the head's end wakes it.
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        deliver(&mut watched, &mut client, b"GET / HTTP/1.1\r\n\r\n").await;
        let woken = tokio::time::timeout(Duration::from_secs(5), waiting).await;
        assert_eq!(woken.expect("woken by the head's end").unwrap(), 0);

        // A connection that never sends is waited for until the limit, then left to pingora.
        let (_silent, _client) = connection(&heads);
        let left = heads.wait_until_none(Duration::from_millis(50)).await;
        assert_eq!(left, 1);
    }

    #[test]
    fn framing_of_a_head() {
        let limits = limits();
        let framing = |head: &[u8]| judge_head(head, &limits);
        assert!(matches!(
            framing(b"POST / HTTP/1.1\r\nContent-Length: 12\r\n\r\n"),
            Ok(Framing::Length(12))
        ));
        assert!(matches!(
            framing(
                b"POST / HTTP/1.1\r\ntransfer-encoding: gzip, chunked\r\nContent-Length: 3\r\n\r\n"
            ),
            Ok(Framing::Chunked)
        ));
        assert!(matches!(
            framing(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
            Ok(Framing::None)
        ));
        assert!(matches!(
            framing(b"POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n"),
            Ok(Framing::None)
        ));
        // A list of equal lengths is one length, as pingora reads it; unequal ones, none.
        assert!(matches!(
            framing(b"POST / HTTP/1.1\r\nContent-Length: 12, 12\r\n\r\n"),
            Ok(Framing::Length(12))
        ));
        assert!(matches!(
            framing(b"POST / HTTP/1.1\r\nContent-Length: 12, 13\r\n\r\n"),
            Ok(Framing::None)
        ));
        // Three headers pass, four do not; a head over the size neither.
        assert!(framing(b"GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n").is_ok());
        assert!(matches!(
            framing(b"GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\n\r\n"),
            Err(Cutoff::TooManyHeaders)
        ));
        assert!(matches!(framing(&[b'a'; 1025]), Err(Cutoff::HeadTooLarge)));
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\n\r\nrest"), Some(18));
        assert_eq!(find_head_end(b"GET / HTTP/1.1\nA: 1\n\nrest"), Some(21));
        assert_eq!(find_head_end(b"GET / HTTP/1.1\nA: 1\n\r\nrest"), Some(22));
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\nA: 1\r\n"), None);
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\nA: 1\r\n\r"), None);

        // A chunked body ends at its last chunk and trailers, not at data that looks like it.
        let body = b"5\r\n0\r\n\r\n\r\n3;ext=1\r\nabc\r\n0\r\nX-T: 1\r\n\r\nGET /next";
        let mut left = BodyLeft::chunked();
        let used = left.follow(body).unwrap();
        assert!(left.done());
        assert_eq!(&body[used..], b"GET /next");
        // Split anywhere, the same.
        for split in 1..body.len() - 9 {
            let mut left = BodyLeft::chunked();
            let first = left.follow(&body[..split]).unwrap();
            assert_eq!(first, split);
            assert!(!left.done(), "split at {split}");
            assert_eq!(split + left.follow(&body[split..]).unwrap(), used);
            assert!(left.done());
        }
        for bad in [
            &b"\r\nabc"[..],
            b"zz\r\n",
            b"-5\r\n",
            b"+5\r\n",
            b" 5\r\n",
            b";x\r\n",
        ] {
            assert_eq!(
                BodyLeft::chunked().follow(bad),
                Err(Cutoff::BadChunk),
                "{bad:?}"
            );
        }
    }
}
