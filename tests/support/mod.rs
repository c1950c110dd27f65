//! Test support: real `mediagate` processes on 127.0.0.1 ports picked at run time.
//!
//! Every server is started from the binary cargo built, with `--exit-with-parent` so it ends
//! when the test process does, and is stopped by its own PID. Readiness is awaited on what the
//! server itself says (the origin's "listening on" line, the proxy's `/readyz`), never by sleeping.

#![allow(dead_code)] // each test binary uses its own part of this module

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

pub const ACCOUNT: &str = "AC0123456789abcdef0123456789abcdef";
pub const AUTH_TOKEN: &str = "origin-test-token";

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_mediagate")
}

/// A port nobody listens on right now, and not handed out before in this test process. Tests
/// run in parallel threads, each releasing its port before its server binds it: the kernel may
/// give that same port to the next thread's pick, and two proxies would then race for one
/// metrics port (the loser's `/readyz` answered by the winner, its scrapes refused once the
/// winner's test ends).
pub fn free_port() -> u16 {
    static GIVEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free loopback port");
        if GIVEN
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(port)
        {
            return port;
        }
    }
}

/// A fresh random service SID, so tests sharing an origin never see each other's requests.
pub fn new_service() -> String {
    mediagate::api::ServiceSid::generate().to_string()
}

/// Waits for `condition`, polling, up to `limit`: for effects that have no event to wait on.
pub fn wait_for(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if condition() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    condition()
}

/// Sends `signal` to a child by its PID.
pub fn signal(child: &Child, signal: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), signal)
        .expect("signal the child");
}

