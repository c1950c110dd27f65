//! The access log: one JSON line per request on standard output. Lines go through a bounded
//! channel to a writer thread, so a slow stdout never blocks a proxy thread: when the channel
//! is full, the line is dropped and counted in `mediagate_access_log_dropped_total`.

use std::io::Write;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};

use serde::Serialize;

use crate::metrics::metrics;

/// Lines that may wait for the writer.
const BACKLOG: usize = 8192;

/// One request, as logged. Never a credential, a token, a header value or a body.
#[derive(Debug, Serialize)]
pub struct AccessEntry<'a> {
    pub ts: String,
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
    pub duration_ms: f64,
    pub upstream_ms: Option<f64>,
    /// The cache's answer for a cacheable read (`hit`, `miss`, …); null while nothing is cached.
    pub cache: Option<&'static str>,
    pub reject: Option<&'static str>,
    pub upstream_error: Option<&'static str>,
}

#[derive(Clone)]
pub struct AccessLog {
    lines: Option<SyncSender<Vec<u8>>>,
}

impl AccessLog {
    /// A log writing to standard output from a thread of its own.
    pub fn to_stdout() -> AccessLog {
        let (sender, receiver) = sync_channel(BACKLOG);
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || write_lines(receiver))
            .map(|_| AccessLog {
                lines: Some(sender),
            })
            .unwrap_or_else(|e| {
                log::error!("access log: cannot start its writer: {e}; logging nothing");
                AccessLog::off()
            })
    }

    pub fn off() -> AccessLog {
        AccessLog { lines: None }
    }

    pub fn write(&self, entry: &AccessEntry) {
        let Some(lines) = &self.lines else { return };
        let Ok(mut line) = serde_json::to_vec(entry) else {
            return;
        };
        line.push(b'\n');
        match lines.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => metrics().access_log_dropped.inc(),
            Err(TrySendError::Disconnected(_)) => {}
        }
    }
}

/// Writes lines as they come, flushing whenever the queue is empty.
fn write_lines(lines: Receiver<Vec<u8>>) {
    let stdout = std::io::stdout();
    while let Ok(first) = lines.recv() {
        let mut out = stdout.lock();
        let mut ok = out.write_all(&first).is_ok();
        while let Ok(next) = lines.try_recv() {
            ok &= out.write_all(&next).is_ok();
        }
        ok &= out.flush().is_ok();
        if !ok {
            // Standard output is gone: nobody reads the log any more.
            return;
        }
    }
}
