use super::*;
use crate::api::ServiceSid;
use std::time::Duration;

const MINIMAL: &str =
    "credentials:\n  username: AC0123456789abcdef0123456789abcdef\n  password: hunter2\n";

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::from_yaml(text, &|name| match name {
        "TWILIO_API_SECRET" => Some("from-env".to_string()),
        _ => None,
    })
}

fn error(text: &str) -> String {
    match parse(text) {
        Ok(_) => panic!("expected an error for:\n{text}"),
        Err(ConfigError(e)) => e,
    }
}

#[test]
fn minimal_config_takes_the_documented_defaults() {
    let config = parse(MINIMAL).unwrap();
    assert_eq!(config.server.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(config.server.metrics_listen.to_string(), "127.0.0.1:9108");
    assert_eq!(config.server.threads, 2);
    assert_eq!(
        config.upstream.url.to_string(),
        "https://mcs.us1.twilio.com"
    );
    assert_eq!(config.uploads.max_size, ByteSize(157_286_400));
    assert_eq!(config.cache.content_ttl, HumanDuration::secs(86_400));
    assert!(config.access.allow_unlisted_services);
    assert_eq!(config.quotas.backend, QuotaBackend::Memory);
    assert_eq!(
        config.server.upgrade_sock.to_str(),
        Some("/tmp/mediagate-upgrade.sock")
    );
}

#[test]
fn upgrade_sock_must_be_an_absolute_socket_path() {
    let config = parse(&format!(
        "{MINIMAL}server:\n  upgrade_sock: /run/mediagate/upgrade.sock\n"
    ))
    .unwrap();
    assert_eq!(
        config.server.upgrade_sock.to_str(),
        Some("/run/mediagate/upgrade.sock")
    );
    let e = error(&format!("{MINIMAL}server:\n  upgrade_sock: upgrade.sock\n"));
    assert_eq!(
        e,
        r#"server.upgrade_sock: expected an absolute path like "/run/mediagate/upgrade.sock", got "upgrade.sock""#
    );
    let e = error(&format!(
        "{MINIMAL}server:\n  upgrade_sock: /run/mediagate/\n"
    ));
    assert!(e.contains("not a directory"), "{e}");
    let long = format!("/{}", "d".repeat(120));
    let e = error(&format!("{MINIMAL}server:\n  upgrade_sock: {long}\n"));
    assert!(e.contains("at most 107 bytes"), "{e}");
}

#[test]
fn busy_poll_is_off_by_default_and_bounded() {
    let config = parse(MINIMAL).unwrap();
    assert!(config.server.busy_poll.get().is_zero());
    let config = parse(&format!("{MINIMAL}server:\n  busy_poll: 200us\n")).unwrap();
    assert_eq!(config.server.busy_poll.get(), Duration::from_micros(200));
    let e = error(&format!("{MINIMAL}server:\n  busy_poll: 20ms\n"));
    assert!(
        e.starts_with("server.busy_poll: must be at most 10ms"),
        "{e}"
    );
}

#[test]
fn keepalive_timeout_is_a_minute_by_default_and_zero_turns_it_off() {
    let config = parse(MINIMAL).unwrap();
    assert_eq!(
        config.server.keepalive_timeout.get(),
        Duration::from_secs(60)
    );
    let config = parse(&format!("{MINIMAL}server:\n  keepalive_timeout: 0s\n")).unwrap();
    assert!(config.server.keepalive_timeout.get().is_zero());
}

#[test]
fn send_timeout_is_a_minute_by_default_and_zero_turns_it_off() {
    let config = parse(MINIMAL).unwrap();
    assert_eq!(config.server.send_timeout.get(), Duration::from_secs(60));
    let config = parse(&format!("{MINIMAL}server:\n  send_timeout: 0s\n")).unwrap();
    assert!(config.server.send_timeout.get().is_zero());
    let e = error(&format!("{MINIMAL}server:\n  send_timeout: soon\n"));
    assert!(e.starts_with("server.send_timeout: "), "{e}");
}

#[test]
fn unknown_key_is_named_with_its_path() {
    let e = error(&format!("{MINIMAL}server:\n  listn: 127.0.0.1:1\n"));
    assert!(e.starts_with("server.listn: unknown field `listn`"), "{e}");
    let e = error(&format!("{MINIMAL}cahce: {{}}\n"));
    assert!(e.contains("unknown field `cahce`"), "{e}");
}

#[test]
fn bad_size_names_key_and_value() {
    let e = error(&format!("{MINIMAL}quotas:\n  bytes_per_hour: lots\n"));
    assert_eq!(
        e,
        r#"quotas.bytes_per_hour: expected a size like "10GiB", got "lots""#
    );
}

#[test]
fn bad_duration_and_address_name_their_keys() {
    let e = error(&format!("{MINIMAL}upstream:\n  read_timeout: 60\n"));
    assert!(
        e.starts_with("upstream.read_timeout: expected a duration"),
        "{e}"
    );
    let e = error(&format!("{MINIMAL}server:\n  listen: localhost\n"));
    assert!(e.starts_with("server.listen: expected an address"), "{e}");
    let e = error(&format!("{MINIMAL}upstream:\n  url: ftp://x\n"));
    assert!(e.starts_with("upstream.url: expected a URL"), "{e}");
}

#[test]
fn env_references_expand_and_missing_ones_are_named() {
    let config = parse(
        "credentials:\n  username: AC0123456789abcdef0123456789abcdef\n  password: ${TWILIO_API_SECRET}\n",
    )
    .unwrap();
    assert_eq!(
        config.credentials.password().map(Secret::expose),
        Some("from-env")
    );
    let e = error("credentials:\n  username: ${TWILIO_API_KEY_SID}\n  password: x\n");
    assert_eq!(
        e,
        "credentials.username: environment variable TWILIO_API_KEY_SID is not set"
    );
}

#[test]
fn credentials_need_exactly_one_password_source() {
    assert!(error("credentials:\n  username: u\n").contains("expected password or password_file"));
    let e = error("credentials:\n  username: u\n  password: a\n  password_file: /x\n");
    assert!(e.contains("not both"), "{e}");
    let e = error("credentials:\n  username: u\n  password_file: /nonexistent/secret\n");
    assert!(
        e.starts_with("credentials.password_file: cannot read /nonexistent/secret"),
        "{e}"
    );
    assert!(error("server: {}\n").contains("missing field `credentials`"));
}

#[test]
fn password_file_first_line_is_trimmed() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("secret");
    std::fs::write(&file, "  s3cret  \nsecond line\n").unwrap();
    let text = format!(
        "credentials:\n  username: u\n  password_file: {}\n",
        file.display()
    );
    let config = parse(&text).unwrap();
    assert_eq!(
        config.credentials.password().map(Secret::expose),
        Some("s3cret")
    );
    // Printed, it names the file and no password, and loads back as it was given.
    let shown = config.to_redacted_yaml();
    assert!(shown.contains("password_file:"), "{shown}");
    assert!(!shown.contains("password:"), "{shown}");
    let again = parse(&shown).unwrap();
    assert_eq!(
        again.credentials.password().map(Secret::expose),
        Some("s3cret")
    );
}

