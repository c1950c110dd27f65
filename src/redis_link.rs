//! How the quota backend and the idempotency ledger reach Redis: one connection manager, made on
//! first use (on the runtime that serves requests), reconnecting by itself, with short timeouts
//! so that a Redis that does not answer counts as down quickly; and the leases both hold there.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::Script;
use tokio::sync::OnceCell;

/// How long a call to Redis may take before the backend counts as unreachable.
pub const REDIS_TIMEOUT: Duration = Duration::from_millis(500);

pub struct RedisLink {
    client: redis::Client,
    connection: OnceCell<ConnectionManager>,
}

impl RedisLink {
    /// `key` names the configuration key in errors.
    pub fn open(url: &str, key: &str) -> Result<RedisLink, String> {
        Ok(RedisLink {
            client: redis::Client::open(url).map_err(|e| format!("{key}: {e}"))?,
            connection: OnceCell::new(),
        })
    }

    /// The connection, made on first use. Bounded by [`REDIS_TIMEOUT`]: the first attempt to
    /// make it retries after a backoff of a second or more, and the callers behind it wait
    /// their turn, so a Redis that is down at start would otherwise hold each call for seconds
    /// and queue them one behind the other.
    pub async fn connection(&self) -> Result<ConnectionManager, String> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(REDIS_TIMEOUT)
            .set_response_timeout(REDIS_TIMEOUT)
            .set_number_of_retries(1);
        let connect = self
            .connection
            .get_or_try_init(|| self.client.get_connection_manager_with_config(config));
        match tokio::time::timeout(REDIS_TIMEOUT, connect).await {
            Ok(made) => made.cloned().map_err(|e| format!("redis: {e}")),
            Err(_) => Err(format!("redis: no connection within {REDIS_TIMEOUT:?}")),
        }
    }
}

/// A call to Redis bounded by [`REDIS_TIMEOUT`]: while Redis is away the connection manager
/// reconnects, with a backoff, before it answers a call, which would otherwise hold the call
/// for seconds.
pub async fn bounded<T>(
    call: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, String> {
    match tokio::time::timeout(REDIS_TIMEOUT, call).await {
        Ok(answer) => answer.map_err(|e| format!("redis: {e}")),
        Err(_) => Err(format!("redis: no answer within {REDIS_TIMEOUT:?}")),
    }
}

/// A duration as Redis takes it in `PEXPIRE` and friends: whole milliseconds, at least 1 (0
/// would expire at once).
pub fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// Leases this process holds in Redis (quota slots, the keys of uploads it runs), kept alive
/// while held: every `lease / 3` one call of the `renew` script extends them all, so that a
/// process that dies gives them back one lease later. `renew` gets each lease's key in KEYS,
/// the lease in milliseconds as ARGV[1], then each lease's id in the ARGV after.
pub struct Leases {
    redis: Arc<RedisLink>,
    renew: Script,
    lease: Duration,
    /// What the leases are, for the log.
    what: &'static str,
    /// The leases held: id → key.
    held: Mutex<HashMap<String, String>>,
    renewing: AtomicBool,
}

impl Leases {
    pub fn new(
        redis: Arc<RedisLink>,
        renew: Script,
        lease: Duration,
        what: &'static str,
    ) -> Arc<Leases> {
        Arc::new(Leases {
            redis,
            renew,
            lease,
            what,
            held: Mutex::new(HashMap::new()),
            renewing: AtomicBool::new(false),
        })
    }

    pub fn lease(&self) -> Duration {
        self.lease
    }

    /// Renews the lease `id` on `key` from now until the answer is dropped.
    pub fn hold(self: &Arc<Self>, id: String, key: String) -> Held {
        self.held().insert(id.clone(), key);
        self.start_renewing();
        Held {
            leases: self.clone(),
            id,
        }
    }

    fn held(&self) -> MutexGuard<'_, HashMap<String, String>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// From the first lease held on, on the runtime that serves requests.
    fn start_renewing(self: &Arc<Self>) {
        if self.renewing.swap(true, Ordering::AcqRel) {
            return;
        }
        let leases = Arc::downgrade(self);
        let every = self.lease / 3;
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(leases) = leases.upgrade() else {
                    return;
                };
                if let Err(e) = leases.renew_once().await {
                    crate::metrics::metrics().quota_backend_errors.inc();
                    log::warn!("cannot renew the leases of {}: {e}", leases.what);
                }
            }
        });
    }

    async fn renew_once(&self) -> Result<(), String> {
        // Copied out: the lock is not held across the call.
        let held: Vec<(String, String)> = self
            .held()
            .iter()
            .map(|(id, key)| (id.clone(), key.clone()))
            .collect();
        if held.is_empty() {
            return Ok(());
        }
        let mut call = self.renew.prepare_invoke();
        call.arg(millis(self.lease));
        for (id, key) in &held {
            call.key(key).arg(id);
        }
        let mut connection = self.redis.connection().await?;
        bounded(call.invoke_async::<i64>(&mut connection))
            .await
            .map(drop)
    }
}

/// One lease being renewed; dropping it stops the renewal (whatever path drops it, so that no
/// lease outlives what it stands for by more than one lease).
pub struct Held {
    leases: Arc<Leases>,
    id: String,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.leases.held().remove(&self.id);
    }
}

impl std::fmt::Debug for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Held({} {})", self.leases.what, self.id)
    }
}
