use super::*;

fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn minimal() -> Vec<(&'static str, &'static str)> {
    vec![
        ("KAFKA_BOOTSTRAP_SERVERS", "localhost:9092"),
        ("BRIDGE_AUTH_TOKENS", "0123456789abcdef0123"),
    ]
}

fn error_for(extra: &[(&str, &str)]) -> ConfigError {
    let mut all = minimal();
    all.extend_from_slice(extra);
    // Parsed, then checked as at start: some refusals are the producer's policy's.
    Settings::from_vars(vars(&all))
        .and_then(|settings| crate::startup::check_settings(&settings))
        .expect_err("configuration should be refused")
}

#[test]
fn defaults_follow_the_contract() {
    let s = Settings::from_vars(vars(&minimal())).expect("valid");
    assert_eq!(s.listen_addr.to_string(), "0.0.0.0:8080");
    assert_eq!(s.admin_addr.to_string(), "0.0.0.0:9090");
    assert_eq!(s.max_body_bytes, 1024 * 1024);
    assert_eq!(&*s.topics.messages, "omnichat.messages");
    assert_eq!(&*s.topics.interactions, "omnichat.interactions");
    assert_eq!(&*s.topics.orders, "omnichat.orders");
    assert_eq!(&*s.topics.other, "omnichat.other");
    assert_eq!(&*s.topics.deadletter, "omnichat.deadletter");
    assert_eq!(&*s.event_source, "omnichat");
    assert_eq!(s.ack_mode, AckMode::Kafka);
    assert_eq!(s.publish_timeout, Duration::from_millis(5000));
    assert_eq!(s.shutdown_delay, Duration::from_millis(5000));
    assert_eq!(s.log_format, LogFormat::Json);
    assert_eq!(s.kafka.bootstrap_servers(), "localhost:9092");
}

#[test]
fn spool_mode_takes_its_directory_and_a_one_gib_default_bound() {
    let mut all = minimal();
    all.extend([
        ("BRIDGE_ACK_MODE", "spool"),
        ("BRIDGE_SPOOL_DIR", "/var/spool/omnichat-bridge"),
    ]);
    let s = Settings::from_vars(vars(&all)).expect("valid");
    assert_eq!(
        s.ack_mode,
        AckMode::Spool(SpoolSettings {
            dir: PathBuf::from("/var/spool/omnichat-bridge"),
            max_bytes: 1 << 30,
            on_damage: OnDamage::Refuse,
        })
    );
    assert!(
        s.effective()
            .contains(&("BRIDGE_ACK_MODE".to_owned(), "spool".to_owned()))
    );
    // 4 x a 1 MiB body is the smallest spool.
    all.push(("BRIDGE_SPOOL_MAX_BYTES", "4194304"));
    assert!(Settings::from_vars(vars(&all)).is_ok());
    all.push(("BRIDGE_SPOOL_MAX_BYTES", "4194303"));
    assert_eq!(
        Settings::from_vars(vars(&all))
            .expect_err("too small")
            .variable,
        "BRIDGE_SPOOL_MAX_BYTES"
    );
}

