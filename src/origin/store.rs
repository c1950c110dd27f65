//! The origin's durable store: metadata in SQLite, content in files named by their SHA-256.
//!
//! An upload is written to `tmp/`, fsynced, renamed into `content/` (or dropped there when the
//! same bytes are already stored), the directory fsynced, and only then is the row committed.
//! So a media answered 201 survives `kill -9`, and a body that never completes leaves nothing:
//! its staging file is removed when the upload is dropped, and whatever a crash left in `tmp/`
//! or unreferenced in `content/` is swept at the next start.

use std::collections::HashSet;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rusqlite::{params, Connection, OptionalExtension};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

/// One stored media's metadata.
#[derive(Clone, Debug)]
pub struct MediaRecord {
    pub sid: String,
    pub service_sid: String,
    pub account_sid: String,
    pub date_created: String,
    pub category: String,
    pub size: u64,
    pub content_type: String,
    pub filename: Option<String>,
    pub sha256: String,
}

/// What the caller knows of a new media before its bytes are in.
pub struct NewMedia {
    pub sid: String,
    pub service_sid: String,
    pub account_sid: String,
    pub date_created: String,
    pub category: String,
    pub content_type: String,
    pub filename: Option<String>,
}

#[derive(Clone)]
pub struct Store {
    root: Arc<PathBuf>,
    db: Arc<Mutex<Connection>>,
}

const SCHEMA: &str = "
PRAGMA journal_mode = WAL;
PRAGMA synchronous = FULL;
CREATE TABLE IF NOT EXISTS media (
    sid           TEXT PRIMARY KEY,
    service_sid   TEXT NOT NULL,
    account_sid   TEXT NOT NULL,
    date_created  TEXT NOT NULL,
    category      TEXT NOT NULL,
    size          INTEGER NOT NULL,
    content_type  TEXT NOT NULL,
    filename      TEXT,
    sha256        TEXT NOT NULL
);";

fn db_err(e: rusqlite::Error) -> io::Error {
    io::Error::other(e)
}

impl Store {
    /// Opens (or creates) the store under `root` and sweeps what an earlier crash left behind.
    pub fn open(root: &Path) -> io::Result<Store> {
        std::fs::create_dir_all(root.join("content"))?;
        std::fs::create_dir_all(root.join("tmp"))?;
        let db = Connection::open(root.join("media.sqlite3")).map_err(db_err)?;
        db.execute_batch(SCHEMA).map_err(db_err)?;
        let store = Store {
            root: Arc::new(root.to_path_buf()),
            db: Arc::new(Mutex::new(db)),
        };
        store.sweep()?;
        Ok(store)
    }

    fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    fn content_dir(&self) -> PathBuf {
        self.root.join("content")
    }

    pub fn content_path(&self, sha256: &str) -> PathBuf {
        self.content_dir().join(sha256)
    }

    /// Removes staging files and content no row refers to (a crash between rename and commit).
    fn sweep(&self) -> io::Result<()> {
        for entry in std::fs::read_dir(self.tmp_dir())? {
            std::fs::remove_file(entry?.path())?;
        }
        let referenced: HashSet<String> = {
            let db = self.lock();
            let mut stmt = db
                .prepare("SELECT DISTINCT sha256 FROM media")
                .map_err(db_err)?;
            let rows = stmt
                .query_map([], |row| row.get::<_, String>(0))
                .map_err(db_err)?;
            rows.collect::<Result<_, _>>().map_err(db_err)?
        };
        for entry in std::fs::read_dir(self.content_dir())? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !referenced.contains(&name) {
                std::fs::remove_file(entry.path())?;
            }
        }
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite inconsistent: keep serving.
        self.db
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A new staging file for an upload's bytes.
    pub async fn stage(&self) -> io::Result<Staged> {
        let path = self
            .tmp_dir()
            .join(format!("{}.part", crate::api::MediaSid::generate()));
        let file = tokio::fs::File::create(&path).await?;
        Ok(Staged {
            file,
            path: Some(path),
            hasher: Sha256::new(),
            size: 0,
        })
    }

    /// Makes the staged bytes durable and records the media; the answer is what was stored.
    pub async fn commit(&self, mut staged: Staged, media: NewMedia) -> io::Result<MediaRecord> {
        staged.file.flush().await?;
        staged.file.sync_all().await?;
        let size = staged.size;
        let sha256 = hex::encode(staged.hasher.clone().finalize());
        let store = self.clone();
        let record = MediaRecord {
            sid: media.sid,
            service_sid: media.service_sid,
            account_sid: media.account_sid,
            date_created: media.date_created,
            category: media.category,
            size,
            content_type: media.content_type,
            filename: media.filename,
            sha256,
        };
        tokio::task::spawn_blocking(move || store.commit_blocking(&mut staged, record))
            .await
            .map_err(io::Error::other)?
    }

    fn commit_blocking(&self, staged: &mut Staged, record: MediaRecord) -> io::Result<MediaRecord> {
        let target = self.content_path(&record.sha256);
        let Some(staging_path) = staged.path.take() else {
            return Err(io::Error::other("staging file already consumed"));
        };
        if target.exists() {
            // Same bytes are stored already: keep one copy.
            std::fs::remove_file(&staging_path)?;
        } else {
            std::fs::rename(&staging_path, &target)?;
        }
        // Also when the file was there: an upload of the same bytes may have renamed it into
        // place a moment ago and not yet made that durable. The row must not outlive its file.
        std::fs::File::open(self.content_dir())?.sync_all()?;
        self.lock()
            .execute(
                "INSERT INTO media (sid, service_sid, account_sid, date_created, category, size,
                                    content_type, filename, sha256)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![
                    record.sid,
                    record.service_sid,
                    record.account_sid,
                    record.date_created,
                    record.category,
                    record.size as i64,
                    record.content_type,
                    record.filename,
                    record.sha256,
                ],
            )
            .map_err(db_err)?;
        Ok(record)
    }

    /// The media with this SID, if stored.
    pub async fn find(&self, sid: &str) -> io::Result<Option<MediaRecord>> {
        let store = self.clone();
        let sid = sid.to_string();
        tokio::task::spawn_blocking(move || store.find_blocking(&sid))
            .await
            .map_err(io::Error::other)?
    }

    fn find_blocking(&self, sid: &str) -> io::Result<Option<MediaRecord>> {
        self.lock()
            .query_row(
                "SELECT sid, service_sid, account_sid, date_created, category, size,
                        content_type, filename, sha256
                 FROM media WHERE sid = ?1",
                params![sid],
                |row| {
                    Ok(MediaRecord {
                        sid: row.get(0)?,
                        service_sid: row.get(1)?,
                        account_sid: row.get(2)?,
                        date_created: row.get(3)?,
                        category: row.get(4)?,
                        size: row.get::<_, i64>(5)? as u64,
                        content_type: row.get(6)?,
                        filename: row.get(7)?,
                        sha256: row.get(8)?,
                    })
                },
            )
            .optional()
            .map_err(db_err)
    }
}

/// An upload's bytes on their way in: hashed and counted as they are written. Dropped before
/// `commit`, the staging file is removed, so a failed upload leaves nothing behind.
pub struct Staged {
    file: tokio::fs::File,
    path: Option<PathBuf>,
    hasher: Sha256,
    size: u64,
}

impl Staged {
    pub async fn write(&mut self, chunk: &[u8]) -> io::Result<()> {
        self.hasher.update(chunk);
        self.size += chunk.len() as u64;
        self.file.write_all(chunk).await
    }

    pub fn size(&self) -> u64 {
        self.size
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if let Some(path) = self.path.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}
