//! Configuration reload on SIGHUP. The file is read and validated again; if it is good, new
//! settings (access, upload policy, quota limits, credentials, upstream, cache TTLs and size,
//! metric label sets) replace the old ones at once, while requests already running finish with the settings they
//! started with and no connection is dropped. A file that fails validation is refused with a
//! log line, and the running configuration stays. Listeners, threads, the access log switch and
//! the quota backend are fixed at start: changing them needs a restart (or pingora's SIGQUIT
//! hand-over, see the README).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use crate::cache::Cache;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use super::gateway::Settings;
use crate::config::{Config, HumanDuration};
use crate::metrics::metrics;

pub struct Reloader {
    path: PathBuf,
    running: Mutex<Config>,
    settings: Arc<ArcSwap<Settings>>,
    cache: &'static Cache,
    /// The idempotency ledger's TTL, fixed when it was made at start (0: no ledger).
    ledger_ttl: HumanDuration,
}

impl Reloader {
    pub fn new(
        path: PathBuf,
        running: Config,
        settings: Arc<ArcSwap<Settings>>,
        cache: &'static Cache,
    ) -> Reloader {
        Reloader {
            path,
            ledger_ttl: running.uploads.idempotency_ttl,
            running: Mutex::new(running),
            settings,
            cache,
        }
    }

    /// Reads the file again and, if it is valid, puts its settings in force.
    pub fn reload(&self) -> Result<(), String> {
        let new = Config::load(&self.path).map_err(|e| e.to_string())?;
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        let (config, kept) = keeping_fixed_keys(&running, new, self.ledger_ttl);
        let settings = Settings::new(&config)?;
        for key in kept {
            log::warn!(
                "configuration reload: {key} changes only with a restart; the running value stays"
            );
        }
        self.settings.store(Arc::new(settings));
        self.cache.resize(config.cache.memory.bytes());
        // What is in force, fixed keys included: the next reload compares with that.
        *running = config;
        Ok(())
    }
}

/// `new` with the keys a reload cannot apply set back to their running values, and the names
/// of those that differed: the settings built from it are then the ones the warnings describe.
fn keeping_fixed_keys(
    running: &Config,
    mut new: Config,
    ledger_ttl: HumanDuration,
) -> (Config, Vec<&'static str>) {
    let mut kept = fixed_keys_changed(running, &new);
    new.server = running.server.clone();
    new.upstream.keepalive_pool = running.upstream.keepalive_pool;
    new.upstream.ca_file = running.upstream.ca_file.clone();
    new.quotas.backend = running.quotas.backend.clone();
    new.quotas.slot_lease = running.quotas.slot_lease;
    new.uploads.retry = running.uploads.retry.clone();
    // The ledger keeps answers for the TTL it was made with (none when it started off):
    // turning idempotency off applies, and turning it on again applies that TTL.
    let ttl = new.uploads.idempotency_ttl;
    if !ttl.get().is_zero() && ttl != ledger_ttl {
        kept.push("uploads.idempotency_ttl");
        new.uploads.idempotency_ttl = ledger_ttl;
    }
    (new, kept)
}

/// The keys a reload cannot apply (pingora or a backend took them at start), among those that
/// differ.
fn fixed_keys_changed(running: &Config, new: &Config) -> Vec<&'static str> {
    let mut changed = Vec::new();
    if printed(&running.server) != printed(&new.server) {
        changed.push("server");
    }
    if running.upstream.keepalive_pool != new.upstream.keepalive_pool {
        changed.push("upstream.keepalive_pool");
    }
    if running.upstream.ca_file != new.upstream.ca_file {
        changed.push("upstream.ca_file");
    }
    if running.quotas.backend != new.quotas.backend {
        changed.push("quotas.backend");
    }
    if running.quotas.slot_lease != new.quotas.slot_lease {
        changed.push("quotas.slot_lease");
    }
    if running.uploads.retry != new.uploads.retry {
        changed.push("uploads.retry");
    }
    changed
}

/// A configuration block as YAML, to compare blocks without deriving equality on each.
fn printed<T: serde::Serialize>(block: &T) -> String {
    serde_yaml::to_string(block).unwrap_or_default()
}

