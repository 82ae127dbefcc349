//! What operators read must match what the code does: every variable the code reads is in the
//! README, and the README, the manifests and the compose file name no variable it does not.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use omnichat_bridge::config::{Settings, variables};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every `BRIDGE_...` name in a text.
fn bridge_variables(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for (start, _) in text.match_indices("BRIDGE_") {
        let name: String = text[start..]
            .chars()
            .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        if !name.ends_with('_') {
            names.insert(name);
        }
    }
    names
}

/// What the code reads: the declared variables.
fn code_variables() -> BTreeSet<String> {
    variables::ALL.iter().map(|v| v.name.to_owned()).collect()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("dir").flatten() {
        let path = entry.path();
        if path.is_dir() {
            files_under(&path, out);
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(path);
        }
    }
}

#[test]
fn the_readme_documents_exactly_the_variables_the_code_reads() {
    let code = code_variables();
    assert!(
        code.contains("BRIDGE_SPOOL_DIR") && code.contains("BRIDGE_LISTEN_ADDR"),
        "{code:?}"
    );
    let readme = bridge_variables(&read(&root().join("README.md")));
    let undocumented: Vec<_> = code.difference(&readme).collect();
    let unknown: Vec<_> = readme.difference(&code).collect();
    assert!(
        undocumented.is_empty(),
        "read by the code, missing from the README: {undocumented:?}"
    );
    assert!(
        unknown.is_empty(),
        "in the README, never read by the code: {unknown:?}"
    );
    assert!(read(&root().join("README.md")).contains("KAFKA_BOOTSTRAP_SERVERS"));
}

#[test]
fn manifests_and_compose_name_only_variables_the_code_reads() {
    let code = code_variables();
    let mut files = vec![root().join("docker-compose.yml")];
    files_under(&root().join("deploy"), &mut files);
    assert!(files.len() > 5, "{files:?}");
    for file in files {
        let named = bridge_variables(&read(&file));
        let unknown: Vec<_> = named.difference(&code).collect();
        assert!(
            unknown.is_empty(),
            "{} names variables the code never reads: {unknown:?}",
            file.display()
        );
    }
}

#[test]
fn the_shutdown_budget_fits_in_the_grace_period() {
    let deployment = read(&root().join("deploy/base/deployment.yaml"));
    let config = read(&root().join("deploy/base/kustomization.yaml"));
    let number_after = |text: &str, key: &str| -> u64 {
        let rest = &text[text.find(key).unwrap_or_else(|| panic!("{key}")) + key.len()..];
        rest.chars()
            .skip_while(|c| !c.is_ascii_digit())
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse()
            .expect("number")
    };
    let grace_secs = number_after(&deployment, "terminationGracePeriodSeconds:");
    let timeout_ms = number_after(&config, "BRIDGE_SHUTDOWN_TIMEOUT_MS=");
    let delay_ms = number_after(&config, "BRIDGE_SHUTDOWN_DELAY_MS=");
    assert!(delay_ms < timeout_ms);
    assert!(
        timeout_ms < grace_secs * 1000,
        "the kubelet would kill a draining pod"
    );
}

#[test]
fn the_readme_states_each_variables_default_as_declared() {
    let readme = read(&root().join("README.md"));
    for variable in variables::ALL {
        let row = readme
            .lines()
            .find(|line| line.starts_with(&format!("| `{}` |", variable.name)))
            .unwrap_or_else(|| panic!("no README row for {}", variable.name));
        let default = row.split('|').nth(2).unwrap_or_default().trim();
        let declared = match variable.default {
            "" => default.is_empty() || default.starts_with('('),
            value => default == format!("`{value}`"),
        };
        assert!(
            declared,
            "{}: the README says {default:?}, the code {:?}",
            variable.name, variable.default
        );
    }
}

#[test]
fn every_declared_setting_is_read_and_none_is_unknown_to_itself() {
    // Setting every declared variable to its default (or a valid value) gives no warning: the
    // bridge never calls its own settings unknown.
    let mut vars: Vec<(String, String)> = variables::ALL
        .iter()
        .filter(|v| !v.default.is_empty())
        .map(|v| (v.name.to_owned(), v.default.to_owned()))
        .collect();
    vars.extend([
        (
            "BRIDGE_AUTH_TOKENS".to_owned(),
            "0123456789abcdef0123".to_owned(),
        ),
        (
            "BRIDGE_SPOOL_DIR".to_owned(),
            "/var/spool/bridge".to_owned(),
        ),
        ("BRIDGE_ACK_MODE".to_owned(), "spool".to_owned()),
        ("KAFKA_BOOTSTRAP_SERVERS".to_owned(), "k:9092".to_owned()),
    ]);
    let settings = Settings::from_vars(vars).expect("defaults are valid");
    assert!(
        settings.unknown_variables.is_empty(),
        "{:?}",
        settings.unknown_variables
    );
    let shown: BTreeSet<String> = settings.effective().into_iter().map(|(k, _)| k).collect();
    for variable in variables::ALL {
        assert!(
            shown.contains(variable.name),
            "{} is not in the effective settings",
            variable.name
        );
    }
}

