//! The credentials the sidecar injects: HTTP Basic from `credentials`, or a service's own. The
//! client's credentials never go upstream.

use std::collections::HashMap;

use base64::Engine;
use http::HeaderValue;
use pingora::http::RequestHeader;

use crate::api::ServiceSid;
use crate::config::{Config, Credentials};

/// Headers through which a client could carry credentials of its own.
const CLIENT_CREDENTIAL_HEADERS: [&str; 3] =
    ["authorization", "proxy-authorization", "x-twilio-token"];

pub struct Injector {
    default: HeaderValue,
    per_service: HashMap<ServiceSid, HeaderValue>,
}

impl Injector {
    /// Encodes every Authorization value once, at start.
    pub fn new(config: &Config) -> Result<Injector, String> {
        let per_service = config
            .services
            .iter()
            .filter_map(|(sid, s)| s.credentials.as_ref().map(|c| (sid, c)))
            .map(|(sid, c)| Ok((*sid, basic(c, &format!("services.{sid}.credentials"))?)))
            .collect::<Result<_, String>>()?;
        Ok(Injector {
            default: basic(&config.credentials, "credentials")?,
            per_service,
        })
    }

    /// Replaces whatever credentials the client sent with the service's Basic credentials.
    pub fn apply(&self, request: &mut RequestHeader, service: &ServiceSid) {
        strip(request);
        let value = self.per_service.get(service).unwrap_or(&self.default);
        // Inserting a known-valid header value into a request header cannot fail.
        let _ = request.insert_header(http::header::AUTHORIZATION, value.clone());
    }
}

/// Removes every credential the client may have sent.
fn strip(request: &mut RequestHeader) {
    for name in CLIENT_CREDENTIAL_HEADERS {
        request.remove_header(name);
    }
}

fn basic(credentials: &Credentials, key: &str) -> Result<HeaderValue, String> {
    let password = credentials
        .password()
        .ok_or_else(|| format!("{key}: no password"))?;
    let raw = format!("{}:{}", credentials.username, password.expose());
    let encoded = base64::engine::general_purpose::STANDARD.encode(raw);
    let mut value = HeaderValue::try_from(format!("Basic {encoded}"))
        .map_err(|_| format!("{key}: cannot be sent as a header"))?;
    // Keeps the value out of any Debug output of the header map.
    value.set_sensitive(true);
    Ok(value)
}
