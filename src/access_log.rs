//! The access log: one JSON line per request on standard output. A proxy thread appends its
//! line to a shared buffer (a short lock, no system call, nothing to wake); a writer thread of
//! its own takes what gathered every few milliseconds and writes it out. So a slow stdout never
//! blocks a proxy thread: past `BACKLOG` bytes waiting, lines are dropped and counted in
//! `mediagate_access_log_dropped_total`.

use std::cell::{Cell, RefCell};
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use crate::metrics::metrics;

/// Bytes of lines that may wait for the writer (some 10,000 lines).
const BACKLOG: usize = 4 << 20;
/// How often the writer takes the lines waiting. Waking it for each line would cost a system
/// call and a context switch per request: more than the rest of a cache hit.
const WRITE_EVERY: Duration = Duration::from_millis(10);

/// One request, as logged. Never a credential, a token, a header value or a body.
#[derive(Debug)]
pub struct AccessEntry<'a> {
    /// RFC 3339 in UTC with microseconds (`Timestamp::now`).
    pub ts: &'a str,
    pub request_id: &'a str,
    pub method: &'a str,
    /// The path without its query.
    pub path: &'a str,
    pub route: &'static str,
    pub service: Option<&'a str>,
    pub media: Option<&'a str>,
    pub status: u16,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Written as `duration_ms` and `upstream_ms`, in milliseconds to the microsecond.
    pub duration: Duration,
    pub upstream: Option<Duration>,
    /// The cache's answer for a cacheable read (`hit`, `miss`, …); null while nothing is cached.
    pub cache: Option<&'static str>,
    pub reject: Option<&'static str>,
    pub upstream_error: Option<&'static str>,
}

impl AccessEntry<'_> {
    /// The entry as one JSON object. Written by hand rather than through serde: it is done for
    /// every request, and most fields need no escaping. The path is the client's and is
    /// escaped; the others are of fixed alphabets: a timestamp made here, a request id checked
    /// or made by the proxy (letters, digits, `-_.:`), a method (an HTTP token: no quote,
    /// backslash or control character), SIDs (checked hex) and static labels.
    fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"ts\":");
        json_plain(out, self.ts);
        out.extend_from_slice(b",\"request_id\":");
        json_plain(out, self.request_id);
        out.extend_from_slice(b",\"method\":");
        json_plain(out, self.method);
        out.extend_from_slice(b",\"path\":");
        json_str(out, self.path);
        out.extend_from_slice(b",\"route\":");
        json_plain(out, self.route);
        out.extend_from_slice(b",\"service\":");
        json_opt_plain(out, self.service);
        out.extend_from_slice(b",\"media\":");
        json_opt_plain(out, self.media);
        out.extend_from_slice(b",\"status\":");
        json_u64(out, u64::from(self.status));
        out.extend_from_slice(b",\"bytes_in\":");
        json_u64(out, self.bytes_in);
        out.extend_from_slice(b",\"bytes_out\":");
        json_u64(out, self.bytes_out);
        out.extend_from_slice(b",\"duration_ms\":");
        json_millis(out, self.duration);
        out.extend_from_slice(b",\"upstream_ms\":");
        match self.upstream {
            Some(upstream) => json_millis(out, upstream),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"cache\":");
        json_opt_plain(out, self.cache);
        out.extend_from_slice(b",\"reject\":");
        json_opt_plain(out, self.reject);
        out.extend_from_slice(b",\"upstream_error\":");
        json_opt_plain(out, self.upstream_error);
        out.push(b'}');
    }
}

/// A JSON string: quotes, backslashes and control characters escaped (the path is the
/// client's). Runs of plain bytes are copied whole.
fn json_str(out: &mut Vec<u8>, text: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let needs_escape = |byte: u8| matches!(byte, b'"' | b'\\' | 0..=0x1f | 0x7f);
    let bytes = text.as_bytes();
    // Nearly always nothing to escape: found out in one pass without a branch per byte.
    if !bytes
        .iter()
        .fold(false, |any, &byte| any | needs_escape(byte))
    {
        return json_plain(out, text);
    }
    out.push(b'"');
    let mut plain_from = 0;
    for (at, &byte) in bytes.iter().enumerate() {
        if !needs_escape(byte) {
            continue;
        }
        out.extend_from_slice(&bytes[plain_from..at]);
        match byte {
            b'"' | b'\\' => out.extend_from_slice(&[b'\\', byte]),
            _ => out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(byte >> 4)],
                HEX[usize::from(byte & 0xf)],
            ]),
        }
        plain_from = at + 1;
    }
    out.extend_from_slice(&bytes[plain_from..]);
    out.push(b'"');
}

/// A JSON string of text that needs no escaping (see `write_json`).
fn json_plain(out: &mut Vec<u8>, text: &str) {
    out.push(b'"');
    out.extend_from_slice(text.as_bytes());
    out.push(b'"');
}