#[test]
fn redacted_yaml_hides_every_secret() {
    let text = format!(
        "{MINIMAL}access:\n  tokens:\n    - token: tok-abc\nquotas:\n  backend: redis://user:pw-xyz@127.0.0.1:6379/0\nservices:\n  IS0123456789abcdef0123456789abcdef:\n    credentials: {{username: SKx, password: other-pass}}\n"
    );
    let shown = parse(&text).unwrap().to_redacted_yaml();
    for secret in ["hunter2", "tok-abc", "pw-xyz", "other-pass"] {
        assert!(!shown.contains(secret), "{secret} leaked:\n{shown}");
    }
    assert!(shown.contains("***"));
    // What is printed is itself a valid configuration shape.
    assert!(shown.contains("listen: 127.0.0.1:8080"));
}

#[test]
fn service_overrides_apply_key_by_key() {
    let text = format!(
        "{MINIMAL}services:\n  IS0123456789abcdef0123456789abcdef:\n    uploads: {{max_size: 20MiB}}\n    quotas: {{concurrent_uploads: 2}}\n"
    );
    let config = parse(&text).unwrap();
    let listed = ServiceSid::parse("IS0123456789abcdef0123456789abcdef").unwrap();
    let other = ServiceSid::parse("ISffffffffffffffffffffffffffffffff").unwrap();
    let uploads = config.uploads_for(&listed);
    assert_eq!(uploads.max_size, ByteSize::mib(20));
    assert_eq!(uploads.allowed_types, config.uploads.allowed_types);
    assert_eq!(config.quotas_for(&listed).concurrent_uploads, 2);
    assert_eq!(config.uploads_for(&other).max_size, ByteSize::mib(150));
    assert_eq!(
        config.credentials_for(&listed).username,
        config.credentials.username
    );
}

