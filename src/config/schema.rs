//! The typed configuration. Field names are the stable interface of spec/config.md: add keys,
//! never rename them. Every struct refuses unknown keys, so a typo is an error, not a default.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{ByteSize, ConfigError, HumanDuration, Secret};
use crate::api::ServiceSid;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: Server,
    #[serde(default)]
    pub upstream: Upstream,
    pub credentials: Credentials,
    #[serde(default)]
    pub access: Access,
    #[serde(default)]
    pub uploads: Uploads,
    #[serde(default)]
    pub quotas: Quotas,
    #[serde(default)]
    pub cache: Cache,
    #[serde(default)]
    pub services: BTreeMap<ServiceSid, ServiceOverride>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Server {
    #[serde(with = "socket_addr")]
    pub listen: SocketAddr,
    #[serde(with = "socket_addr")]
    pub metrics_listen: SocketAddr,
    pub threads: usize,
    pub grace_period: HumanDuration,
    /// One JSON line per request on standard output.
    pub access_log: bool,
    /// Client connections at once; past it, new ones get 503 and are closed.
    pub max_connections: usize,
    /// The most time a request head may take to arrive (slowloris).
    pub head_timeout: HumanDuration,
    /// The largest request head (request line and header lines).
    pub max_head_size: ByteSize,
    /// The most header lines in a request head.
    pub max_headers: usize,
    /// The slowest a request body may arrive, in bytes per second of waiting for it; 0: any.
    pub min_body_rate: ByteSize,
    /// The longest a client may leave its answer untaken (none of it read) before its
    /// connection closes; 0: no limit. nginx's `send_timeout`, with its default.
    pub send_timeout: HumanDuration,
    /// How long a kept-alive connection may wait for its next request, from the end of its last
    /// answer, before it is closed (quietly, as nginx's `keepalive_timeout`); 0: for ever.
    pub keepalive_timeout: HumanDuration,
    /// The Unix socket on which a new process started with `--upgrade` receives this one's
    /// listening sockets when this one gets SIGQUIT (pingora's hand-over). Both must agree on it.
    pub upgrade_sock: PathBuf,
    /// How long a worker keeps polling for events after the last one before it sleeps: less
    /// latency where waking a sleeping core is slow (virtual machines), for CPU. 0: off.
    pub busy_poll: HumanDuration,
}

impl Server {
    pub const DEFAULT_UPGRADE_SOCK: &'static str = "/tmp/mediagate-upgrade.sock";
    /// The longest path a Unix socket address holds (`sun_path`, less its final NUL).
    const MAX_SOCKET_PATH: usize = 107;
    /// Polling longer than this burns a core for waits that sleeping serves as well.
    const MAX_BUSY_POLL: std::time::Duration = std::time::Duration::from_millis(10);

    /// `upgrade_sock` is where two processes meet, whatever their working directories: an
    /// absolute path that fits a socket address. (pingora panics on a path that does not.)
    fn check_upgrade_sock(&self) -> Result<(), ConfigError> {
        let path = &self.upgrade_sock;
        let err = |why: &str| {
            ConfigError(format!(
                r#"server.upgrade_sock: expected {why}, got "{}""#,
                path.display()
            ))
        };
        let Some(text) = path.to_str() else {
            return Err(err("a UTF-8 path"));
        };
        if !path.is_absolute() {
            return Err(err(
                r#"an absolute path like "/run/mediagate/upgrade.sock""#,
            ));
        }
        if path.file_name().is_none() || text.ends_with('/') {
            return Err(err("the path of a socket file, not a directory"));
        }
        if text.len() > Server::MAX_SOCKET_PATH {
            return Err(err(&format!(
                "a path of at most {} bytes (a Unix socket address)",
                Server::MAX_SOCKET_PATH
            )));
        }
        Ok(())
    }
}

