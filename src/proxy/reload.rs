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
use crate::config::Config;
use crate::metrics::metrics;

pub struct Reloader {
    path: PathBuf,
    running: Mutex<Config>,
    settings: Arc<ArcSwap<Settings>>,
    cache: &'static Cache,
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
            running: Mutex::new(running),
            settings,
            cache,
        }
    }

    /// Reads the file again and, if it is valid, puts its settings in force.
    pub fn reload(&self) -> Result<(), String> {
        let new = Config::load(&self.path).map_err(|e| e.to_string())?;
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        let (config, kept) = keeping_fixed_keys(&running, new);
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
fn keeping_fixed_keys(running: &Config, mut new: Config) -> (Config, Vec<&'static str>) {
    let kept = fixed_keys_changed(running, &new);
    new.server = running.server.clone();
    new.quotas.backend = running.quotas.backend.clone();
    new.quotas.slot_lease = running.quotas.slot_lease;
    new.uploads.retry = running.uploads.retry.clone();
    if kept.contains(&IDEMPOTENCY_TTL) {
        new.uploads.idempotency_ttl = running.uploads.idempotency_ttl;
    }
    (new, kept)
}

const IDEMPOTENCY_TTL: &str = "uploads.idempotency_ttl";

/// The keys a reload cannot apply, among those that differ.
fn fixed_keys_changed(running: &Config, new: &Config) -> Vec<&'static str> {
    let mut changed = Vec::new();
    if printed(&running.server) != printed(&new.server) {
        changed.push("server");
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
    // The ledger keeps answers for the TTL it started with; turning it off (0s) does apply.
    let ttl = |c: &Config| c.uploads.idempotency_ttl.get();
    if ttl(running) != ttl(new) && !ttl(new).is_zero() {
        changed.push(IDEMPOTENCY_TTL);
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
        let running = uploads("  retry: {attempts: 2}\n  idempotency_ttl: 0s\n  max_size: 1MiB\n");
        let new = uploads("  retry: {attempts: 0}\n  idempotency_ttl: 24h\n  max_size: 2MiB\n");
        let (config, kept) = keeping_fixed_keys(&running, new);
        assert_eq!(kept, vec!["uploads.retry", IDEMPOTENCY_TTL]);
        assert_eq!(config.uploads.retry, running.uploads.retry);
        assert!(config.uploads.idempotency_ttl.get().is_zero());
        // The rest applies.
        assert_eq!(config.uploads.max_size.bytes(), 1 << 21);
        // What is in force is the baseline: the same file again changes nothing more.
        let again = uploads("  retry: {attempts: 0}\n  idempotency_ttl: 24h\n  max_size: 2MiB\n");
        assert_eq!(keeping_fixed_keys(&config, again).1, kept);
        // Turning idempotency off does apply.
        let on = uploads("  idempotency_ttl: 24h\n");
        let (config, kept) = keeping_fixed_keys(&on, uploads("  idempotency_ttl: 0s\n"));
        assert!(kept.is_empty() && config.uploads.idempotency_ttl.get().is_zero());
    }

    #[test]
    fn the_upgrade_socket_changes_only_with_a_restart() {
        let running = config("  upgrade_sock: /run/mediagate/a.sock\n");
        let new = config("  upgrade_sock: /run/mediagate/b.sock\n");
        assert_eq!(fixed_keys_changed(&running, &new), vec!["server"]);
        assert!(fixed_keys_changed(&running, &running.clone()).is_empty());
    }
}