#[test]
fn service_keys_must_be_service_sids() {
    let e = error(&format!("{MINIMAL}services:\n  ISbad: {{}}\n"));
    assert!(e.contains("expected a service SID"), "{e}");
}

#[test]
fn bad_mime_patterns_are_refused() {
    let e = error(&format!("{MINIMAL}uploads:\n  allowed_types: [images]\n"));
    assert!(
        e.starts_with("uploads.allowed_types[0]: expected a MIME type"),
        "{e}"
    );
}

#[test]
fn errors_never_show_a_secret() {
    const SECRET: &str = "zq-sekrit-77";
    let lookup = |name: &str| (name == "SECRET").then(|| SECRET.to_string());
    let from_env = [
        // A token where a `- token:` entry belongs: serde would quote the string.
        format!("{MINIMAL}access:\n  tokens:\n    - ${{SECRET}}\n"),
        format!("{MINIMAL}upstream:\n  url: https://user:${{SECRET}}@mcs.us1.twilio.com\n"),
        format!("{MINIMAL}upstream:\n  url: \"${{SECRET}}\"\n"),
        format!("{MINIMAL}server:\n  threads: ${{SECRET}}\n"),
        format!("{MINIMAL}quotas:\n  on_backend_error: ${{SECRET}}\n"),
    ];
    let literal = [
        format!("{MINIMAL}upstream:\n  url: https://user:{SECRET}@mcs.us1.twilio.com\n"),
        format!("{MINIMAL}upstream:\n  url: https://mcs.us1.twilio.com/?key={SECRET}\n"),
        format!("{MINIMAL}quotas:\n  backend: redis//:{SECRET}@127.0.0.1\n"),
        format!("{MINIMAL}access:\n  tokens:\n    - {SECRET}\n"),
        format!("credentials:\n  username: AC0123456789abcdef0123456789abcdef\n  password: \"{SECRET}${{x\"\n"),
        "credentials:\n  username: AC0123456789abcdef0123456789abcdef\n  password: 73519246\n"
            .to_string(),
    ];
    for yaml in from_env.iter().chain(&literal) {
        let Err(ConfigError(e)) = Config::from_yaml(yaml, &lookup) else {
            panic!("expected an error for:\n{yaml}");
        };
        assert!(
            !e.contains("sekrit") && !e.contains("73519246"),
            "{e}\nfor:\n{yaml}"
        );
        // Still the key it is about.
        assert!(e.contains('.') && e.contains(':'), "{e}");
    }
    // A value of the wrong type is named by its type; one quoted in a message is shown as
    // the reference it came from.
    let e = Config::from_yaml(&from_env[0], &lookup).unwrap_err().0;
    assert_eq!(
        e,
        "access.tokens[0]: invalid type: string, expected struct AccessToken"
    );
    let size = format!("{MINIMAL}quotas:\n  bytes_per_hour: ${{SECRET}}\n");
    assert_eq!(
        Config::from_yaml(&size, &lookup).unwrap_err().0,
        r#"quotas.bytes_per_hour: expected a size like "10GiB", got "${SECRET}""#
    );
    let e = Config::from_yaml(&from_env[3], &lookup).unwrap_err().0;
    assert!(e.starts_with("server.threads: invalid type: string"), "{e}");
}

