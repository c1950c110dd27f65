//! How the quota backend and the idempotency ledger reach Redis: one connection manager, made on
//! first use (on the runtime that serves requests), reconnecting by itself, with short timeouts
//! so that a Redis that does not answer counts as down quickly.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
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

    pub async fn connection(&self) -> Result<ConnectionManager, String> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(REDIS_TIMEOUT)
            .set_response_timeout(REDIS_TIMEOUT)
            .set_number_of_retries(1);
        self.connection
            .get_or_try_init(|| self.client.get_connection_manager_with_config(config))
            .await
            .cloned()
            .map_err(|e| format!("redis: {e}"))
    }
}
