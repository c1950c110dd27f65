//! The files operators deploy with: the Grafana dashboard and alert rules (they parse, and
//! every metric they query is one `/metrics` exports), the Kubernetes manifest (its mediagate
//! configuration is valid) and the Dockerfile's conventions.

mod support;

use std::collections::HashSet;

use serde::Deserialize;
use serde_json::Value as Json;
use serde_yaml::Value as Yaml;
use support::*;

fn read(path: &str) -> String {
    std::fs::read_to_string(format!("{}/{path}", env!("CARGO_MANIFEST_DIR")))
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The metric families a running proxy exports, with their types.
fn exported_families() -> Vec<(String, String)> {
    let proxy = Proxy::start(ProxyConfig::to(&format!(
        "http://127.0.0.1:{}",
        free_port()
    )));
    // `mediagate_requests_total` has series once a request has been answered.
    let (status, _) =
        mediagate::process::http_request(proxy.listen, "GET", "/", &[], &[]).expect("a request");
    assert_eq!(status, 404);
    proxy
        .metrics_text()
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .map(|(name, kind)| (name.to_string(), kind.to_string()))
        .collect()
}

/// The `mediagate_…` metric names an expression uses, with histogram series suffixes mapped to
/// their family.
fn metric_names(expr: &str, histograms: &HashSet<String>) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(start) = rest.find("mediagate_") {
        let tail = &rest[start..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| {
                name.strip_suffix(suffix)
                    .filter(|base| histograms.contains(*base))
            })
            .unwrap_or(name);
        names.push(family.to_string());
        rest = &tail[end..];
    }
    names
}

fn check_expressions(source: &str, exprs: &[String]) {
    let families = exported_families();
    let exported: HashSet<String> = families.iter().map(|(n, _)| n.clone()).collect();
    let histograms: HashSet<String> = families
        .iter()
        .filter(|(_, kind)| kind == "histogram")
        .map(|(n, _)| n.clone())
        .collect();
    assert!(!exprs.is_empty(), "{source}: no expressions");
    for expr in exprs {
        let names = metric_names(expr, &histograms);
        assert!(
            !names.is_empty(),
            "{source}: {expr} queries no mediagate metric"
        );
        for name in names {
            assert!(
                exported.contains(&name),
                "{source}: {name} (in {expr}) is not exported by /metrics"
            );
        }
    }
}

#[test]
fn the_dashboard_loads_and_queries_only_exported_metrics() {
    let dashboard: Json =
        serde_json::from_str(&read("config/grafana/mediagate.json")).expect("dashboard JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    let titles: Vec<String> = panels
        .iter()
        .map(|p| p["title"].as_str().unwrap_or("").to_lowercase())
        .collect();
    for topic in [
        "upload throughput",
        "requests by route and status",
        "p99",
        "rejections",
        "cache hit ratio",
        "in flight",
        "quota backend",
    ] {
        assert!(
            titles.iter().any(|t| t.contains(topic)),
            "no panel for {topic}: {titles:?}"
        );
    }
    let exprs: Vec<String> = panels
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["expr"].as_str().map(str::to_string))
        .collect();
    check_expressions("config/grafana/mediagate.json", &exprs);
}

#[test]
fn the_alert_rules_parse_and_query_only_exported_metrics() {
    let rules: Yaml =
        serde_yaml::from_str(&read("config/prometheus/alerts.yaml")).expect("alerts YAML");
    let rules: Vec<&Yaml> = rules["groups"]
        .as_sequence()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_sequence().expect("rules"))
        .collect();
    let names: Vec<&str> = rules.iter().filter_map(|r| r["alert"].as_str()).collect();
    for wanted in [
        "ErrorRatio",
        "LatencyP99",
        "QuotaBackendDown",
        "CacheHitRatioCollapse",
    ] {
        assert!(
            names.iter().any(|n| n.contains(wanted)),
            "no {wanted} alert: {names:?}"
        );
    }
    for rule in &rules {
        assert!(
            rule["for"].as_str().is_some() && rule["annotations"]["summary"].as_str().is_some(),
            "{rule:?}"
        );
    }
    let exprs: Vec<String> = rules
        .iter()
        .filter_map(|r| r["expr"].as_str().map(str::to_string))
        .collect();
    assert_eq!(exprs.len(), rules.len());
    check_expressions("config/prometheus/alerts.yaml", &exprs);
}