#[test]
fn settings_that_would_refuse_every_request_are_refused() {
    for (key, yaml) in [
        ("server.max_connections", "server:\n  max_connections: 0\n"),
        ("server.head_timeout", "server:\n  head_timeout: 0s\n"),
        ("server.max_head_size", "server:\n  max_head_size: 0\n"),
        ("server.max_headers", "server:\n  max_headers: 0\n"),
        (
            "upstream.connect_timeout",
            "upstream:\n  connect_timeout: 0s\n",
        ),
        ("upstream.read_timeout", "upstream:\n  read_timeout: 0ms\n"),
        // pingora sizes a table by it at start.
        (
            "upstream.keepalive_pool",
            "upstream:\n  keepalive_pool: 10000000000\n",
        ),
    ] {
        let e = error(&format!("{MINIMAL}{yaml}"));
        assert!(e.starts_with(&format!("{key}: must be")), "{e}");
    }
    // 0 keeps no connection for reuse (pingora drops each as it is released).
    for pool in [0, 65536] {
        let config = parse(&format!("{MINIMAL}upstream:\n  keepalive_pool: {pool}\n")).unwrap();
        assert_eq!(config.upstream.keepalive_pool, pool);
    }
}

#[test]
fn max_object_fits_in_the_room_content_fills_may_hold() {
    // 15/16 of 1 MiB: 960 KiB.
    let e = error(&format!(
        "{MINIMAL}cache:\n  memory: 1MiB\n  max_object: 961KiB\n"
    ));
    assert!(
        e.starts_with("cache.max_object: must not exceed 15/16"),
        "{e}"
    );
    assert!(parse(&format!(
        "{MINIMAL}cache:\n  memory: 1MiB\n  max_object: 960KiB\n"
    ))
    .is_ok());
}

#[test]
fn retries_are_bounded() {
    let retry = |block: &str| format!("{MINIMAL}uploads:\n  retry:\n{block}");
    let e = error(&retry("    attempts: 6\n"));
    assert!(
        e.starts_with("uploads.retry.attempts: must be at most 5"),
        "{e}"
    );
    let e = error(&retry("    attempts: 2\n    backoff: 11s\n"));
    assert!(
        e.starts_with("uploads.retry.backoff: must be at most 10s"),
        "{e}"
    );
    assert!(parse(&retry("    attempts: 5\n    backoff: 10s\n")).is_ok());
}

#[test]
fn tokens_a_client_could_never_send_are_refused() {
    let tokens = |list: &str| format!("{MINIMAL}access:\n  tokens:\n{list}");
    let e = error(&tokens("    - token: \"abc\\n\"\n"));
    assert!(
        e.starts_with("access.tokens[0].token: has blank space"),
        "{e}"
    );
    assert!(!e.contains("abc"), "the token is not shown: {e}");
    let e = error(&tokens(
        "    - token: abc\n    - token: abc\n      services: []\n",
    ));
    assert!(
        e.starts_with("access.tokens[1].token: is listed twice"),
        "{e}"
    );
    assert!(parse(&tokens("    - token: abc\n    - token: abd\n")).is_ok());
}

