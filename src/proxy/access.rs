//! Who may use the sidecar: bearer tokens from `access.tokens`, each limited to its services,
//! and `access.allow_unlisted_services`.

use std::collections::{HashMap, HashSet};

use sha2::{Digest, Sha256};

use super::reject::Rejection;
use crate::api::ServiceSid;
use crate::config::Config;

pub struct AccessControl {
    /// Token digest → the services it may touch (`None`: all). Looked up by digest so the
    /// comparison's timing says nothing about the tokens.
    tokens: HashMap<[u8; 32], Option<HashSet<ServiceSid>>>,
    listed_services: HashSet<ServiceSid>,
    allow_unlisted_services: bool,
}

impl AccessControl {
    pub fn new(config: &Config) -> AccessControl {
        let tokens = config
            .access
            .tokens
            .iter()
            .map(|t| {
                let services = t.services.as_ref().map(|s| s.iter().cloned().collect());
                (digest(t.token.expose().as_bytes()), services)
            })
            .collect();
        AccessControl {
            tokens,
            listed_services: config.services.keys().cloned().collect(),
            allow_unlisted_services: config.access.allow_unlisted_services,
        }
    }

    /// Whether a request with this `Authorization` value may touch `service`.
    pub fn check(
        &self,
        authorization: Option<&[u8]>,
        service: &ServiceSid,
    ) -> Result<(), Rejection> {
        if !self.tokens.is_empty() {
            let token = authorization
                .and_then(bearer_token)
                .ok_or_else(Rejection::unauthorized)?;
            let scope = self
                .tokens
                .get(&digest(token))
                .ok_or_else(Rejection::unauthorized)?;
            if scope
                .as_ref()
                .is_some_and(|services| !services.contains(service))
            {
                return Err(Rejection::forbidden_service());
            }
        }
        if !self.allow_unlisted_services && !self.listed_services.contains(service) {
            return Err(Rejection::forbidden_service());
        }
        Ok(())
    }
}

fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at_checked(7)?;
    scheme
        .eq_ignore_ascii_case(b"bearer ")
        .then(|| rest.trim_ascii())
        .filter(|t| !t.is_empty())
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "IS0123456789abcdef0123456789abcdef";
    const B: &str = "ISffffffffffffffffffffffffffffffff";

    fn control(extra: &str) -> AccessControl {
        let text = format!("credentials: {{username: u, password: p}}\n{extra}");
        AccessControl::new(&Config::from_yaml(&text, &|_| None).unwrap())
    }

    fn sid(text: &str) -> ServiceSid {
        ServiceSid::parse(text).unwrap()
    }

    fn reason(result: Result<(), Rejection>) -> Option<&'static str> {
        result.err().and_then(|r| r.reason).map(|r| r.label())
    }

    #[test]
    fn no_tokens_lets_everyone_in() {
        assert!(control("").check(None, &sid(A)).is_ok());
    }

    #[test]
    fn tokens_are_required_and_scoped() {
        let c = control(&format!(
            "access:\n  tokens:\n    - token: all\n    - token: only-a\n      services: [{A}]\n"
        ));
        assert_eq!(reason(c.check(None, &sid(A))), Some("unauthorized"));
        assert_eq!(
            reason(c.check(Some(b"Bearer wrong"), &sid(A))),
            Some("unauthorized")
        );
        assert_eq!(
            reason(c.check(Some(b"Basic YTpi"), &sid(A))),
            Some("unauthorized")
        );
        assert!(c.check(Some(b"Bearer all"), &sid(B)).is_ok());
        assert!(c.check(Some(b"bearer only-a"), &sid(A)).is_ok());
        assert_eq!(
            reason(c.check(Some(b"Bearer only-a"), &sid(B))),
            Some("forbidden_service")
        );
    }

    #[test]
    fn unlisted_services_can_be_refused() {
        let c = control(&format!(
            "access:\n  allow_unlisted_services: false\nservices:\n  {A}: {{}}\n"
        ));
        assert!(c.check(None, &sid(A)).is_ok());
        assert_eq!(reason(c.check(None, &sid(B))), Some("forbidden_service"));
    }
}