#[test]
fn the_kubernetes_manifest_carries_a_valid_configuration() {
    let text = read("config/kubernetes/sidecar.yaml");
    let documents: Vec<Yaml> = serde_yaml::Deserializer::from_str(&text)
        .map(|doc| Yaml::deserialize(doc).expect("a YAML document"))
        .collect();
    let kind = |k: &str| {
        documents
            .iter()
            .find(|d| d["kind"] == k)
            .unwrap_or_else(|| panic!("no {k}"))
    };

    let secret = kind("Secret");
    let env: Vec<(String, String)> = secret["stringData"]
        .as_mapping()
        .expect("secret data")
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().unwrap().to_string(),
                v.as_str().unwrap().to_string(),
            )
        })
        .collect();
    let config = kind("ConfigMap")["data"]["mediagate.yaml"]
        .as_str()
        .expect("mediagate.yaml");
    let parsed = mediagate::config::Config::from_yaml(config, &|name| {
        env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    });
    let parsed = parsed.unwrap_or_else(|e| panic!("the ConfigMap's configuration: {e}"));
    assert_eq!(parsed.server.listen.to_string(), "127.0.0.1:8080");

    let pod = kind("Pod");
    let annotations = &pod["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert_eq!(
        annotations["prometheus.io/port"],
        parsed.server.metrics_listen.port().to_string().as_str()
    );
    let containers = pod["spec"]["containers"].as_sequence().expect("containers");
    assert_eq!(containers.len(), 2);
    let sidecar = containers
        .iter()
        .find(|c| c["name"] == "mediagate")
        .expect("the mediagate container");
    assert_eq!(
        sidecar["envFrom"][0]["secretRef"]["name"],
        secret["metadata"]["name"]
    );
    assert_eq!(sidecar["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(sidecar["livenessProbe"]["httpGet"]["path"], "/healthz");
}

#[test]
fn the_dockerfile_follows_its_conventions() {
    // Images cannot be built on these machines; this keeps the Dockerfile's promises in view.
    let dockerfile = read("Dockerfile");
    assert_eq!(
        dockerfile
            .lines()
            .filter(|l| l.starts_with("FROM "))
            .count(),
        2,
        "multi-stage"
    );
    assert!(dockerfile
        .lines()
        .any(|l| l.starts_with("USER ") && !l.contains("root")));
    assert!(dockerfile.contains("EXPOSE 8080 9108"));
    // The image's configuration listens where EXPOSE says: its build rewrites these lines of the
    // reference configuration.
    let reference = read("config/mediagate.yaml");
    for line in [
        "  listen: 127.0.0.1:8080",
        "  metrics_listen: 127.0.0.1:9108",
    ] {
        assert!(reference.lines().any(|l| l.starts_with(line)), "{line}");
        let pattern = format!("s/^{}/", line.replace('.', "\\."));
        assert!(dockerfile.contains(&pattern), "{pattern}");
    }
    assert!(dockerfile.contains("HEALTHCHECK") && dockerfile.contains("/healthz"));
    // The image ships the build the load comparison measures.
    assert!(dockerfile.contains("RUN scripts/build-production"));
    assert!(dockerfile.contains("/src/target/pgo/mediagate"));
    let compare = read("benches/load/compare.sh");
    assert!(compare.contains("\nscripts/build-production\n"));
    assert!(compare.contains("BIN=$ROOT/target/pgo/mediagate"));
    let build = read("scripts/build-production");
    assert!(build.contains("--profile production") && build.contains("target/pgo/mediagate"));
}