impl Default for Server {
    fn default() -> Self {
        Server {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            metrics_listen: SocketAddr::from(([127, 0, 0, 1], 9108)),
            threads: 2,
            grace_period: HumanDuration::secs(5),
            access_log: true,
            max_connections: 10_000,
            head_timeout: HumanDuration::secs(10),
            max_head_size: ByteSize::kib(64),
            max_headers: 100,
            min_body_rate: ByteSize::kib(1),
            send_timeout: HumanDuration::secs(60),
            keepalive_timeout: HumanDuration::secs(60),
            upgrade_sock: PathBuf::from(Server::DEFAULT_UPGRADE_SOCK),
            busy_poll: HumanDuration::secs(0),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Upstream {
    pub url: UpstreamUrl,
    pub connect_timeout: HumanDuration,
    pub read_timeout: HumanDuration,
    pub keepalive_pool: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
}

impl Upstream {
    /// pingora sizes its pool's table by this at start: a bound well past any real need.
    const MAX_KEEPALIVE_POOL: usize = 65_536;
}

impl Default for Upstream {
    fn default() -> Self {
        Upstream {
            url: UpstreamUrl {
                tls: true,
                host: "mcs.us1.twilio.com".into(),
                port: 443,
            },
            connect_timeout: HumanDuration::secs(3),
            read_timeout: HumanDuration::secs(60),
            keepalive_pool: 128,
            ca_file: None,
        }
    }
}

/// `scheme://host[:port]` of the Media API; nothing after the authority.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamUrl {
    pub tls: bool,
    pub host: String,
    pub port: u16,
}

impl UpstreamUrl {
    pub fn parse(text: &str) -> Result<UpstreamUrl, String> {
        let expected = || {
            format!(
                r#"expected a URL like "https://mcs.us1.twilio.com", got "{}""#,
                redact_url_password(text)
            )
        };
        let uri: http::Uri = text.parse().map_err(|_| expected())?;
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(expected()),
        };
        let authority = uri.authority().ok_or_else(expected)?;
        if authority.as_str().contains('@') {
            return Err(format!(
                "\"{}\": put credentials under `credentials:`, not in the URL",
                redact_url_password(text)
            ));
        }
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(
                "give scheme://host[:port] only, no path or query: the /v1 paths are added per request"
                    .to_string(),
            );
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        // `http::Uri` keeps a port it cannot read as a number (`:84430`, `:8o90`) and
        // `port_u16` then says none: the default port would be used, silently.
        let port_text = authority.as_str()[authority.host().len()..].strip_prefix(':');
        if port_text.is_some_and(|p| p.parse::<u16>().map_or(true, |port| port == 0)) {
            return Err(format!(
                "the port must be a number from 1 to 65535, got \"{}\"",
                redact_url_password(text)
            ));
        }
        Ok(UpstreamUrl {
            tls,
            host: host.to_string(),
            port: authority.port_u16().unwrap_or(if tls { 443 } else { 80 }),
        })
    }

    /// `host:port` as the Host header carries it (the port only when it is not the default).
    pub fn authority(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        let default_port = if self.tls { 443 } else { 80 };
        if self.port == default_port {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

impl fmt::Display for UpstreamUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "https" } else { "http" };
        write!(f, "{scheme}://{}", self.authority())
    }
}

impl Serialize for UpstreamUrl {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for UpstreamUrl {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        UpstreamUrl::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// HTTP Basic credentials injected upstream: `password` or `password_file`, exactly one.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    pub username: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<Secret>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// The password read from `password_file` during validation. Kept apart from `password`,
    /// so that the configuration printed by `check` names the file, as the file given did, and
    /// loads back.
    #[serde(skip)]
    password_from_file: Option<Secret>,
}

impl Credentials {
    /// The password: as given, or as read from `password_file` during validation.
    pub fn password(&self) -> Option<&Secret> {
        self.password.as_ref().or(self.password_from_file.as_ref())
    }