fn json_opt_plain(out: &mut Vec<u8>, text: Option<&str>) {
    match text {
        Some(text) => json_plain(out, text),
        None => out.extend_from_slice(b"null"),
    }
}

fn json_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// Milliseconds with three decimals (`12.345`).
fn json_millis(out: &mut Vec<u8>, duration: Duration) {
    let micros = u64::try_from(duration.as_micros()).unwrap_or(u64::MAX);
    json_u64(out, micros / 1000);
    let fraction = micros % 1000;
    out.extend_from_slice(&[
        b'.',
        b'0' + (fraction / 100) as u8,
        b'0' + (fraction / 10 % 10) as u8,
        b'0' + (fraction % 10) as u8,
    ]);
}

#[derive(Clone)]
pub struct AccessLog {
    shared: Option<Arc<Shared>>,
}

struct Shared {
    waiting: Mutex<Vec<u8>>,
    /// Standard output is gone (a broken pipe): nobody reads the log any more.
    closed: AtomicBool,
    /// The last write failed (a full disk, a non-blocking pipe that is full): the next batch
    /// starts on a line of its own, and its success is logged.
    failing: AtomicBool,
}

thread_local! {
    /// Each proxy thread's line being made, so that a line costs no allocation.
    static LINE: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    /// The last second formatted on this thread (`Timestamp::now`).
    static SECOND: Cell<(u64, [u8; SECOND_LEN])> = const { Cell::new((u64::MAX, [0; SECOND_LEN])) };
}

/// `2026-11-26T22:49:11`
const SECOND_LEN: usize = 19;

/// A moment as RFC 3339 in UTC with microseconds (`2026-11-26T22:49:11.312003Z`), made without
/// an allocation: the date and time to the second are formatted once a second per thread.
pub struct Timestamp([u8; SECOND_LEN + 8]);

