use super::*;
use crate::conditions::{Condition, Conditions};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

fn timed_out() -> KafkaError {
    KafkaError::MetadataFetch(RDKafkaErrorCode::OperationTimedOut)
}

#[test]
fn a_run_gives_up_only_once_nothing_has_moved_for_the_whole_bound() {
    let start = Instant::now();
    let at = |ms: u64| start + Duration::from_millis(ms);
    let mut stall = Stall::new(Duration::from_secs(2), start);
    assert!(!stall.stuck(0, at(1_999)));
    // A record forwarded or set aside starts the bound again.
    assert!(!stall.stuck(1, at(1_999)));
    assert!(!stall.stuck(1, at(3_998)));
    assert!(stall.stuck(1, at(3_999)));
    assert_eq!(stall.idle(at(4_500)), Duration::from_millis(2_501));
}

#[test]
fn a_stall_is_named_by_kafkas_state_first_then_by_what_the_forwarder_saw() {
    let unreachable = KafkaUnusable::Unreachable(KafkaError::MetadataFetch(
        RDKafkaErrorCode::BrokerTransportFailure,
    ));
    let held = SpoolStatus {
        forward_error: Some("Broker: Topic authorization failed".into()),
        ..SpoolStatus::default()
    };
    let conditions = Conditions::default();
    conditions.raise(Condition::PartitionUnavailable, "a leader down");

    let why = stalled(&Some(Err(unreachable)), &held, conditions.active());
    assert!(
        matches!(why, Stalled::Kafka(KafkaUnusable::Unreachable(_))),
        "{why}"
    );
    let why = stalled(&Some(Ok(Vec::new())), &held, conditions.active());
    assert_eq!(
        why.to_string(),
        "forwarding held up: Broker: Topic authorization failed"
    );
    let why = stalled(&None, &SpoolStatus::default(), conditions.active());
    assert_eq!(why.to_string(), "partition_unavailable: a leader down");
    let why = stalled(&Some(Ok(Vec::new())), &SpoolStatus::default(), Vec::new());
    assert!(matches!(why, Stalled::Silent));
}

#[test]
fn the_give_up_line_says_how_long_and_why() {
    let stopped = StoppedEarly::GaveUp {
        after: Duration::from_secs(30),
        why: Stalled::Kafka(KafkaUnusable::Unreachable(timed_out())),
    };
    assert_eq!(
        stopped.to_string(),
        format!(
            "Kafka took no record for 30 s (--give-up-after): Kafka is not reachable: {}",
            timed_out()
        )
    );
}

#[test]
fn the_summary_counts_each_kind_of_record_on_a_line_of_its_own() {
    let summary = Summary {
        forwarded: 118,
        to_deadletter: 1,
        to_quarantine: 1,
        left: 0,
        quarantine_bytes: 512,
    };
    assert_eq!(
        summary.to_string(),
        "forwarded: 118\nset aside: 2\n  to the dead-letter topic: 1\n  to the quarantine: 1\n\
         left: 0\nquarantine bytes: 512"
    );
}

#[test]
fn progress_names_kafkas_state_and_a_stall() {
    let summary = Summary {
        forwarded: 10,
        left: 90,
        ..Summary::default()
    };
    assert_eq!(
        progress(&summary, &None, Duration::ZERO),
        "drain: 10 forwarded, 0 set aside, 90 left; Kafka not probed yet"
    );
    let unreachable = Some(Err(KafkaUnusable::Unreachable(timed_out())));
    assert_eq!(
        progress(&summary, &unreachable, Duration::from_secs(12)),
        format!(
            "drain: 10 forwarded, 0 set aside, 90 left; Kafka is not reachable: {}; \
             nothing taken for 12 s",
            timed_out()
        )
    );
}