    fn resolve(&mut self, key: &str) -> Result<(), ConfigError> {
        if self.username.trim().is_empty() {
            return Err(ConfigError(format!("{key}.username: must not be empty")));
        }
        if self.username.trim() != self.username {
            return Err(ConfigError(format!(
                "{key}.username: has blank space (a newline?) before or after it"
            )));
        }
        match (&self.password, &self.password_file) {
            (Some(_), Some(_)) => Err(ConfigError(format!(
                "{key}: give password or password_file, not both"
            ))),
            (None, None) => Err(ConfigError(format!(
                "{key}: expected password or password_file"
            ))),
            (Some(password), None) => check_password(password, &format!("{key}.password")),
            (None, Some(file)) => {
                self.password_from_file = Some(read_password_file(file, key)?);
                Ok(())
            }
        }
    }
}

/// A password given in the file: not empty (an unset variable in docker compose) and without
/// blank space around it (a newline from a secret made from a file): the upstream would refuse
/// every request, and nothing would say why.
fn check_password(password: &Secret, key: &str) -> Result<(), ConfigError> {
    let value = password.expose();
    if value.is_empty() {
        return Err(ConfigError(format!("{key}: must not be empty")));
    }
    if value.trim() != value {
        return Err(ConfigError(format!(
            "{key}: has blank space (a newline?) before or after it"
        )));
    }
    Ok(())
}

/// The first line of the file, trimmed.
fn read_password_file(file: &Path, key: &str) -> Result<Secret, ConfigError> {
    let text = std::fs::read_to_string(file).map_err(|e| {
        ConfigError(format!(
            "{key}.password_file: cannot read {}: {e}",
            file.display()
        ))
    })?;
    let first = text.lines().next().unwrap_or("").trim();
    if first.is_empty() {
        return Err(ConfigError(format!(
            "{key}.password_file: {} has an empty first line",
            file.display()
        )));
    }
    Ok(Secret::new(first))
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Access {
    pub tokens: Vec<AccessToken>,
    pub allow_unlisted_services: bool,
}

impl Default for Access {
    fn default() -> Self {
        Access {
            tokens: Vec::new(),
            allow_unlisted_services: true,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AccessToken {
    pub token: Secret,
    /// The services this token may touch; left out: all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub services: Option<Vec<ServiceSid>>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Uploads {
    pub max_size: ByteSize,
    pub allowed_types: Vec<String>,
    pub sniff: bool,
    pub require_content_size: bool,
    /// How long a repeated `Idempotency-Key` gets the first upload's answer; `0s` turns it off.
    /// For all services alike (not in a service's block).
    pub idempotency_ttl: HumanDuration,
    /// Replaying uploads the upstream failed (all services alike).
    pub retry: UploadRetry,
}

/// `uploads.retry`: an upload is spooled while it streams, and replayed when the upstream fails
/// before answering or answers 502/503/504. Off (`attempts: 0`) by default.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct UploadRetry {
    /// Replays after the first try; 0 turns retrying (and spooling) off.
    pub attempts: u32,
    /// The wait before the first replay; doubled before each next one.
    pub backoff: HumanDuration,
    /// Where spooled bodies are written (created if missing; leftovers removed at start).
    pub spool_dir: PathBuf,
    /// The most bytes spooled at once; past it, uploads stream unspooled and are not retried.
    pub spool_max: ByteSize,
}

impl UploadRetry {
    /// With the backoff doubling each time, 5 tries after a 10 s backoff already wait 5 minutes.
    pub const MAX_ATTEMPTS: u32 = 5;
    pub const MAX_BACKOFF: std::time::Duration = std::time::Duration::from_secs(10);
}

impl Default for UploadRetry {
    fn default() -> Self {
        UploadRetry {
            attempts: 0,
            backoff: HumanDuration::millis(500),
            spool_dir: std::env::temp_dir().join("mediagate-spool"),
            spool_max: ByteSize::gib(1),
        }
    }
}

impl Default for Uploads {
    fn default() -> Self {
        Uploads {
            max_size: ByteSize::mib(150),
            allowed_types: [
                "image/*",
                "video/*",
                "audio/*",
                "application/pdf",
                "text/plain",
            ]
            .map(String::from)
            .to_vec(),
            sniff: true,
            require_content_size: false,
            idempotency_ttl: HumanDuration::secs(24 * 3600),
            retry: UploadRetry::default(),
        }
    }
}

/// A service's `uploads:` block: every key optional, the defaults fill the rest.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UploadsOverride {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_size: Option<ByteSize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allowed_types: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sniff: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub require_content_size: Option<bool>,
}

impl Uploads {
    /// These defaults with a service's overrides applied key by key.
    pub fn with(&self, over: &UploadsOverride) -> Uploads {
        Uploads {
            max_size: over.max_size.unwrap_or(self.max_size),
            allowed_types: over
                .allowed_types
                .clone()
                .unwrap_or_else(|| self.allowed_types.clone()),
            sniff: over.sniff.unwrap_or(self.sniff),
            require_content_size: over
                .require_content_size
                .unwrap_or(self.require_content_size),
            idempotency_ttl: self.idempotency_ttl,
            retry: self.retry.clone(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Quotas {
    pub backend: QuotaBackend,
    pub on_backend_error: OnBackendError,
    /// 0: unlimited.
    pub uploads_per_minute: u64,
    /// 0: unlimited.
    pub bytes_per_hour: ByteSize,
    /// 0: unlimited.
    pub concurrent_uploads: u64,
    /// Redis backend: how long a concurrency slot outlives a sidecar that died holding it.
    pub slot_lease: HumanDuration,
}

impl Default for Quotas {
    fn default() -> Self {
        Quotas {
            backend: QuotaBackend::Memory,
            on_backend_error: OnBackendError::Allow,
            uploads_per_minute: 0,
            bytes_per_hour: ByteSize(0),
            concurrent_uploads: 0,
            slot_lease: HumanDuration::secs(30),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct QuotasOverride {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uploads_per_minute: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_per_hour: Option<ByteSize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub concurrent_uploads: Option<u64>,
}

impl Quotas {
    /// These defaults with a service's overrides applied key by key.
    pub fn with(&self, over: &QuotasOverride) -> Quotas {
        Quotas {
            backend: self.backend.clone(),
            on_backend_error: self.on_backend_error,
            uploads_per_minute: over.uploads_per_minute.unwrap_or(self.uploads_per_minute),
            bytes_per_hour: over.bytes_per_hour.unwrap_or(self.bytes_per_hour),
            concurrent_uploads: over.concurrent_uploads.unwrap_or(self.concurrent_uploads),
            slot_lease: self.slot_lease,
        }
    }
}

/// `memory`, or a `redis://` URL shared by a fleet of sidecars.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QuotaBackend {
    Memory,
    Redis(String),
}

impl Serialize for QuotaBackend {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            QuotaBackend::Memory => serializer.serialize_str("memory"),
            // A Redis URL may carry a password: show only where it points.
            QuotaBackend::Redis(url) => serializer.serialize_str(&redact_url_password(url)),
        }
    }
}

/// A URL with whatever stands before its host's `@` (a user and password) shown as `***`; in
/// text that is no URL at all (`redis//:pw@host`), all that stands before an `@`.
fn redact_url_password(url: &str) -> String {
    let Some(at) = url.rfind('@') else {
        return url.to_string();
    };
    let scheme = match url.find("://") {
        Some(end) if end < at => &url[..end + 3],
        _ => "",
    };
    format!("{scheme}{}@{}", super::REDACTED, &url[at + 1..])
}

impl<'de> Deserialize<'de> for QuotaBackend {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        if text == "memory" {
            Ok(QuotaBackend::Memory)
        } else if text.starts_with("rediss://") {
            Err(serde::de::Error::custom(
                "rediss:// (Redis over TLS) is not built in: give redis://, through a TLS tunnel \
                 if the network needs one",
            ))
        } else if text.starts_with("redis://") {
            if redis::Client::open(text.as_str()).is_err() {
                return Err(serde::de::Error::custom(format!(
                    r#"expected a URL like "redis://[:password@]host[:port][/db]", got "{}""#,
                    redact_url_password(&text)
                )));
            }
            Ok(QuotaBackend::Redis(text))
        } else {
            Err(serde::de::Error::custom(format!(
                r#"expected "memory" or a URL like "redis://127.0.0.1:6379/0", got "{}""#,
                redact_url_password(&text)
            )))
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnBackendError {
    Allow,
    Deny,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Cache {
    pub memory: ByteSize,
    pub metadata_ttl: HumanDuration,
    pub content_ttl: HumanDuration,
    pub max_object: ByteSize,
    pub follow_content_redirects: bool,
    /// How long a 404 answer is kept (at most 5 s); `0s` keeps none.
    pub negative_ttl: HumanDuration,
    /// Whether answers carry `Mediagate-Cache: hit|miss|bypass`.
    pub response_header: bool,
}

impl Cache {
    /// The longest a 404 may be kept: media appears when an upload completes.
    pub const MAX_NEGATIVE_TTL: std::time::Duration = std::time::Duration::from_secs(5);

    /// Whether anything is cached at all (`memory: 0` turns the cache off).
    pub fn enabled(&self) -> bool {
        self.memory.bytes() > 0
    }

    /// Fills in progress may hold `memory` together, content fills all but this fraction of it
    /// (a sixteenth), which is left to metadata (see `cache::storage`).
    pub const METADATA_FILL_SHARE: u64 = 16;

    /// The most that content fills in progress may hold together.
    pub fn content_fill_room(&self) -> u64 {
        let memory = self.memory.bytes();
        memory - memory / Cache::METADATA_FILL_SHARE
    }
}

impl Default for Cache {
    fn default() -> Self {
        Cache {
            memory: ByteSize::mib(256),
            metadata_ttl: HumanDuration::secs(60),
            content_ttl: HumanDuration::secs(24 * 3600),
            max_object: ByteSize::mib(32),
            follow_content_redirects: true,
            negative_ttl: HumanDuration::secs(0),
            response_header: true,
        }
    }
}

/// Per-service overrides, keyed by Chat Service SID.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceOverride {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<Credentials>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uploads: Option<UploadsOverride>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quotas: Option<QuotasOverride>,
}

impl Config {
    /// Checks what types alone cannot, and reads `password_file`s.
    pub(super) fn validate(&mut self) -> Result<(), ConfigError> {
        if self.server.threads == 0 {
            return Err(ConfigError("server.threads: must be at least 1".into()));
        }
        self.check_above_zero()?;
        if self.upstream.keepalive_pool > Upstream::MAX_KEEPALIVE_POOL {
            return Err(ConfigError(format!(
                "upstream.keepalive_pool: must be at most {}",
                Upstream::MAX_KEEPALIVE_POOL
            )));
        }
        if self.quotas.slot_lease.get() < std::time::Duration::from_secs(1) {
            return Err(ConfigError("quotas.slot_lease: must be at least 1s".into()));
        }
        self.server.check_upgrade_sock()?;
        if self.server.busy_poll.get() > Server::MAX_BUSY_POLL {
            return Err(ConfigError(
                "server.busy_poll: must be at most 10ms (it is a wait for a near event)".into(),
            ));
        }
        if listeners_collide(self.server.listen, self.server.metrics_listen) {
            return Err(ConfigError(
                "server.metrics_listen: must not take server.listen's port (the same port on \
                 the same address, or with either on every address)"
                    .into(),
            ));
        }
        if self.cache.negative_ttl.get() > Cache::MAX_NEGATIVE_TTL {
            return Err(ConfigError("cache.negative_ttl: must be at most 5s".into()));
        }
        if self.cache.enabled() && self.cache.max_object.bytes() > self.cache.content_fill_room() {
            return Err(ConfigError(
                "cache.max_object: must not exceed 15/16 of cache.memory (content fills leave a \
                 sixteenth of it to metadata)"
                    .into(),
            ));
        }
        if let Some(ca) = &self.upstream.ca_file {
            check_ca_file(ca)?;
        }
        self.credentials.resolve("credentials")?;
        check_types("uploads.allowed_types", &self.uploads.allowed_types)?;
        self.check_tokens()?;
        if self.uploads.retry.attempts > UploadRetry::MAX_ATTEMPTS {
            return Err(ConfigError(format!(
                "uploads.retry.attempts: must be at most {} (each waits twice as long as the one \
                 before, holding the upload's slot and spool)",
                UploadRetry::MAX_ATTEMPTS
            )));
        }
        if self.uploads.retry.backoff.get() > UploadRetry::MAX_BACKOFF {
            return Err(ConfigError(
                "uploads.retry.backoff: must be at most 10s".into(),
            ));
        }
        for (sid, service) in &mut self.services {
            let key = format!("services.{sid}");
            if let Some(credentials) = &mut service.credentials {
                credentials.resolve(&format!("{key}.credentials"))?;
            }
            if let Some(types) = service
                .uploads
                .as_ref()
                .and_then(|u| u.allowed_types.as_ref())
            {
                check_types(&format!("{key}.uploads.allowed_types"), types)?;
            }
        }
        Ok(())
    }

    /// Tokens a client can send: not empty, no blank around them (a newline from a secret file
    /// would make the token unmatchable: clients' tokens are read trimmed), none listed twice
    /// (the second's services would silently replace the first's).
    fn check_tokens(&self) -> Result<(), ConfigError> {
        let mut seen = std::collections::HashSet::new();
        for (index, token) in self.access.tokens.iter().enumerate() {
            let key = format!("access.tokens[{index}].token");
            let value = token.token.expose();
            if value.trim().is_empty() {
                return Err(ConfigError(format!("{key}: must not be empty")));
            }
            if value.trim() != value {
                return Err(ConfigError(format!(
                    "{key}: has blank space (a newline?) before or after it: no client could send it"
                )));
            }
            if !seen.insert(value) {
                return Err(ConfigError(format!(
                    "{key}: is listed twice (give one entry all its services)"
                )));
            }
        }
        Ok(())
    }

    /// The limits and timeouts at which 0 would refuse or cut off every request.
    fn check_above_zero(&self) -> Result<(), ConfigError> {
        let (server, upstream) = (&self.server, &self.upstream);
        let zeros = [
            ("server.max_connections", server.max_connections == 0),
            ("server.head_timeout", server.head_timeout.get().is_zero()),
            ("server.max_head_size", server.max_head_size.bytes() == 0),
            ("server.max_headers", server.max_headers == 0),
            (
                "upstream.connect_timeout",
                upstream.connect_timeout.get().is_zero(),
            ),
            (
                "upstream.read_timeout",
                upstream.read_timeout.get().is_zero(),
            ),
        ];
        match zeros.iter().find(|(_, zero)| *zero) {
            Some((key, _)) => Err(ConfigError(format!(
                "{key}: must be above 0 (0 would refuse or cut off every request)"
            ))),
            None => Ok(()),
        }
    }

    /// The credentials injected for `service`: its own, else the defaults.
    pub fn credentials_for(&self, service: &ServiceSid) -> &Credentials {
        self.services
            .get(service)
            .and_then(|s| s.credentials.as_ref())
            .unwrap_or(&self.credentials)
    }

    /// The upload policy for `service`: the defaults with its overrides.
    pub fn uploads_for(&self, service: &ServiceSid) -> Uploads {
        match self.services.get(service).and_then(|s| s.uploads.as_ref()) {
            Some(over) => self.uploads.with(over),
            None => self.uploads.clone(),
        }
    }

    /// The quotas for `service`: the defaults with its overrides.
    pub fn quotas_for(&self, service: &ServiceSid) -> Quotas {
        match self.services.get(service).and_then(|s| s.quotas.as_ref()) {
            Some(over) => self.quotas.with(over),
            None => self.quotas.clone(),
        }
    }
}

/// Whether two listeners would need the same socket: one port, on one address or with either on
/// every address (`0.0.0.0`, `::`).
fn listeners_collide(a: std::net::SocketAddr, b: std::net::SocketAddr) -> bool {
    // `0.0.0.0` takes every IPv4 address; `::` every address (IPv4 too, as Linux binds it).
    let covers = |wide: std::net::SocketAddr, other: std::net::SocketAddr| {
        wide.ip().is_unspecified() && (wide.is_ipv6() || other.is_ipv4())
    };
    a.port() == b.port() && (a.ip() == b.ip() || covers(a, b) || covers(b, a))
}

/// A CA file must hold at least one PEM certificate; say so at start, not at the first request.
fn check_ca_file(path: &Path) -> Result<(), ConfigError> {
    let err = |why: String| ConfigError(format!("upstream.ca_file: {}: {why}", path.display()));
    let pem = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(err("holds no PEM certificate".into()));
    }
    Ok(())
}

/// MIME patterns: `type/subtype` or `type/*`.
fn check_types(key: &str, types: &[String]) -> Result<(), ConfigError> {
    for (index, pattern) in types.iter().enumerate() {
        let well_formed = match pattern.split_once('/') {
            Some((kind, sub)) => {
                !kind.is_empty() && !sub.is_empty() && kind != "*" && !pattern.contains(' ')
            }
            None => false,
        };
        if !well_formed {
            return Err(ConfigError(format!(
                r#"{key}[{index}]: expected a MIME type like "image/png" or "image/*", got "{pattern}""#
            )));
        }
    }
    Ok(())
}

/// Socket addresses with an error message that shows the expected form.
mod socket_addr {
    use std::net::SocketAddr;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(addr: &SocketAddr, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(addr)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<SocketAddr, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(|_| {
            serde::de::Error::custom(format!(
                r#"expected an address like "127.0.0.1:8080", got "{text}""#
            ))
        })
    }
}