impl Timestamp {
    pub fn now() -> Timestamp {
        let since_epoch = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        let secs = since_epoch.as_secs();
        let (cached, mut second) = SECOND.get();
        if cached != secs {
            let formatted = i64::try_from(secs)
                .ok()
                .and_then(|s| chrono::DateTime::from_timestamp(s, 0))
                .map(|t| t.format("%Y-%m-%dT%H:%M:%S").to_string())
                .unwrap_or_default();
            if formatted.len() == SECOND_LEN {
                second.copy_from_slice(formatted.as_bytes());
                SECOND.set((secs, second));
            }
        }
        let mut text = [0u8; SECOND_LEN + 8];
        text[..SECOND_LEN].copy_from_slice(&second);
        text[SECOND_LEN] = b'.';
        let mut micros = since_epoch.subsec_micros();
        for digit in text[SECOND_LEN + 1..SECOND_LEN + 7].iter_mut().rev() {
            *digit = b'0' + (micros % 10) as u8;
            micros /= 10;
        }
        text[SECOND_LEN + 7] = b'Z';
        Timestamp(text)
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl AccessLog {
    /// A log writing to standard output from a thread of its own.
    pub fn to_stdout() -> AccessLog {
        let shared = Arc::new(Shared {
            waiting: Mutex::new(Vec::with_capacity(64 * 1024)),
            closed: AtomicBool::new(false),
            failing: AtomicBool::new(false),
        });
        let writer = shared.clone();
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || write_lines(&writer))
            .map(|_| AccessLog {
                shared: Some(shared),
            })
            .unwrap_or_else(|e| {
                log::error!("access log: cannot start its writer: {e}; logging nothing");
                AccessLog::off()
            })
    }

    pub fn off() -> AccessLog {
        AccessLog { shared: None }
    }

    pub fn write(&self, entry: &AccessEntry) {
        let Some(shared) = &self.shared else { return };
        if shared.closed.load(Ordering::Relaxed) {
            metrics().access_log_dropped.inc();
            return;
        }
        LINE.with_borrow_mut(|line| {
            line.clear();
            entry.write_json(line);
            line.push(b'\n');
            let mut waiting = shared.waiting.lock().unwrap_or_else(|p| p.into_inner());
            if waiting.len() + line.len() > BACKLOG {
                drop(waiting);
                metrics().access_log_dropped.inc();
            } else {
                waiting.extend_from_slice(line);
            }
        });
    }

    /// Writes out at once the lines the writer thread has not taken yet, waiting at most
    /// `limit` for standard output. Called as the process ends: the thread takes lines only
    /// every `WRITE_EVERY`, so the last requests' lines would otherwise go with the process.
    /// The limit is for a reader of standard output that stopped reading (a stalled log
    /// shipper): then the writer thread holds standard output in a write that never returns,
    /// and the process must still exit.
    pub fn write_out_waiting(&self, limit: Duration) {
        let Some(shared) = &self.shared else {
            return;
        };
        if shared.closed.load(Ordering::Relaxed) {
            return;
        }
        let (done, written) = std::sync::mpsc::channel();
        let shared = Arc::clone(shared);
        let writer = std::thread::Builder::new()
            .name("access-log-exit".into())
            .spawn(move || {
                shared.write_out(&mut Vec::new());
                let _ = done.send(());
            });
        match writer {
            Err(e) => log::warn!("access log: the last lines are lost at exit: {e}"),
            Ok(_) if written.recv_timeout(limit).is_err() => log::warn!(
                "access log: standard output took no lines for {limit:?} at exit; the last lines are lost"
            ),
            Ok(_) => {}
        }
    }
}

/// Every `WRITE_EVERY`, writes out the lines that gathered.
fn write_lines(shared: &Shared) {
    let mut out_buffer = Vec::with_capacity(64 * 1024);
    loop {
        std::thread::sleep(WRITE_EVERY);
        if !shared.write_out(&mut out_buffer) {
            return;
        }
    }
}

impl Shared {
    /// Writes out the lines waiting; false once standard output is gone (a broken pipe). Lines
    /// that cannot be written for another reason are dropped and counted, and the next batch is
    /// tried as usual: a full disk may have room again. Standard output is
    /// held from taking the lines until they are written, so that two writers (the thread and
    /// the last write at exit) cannot put a later batch before an earlier one.
    fn write_out(&self, out_buffer: &mut Vec<u8>) -> bool {
        let stdout = std::io::stdout();
        let mut out = stdout.lock();
        {
            let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
            if waiting.is_empty() {
                return true;
            }
            std::mem::swap(&mut *waiting, out_buffer);
        }
        let failing = self.failing.load(Ordering::Relaxed);
        // After a failed write a line may have been cut short: end it before the next.
        let restart: &[u8] = if failing { b"\n" } else { b"" };
        let written = out
            .write_all(restart)
            .and_then(|()| out.write_all(out_buffer))
            .and_then(|()| out.flush());
        let lines = out_buffer.iter().filter(|&&b| b == b'\n').count();
        out_buffer.clear();
        match written {
            Ok(()) if failing => {
                self.failing.store(false, Ordering::Relaxed);
                log::warn!("access log: standard output takes lines again");
                true
            }
            Ok(()) => true,
            Err(e) => {
                metrics().access_log_dropped.inc_by(lines as u64);
                if e.kind() == std::io::ErrorKind::BrokenPipe {
                    log::error!(
                        "access log: standard output is closed ({e}); logging nothing more"
                    );
                    self.closed.store(true, Ordering::Relaxed);
                    return false;
                }
                if !failing {
                    self.failing.store(true, Ordering::Relaxed);
                    log::error!(
                        "access log: cannot write to standard output ({e}); dropping lines \
                         (mediagate_access_log_dropped_total) until it can"
                    );
                }
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_is_one_json_object_with_the_client_path_escaped() {
        let path = "/v1/\"odd\\path\u{1}\u{7f}/é";
        let entry = AccessEntry {
            ts: "2026-11-26T22:49:11.312003Z",
            request_id: "abc",
            method: "GET",
            path,
            route: "other",
            service: Some("IS0123456789abcdef0123456789abcdef"),
            media: None,
            status: 404,
            bytes_in: 0,
            bytes_out: 18_446_744_073_709_551_615,
            duration: Duration::from_micros(12_345),
            upstream: Some(Duration::from_micros(7)),
            cache: None,
            reject: Some("route_not_found"),
            upstream_error: None,
        };
        let mut line = Vec::new();
        entry.write_json(&mut line);
        let value: serde_json::Value = serde_json::from_slice(&line).expect("JSON");
        assert_eq!(value["path"], path);
        assert_eq!(value["service"], "IS0123456789abcdef0123456789abcdef");
        assert!(value["media"].is_null());
        assert_eq!(value["status"], 404);
        assert_eq!(value["bytes_out"], u64::MAX);
        assert_eq!(value["duration_ms"], 12.345);
        assert_eq!(value["upstream_ms"], 0.007);
        assert_eq!(value["reject"], "route_not_found");
        assert_eq!(value.as_object().map(|o| o.len()), Some(15));
    }

    #[test]
    fn timestamps_are_rfc3339_with_microseconds_and_agree_with_chrono() {
        let before = chrono::Utc::now();
        let ts = Timestamp::now();
        let after = chrono::Utc::now();
        let parsed = chrono::DateTime::parse_from_rfc3339(ts.as_str()).expect("RFC 3339");
        assert_eq!(ts.as_str().len(), "2026-11-26T22:49:11.312003Z".len());
        assert!(ts.as_str().ends_with('Z'));
        let micros = parsed.timestamp_micros();
        assert!(
            before.timestamp_micros() <= micros && micros <= after.timestamp_micros(),
            "{before} <= {} <= {after}",
            ts.as_str()
        );
        // A second formatted once is reused: two in a row agree to the second.
        let again = Timestamp::now();
        let parsed_again = chrono::DateTime::parse_from_rfc3339(again.as_str()).expect("RFC 3339");
        assert!(parsed_again >= parsed);
    }
}
