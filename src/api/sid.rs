//! SIDs: a two-letter prefix and 32 lowercase hex digits. Typed by kind so a media SID can never
//! be passed where a service SID is expected.

use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::marker::PhantomData;

use rand::RngCore;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// What a SID names: its two-letter prefix and a human name for error messages.
pub trait SidKind {
    const PREFIX: &'static str;
    const NAME: &'static str;
}

/// A Chat Service (`IS…`).
pub enum Service {}
/// A Media resource (`ME…`).
pub enum MediaKind {}
/// An Account (`AC…`).
pub enum Account {}

impl SidKind for Service {
    const PREFIX: &'static str = "IS";
    const NAME: &'static str = "service SID";
}
impl SidKind for MediaKind {
    const PREFIX: &'static str = "ME";
    const NAME: &'static str = "media SID";
}
impl SidKind for Account {
    const PREFIX: &'static str = "AC";
    const NAME: &'static str = "account SID";
}

pub type ServiceSid = Sid<Service>;
pub type MediaSid = Sid<MediaKind>;
pub type AccountSid = Sid<Account>;

/// A checked SID of kind `K`. Kept inline (34 ASCII bytes): every request parses one or two,
/// and copying them costs no allocation.
pub struct Sid<K> {
    text: [u8; LEN],
    kind: PhantomData<fn() -> K>,
}

const HEX_DIGITS: usize = 32;
/// Every prefix is two letters.
const LEN: usize = 2 + HEX_DIGITS;

impl<K: SidKind> Sid<K> {
    /// Accepts exactly `PREFIX` followed by 32 lowercase hex digits.
    pub fn parse(text: &str) -> Option<Self> {
        let digits = text.strip_prefix(K::PREFIX)?;
        // Every digit checked without a branch per byte (every request parses one or two).
        let well_formed = digits.len() == HEX_DIGITS
            && digits.bytes().fold(true, |ok, b| {
                ok & (b.is_ascii_digit() | (b'a'..=b'f').contains(&b))
            });
        if !well_formed {
            return None;
        }
        let text = text.as_bytes().try_into().ok()?;
        Some(Sid {
            text,
            kind: PhantomData,
        })
    }

    /// A fresh random SID of this kind.
    pub fn generate() -> Self {
        let mut bytes = [0u8; HEX_DIGITS / 2];
        rand::thread_rng().fill_bytes(&mut bytes);
        let text = format!("{}{}", K::PREFIX, hex::encode(bytes));
        Sid::parse(&text).unwrap_or_else(|| unreachable!("a generated SID is well formed"))
    }
}

impl<K> Sid<K> {
    pub fn as_str(&self) -> &str {
        // Not checked again: a cache hit asks for its SIDs six times (the key, the log), and
        // `from_utf8` spends about 120 instructions on each.
        // SAFETY: `text` is private and only `parse` sets it, to the bytes of a whole `&str`
        // (which it checked to be ASCII, too): valid UTF-8.
        unsafe { std::str::from_utf8_unchecked(&self.text) }
    }
}

impl<K> Clone for Sid<K> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<K> Copy for Sid<K> {}
impl<K> PartialEq for Sid<K> {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}
impl<K> Eq for Sid<K> {}
impl<K> Hash for Sid<K> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state)
    }
}
impl<K> PartialOrd for Sid<K> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<K> Ord for Sid<K> {
    fn cmp(&self, other: &Self) -> Ordering {
        self.text.cmp(&other.text)
    }
}
impl<K> fmt::Display for Sid<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
impl<K> fmt::Debug for Sid<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
impl<K> Serialize for Sid<K> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}
impl<'de, K: SidKind> Deserialize<'de> for Sid<K> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Sid::parse(&text).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "expected a {} like \"{}0123456789abcdef0123456789abcdef\", got \"{}\"",
                K::NAME,
                K::PREFIX,
                text
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_prefix_and_32_lowercase_hex() {
        assert!(ServiceSid::parse("IS0123456789abcdef0123456789abcdef").is_some());
        assert!(MediaSid::parse("ME0123456789abcdef0123456789abcdef").is_some());
    }

    #[test]
    fn refuses_wrong_prefix_case_length_or_digits() {
        for bad in [
            "ME0123456789abcdef0123456789abcdef",  // wrong kind
            "IS0123456789ABCDEF0123456789abcdef",  // upper case
            "IS0123456789abcdef0123456789abcde",   // 31 digits
            "IS0123456789abcdef0123456789abcdef0", // 33 digits
            "IS0123456789abcdef0123456789abcdeg",  // not hex
            "is0123456789abcdef0123456789abcdef",
            "",
            "IS",
        ] {
            assert!(ServiceSid::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn generated_sids_parse_and_differ() {
        let a = MediaSid::generate();
        let b = MediaSid::generate();
        assert!(MediaSid::parse(a.as_str()).is_some());
        assert_ne!(a, b);
    }
}