/// Waits for a child to exit, up to `limit`.
pub fn wait_exit(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn tied_to_us(command: &mut Command) -> &mut Command {
    command
        .arg("--exit-with-parent")
        .stdin(Stdio::piped())
        .env("RUST_LOG", "warn")
}

// ---------------------------------------------------------------------------------------------
// The origin

#[derive(Clone)]
pub struct OriginOptions {
    pub auth: bool,
    pub tls: Option<(PathBuf, PathBuf)>,
    /// More `mediagate origin` flags, e.g. `--url-ttl 40`.
    pub args: Vec<String>,
}

impl Default for OriginOptions {
    fn default() -> Self {
        OriginOptions {
            auth: true,
            tls: None,
            args: Vec::new(),
        }
    }
}

pub struct Origin {
    child: Child,
    pub addr: SocketAddr,
    /// `http://127.0.0.1:port` (or `https://localhost:port` with TLS).
    pub url: String,
    pub data: PathBuf,
    options: OriginOptions,
    _dir: Option<TempDir>,
}

impl Origin {
    /// A new origin on a port of its own, with a store in a fresh temporary directory.
    pub fn start() -> Origin {
        Origin::start_with(OriginOptions::default())
    }

    /// A new origin with its store at `data` (which the caller cleans up).
    pub fn start_in(data: PathBuf) -> Origin {
        Origin::spawn(
            &data,
            "127.0.0.1:0".parse().unwrap(),
            OriginOptions::default(),
        )
    }

    pub fn start_with(options: OriginOptions) -> Origin {
        let dir = tempfile::tempdir().expect("temp dir");
        let data = dir.path().join("store");
        let mut origin = Origin::spawn(&data, "127.0.0.1:0".parse().unwrap(), options);
        origin._dir = Some(dir);
        origin
    }

    fn spawn(data: &Path, listen: SocketAddr, options: OriginOptions) -> Origin {
        let mut command = Command::new(binary());
        command
            .arg("origin")
            .arg("--listen")
            .arg(listen.to_string())
            .arg("--data")
            .arg(data)
            .stdout(Stdio::piped());
        if options.auth {
            command.args(["--account-sid", ACCOUNT, "--auth-token", AUTH_TOKEN]);
        }
        if let Some((cert, key)) = &options.tls {
            command
                .arg("--tls-cert")
                .arg(cert)
                .arg("--tls-key")
                .arg(key);
        }
        command.args(&options.args);
        let mut child = tied_to_us(&mut command).spawn().expect("start the origin");
        let stdout = child.stdout.take().expect("origin stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("origin output");
        // "mediagate origin listening on http://127.0.0.1:PORT (store: …)"
        let url = line
            .split_whitespace()
            .find(|w| w.starts_with("http"))
            .unwrap_or_else(|| panic!("origin did not start: {line:?}"))
            .to_string();
        let addr: SocketAddr = url
            .rsplit("://")
            .next()
            .and_then(|a| a.parse().ok())
            .expect("origin address");
        let url = if options.tls.is_some() {
            format!("https://localhost:{}", addr.port())
        } else {
            url
        };
        Origin {
            child,
            addr,
            url,
            data: data.to_path_buf(),
            options,
            _dir: None,
        }
    }

    /// `kill -9`, then a new process on the same port and store.
    pub fn crash_and_restart(&mut self) {
        self.stop();
        self.restart();
    }

    /// `kill -9`: the port refuses connections until `restart`.
    pub fn stop(&mut self) {
        self.child.kill().expect("kill -9 the origin");
        self.child.wait().expect("reap the origin");
    }

    /// A new process on the same port and store.
    pub fn restart(&mut self) {
        let restarted = Origin::spawn(&self.data, self.addr, self.options.clone());
        let old = std::mem::replace(self, restarted);
        self._dir = old.into_dir();
    }

    fn into_dir(mut self) -> Option<TempDir> {
        self._dir.take()
    }

    /// Every request the origin has received, oldest first.
    pub fn journal(&self) -> Vec<Value> {
        let (status, body) =
            mediagate::process::http_request(self.addr, "GET", "/_origin/requests", &[], &[])
                .expect("origin journal");
        assert_eq!(status, 200);
        serde_json::from_slice::<Vec<Value>>(&body).expect("journal JSON")
    }

    /// The journal entries whose path mentions `needle` (a service SID, say).
    pub fn requests_for(&self, needle: &str) -> Vec<Value> {
        self.journal()
            .into_iter()
            .filter(|e| e["path"].as_str().is_some_and(|p| p.contains(needle)))
            .collect()
    }

    /// The uploads of `service` the origin stored (answered 201).
    pub fn stored_uploads(&self, service: &str) -> usize {
        self.requests_for(service)
            .iter()
            .filter(|e| e["method"] == "POST" && e["status"] == 201)
            .count()
    }

    /// Files in a store subdirectory (`content`, `tmp`).
    pub fn files_in(&self, sub: &str) -> Vec<PathBuf> {
        std::fs::read_dir(self.data.join(sub))
            .map(|entries| entries.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default()
    }

    pub fn basic_auth(&self) -> String {
        basic(ACCOUNT, AUTH_TOKEN)
    }

    /// Stores `bytes` straight at the origin (a raw-body upload) and answers the Media JSON.
    pub async fn upload(&self, service: &str, bytes: &[u8], content_type: &str) -> Value {
        let response = client()
            .post(format!("{}/v1/Services/{service}/Media", self.url))
            .header("Authorization", self.basic_auth())
            .header("Content-Type", content_type)
            .body(bytes.to_vec())
            .send()
            .await
            .expect("upload to the origin");
        assert_eq!(response.status(), reqwest::StatusCode::CREATED);
        response.json().await.expect("media JSON")
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn basic(user: &str, password: &str) -> String {
    use base64::Engine;
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {encoded}")
}

// ---------------------------------------------------------------------------------------------
// An upstream of the test's own, for answers the origin never gives

/// How a `ScriptedUpstream` treats one upload (one connection).
pub enum Script {
    /// Reads it whole, answers `status` with the Media JSON (any status: the body is the same)
    /// and closes.
    Answer(u16),
    /// Reads it whole, answers a `status` head whose body stops 20 bytes into its declared
    /// length, and closes there.
    Cut(u16),
    /// Reads it whole, then answers `201` in full once told.
    HeldUntil(std::sync::mpsc::Receiver<()>),
    /// Reads it whole, answers `201` with no body at all (`Content-Length: 0`).
    Empty,
    /// Reads nothing and answers nothing: the connection stays open until the test ends.
    Silent,
    /// Reads it whole, answers `200` with the Media JSON and no `Content-Length` (nor chunking):
    /// the body ends where the connection does.
    Unframed,
}

/// The Media SID a `ScriptedUpstream` answers with.
pub const SCRIPTED_MEDIA_SID: &str = "ME00000000000000000000000000000001";

/// An HTTP/1.1 upstream on a port of its own that treats each connection's request (an upload,
/// or a read: a request without a body) as the next of its scripts says, and every one after them as `Answer(201)`. It runs on a thread until
/// the test process ends.
pub struct ScriptedUpstream {
    pub url: String,
    /// Told each time an upload has been read whole.
    pub received: std::sync::mpsc::Receiver<()>,
    uploads: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    heads: std::sync::Arc<Mutex<Vec<String>>>,
}

impl ScriptedUpstream {
    pub fn start(scripts: Vec<Script>) -> ScriptedUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let (told, received) = std::sync::mpsc::channel();
        let uploads = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = uploads.clone();
        let heads = std::sync::Arc::new(Mutex::new(Vec::new()));
        let seen = heads.clone();
        std::thread::spawn(move || {
            let mut scripts = scripts.into_iter();
            let mut silent = Vec::new();
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let script = scripts.next().unwrap_or(Script::Answer(201));
                if let Script::Silent = script {
                    silent.push(stream);
                    continue;
                }
                let mut reader = BufReader::new(stream);
                let Ok(head) = read_upload(&mut reader) else {
                    continue;
                };
                seen.lock().unwrap_or_else(|p| p.into_inner()).push(head);
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let _ = told.send(());
                // Then dropped: closed (mid-body for a cut answer).
                let _ = reader
                    .into_inner()
                    .write_all(scripted_answer(script).as_bytes());
            }
        });
        ScriptedUpstream {
            url,
            received,
            uploads,
            heads,
        }
    }

    /// The request heads of the uploads it read whole, in order, as received.
    pub fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// How many uploads it has read whole.
    pub fn uploads(&self) -> usize {
        self.uploads.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// Reads one request with a `Content-Length` body; its head.
fn read_upload(reader: &mut BufReader<TcpStream>) -> std::io::Result<String> {
    let mut length = 0;
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        head.push_str(&line);
        if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = value.trim().parse().unwrap_or(0);
        }
        if line == "\r\n" {
            break;
        }
    }
    reader.read_exact(&mut vec![0; length])?;
    Ok(head)
}

fn scripted_answer(script: Script) -> String {
    let json = format!(r#"{{"sid":"{SCRIPTED_MEDIA_SID}","status":"completed"}}"#);
    let head = |status: u16, length: usize| {
        format!("HTTP/1.1 {status} Scripted\r\nContent-Type: application/json\r\nContent-Length: {length}\r\nConnection: close\r\n\r\n")
    };
    match script {
        Script::Answer(status) => head(status, json.len()) + &json,
        Script::Cut(status) => head(status, 200) + &json[..20],
        Script::HeldUntil(told) => {
            let _ = told.recv();
            head(201, json.len()) + &json
        }
        Script::Empty => head(201, 0),
        Script::Unframed => {
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n"
                .to_string()
                + &json
        }
        Script::Silent => String::new(),
    }
}

// ---------------------------------------------------------------------------------------------
// The proxy

pub struct Proxy {
    pub child: Child,
    pub listen: SocketAddr,
    pub metrics: SocketAddr,
    pub dir: TempDir,
}

/// `server.upgrade_sock` of every test proxy: a file in its own directory, so proxies never meet
/// each other's.
const UPGRADE_SOCK: &str = "upgrade.sock";

/// The parts of a proxy configuration a test varies; `listen` and `metrics_listen` are added.
pub struct ProxyConfig {
    pub upstream: String,
    pub grace_period: &'static str,
    pub read_timeout: &'static str,
    /// More keys of the `upstream:` block, e.g. `ca_file`.
    pub upstream_extra: String,
    /// More keys of the `server:` block, indented, e.g. `  head_timeout: 1s\n`.
    pub server_extra: String,
    /// Extra YAML appended as is (top-level keys other than server and upstream).
    pub extra: String,
    /// `RUST_LOG` for the proxy (its log is `Proxy::log`).
    pub log_level: &'static str,
}

impl ProxyConfig {
    /// A proxy in front of `upstream` with the test account's credentials.
    pub fn to(upstream: &str) -> ProxyConfig {
        ProxyConfig {
            upstream: upstream.to_string(),
            grace_period: "1s",
            read_timeout: "5s",
            upstream_extra: String::new(),
            server_extra: String::new(),
            log_level: "warn",
            extra: format!("credentials:\n  username: {ACCOUNT}\n  password: {AUTH_TOKEN}\n"),
        }
    }

    pub fn with(mut self, yaml: &str) -> ProxyConfig {
        self.extra.push_str(yaml);
        self
    }

    /// Trusts this CA file for the upstream.
    pub fn ca_file(mut self, path: &Path) -> ProxyConfig {
        self.upstream_extra
            .push_str(&format!("  ca_file: {}\n", path.display()));
        self
    }

    /// The file's text; `dir` is the proxy's own directory, which holds its upgrade socket.
    fn render(&self, listen: SocketAddr, metrics: SocketAddr, dir: &Path) -> String {
        format!(
            "server:\n  listen: {listen}\n  metrics_listen: {metrics}\n  threads: 2\n  grace_period: {}\n  upgrade_sock: {}\n{}upstream:\n  url: {}\n  connect_timeout: 1s\n  read_timeout: {}\n{}{}",
            self.grace_period,
            dir.join(UPGRADE_SOCK).display(),
            self.server_extra,
            self.upstream,
            self.read_timeout,
            self.upstream_extra,
            self.extra
        )
    }
}

/// A proxy's standard output as `access.log` in its directory, where `Proxy::access_log` reads.
pub fn access_log_file(dir: &Path) -> Stdio {
    Stdio::from(std::fs::File::create(dir.join("access.log")).expect("access log file"))
}

impl Proxy {
    /// Starts a proxy and waits for `/readyz`. A port taken between picking and binding is
    /// retried on new ports.
    pub fn start(config: ProxyConfig) -> Proxy {
        Proxy::start_with_stdout(config, access_log_file)
    }

    /// Starts a proxy whose standard output (the access log) is `stdout(its directory)`.
    pub fn start_with_stdout(config: ProxyConfig, stdout: impl Fn(&Path) -> Stdio) -> Proxy {
        let mut last_error = String::new();
        for _ in 0..3 {
            match Proxy::try_start(&config, &stdout) {
                Ok(proxy) => return proxy,
                Err(e) => last_error = e,
            }
        }
        panic!("the proxy did not start: {last_error}");
    }

    fn try_start(config: &ProxyConfig, stdout: impl Fn(&Path) -> Stdio) -> Result<Proxy, String> {
        let dir = tempfile::tempdir().expect("temp dir");
        let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let config_path = dir.path().join("mediagate.yaml");
        std::fs::write(&config_path, config.render(listen, metrics, dir.path()))
            .expect("write config");
        let log = std::fs::File::create(dir.path().join("proxy.log")).expect("log file");
        let mut command = Command::new(binary());
        command
            .arg("proxy")
            .arg("--config")
            .arg(&config_path)
            .stderr(log)
            .stdout(stdout(dir.path()));
        let mut child = tied_to_us(&mut command)
            .env("RUST_LOG", config.log_level)
            .spawn()
            .expect("start the proxy");
        let ready =
            mediagate::process::wait_ready(metrics, Duration::from_secs(30), || {
                match child.try_wait() {
                    Ok(Some(status)) => Err(format!("exited with {status}")),
                    _ => Ok(()),
                }
            });
        let proxy = Proxy {
            child,
            listen,
            metrics,
            dir,
        };
        match ready {
            Ok(()) => Ok(proxy),
            Err(e) => Err(format!("{e}; log:\n{}", proxy.log())),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.listen)
    }

    /// Writes a new configuration to the proxy's file (same listeners), for a reload.
    pub fn rewrite_config(&self, config: &ProxyConfig) {
        let path = self.dir.path().join("mediagate.yaml");
        std::fs::write(
            path,
            config.render(self.listen, self.metrics, self.dir.path()),
        )
        .expect("rewrite config");
    }

    /// Writes text to the proxy's configuration file as is.
    pub fn write_config_text(&self, text: &str) {
        std::fs::write(self.dir.path().join("mediagate.yaml"), text).expect("write config");
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("proxy.log")).unwrap_or_default()
    }

    /// The access log as written so far: one text line per request.
    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default()
    }

    /// The access log once it has at least `count` lines: its writer writes them out every
    /// few milliseconds, after the requests were answered.
    pub fn access_log_lines(&self, count: usize) -> String {
        let mut log = String::new();
        wait_for(Duration::from_secs(10), || {
            log = self.access_log();
            log.lines().count() >= count
        });
        log
    }

    /// `/metrics` as text.
    pub fn metrics_text(&self) -> String {
        let (status, body) =
            mediagate::process::http_request(self.metrics, "GET", "/metrics", &[], &[])
                .expect("scrape");
        assert_eq!(status, 200);
        String::from_utf8(body).expect("metrics text")
    }

    /// Waits until the proxy has recorded `count` requests in all. Metrics are recorded after
    /// the answer is sent, so a scrape right after an answer may not show it yet; a request
    /// counted in `mediagate_requests_total` has all its other metrics recorded.
    pub fn wait_recorded(&self, count: usize) {
        let mut seen = 0.0;
        let done = wait_for(Duration::from_secs(10), || {
            seen = self
                .metrics_text()
                .lines()
                .filter(|l| l.starts_with("mediagate_requests_total{"))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum();
            seen as usize >= count
        });
        assert!(done, "the proxy recorded {seen} requests, expected {count}");
    }

    /// The value of one sample line, e.g. `mediagate_requests_total{…}`; labels in any order
    /// are matched by listing them.
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        metric_value(&self.metrics_text(), name, labels)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A second proxy process on a running proxy's configuration file (same ports, same upgrade
/// socket), started with `--upgrade`: a binary upgrade's new process. Ended by its PID on drop.
pub struct Successor {
    pub child: Child,
    log: PathBuf,
    access_log: PathBuf,
}

impl Proxy {
    /// Starts `mediagate proxy --upgrade` on this proxy's configuration and returns once it
    /// waits on the upgrade socket (pingora creates the socket file then): send this proxy
    /// SIGQUIT next. Its logs are `successor.log` and `successor-access.log` in this proxy's
    /// directory.
    pub fn start_successor(&self) -> Successor {
        let dir = self.dir.path();
        let socket = dir.join(UPGRADE_SOCK);
        let log = dir.join("successor.log");
        let access_log = dir.join("successor-access.log");
        let mut command = Command::new(binary());
        command
            .arg("proxy")
            .arg("--config")
            .arg(dir.join("mediagate.yaml"))
            .arg("--upgrade")
            .stderr(std::fs::File::create(&log).expect("log file"))
            .stdout(std::fs::File::create(&access_log).expect("access log file"));
        let child = tied_to_us(&mut command)
            .env("RUST_LOG", "info")
            .spawn()
            .expect("start the successor");
        let mut successor = Successor {
            child,
            log,
            access_log,
        };
        let mut exited = None;
        let waiting = wait_for(Duration::from_secs(30), || {
            exited = successor.child.try_wait().ok().flatten();
            exited.is_none() && socket.exists()
        });
        assert!(
            waiting,
            "the successor does not wait on {} (exit: {exited:?}); log:\n{}",
            socket.display(),
            successor.log()
        );
        successor
    }
}

impl Successor {
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The access log as written so far: one text line per request.
    pub fn access_log(&self) -> String {
        std::fs::read_to_string(&self.access_log).unwrap_or_default()
    }
}

impl Drop for Successor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .find(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

// ---------------------------------------------------------------------------------------------
// HTTP

/// A client that does not follow redirects, so tests see the 302 themselves.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        // A request the proxy never answers fails its test rather than hanging it.
        .timeout(Duration::from_secs(60))
        .build()
        .expect("http client")
}

/// Sends a request head and `first` body bytes on a raw connection and leaves it open: for
/// uploads the test cuts short or finishes later.
pub fn open_upload(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    first: &[u8],
) -> TcpStream {
    let mut stream = TcpStream::connect(addr).expect("connect");
    let mut head = format!("POST {path} HTTP/1.1\r\nHost: {addr}\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).expect("send head");
    stream.write_all(first).expect("send body");
    stream.flush().expect("flush");
    stream
}

/// An answer read off a raw connection.
#[derive(Debug)]
pub struct RawResponse {
    /// The status line's protocol, e.g. `HTTP/1.1`.
    pub version: String,
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Reads a whole HTTP/1.1 answer from a raw connection: status and body (Content-Length framed).
pub fn read_answer(stream: &mut TcpStream) -> (u16, String) {
    let response = read_response(stream);
    (response.status, response.body)
}

/// Reads one HTTP/1.1 answer (Content-Length framed) from a raw connection.
pub fn read_response(stream: &mut TcpStream) -> RawResponse {
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("read timeout");
    let mut reader = BufReader::new(stream);
    let mut status_line = String::new();
    reader.read_line(&mut status_line).expect("status line");
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let version = status_line
        .split(' ')
        .next()
        .unwrap_or_default()
        .to_string();
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).expect("header line");
        if line == "\r\n" || line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            headers.push((name.trim().to_string(), value.trim().to_string()));
        }
    }
    let response = RawResponse {
        version,
        status,
        headers,
        body: String::new(),
    };
    let length: usize = response
        .header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; length];
    reader.read_exact(&mut body).expect("body");
    RawResponse {
        body: String::from_utf8_lossy(&body).into_owned(),
        ..response
    }
}

/// One part of a multipart form: name, filename, content type, bytes.
pub type Part<'a> = (&'a str, Option<&'a str>, Option<&'a str>, &'a [u8]);

/// A multipart/form-data body: (boundary, bytes).
pub fn multipart(parts: &[Part]) -> (String, Vec<u8>) {
    let boundary = "mediagate-test-boundary-7d3f";
    (boundary.to_string(), multipart_with(boundary, parts))
}

/// A multipart/form-data body with the given boundary.
pub fn multipart_with(boundary: &str, parts: &[Part]) -> Vec<u8> {
    let mut body = Vec::new();
    for (name, filename, content_type, bytes) in parts {
        body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        let mut disposition = format!("Content-Disposition: form-data; name=\"{name}\"");
        if let Some(filename) = filename {
            disposition.push_str(&format!("; filename=\"{filename}\""));
        }
        body.extend_from_slice(disposition.as_bytes());
        body.extend_from_slice(b"\r\n");
        if let Some(content_type) = content_type {
            body.extend_from_slice(format!("Content-Type: {content_type}\r\n").as_bytes());
        }
        body.extend_from_slice(b"\r\n");
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    body
}

/// An upload size past the ones the proxy reads whole before going upstream (64 KiB): an upload
/// this large streams, so the origin has its head while the client is still sending.
pub const STREAMED_UPLOAD: usize = 256 * 1024;

/// Bytes that look like a PNG, `len` long.
pub fn png_bytes(len: usize) -> Vec<u8> {
    let mut bytes = b"\x89PNG\r\n\x1a\n".to_vec();
    bytes.extend((0..len.saturating_sub(8)).map(|i| (i % 251) as u8));
    bytes
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

// ---------------------------------------------------------------------------------------------
// Redis

/// A real redis-server on a loopback port of its own, without persistence. It is started under
/// a shell that ends it when our end of its standard input closes, so it never outlives the test
/// process; `stop` and `Drop` end it by its PID.
pub struct RedisServer {
    child: Child,
    pub port: u16,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        RedisServer::start_on(free_port())
    }

    pub fn start_on(port: u16) -> RedisServer {
        let script = format!(
            "redis-server --bind 127.0.0.1 --port {port} --save '' --appendonly no --loglevel warning & pid=$!; cat >/dev/null; kill $pid"
        );
        let child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("start redis-server (is it installed? scripts/setup installs it)");
        let server = RedisServer { child, port };
        let ready = wait_for(Duration::from_secs(10), || server.ping());
        assert!(ready, "redis-server did not answer on port {port}");
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Whether it answers PING.
    pub fn ping(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
        let mut answer = [0u8; 7];
        stream.write_all(b"PING\r\n").is_ok()
            && stream.read_exact(&mut answer).is_ok()
            && &answer == b"+PONG\r\n"
    }

    /// Ends the server: closing its shell's input makes the shell kill redis-server.
    pub fn stop(mut self) {
        self.end();
    }

    fn end(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
        let port = self.port;
        let gone = wait_for(Duration::from_secs(10), || {
            TcpStream::connect(("127.0.0.1", port)).is_err()
        });
        assert!(gone, "redis-server on {port} did not stop");
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if self.child.stdin.is_some() {
            drop(self.child.stdin.take());
            let _ = self.child.wait();
        }
    }
}