#[async_trait]
impl BackgroundService for Reloader {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hangups = match signal(SignalKind::hangup()) {
            Ok(hangups) => hangups,
            Err(e) => {
                log::error!("configuration reload: cannot listen for SIGHUP: {e}");
                return;
            }
        };
        loop {
            tokio::select! {
                _ = hangups.recv() => match self.reload() {
                    Ok(()) => {
                        metrics().config_reloads.with_label_values(&["ok"]).inc();
                        log::info!("configuration reloaded from {}", self.path.display());
                    }
                    Err(e) => {
                        metrics().config_reloads.with_label_values(&["error"]).inc();
                        log::error!("configuration reload refused, the running configuration stays: {e}");
                    }
                },
                _ = shutdown.changed() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(server: &str) -> Config {
        let yaml = format!("credentials: {{username: u, password: p}}\nserver:\n{server}");
        Config::from_yaml(&yaml, &|_| None).unwrap()
    }

    fn uploads(uploads: &str) -> Config {
        let yaml = format!("credentials: {{username: u, password: p}}\nuploads:\n{uploads}");
        Config::from_yaml(&yaml, &|_| None).unwrap()
    }

    #[test]
    fn a_reload_keeps_the_running_values_of_the_keys_it_cannot_apply() {
        let running = uploads("  retry: {attempts: 2}\n  max_size: 1MiB\n");
        let ledger = running.uploads.idempotency_ttl;
        let new = || uploads("  retry: {attempts: 0}\n  max_size: 2MiB\n");
        let (config, kept) = keeping_fixed_keys(&running, new(), ledger);
        assert_eq!(kept, vec!["uploads.retry"]);
        assert_eq!(config.uploads.retry, running.uploads.retry);
        // The rest applies.
        assert_eq!(config.uploads.max_size.bytes(), 2 << 20);
        // What is in force is the baseline: the same file again is the same change.
        assert_eq!(keeping_fixed_keys(&config, new(), ledger).1, kept);

        let base = uploads("  max_size: 1MiB\n");
        let yaml = "credentials: {username: u, password: p}\nupstream: {keepalive_pool: 16}\n";
        let pool = Config::from_yaml(yaml, &|_| None).unwrap();
        let (config, kept) = keeping_fixed_keys(&base, pool, ledger);
        assert_eq!(kept, vec!["upstream.keepalive_pool"]);
        assert_eq!(config.upstream.keepalive_pool, base.upstream.keepalive_pool);
    }

    #[test]
    fn idempotency_turns_off_and_on_again_with_the_ledgers_ttl() {
        let start = uploads("  idempotency_ttl: 24h\n");
        let ledger = start.uploads.idempotency_ttl;
        let ttl = |yaml: &str| uploads(&format!("  idempotency_ttl: {yaml}\n"));
        let (off, kept) = keeping_fixed_keys(&start, ttl("0s"), ledger);
        assert!(kept.is_empty() && off.uploads.idempotency_ttl.get().is_zero());
        let (on, kept) = keeping_fixed_keys(&off, ttl("24h"), ledger);
        assert!(kept.is_empty());
        assert_eq!(on.uploads.idempotency_ttl, ledger);
        // Another TTL needs a restart: the ledger's stays.
        let (other, kept) = keeping_fixed_keys(&on, ttl("1h"), ledger);
        assert_eq!(kept, vec!["uploads.idempotency_ttl"]);
        assert_eq!(other.uploads.idempotency_ttl, ledger);
        // Started off, there is no ledger to turn on.
        let never = ttl("0s");
        let none = never.uploads.idempotency_ttl;
        let (still_off, kept) = keeping_fixed_keys(&never, ttl("24h"), none);
        assert_eq!(kept, vec!["uploads.idempotency_ttl"]);
        assert!(still_off.uploads.idempotency_ttl.get().is_zero());
    }

    #[test]
    fn the_upgrade_socket_changes_only_with_a_restart() {
        let running = config("  upgrade_sock: /run/mediagate/a.sock\n");
        let new = config("  upgrade_sock: /run/mediagate/b.sock\n");
        assert_eq!(fixed_keys_changed(&running, &new), vec!["server"]);
        assert!(fixed_keys_changed(&running, &running.clone()).is_empty());
    }
}