#[test]
fn the_spool_statefulset_runs_the_same_pod_as_the_deployment() {
    // Kustomize cannot turn a Deployment into a StatefulSet, so the spool overlay repeats the
    // pod template; it may add (the volume), never drop or change.
    let pod = |path: &str| -> Vec<String> {
        let text = read(&root().join(path));
        let start = text.find("\n    spec:\n").expect("a pod template");
        text[start..]
            .lines()
            .filter(|line| !line.trim().is_empty())
            .map(str::to_owned)
            .collect()
    };
    let deployment = pod("deploy/base/deployment.yaml");
    let mut statefulset = pod("deploy/overlays/spool/statefulset.yaml").into_iter();
    for line in &deployment {
        assert!(
            statefulset.any(|l| &l == line),
            "deploy/overlays/spool/statefulset.yaml lacks (or reorders) the Deployment's `{}`",
            line.trim()
        );
    }
}

/// The largest body whose record fits `message.max.bytes` (librdkafka's default, 1,000,000),
/// counted the way the door counts it.
fn largest_stored(record_size: impl Fn(usize) -> usize) -> usize {
    let (mut fits, mut too_large) = (0, 1_000_000);
    while too_large - fits > 1 {
        let middle = (fits + too_large) / 2;
        if record_size(middle) <= 1_000_000 {
            fits = middle;
        } else {
            too_large = middle;
        }
    }
    fits
}

#[test]
fn the_readme_states_the_largest_bodies_stored_with_the_defaults() {
    use omnichat_bridge::config::Settings;
    use omnichat_bridge::event::{Normalizer, Receipt};
    use omnichat_bridge::omnichat::Webhook;

    let settings = Settings::from_vars(
        [
            ("KAFKA_BOOTSTRAP_SERVERS", "localhost:9092"),
            ("BRIDGE_AUTH_TOKENS", "0123456789abcdef0123"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned())),
    )
    .expect("defaults");
    let normalizer = Normalizer::new(settings.topics.clone(), settings.event_source.clone());
    let size_of = |body: &str| -> usize {
        let receipt = Receipt {
            body: body.as_bytes(),
            received_at: time::OffsetDateTime::now_utc(),
            signed_id: None,
            traceparent: None,
        };
        match Webhook::parse(body.as_bytes()) {
            Ok(webhook) => normalizer.event(&webhook, &receipt).size(),
            Err(rejection) => normalizer.dead_letter(&rejection, &receipt).size(),
        }
    };
    // The largest body of each shape: padding found by bisection, then the body's length.
    let largest =
        |body: &dyn Fn(usize) -> String| body(largest_stored(|n| size_of(&body(n)))).len();
    let dead_letter = largest(&|n| "x".repeat(n));
    // A message's text travels twice in its event: in `message.text` and in `raw`.
    let message_text = largest(&|n| {
        format!(
            r#"{{"objectId":"c1KjTsOhDP","resource":"Message","event":"CREATE","timestamp":1681825655283,"payload":{{"chat":{{"className":"Chat","objectId":"dE5fgIIi8o"}},"type":"TEXT","text":"{}"}}}}"#,
            "t".repeat(n)
        )
    });
    let other_fields = largest(&|n| {
        format!(
            r#"{{"objectId":"o1","resource":"Order","event":"CREATE","timestamp":1681825655283,"items":"{}"}}"#,
            "i".repeat(n)
        )
    });
    eprintln!(
        "largest bodies: dead letter {dead_letter}, message text {message_text}, other fields {other_fields}"
    );
    let readme = read(&root().join("README.md"));
    for (what, bytes) in [
        ("a dead letter", dead_letter),
        ("an event's message text", message_text),
        ("an event's other fields", other_fields),
    ] {
        let stated = format_thousands(bytes);
        assert!(
            readme.contains(&stated),
            "the README must state {stated} bytes as the largest body for {what}"
        );
    }
}

