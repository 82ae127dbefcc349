use std::time::Duration;

use actix_web::FromRequest;
use actix_web::test::TestRequest;

use super::*;
use crate::config::Settings;
use crate::publish::{PublishFuture, Record};

/// A publisher that never answers: a request waits on it until it is dropped.
struct NeverStored;

impl Publisher for NeverStored {
    fn publish(&self, _record: Record) -> PublishFuture<'_> {
        Box::pin(std::future::pending())
    }
}

const SEED: &str =
    r#"{"objectId":"o1","resource":"Order","event":"CREATE","timestamp":1681825655283}"#;

#[tokio::test]
async fn a_request_dropped_while_it_waits_is_counted_out_of_in_flight() {
    let token = "0123456789abcdef0123";
    let settings = Settings::from_vars(
        [
            ("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9"),
            ("BRIDGE_AUTH_TOKENS", token),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned())),
    )
    .expect("settings");
    let metrics = Arc::new(Metrics::new(&settings.topics, false, Default::default()));
    let mut ingress = Ingress::new(&settings, Arc::new(NeverStored), metrics.clone());
    ingress.in_flight = Arc::new(Semaphore::new(8));
    let ingress = web::Data::new(ingress);
    let (request, mut payload) = TestRequest::post()
        .uri(WEBHOOK_PATH)
        .insert_header(("Authorization", format!("Bearer {token}")))
        .set_payload(SEED)
        .to_http_parts();
    let payload = web::Payload::from_request(&request, &mut payload)
        .await
        .expect("payload");
    let mut handling = Box::pin(receive_webhook(request, payload, ingress.clone()));
    let waited = tokio::time::timeout(Duration::from_millis(100), &mut handling).await;
    assert!(waited.is_err(), "the request waits on the publisher");
    assert_eq!(metrics.in_flight.get(), 1);
    // As when its connection is torn down: the future is dropped, never finished.
    drop(handling);
    assert_eq!(metrics.in_flight.get(), 0, "counted out on every exit");
    assert_eq!(ingress.in_flight.available_permits(), 8);
}