#[test]
fn each_bad_setting_is_refused_naming_its_variable() {
    let cases: &[(&[(&str, &str)], &str)] = &[
        (
            &[("BRIDGE_PUBLISH_TIMEOUT_MS", "soon")],
            "BRIDGE_PUBLISH_TIMEOUT_MS",
        ),
        (
            &[("BRIDGE_PUBLISH_TIMEOUT_MS", "0")],
            "BRIDGE_PUBLISH_TIMEOUT_MS",
        ),
        (&[("BRIDGE_LISTEN_ADDR", "8080")], "BRIDGE_LISTEN_ADDR"),
        (&[("BRIDGE_ADMIN_ADDR", "localhost")], "BRIDGE_ADMIN_ADDR"),
        (&[("BRIDGE_MAX_BODY_BYTES", "-1")], "BRIDGE_MAX_BODY_BYTES"),
        (
            &[("BRIDGE_ALLOW_UNAUTHENTICATED", "yes")],
            "BRIDGE_ALLOW_UNAUTHENTICATED",
        ),
        (&[("BRIDGE_TOPIC_ORDERS", "orders!")], "BRIDGE_TOPIC_ORDERS"),
        (&[("BRIDGE_ACK_MODE", "eventually")], "BRIDGE_ACK_MODE"),
        (&[("BRIDGE_ACK_MODE", "spool")], "BRIDGE_SPOOL_DIR"),
        (
            &[
                ("BRIDGE_ACK_MODE", "spool"),
                ("BRIDGE_SPOOL_DIR", "/var/spool/bridge"),
                ("BRIDGE_SPOOL_MAX_BYTES", "1000"),
            ],
            "BRIDGE_SPOOL_MAX_BYTES",
        ),
        (
            &[
                ("BRIDGE_ACK_MODE", "spool"),
                ("BRIDGE_SPOOL_DIR", "/var/spool/bridge"),
                ("BRIDGE_SPOOL_MAX_BYTES", "lots"),
            ],
            "BRIDGE_SPOOL_MAX_BYTES",
        ),
        (
            &[
                ("BRIDGE_ACK_MODE", "spool"),
                ("BRIDGE_SPOOL_DIR", "/var/spool/bridge"),
                ("BRIDGE_SPOOL_ON_DAMAGE", "skip"),
            ],
            "BRIDGE_SPOOL_ON_DAMAGE",
        ),
        (&[("BRIDGE_LOG_FORMAT", "xml")], "BRIDGE_LOG_FORMAT"),
        (
            &[("BRIDGE_WEBHOOK_SECRETS", "whsec_***")],
            "BRIDGE_WEBHOOK_SECRETS",
        ),
        (
            &[("BRIDGE_SHUTDOWN_DELAY_MS", "40000")],
            "BRIDGE_SHUTDOWN_DELAY_MS",
        ),
        (
            &[("KAFKA_ENABLE_IDEMPOTENCE", "false")],
            "KAFKA_ENABLE_IDEMPOTENCE",
        ),
        (&[("KAFKA_ACKS", "1")], "KAFKA_ACKS"),
        (
            &[("KAFKA_DELIVERY_REPORT_ONLY_ERROR", "true")],
            "KAFKA_DELIVERY_REPORT_ONLY_ERROR",
        ),
        (&[("KAFKA_RETRIES", "1")], "KAFKA_RETRIES"),
        (
            &[("KAFKA_MESSAGE_SEND_MAX_RETRIES", "3")],
            "KAFKA_MESSAGE_SEND_MAX_RETRIES",
        ),
        (
            &[("KAFKA_ENABLE_GAPLESS_GUARANTEE", "false")],
            "KAFKA_ENABLE_GAPLESS_GUARANTEE",
        ),
        (
            &[("KAFKA_REQUEST_REQUIRED_ACKS", "0")],
            "KAFKA_REQUEST_REQUIRED_ACKS",
        ),
        (
            &[("KAFKA_PARTITIONER", "consistent_random")],
            "KAFKA_PARTITIONER",
        ),
        (&[("KAFKA_TRANSACTIONAL_ID", "x")], "KAFKA_TRANSACTIONAL_ID"),
        (
            &[("KAFKA_BOOTSTRAP_SERVERS", " ")],
            "KAFKA_BOOTSTRAP_SERVERS",
        ),
        // librdkafka's two names for one property, set to two values.
        (
            &[
                ("KAFKA_MESSAGE_TIMEOUT_MS", "2000"),
                ("KAFKA_DELIVERY_TIMEOUT_MS", "1000"),
            ],
            "KAFKA_DELIVERY_TIMEOUT_MS",
        ),
        (
            &[("KAFKA_METADATA_BROKER_LIST", "elsewhere:9092")],
            "KAFKA_METADATA_BROKER_LIST",
        ),
        // Credentials a sender could guess: a short token, a short signing key, also as the
        // second of two during a rotation.
        (&[("BRIDGE_AUTH_TOKENS", "hunter2")], "BRIDGE_AUTH_TOKENS"),
        (
            &[("BRIDGE_AUTH_TOKENS", "0123456789abcdef0123,short")],
            "BRIDGE_AUTH_TOKENS",
        ),
        (
            &[("BRIDGE_WEBHOOK_SECRETS", "whsec_YQ==")],
            "BRIDGE_WEBHOOK_SECRETS",
        ),
        // The admin port on the public listener's port, on the same or every interface.
        (
            &[
                ("BRIDGE_LISTEN_ADDR", "127.0.0.1:8080"),
                ("BRIDGE_ADMIN_ADDR", "127.0.0.1:8080"),
            ],
            "BRIDGE_ADMIN_ADDR",
        ),
        (
            &[("BRIDGE_ADMIN_ADDR", "10.0.0.7:8080")],
            "BRIDGE_ADMIN_ADDR",
        ),
        // Events on the dead-letter topic.
        (
            &[("BRIDGE_TOPIC_ORDERS", "omnichat.deadletter")],
            "BRIDGE_TOPIC_ORDERS",
        ),
        (
            &[("BRIDGE_TOPIC_DEADLETTER", "omnichat.messages")],
            "BRIDGE_TOPIC_MESSAGES",
        ),
    ];
    for (extra, variable) in cases {
        let error = error_for(extra);
        assert_eq!(&error.variable, variable, "{extra:?} gave {error}");
        let line = error.to_string();
        assert!(line.contains(variable) && !line.contains('\n'), "{line}");
    }
}