fn format_thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The names a scrape of the bridge can show, in either mode: counters with `_total`,
/// histograms with `_bucket`, `_sum` and `_count`.
fn exposed_metric_names() -> BTreeSet<String> {
    use omnichat_bridge::config::Settings;
    use omnichat_bridge::ops::Metrics;
    let settings = Settings::from_vars(
        [
            ("KAFKA_BOOTSTRAP_SERVERS", "localhost:9092"),
            ("BRIDGE_AUTH_TOKENS", "0123456789abcdef0123"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned())),
    )
    .expect("defaults");
    let mut names = BTreeSet::new();
    for spool in [false, true] {
        let rendered = Metrics::new(&settings.topics, spool, Default::default()).render();
        for line in rendered.lines() {
            let mut parts = line.split_whitespace();
            if parts.next() != Some("#") || parts.next() != Some("TYPE") {
                continue;
            }
            let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
                continue;
            };
            let suffixes: &[&str] = match kind {
                "counter" => &["_total"],
                "histogram" => &["_bucket", "_sum", "_count"],
                "info" => &["_info"],
                _ => &[""],
            };
            for suffix in suffixes {
                names.insert(format!("{name}{suffix}"));
            }
        }
    }
    names
}

#[test]
fn the_dashboard_and_the_alerts_read_only_metrics_the_bridge_exposes() {
    let exposed = exposed_metric_names();
    assert!(exposed.contains("omnichat_bridge_ready"), "{exposed:?}");
    for file in [
        "deploy/monitoring/dashboard.json",
        "deploy/monitoring/alerts.yaml",
        "deploy/monitoring/alerts-test.yaml",
    ] {
        let text = read(&root().join(file));
        let mut used = BTreeSet::new();
        for (start, _) in text.match_indices("omnichat_bridge_") {
            let name: String = text[start..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            used.insert(name);
        }
        assert!(!used.is_empty(), "{file} reads no metric");
        let unknown: Vec<_> = used.difference(&exposed).collect();
        assert!(
            unknown.is_empty(),
            "{file} reads metrics the bridge does not expose: {unknown:?}"
        );
    }
}

#[test]
fn the_drain_job_runs_drain_where_and_as_whom_the_statefulset_runs_the_bridge() {
    let job = read(&root().join("deploy/overlays/spool/drain/job.yaml"));
    let statefulset = read(&root().join("deploy/overlays/spool/statefulset.yaml"));
    let settings = read(&root().join("deploy/overlays/spool/settings/kustomization.yaml"));
    let dir = settings
        .lines()
        .find_map(|line| line.trim().strip_prefix("- BRIDGE_SPOOL_DIR="))
        .expect("BRIDGE_SPOOL_DIR in the spool's settings");
    let mount = format!("mountPath: {dir}\n");
    assert!(statefulset.contains(&mount), "the StatefulSet mounts {dir}");
    assert!(job.contains(&mount), "the drain Job mounts {dir}");
    assert!(job.contains("args: [\"drain\"]"));
    for line in [
        "runAsUser: 65532",
        "runAsGroup: 65532",
        "fsGroup: 65532",
        "readOnlyRootFilesystem: true",
        "enableServiceLinks: false",
        "name: omnichat-bridge\n",
    ] {
        assert!(statefulset.contains(line), "the StatefulSet has `{line}`");
        assert!(job.contains(line), "the drain Job lacks `{line}`");
    }
    // Labelled as the bridge, its pod would be one of the Service's endpoints.
    assert!(!job.contains("app.kubernetes.io/name: omnichat-bridge\n"));
}

#[test]
fn the_readme_states_the_memory_of_the_remembered_ids_with_the_defaults() {
    use omnichat_bridge::http::repeats::Repeats;
    let settings = Settings::from_vars(
        [
            ("KAFKA_BOOTSTRAP_SERVERS", "localhost:9092"),
            ("BRIDGE_AUTH_TOKENS", "0123456789abcdef0123"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned())),
    )
    .expect("defaults");
    let dedup = settings.dedup.expect("on by default");
    let repeats = Repeats::new(
        &dedup,
        &settings.topics,
        settings.max_in_flight,
        settings.publish_timeout,
    );
    let bytes = repeats.allocated_bytes();
    let readme = read(&root().join("README.md"));
    for stated in [
        format_thousands(bytes),
        format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20)),
        format!("{} bytes per id", bytes / dedup.max_ids),
        format!("{} bytes each", bytes / dedup.max_ids),
    ] {
        assert!(
            readme.contains(&stated),
            "the README must state the remembered ids' memory as {stated}"
        );
    }
}
