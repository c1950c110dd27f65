//! HTTP Basic as the Media API checks it: Account SID (or API key) and secret.

use base64::Engine;
use sha2::{Digest, Sha256};

/// The account the origin accepts; without one, every request is let in.
pub struct Account {
    pub sid: String,
    token_digest: Option<[u8; 32]>,
}

impl Account {
    pub fn new(sid: String, token: Option<&str>) -> Account {
        Account {
            sid,
            token_digest: token.map(digest),
        }
    }

    /// Whether the `Authorization` header carries this account's credentials.
    pub fn admits(&self, authorization: Option<&str>) -> bool {
        let Some(expected) = &self.token_digest else {
            return true;
        };
        let Some((user, password)) = authorization.and_then(decode_basic) else {
            return false;
        };
        // Comparing digests keeps the comparison's timing independent of the secret.
        user == self.sid && &digest(&password) == expected
    }
}

fn digest(text: &str) -> [u8; 32] {
    Sha256::digest(text.as_bytes()).into()
}

fn decode_basic(value: &str) -> Option<(String, String)> {
    let (scheme, encoded) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

/// The user name of a Basic `Authorization` value, for the journal (never the password).
pub fn basic_user(value: &str) -> Option<String> {
    decode_basic(value).map(|(user, _)| user)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(user: &str, password: &str) -> String {
        let raw = format!("{user}:{password}");
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(raw)
        )
    }

    #[test]
    fn admits_only_the_account() {
        let account = Account::new("ACx".into(), Some("tok"));
        assert!(account.admits(Some(&basic("ACx", "tok"))));
        assert!(!account.admits(Some(&basic("ACx", "nope"))));
        assert!(!account.admits(Some(&basic("ACy", "tok"))));
        assert!(!account.admits(Some("Bearer tok")));
        assert!(!account.admits(None));
        assert!(Account::new("ACx".into(), None).admits(None));
    }
}
