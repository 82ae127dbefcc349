//! The Kafka publisher's configuration, generations and size accounting.

mod forwarder {
    use super::super::*;
    use crate::config::Settings;

    #[test]
    fn the_forwarder_never_gives_a_record_up_whatever_is_configured() {
        let settings = Settings::from_vars(
            [
                ("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9"),
                ("KAFKA_MESSAGE_TIMEOUT_MS", "5000"),
                ("BRIDGE_AUTH_TOKENS", "0123456789abcdef0123"),
            ]
            .map(|(k, v)| (k.to_owned(), v.to_owned())),
        )
        .expect("settings");
        let timeout = Duration::from_secs(5);
        let forwarder = KafkaPublisher::unbounded(&settings.kafka, timeout).expect("producer");
        assert_eq!(forwarder.inner.config.get("message.timeout.ms"), Some("0"));
        assert_eq!(
            forwarder.inner.config.get("enable.gapless.guarantee"),
            Some("true")
        );
        let ingress = KafkaPublisher::new(&settings.kafka, timeout).expect("producer");
        assert_eq!(ingress.inner.config.get("message.timeout.ms"), Some("5000"));
        for publisher in [&forwarder, &ingress] {
            assert_eq!(
                publisher.inner.config.get("reconnect.backoff.max.ms"),
                Some("1000")
            );
        }
    }
}

/// librdkafka knows some properties by two names (`delivery.timeout.ms` is `message.timeout.ms`,
/// `queue.buffering.max.ms` is `linger.ms`). What librdkafka ends up using is read back from
/// its own configuration, many times over, because a property given under both names reached
/// it in a hash map's random order.
mod aliases {
    use super::super::*;
    use crate::config::Settings;

    fn effective(publisher: &KafkaPublisher, name: &str) -> String {
        let native = publisher
            .inner
            .config
            .create_native_config()
            .expect("a native configuration");
        native.get(name).expect("a known property")
    }

    fn settings(extra: &[(&str, &str)]) -> Settings {
        let mut vars = vec![
            ("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9"),
            ("BRIDGE_AUTH_TOKENS", "0123456789abcdef0123"),
        ];
        vars.extend_from_slice(extra);
        Settings::from_vars(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())))
            .expect("settings")
    }

    #[test]
    fn the_forwarder_never_gives_a_record_up_under_either_name_of_the_timeout() {
        let settings = settings(&[("KAFKA_DELIVERY_TIMEOUT_MS", "1000")]);
        let timeout = Duration::from_secs(5);
        for _ in 0..24 {
            let forwarder = KafkaPublisher::unbounded(&settings.kafka, timeout).expect("producer");
            assert_eq!(effective(&forwarder, "message.timeout.ms"), "0");
            let ingress = KafkaPublisher::new(&settings.kafka, timeout).expect("producer");
            assert_eq!(effective(&ingress, "message.timeout.ms"), "1000");
        }
    }

    #[test]
    fn an_operators_setting_wins_over_the_bridges_default_under_either_name() {
        let settings = settings(&[("KAFKA_QUEUE_BUFFERING_MAX_MS", "50")]);
        for _ in 0..24 {
            let ingress =
                KafkaPublisher::new(&settings.kafka, Duration::from_secs(5)).expect("producer");
            assert_eq!(effective(&ingress, "queue.buffering.max.ms"), "50");
        }
    }
}

mod config {
    use super::super::*;
    use crate::config::Settings;

    /// librdkafka checks some combinations only when it creates the producer.
    #[test]
    fn a_combination_librdkafka_refuses_at_creation_names_the_variable_that_was_set() {
        let settings = Settings::from_vars(
            [
                ("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9"),
                ("KAFKA_MAX_IN_FLIGHT", "6"),
                ("BRIDGE_AUTH_TOKENS", "0123456789abcdef0123"),
            ]
            .map(|(k, v)| (k.to_owned(), v.to_owned())),
        )
        .expect("settings");
        let error = KafkaPublisher::new(&settings.kafka, Duration::from_secs(5))
            .expect_err("refused by librdkafka");
        assert_eq!(error.variable, "KAFKA_MAX_IN_FLIGHT", "{error}");
    }
}

mod size {
    use super::super::*;
    use crate::config::Settings;
    use futures_util::FutureExt;

    /// librdkafka refuses a record at `produce` when its size as it counts it is over
    /// `message.max.bytes`; the bridge's door must draw the same line, byte for byte.
    #[tokio::test]
    async fn record_size_is_counted_exactly_as_librdkafka_counts_it() {
        let limit = 10_000;
        let settings = Settings::from_vars(
            [
                ("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9"),
                ("KAFKA_MESSAGE_MAX_BYTES", "10000"),
                ("BRIDGE_AUTH_TOKENS", "0123456789abcdef0123"),
            ]
            .map(|(k, v)| (k.to_owned(), v.to_owned())),
        )
        .expect("settings");
        let publisher =
            KafkaPublisher::new(&settings.kafka, Duration::from_secs(60)).expect("producer");
        // Header values across the varint boundaries of their length prefixes (64, 8192).
        for header_len in [0, 1, 63, 64, 65, 200, 8191, 8192] {
            let headers = vec![
                (
                    crate::publish::Header::Borrowed("ce_id"),
                    "x".repeat(header_len).into(),
                ),
                (
                    crate::publish::Header::Borrowed("content-type"),
                    "application/json".into(),
                ),
            ];
            let fixed = Record {
                topic: Arc::from("t"),
                key: "chat-1".to_owned(),
                headers: headers.clone(),
                value: Vec::new(),
            };
            let start = limit - fixed.size().min(limit) - 80;
            let mut seen_refused = false;
            for value_len in start..start + 200 {
                let record = Record {
                    value: vec![b'a'; value_len],
                    ..fixed.clone()
                };
                let ours = record.size() > limit;
                let theirs = matches!(
                    publisher.publish(record.clone()).now_or_never(),
                    Some(Err(PublishError::TooLarge { .. }))
                );
                assert_eq!(
                    ours,
                    theirs,
                    "header {header_len} B, value {value_len} B: size {} vs limit {limit}",
                    record.size()
                );
                seen_refused |= theirs;
            }
            assert!(seen_refused, "the walk must cross the limit");
        }
    }
}