#[test]
fn mistakes_that_would_only_show_at_the_first_request_are_refused() {
    const CREDS: &str = "credentials:\n  username: AC0123456789abcdef0123456789abcdef\n";
    // A port that is not a number would have become the default one.
    for port in ["84430", "8o90", "0x50"] {
        let e = error(&format!(
            "{MINIMAL}upstream:\n  url: https://api.example:{port}\n"
        ));
        assert!(e.starts_with("upstream.url:"), "{port}: {e}");
    }
    for (url, port) in [
        ("https://[::1]:8443", 8443),
        ("http://api.example:8080/", 8080),
    ] {
        let config = parse(&format!("{MINIMAL}upstream:\n  url: {url}\n")).unwrap();
        assert_eq!(config.upstream.url.port, port, "{url}");
    }
    let e = error(&format!("{MINIMAL}upstream:\n  url: https://[::1]:99999\n"));
    assert!(e.starts_with("upstream.url:"), "{e}");
    // A password the upstream would refuse every time.
    for password in ["\"\"", "\"hunter2\\n\"", "\" hunter2\""] {
        let e = error(&format!("{CREDS}  password: {password}\n"));
        assert!(e.starts_with("credentials.password:"), "{password}: {e}");
        assert!(!e.contains("hunter2"), "{e}");
    }
    let e = error("credentials:\n  username: \"AC0123456789abcdef0123456789abcdef\\n\"\n  password: hunter2\n");
    assert!(
        e.starts_with("credentials.username: has blank space"),
        "{e}"
    );
    // Redis URLs the client library would refuse at start.
    let e = error(&format!(
        "{MINIMAL}quotas:\n  backend: rediss://:pw@cache:6380/0\n"
    ));
    assert!(e.starts_with("quotas.backend:"), "{e}");
    assert!(!e.contains("pw"), "{e}");
    let e = error(&format!(
        "{MINIMAL}quotas:\n  backend: redis://:pw@cache/notadb\n"
    ));
    assert!(e.starts_with("quotas.backend:"), "{e}");
    assert!(!e.contains(":pw@"), "{e}");
    // Two listeners on one port, where one is on every address.
    let e = error(&format!(
        "{MINIMAL}server:\n  listen: 0.0.0.0:8080\n  metrics_listen: 127.0.0.1:8080\n"
    ));
    assert!(e.starts_with("server.metrics_listen:"), "{e}");
    assert!(parse(&format!(
        "{MINIMAL}server:\n  listen: 0.0.0.0:8080\n  metrics_listen: 127.0.0.1:9108\n"
    ))
    .is_ok());
}

#[test]
fn an_open_listener_without_tokens_is_warned_about() {
    let open = parse(&format!("{MINIMAL}server:\n  listen: 0.0.0.0:8080\n")).unwrap();
    let warnings = open.warnings();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].starts_with("server.listen: 0.0.0.0:8080 is not a loopback address"));
    let with_tokens = parse(&format!(
        "{MINIMAL}server:\n  listen: 0.0.0.0:8080\naccess:\n  tokens:\n    - token: t0k3n\n"
    ))
    .unwrap();
    assert!(with_tokens.warnings().is_empty());
    assert!(parse(MINIMAL).unwrap().warnings().is_empty());
}

#[test]
fn listeners_on_other_families_do_not_collide() {
    for (listen, metrics) in [
        ("0.0.0.0:8080", "[::1]:8080"),
        ("127.0.0.1:8080", "[::1]:8080"),
    ] {
        let yaml =
            format!("{MINIMAL}server:\n  listen: {listen}\n  metrics_listen: \"{metrics}\"\n");
        assert!(parse(&yaml).is_ok(), "{listen} {metrics}");
    }
    let e = error(&format!(
        "{MINIMAL}server:\n  listen: \"[::]:8080\"\n  metrics_listen: 127.0.0.1:8080\n"
    ));
    assert!(e.starts_with("server.metrics_listen:"), "{e}");
}