#[test]
fn warns_about_unknown_bridge_variables_naming_the_likely_one() {
    let mut all = minimal();
    all.push(("BRIDGE_PUBLISH_TIMEOUT", "100"));
    let settings = Settings::from_vars(vars(&all)).expect("unknown variables are not fatal");
    let warnings = settings.warnings().join("\n");
    assert!(
        warnings.contains("BRIDGE_PUBLISH_TIMEOUT is not a setting")
            && warnings.contains("did you mean BRIDGE_PUBLISH_TIMEOUT_MS?"),
        "{warnings}"
    );
}

#[test]
fn kafka_bootstrap_servers_is_required() {
    let error = Settings::from_vars(vars(&[("BRIDGE_ALLOW_UNAUTHENTICATED", "true")]))
        .expect_err("refused");
    assert_eq!(error.variable, "KAFKA_BOOTSTRAP_SERVERS");
}

#[test]
fn refuses_to_start_without_any_credential() {
    let error =
        Settings::from_vars(vars(&[("KAFKA_BOOTSTRAP_SERVERS", "k:9092")])).expect_err("refused");
    assert_eq!(error.variable, "BRIDGE_AUTH_TOKENS");
    let open = Settings::from_vars(vars(&[
        ("KAFKA_BOOTSTRAP_SERVERS", "k:9092"),
        ("BRIDGE_ALLOW_UNAUTHENTICATED", "true"),
    ]))
    .expect("explicitly open");
    assert!(open.auth.allow_unauthenticated);
}

#[test]
fn kafka_variables_become_librdkafka_properties() {
    let s = Settings::from_vars(vars(&[
        ("KAFKA_BOOTSTRAP_SERVERS", "k:9092"),
        ("KAFKA_SECURITY_PROTOCOL", "SASL_SSL"),
        ("KAFKA_SASL_PASSWORD", "hunter2hunter2"),
        ("KAFKA_COMPRESSION_TYPE", "zstd"),
        ("KAFKA_ACKS", "all"),
        ("KAFKA_PORT", "tcp://10.0.0.1:9092"),
        ("KAFKA_SERVICE_HOST", "10.0.0.1"),
        ("BRIDGE_AUTH_TOKENS", "0123456789abcdef0123"),
    ]))
    .expect("valid");
    assert_eq!(s.kafka.get("security.protocol"), Some("SASL_SSL"));
    assert_eq!(s.kafka.get("compression.type"), Some("zstd"));
    assert_eq!(s.kafka.get("sasl.password"), Some("hunter2hunter2"));
    assert_eq!(s.kafka.get("port"), None, "service links are not settings");
    assert_eq!(s.kafka.get("service.host"), None);
}

#[test]
fn secrets_never_show_in_debug_or_effective_settings() {
    let s = Settings::from_vars(vars(&[
        ("KAFKA_BOOTSTRAP_SERVERS", "k:9092"),
        ("KAFKA_SASL_PASSWORD", "kafka-password-value"),
        ("KAFKA_SSL_KEY_PEM", "pem-key-value"),
        ("BRIDGE_AUTH_TOKENS", "token-value-0123456789"),
        ("BRIDGE_WEBHOOK_SECRETS", "whsec_c2lnbmluZy1rZXktdmFsdWU="),
    ]))
    .expect("valid");
    let printed = format!("{s:?} {:?}", s.effective());
    for secret in [
        "kafka-password-value",
        "pem-key-value",
        "token-value-0123456789",
        "signing-key-value",
        "c2lnbmluZy1rZXktdmFsdWU",
    ] {
        assert!(!printed.contains(secret), "{secret} leaked: {printed}");
    }
}
