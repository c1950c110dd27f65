//! Temporary content URLs: `/{ME}?Expires=<epoch>&Signature=<hex>&Key-Pair-Id=…`, signed with
//! HMAC-SHA256 over the media SID and the expiry, under a key kept in the data directory so URLs
//! stay valid across restarts.

use std::io::{self, Write};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;

use crate::api::TEMPORARY_URL_TTL_SECS;

const KEY_FILE: &str = "signing.key";
pub const KEY_PAIR_ID: &str = "mediagate-origin";

pub struct Signer {
    key: [u8; 32],
    /// How long the URLs it signs stay valid.
    ttl_secs: u64,
}

#[derive(Debug, PartialEq, Eq)]
pub enum UrlRefused {
    Malformed,
    BadSignature,
    Expired,
}

pub fn now_epoch() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Signer {
    /// Reads the key under `dir`, or creates it (owner-only, written whole or not at all).
    pub fn load_or_create(dir: &Path) -> io::Result<Signer> {
        let path = dir.join(KEY_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => Self::from_hex(text.trim()).ok_or_else(|| {
                io::Error::other(format!("{} is not a 64-digit hex key", path.display()))
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let mut key = [0u8; 32];
                rand::thread_rng().fill_bytes(&mut key);
                write_private(&path, hex::encode(key).as_bytes())?;
                Ok(Signer {
                    key,
                    ttl_secs: TEMPORARY_URL_TTL_SECS,
                })
            }
            Err(e) => Err(e),
        }
    }

    fn from_hex(text: &str) -> Option<Signer> {
        let bytes = hex::decode(text).ok()?;
        Some(Signer {
            key: bytes.try_into().ok()?,
            ttl_secs: TEMPORARY_URL_TTL_SECS,
        })
    }

    fn mac(&self, media: &str, expires: u64) -> Hmac<Sha256> {
        // HMAC takes keys of any length; 32 bytes cannot fail.
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC accepts any key");
        mac.update(media.as_bytes());
        mac.update(b"\n");
        mac.update(expires.to_string().as_bytes());
        mac
    }

    /// Signs URLs valid for `secs` instead of the real service's 300 s.
    pub fn with_ttl(self, secs: u64) -> Signer {
        Signer {
            ttl_secs: secs,
            ..self
        }
    }

    /// The signed URL for `media` under `base` (`scheme://host[:port]`), valid for 300 s
    /// unless `with_ttl` says otherwise.
    pub fn temporary_url(&self, base: &str, media: &str) -> String {
        // Saturating: a `--url-ttl` past the end of time means a URL that never expires.
        let expires = now_epoch().saturating_add(self.ttl_secs);
        let signature = hex::encode(self.mac(media, expires).finalize().into_bytes());
        format!("{base}/{media}?Expires={expires}&Signature={signature}&Key-Pair-Id={KEY_PAIR_ID}")
    }

    /// Checks a URL's signature (in constant time) and expiry.
    pub fn verify(&self, media: &str, expires: &str, signature: &str) -> Result<(), UrlRefused> {
        let expires: u64 = expires.parse().map_err(|_| UrlRefused::Malformed)?;
        let signature = hex::decode(signature).map_err(|_| UrlRefused::Malformed)?;
        self.mac(media, expires)
            .verify_slice(&signature)
            .map_err(|_| UrlRefused::BadSignature)?;
        if expires < now_epoch() {
            return Err(UrlRefused::Expired);
        }
        Ok(())
    }

    /// A URL signed with an expiry of the caller's choosing: for tests of expiry.
    pub fn signature_for(&self, media: &str, expires: u64) -> String {
        hex::encode(self.mac(media, expires).finalize().into_bytes())
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_urls_verify_and_forgeries_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let signer = Signer::load_or_create(dir.path()).unwrap();
        let media = "ME0123456789abcdef0123456789abcdef";
        let expires = now_epoch() + 60;
        let sig = signer.signature_for(media, expires);
        assert_eq!(signer.verify(media, &expires.to_string(), &sig), Ok(()));
        let other = "ME1123456789abcdef0123456789abcdef";
        assert_eq!(
            signer.verify(other, &expires.to_string(), &sig),
            Err(UrlRefused::BadSignature)
        );
        let later = (expires + 1).to_string();
        assert_eq!(
            signer.verify(media, &later, &sig),
            Err(UrlRefused::BadSignature)
        );
        let past = now_epoch() - 1;
        let old = signer.signature_for(media, past);
        assert_eq!(
            signer.verify(media, &past.to_string(), &old),
            Err(UrlRefused::Expired)
        );
    }

    #[test]
    fn a_ttl_past_the_end_of_time_signs_a_url_that_never_expires() {
        let dir = tempfile::tempdir().unwrap();
        let signer = Signer::load_or_create(dir.path())
            .unwrap()
            .with_ttl(u64::MAX);
        let media = "ME0123456789abcdef0123456789abcdef";
        let url = signer.temporary_url("http://127.0.0.1:1", media);
        let query = url.split_once('?').unwrap().1;
        let param = |name: &str| {
            query
                .split('&')
                .find_map(|pair| pair.strip_prefix(name))
                .unwrap()
                .to_string()
        };
        assert_eq!(param("Expires="), u64::MAX.to_string());
        assert_eq!(
            signer.verify(media, &param("Expires="), &param("Signature=")),
            Ok(())
        );
    }

    #[test]
    fn the_key_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let first = Signer::load_or_create(dir.path()).unwrap();
        let second = Signer::load_or_create(dir.path()).unwrap();
        assert_eq!(first.key, second.key);
    }
}
