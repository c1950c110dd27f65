//! Spooled upload bodies, so that an upload the upstream failed can be sent again
//! (`uploads.retry`). While an upload streams upstream, its bytes are also written to a file of
//! its own under `spool_dir`; the file goes when the upload ends, on every path (`Drop`), and
//! files left by a crash are removed at start. The bytes spooled at once are bounded by
//! `spool_max`: an upload that does not fit streams unspooled, and is not retried.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::io::AsyncWriteExt;

use crate::config::UploadRetry;

const PREFIX: &str = "upload-";
const SUFFIX: &str = ".spool";

pub struct SpoolDir {
    dir: PathBuf,
    max: u64,
    /// Bytes reserved by the spools open now.
    used: AtomicU64,
    next: AtomicU64,
}

impl SpoolDir {
    /// Creates the directory if needed (owner-only: spooled uploads are private) and removes
    /// what processes that are gone left in it. A directory that exists keeps its mode: it may
    /// be shared (`/var/tmp`), and the spool files are owner-only whatever their directory.
    pub fn open(config: &UploadRetry) -> io::Result<Arc<SpoolDir>> {
        if !config.spool_dir.exists() {
            std::fs::create_dir_all(&config.spool_dir)?;
            restrict(&config.spool_dir, 0o700)?;
        }
        let swept = sweep(&config.spool_dir)?;
        if swept > 0 {
            log::info!(
                "spool: removed {swept} files left in {}",
                config.spool_dir.display()
            );
        }
        Ok(Arc::new(SpoolDir {
            dir: config.spool_dir.clone(),
            max: config.spool_max.bytes(),
            used: AtomicU64::new(0),
            next: AtomicU64::new(0),
        }))
    }

    /// Takes `bytes` of the budget, if there are that many left.
    fn reserve(&self, bytes: u64) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|total| *total <= self.max)
            })
            .is_ok()
    }

    fn release(&self, bytes: u64) {
        self.used.fetch_sub(bytes, Ordering::AcqRel);
    }

    /// A spool for one upload, with `expected` bytes (its declared size) reserved up front;
    /// `None` when the budget is spent or the file cannot be made.
    pub async fn start(self: &Arc<Self>, expected: u64) -> Option<Spool> {
        if !self.reserve(expected) {
            return None;
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let path = self
            .dir
            .join(format!("{PREFIX}{}-{n}{SUFFIX}", std::process::id()));
        let mut options = tokio::fs::OpenOptions::new();
        // A fresh file only (never one planted under the name), readable by its owner only.
        options.write(true).create_new(true).mode(0o600);
        match options.open(&path).await {
            Ok(file) => Some(Spool {
                dir: self.clone(),
                path,
                file: Some(file),
                reserved: expected,
                written: 0,
            }),
            Err(e) => {
                self.release(expected);
                log::warn!("spool: cannot create {}: {e}", path.display());
                None
            }
        }
    }
}

fn restrict(path: &Path, mode: u32) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

/// Removes the spool files in `dir` of processes that are gone; returns how many. The files of
/// a live process (the one handing its sockets over in a binary upgrade) are its own.
fn sweep(dir: &Path) -> io::Result<usize> {
    let mut removed = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(pid) = spool_owner(&name.to_string_lossy()) else {
            continue;
        };
        if pid != std::process::id() && process_lives(pid) {
            continue;
        }
        match std::fs::remove_file(entry.path()) {
            Ok(()) => removed += 1,
            // Its owner removed it meanwhile.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            // Another user's, in a shared directory with the sticky bit: theirs to remove.
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                log::warn!("spool: cannot remove {}: {e}", entry.path().display());
            }
            Err(e) => return Err(e),
        }
    }
    Ok(removed)
}

/// The pid in a spool file's name, `upload-<pid>-<n>.spool`.
fn spool_owner(name: &str) -> Option<u32> {
    let middle = name.strip_prefix(PREFIX)?.strip_suffix(SUFFIX)?;
    middle.split_once('-')?.0.parse().ok()
}

