//! Configuration loading: `Config::from_yaml` on any text, and what `mediagate check` prints.
//!
//! Input: the YAML text. `${NAME}` references are answered from a fixed table (the variables
//! the shipped configs use); any other name is "not set".
//!
//! Checks:
//! - any text gives `Ok` or an `Err` with a message, never a panic;
//! - a loaded config prints (`to_redacted_yaml`, what `mediagate check` shows) with every secret
//!   as `***`: the credentials' passwords, the access tokens, a Redis URL's password;
//! - what is printed is itself a valid configuration, and loading it and printing it again
//!   gives the same text (sizes, durations, addresses and URLs round-trip).
#![no_main]

use libfuzzer_sys::fuzz_target;
use mediagate::config::{Config, QuotaBackend, REDACTED};
use serde_yaml::Value;

fn lookup(name: &str) -> Option<String> {
    Some(
        match name {
            "MEDIAGATE_DEMO_LISTEN" => "127.0.0.1:18080",
            "MEDIAGATE_DEMO_METRICS_LISTEN" => "127.0.0.1:19108",
            "MEDIAGATE_DEMO_UPSTREAM" => "http://127.0.0.1:18090",
            "MEDIAGATE_DEMO_AUTH_TOKEN" => "demo-token-from-env",
            "TWILIO_API_KEY_SID" => "SK0123456789abcdef0123456789abcdef",
            "TWILIO_API_SECRET" => "twilio-secret-from-env",
            "CHAT_SERVER_TOKEN" => "chat-token-from-env",
            "OTHER_SECRET" => "other-secret-from-env",
            "EMPTY" => "",
            _ => return None,
        }
        .to_string(),
    )
}

/// Whether any mapping key ends in `_file`.
fn names_a_file(value: &Value) -> bool {
    match value {
        Value::Mapping(map) => map
            .iter()
            .any(|(k, v)| names_a_file_key(k) || names_a_file(v)),
        Value::Sequence(items) => items.iter().any(names_a_file),
        Value::Tagged(tagged) => names_a_file(&tagged.value),
        _ => false,
    }
}

fn names_a_file_key(key: &Value) -> bool {
    match key {
        Value::String(k) => k.ends_with("_file"),
        Value::Tagged(tagged) => names_a_file_key(&tagged.value),
        other => names_a_file(other),
    }
}

fn get<'a>(value: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(value, |v, key| v.get(*key))
}

fn assert_redacted(printed: &Value, path: &[&str]) {
    if let Some(v) = get(printed, path) {
        assert_eq!(v.as_str(), Some(REDACTED), "{path:?} printed as {v:?}");
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // `password_file` and `ca_file` read the file system; a fuzzer naming /dev/zero or a FIFO
    // would only find that reading such a file does not end. Those keys are left out.
    if serde_yaml::from_str::<Value>(text).is_ok_and(|v| names_a_file(&v)) {
        return;
    }
    let config = match Config::from_yaml(text, &lookup) {
        Ok(config) => config,
        Err(e) => {
            assert!(!e.0.is_empty(), "an empty error message");
            return;
        }
    };

    let printed_text = config.to_redacted_yaml();
    assert!(
        !printed_text.starts_with("# cannot print"),
        "{printed_text}"
    );
    let printed: Value = serde_yaml::from_str(&printed_text)
        .unwrap_or_else(|e| panic!("the printed config is not YAML ({e}):\n{printed_text}"));

    assert_redacted(&printed, &["credentials", "password"]);
    if let Some(tokens) = get(&printed, &["access", "tokens"]).and_then(Value::as_sequence) {
        assert_eq!(tokens.len(), config.access.tokens.len());
        for token in tokens {
            assert_redacted(token, &["token"]);
        }
    }
    if let Some(services) = get(&printed, &["services"]).and_then(Value::as_mapping) {
        for service in services.values() {
            assert_redacted(service, &["credentials", "password"]);
        }
    }
    if let QuotaBackend::Redis(url) = &config.quotas.backend {
        let shown = get(&printed, &["quotas", "backend"])
            .and_then(Value::as_str)
            .unwrap();
        // The user info as a URL parser reads it: up to the last `@` of the authority.
        let after_scheme = &url[url.find("://").unwrap() + 3..];
        let authority = after_scheme
            .split(['/', '?', '#'])
            .next()
            .unwrap_or_default();
        if let Some(at) = authority.rfind('@') {
            let userinfo = &authority[..at];
            assert!(
                userinfo.len() < 4 || userinfo == REDACTED || !shown.contains(userinfo),
                "the Redis URL's user info is printed: {shown}"
            );
        }
    }

    // What is printed loads again, to the same configuration.
    let reloaded = Config::from_yaml(&printed_text, &lookup).unwrap_or_else(|e| {
        panic!("the printed config does not load: {e}\n--- input:\n{text}\n--- printed:\n{printed_text}")
    });
    assert_eq!(
        reloaded.to_redacted_yaml(),
        printed_text,
        "printing is not stable\n--- input:\n{text}"
    );
});