fn process_lives(pid: u32) -> bool {
    Path::new("/proc").join(pid.to_string()).exists()
}

/// One upload's spooled body.
pub struct Spool {
    dir: Arc<SpoolDir>,
    path: PathBuf,
    file: Option<tokio::fs::File>,
    reserved: u64,
    written: u64,
}

impl Spool {
    /// Appends a chunk. An error (the budget, the disk) means the spool is incomplete: drop it.
    pub async fn write(&mut self, chunk: &[u8]) -> io::Result<()> {
        let after = self.written + chunk.len() as u64;
        if after > self.reserved {
            if !self.dir.reserve(after - self.reserved) {
                return Err(io::Error::other("spool_max reached"));
            }
            self.reserved = after;
        }
        let file = self
            .file
            .as_mut()
            .ok_or_else(|| io::Error::other("spool closed"))?;
        file.write_all(chunk).await?;
        self.written = after;
        Ok(())
    }

    /// The bytes spooled.
    pub fn len(&self) -> u64 {
        self.written
    }

    pub fn is_empty(&self) -> bool {
        self.written == 0
    }

    /// The spooled body from its start, for one replay.
    pub async fn reader(&mut self) -> io::Result<tokio::fs::File> {
        if let Some(file) = self.file.as_mut() {
            file.flush().await?;
        }
        tokio::fs::File::open(&self.path).await
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        self.file = None;
        if let Err(e) = std::fs::remove_file(&self.path) {
            log::warn!("spool: cannot remove {}: {e}", self.path.display());
        }
        self.dir.release(self.reserved);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ByteSize, HumanDuration};
    use tokio::io::AsyncReadExt;

    fn config(dir: &Path, max: u64) -> UploadRetry {
        UploadRetry {
            attempts: 1,
            backoff: HumanDuration::secs(1),
            spool_dir: dir.to_path_buf(),
            spool_max: ByteSize::parse(&max.to_string()).unwrap(),
        }
    }

    #[test]
    fn a_directory_made_here_is_owner_only_and_one_that_exists_keeps_its_mode() {
        use std::os::unix::fs::PermissionsExt;
        let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o7777;
        let tmp = tempfile::tempdir().unwrap();
        let made = tmp.path().join("made/here");
        SpoolDir::open(&config(&made, 100)).unwrap();
        assert_eq!(mode(&made), 0o700);
        let shared = tmp.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        restrict(&shared, 0o1777).unwrap();
        SpoolDir::open(&config(&shared, 100)).unwrap();
        assert_eq!(mode(&shared), 0o1777);
    }

    #[tokio::test]
    async fn spools_within_the_budget_and_leaves_nothing_behind() {
        let tmp = tempfile::tempdir().unwrap();
        // A file of a process that is gone goes; one of a live process stays.
        let gone = tmp.path().join(format!("upload-{}-0.spool", u32::MAX - 1));
        let live = tmp.path().join("upload-1-0.spool");
        std::fs::write(&gone, b"left by a crash").unwrap();
        std::fs::write(&live, b"another process's").unwrap();
        let dir = SpoolDir::open(&config(tmp.path(), 100)).unwrap();
        assert!(!gone.exists());
        assert!(live.exists(), "pid 1 lives");
        std::fs::remove_file(&live).unwrap();

        let mut spool = dir.start(60).await.unwrap();
        spool.write(b"hello ").await.unwrap();
        spool.write(b"world").await.unwrap();
        let mut back = String::new();
        spool
            .reader()
            .await
            .unwrap()
            .read_to_string(&mut back)
            .await
            .unwrap();
        assert_eq!(back, "hello world");
        // 60 of 100 reserved: another 60 does not fit, 40 does.
        assert!(dir.start(60).await.is_none());
        let mut small = dir.start(40).await.unwrap();
        // Growing past its reservation needs budget the first spool holds.
        assert!(small.write(&[0; 41]).await.is_err());
        drop(spool);
        assert!(dir.start(60).await.is_some());
        drop(small);
        assert_eq!(dir.used.load(Ordering::Acquire), 0);
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
    }
}
