//! HTTP ingress: `POST /webhooks/omnichat`.
//!
//! Order of work per request: take an in-flight slot, authenticate from headers (so strangers
//! cost nothing), read the body within its size limit and deadline, verify a signature if that
//! is how the sender authenticates, parse, normalize, publish, answer. A body that cannot be
//! normalized is dead-lettered before the 400/422. An event whose id this process stored a
//! moment ago is answered from [`repeats`] instead of being published again.

pub mod auth;
pub mod error;
mod head_deadline;
pub mod repeats;
pub mod server;

use std::sync::Arc;
use std::time::{Duration, Instant};

use std::pin::Pin;

use actix_web::web::{self, Bytes, BytesMut};
use actix_web::{HttpRequest, HttpResponse};
use futures_core::Stream;
use time::OffsetDateTime;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::Settings;
use crate::event::headers;
use crate::event::{Normalizer, Receipt, is_traceparent};
use crate::omnichat::Webhook;
use crate::ops::Metrics;
use crate::publish::{PublishError, Publisher, Stored};
pub use auth::{Authenticator, Credential};
pub use error::IngressError;
use repeats::{Claim, Repeats};

pub const WEBHOOK_PATH: &str = "/webhooks/omnichat";

/// The 202 answer. Partition and offset are known only once the broker has the record, so a
/// spooled event's answer says `spooled` instead; a repeated delivery's is the first one's,
/// marked `duplicate`.
#[derive(serde::Serialize)]
struct Accepted<'a> {
    id: &'a str,
    status: &'static str,
    topic: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    partition: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    offset: Option<i64>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    spooled: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    duplicate: bool,
}

impl<'a> Accepted<'a> {
    fn answer(id: &'a str, topic: &'a str, stored: Stored, duplicate: bool) -> HttpResponse {
        let (partition, offset) = match stored {
            Stored::Kafka { partition, offset } => (Some(partition), Some(offset)),
            Stored::OnDisk => (None, None),
        };
        HttpResponse::Accepted().json(Accepted {
            id,
            status: "accepted",
            topic,
            partition,
            offset,
            spooled: stored == Stored::OnDisk,
            duplicate,
        })
    }
}

/// Everything a request needs, shared by all workers.
pub struct Ingress {
    pub authenticator: Authenticator,
    pub normalizer: Normalizer,
    pub publisher: Arc<dyn Publisher>,
    pub metrics: Arc<Metrics>,
    pub max_body_bytes: usize,
    /// A sender that has not finished its body by then is cut off, so a trickling client
    /// cannot hold an in-flight slot.
    pub body_timeout: Duration,
    pub in_flight: Arc<Semaphore>,
    /// KiB of bodies being read or held until answered, over all requests
    /// ([`BODY_BUDGET`]).
    pub body_budget: Arc<Semaphore>,
    /// KiB of bodies being read before their signature is verified, over all requests
    /// ([`UNVERIFIED_BODY_BUDGET`]).
    pub unverified_budget: Arc<Semaphore>,
    /// The ids of events stored lately, to answer their repeats (`None`: off).
    pub repeats: Option<Repeats>,
}

impl Ingress {
    /// What requests need, from the settings, storing through `publisher`.
    pub fn new(settings: &Settings, publisher: Arc<dyn Publisher>, metrics: Arc<Metrics>) -> Self {
        Self {
            authenticator: Authenticator::new(&settings.auth),
            normalizer: Normalizer::new(settings.topics.clone(), settings.event_source.clone()),
            publisher,
            metrics,
            max_body_bytes: settings.max_body_bytes,
            body_timeout: settings.request_timeout,
            in_flight: Arc::new(Semaphore::new(settings.max_in_flight)),
            body_budget: Arc::new(Semaphore::new(BODY_BUDGET / 1024)),
            unverified_budget: Arc::new(Semaphore::new(UNVERIFIED_BODY_BUDGET / 1024)),
            repeats: settings.dedup.map(|dedup| {
                repeats::Repeats::new(
                    &dedup,
                    &settings.topics,
                    settings.max_in_flight,
                    settings.publish_timeout,
                )
            }),
        }
    }
}

/// Bytes all requests together may hold in bodies, from before they are read until they are
/// answered; past it a request gets 503 before its body is read. With the records made from
/// them (an event carries its body about twice), this bounds what requests hold in memory.
pub const BODY_BUDGET: usize = 32 << 20;
/// The share of [`BODY_BUDGET`] bodies not yet authenticated may hold: a stranger who sends
/// signature headers with bodies cannot make the bridge hold more than this.
pub const UNVERIFIED_BODY_BUDGET: usize = 16 << 20;

impl std::fmt::Debug for Ingress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ingress")
            .field("max_body_bytes", &self.max_body_bytes)
            .finish_non_exhaustive()
    }
}

/// Registers the public routes.
pub fn routes(config: &mut web::ServiceConfig) {
    config
        .service(
            web::resource(WEBHOOK_PATH)
                .route(web::post().to(receive_webhook))
                .default_service(web::to(|| async {
                    Err::<HttpResponse, _>(IngressError::MethodNotAllowed)
                })),
        )
        .default_service(web::to(|| async {
            Err::<HttpResponse, _>(IngressError::NotFound)
        }));
}

async fn receive_webhook(
    request: HttpRequest,
    payload: web::Payload,
    ingress: web::Data<Ingress>,
) -> Result<HttpResponse, IngressError> {
    let started = Instant::now();
    let result = match ingress.in_flight.clone().try_acquire_owned() {
        Ok(_permit) => {
            // Counted down on every exit, also when the sender goes away mid-request and this
            // future is dropped.
            let _in_flight = InFlight::enter(&ingress.metrics);
            accept(&request, payload, &ingress).await
        }
        Err(_) => Err(IngressError::Overloaded),
    };
    let status = match &result {
        Ok(response) => response.status(),
        Err(error) => actix_web::ResponseError::status_code(error),
    };
    ingress
        .metrics
        .observe_request(status.as_u16(), started.elapsed());
    // Rejections and storage failures are logged where their ids are known.
    if let Err(error) = &result
        && !matches!(
            error,
            IngressError::Rejected(_)
                | IngressError::NotStored(_)
                | IngressError::RefusedByKafka { .. }
        )
    {
        tracing::warn!(
            code = error.code(),
            status = status.as_u16(),
            error = %error,
            "Webhook refused"
        );
    }
    result
}

/// One request in flight, on the gauge while it lives.
struct InFlight<'a>(&'a Metrics);

impl<'a> InFlight<'a> {
    fn enter(metrics: &'a Metrics) -> Self {
        metrics.in_flight.inc();
        Self(metrics)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.dec();
    }
}

async fn accept(
    request: &HttpRequest,
    payload: web::Payload,
    ingress: &Ingress,
) -> Result<HttpResponse, IngressError> {
    // Held until the answer, through the publish that holds its record.
    let (body, signed, _body_room) = authenticated_body(request, payload, ingress).await?;
    let received_at = OffsetDateTime::now_utc();
    let signed_id = match &signed {
        Some(Credential::Signature { webhook_id }) => Some(webhook_id.as_str()),
        _ => None,
    };
    let traceparent = request
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .filter(|v| is_traceparent(v));
    let receipt = Receipt {
        body: &body,
        received_at,
        signed_id,
        traceparent,
    };

    match Webhook::parse(&body) {
        Ok(webhook) => store_event(ingress, &webhook, &receipt).await,
        Err(rejection) => {
            let record = ingress.normalizer.dead_letter(&rejection, &receipt);
            let id = record.key.clone();
            if let Err(error) = ingress.publisher.publish(record).await {
                tracing::warn!(
                    dead_letter_id = %id,
                    code = rejection.code(),
                    error = %error,
                    "Dead letter not stored"
                );
                return Err(match error {
                    // No topic will ever take these bytes.
                    PublishError::Poison(refused) => IngressError::RefusedByKafka {
                        refused,
                        dead_lettered: false,
                    },
                    error => IngressError::NotStored(error),
                });
            }
            ingress.metrics.observe_dead_letter(rejection.code());
            tracing::warn!(
                dead_letter_id = %id,
                code = rejection.code(),
                bytes = body.len(),
                "Webhook dead-lettered: {rejection}"
            );
            Err(IngressError::Rejected(rejection))
        }
    }
}

/// Authenticates the request and reads its body: strangers are refused from their headers
/// (cost nothing), a request only a signature can authenticate is checked before its body is
/// read and its bytes count against the budget shared by all such requests. Returns the body,
/// the verified signature if there is one, and the body's room in the budget, held until the
/// answer.
async fn authenticated_body(
    request: &HttpRequest,
    payload: web::Payload,
    ingress: &Ingress,
) -> Result<(Bytes, Option<Credential>, OwnedSemaphorePermit), IngressError> {
    let authenticator = &ingress.authenticator;
    let early = authenticator.before_body(request);
    if early.is_none() && !authenticator.may_be_signed(request) {
        return Err(IngressError::Unauthorized);
    }
    let unverified = match early {
        Some(_) => None,
        None => {
            let now = OffsetDateTime::now_utc().unix_timestamp();
            if !authenticator.signature_headers_plausible(request, now) {
                return Err(IngressError::Unauthorized);
            }
            Some(reserve(&ingress.unverified_budget, request, ingress)?)
        }
    };
    let body_room = reserve(&ingress.body_budget, request, ingress)?;
    let body = read_body(
        request,
        payload,
        ingress.max_body_bytes,
        ingress.body_timeout,
    )
    .await?;
    // A valid signature names the event, whichever method authenticated the request.
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let signed = authenticator
        .may_be_signed(request)
        .then(|| authenticator.verify_signature(request, &body, now))
        .flatten();
    if early.is_none() && signed.is_none() {
        return Err(IngressError::Unauthorized);
    }
    drop(unverified);
    Ok((body, signed, body_room))
}

/// Publishes a webhook's event, unless this process stored its id lately: then the answer is
/// the first one's and nothing is published again.
async fn store_event(
    ingress: &Ingress,
    webhook: &Webhook<'_>,
    receipt: &Receipt<'_>,
) -> Result<HttpResponse, IngressError> {
    let record = ingress.normalizer.event(webhook, receipt);
    let id = record.header(headers::ID).unwrap_or_default().to_owned();
    let pending = match &ingress.repeats {
        None => None,
        Some(repeats) => match repeats.claim(&id).await {
            Ok(Claim::Repeat(first)) => {
                ingress.metrics.observe_duplicate(first.waited);
                return Ok(Accepted::answer(&id, &first.topic, first.stored, true));
            }
            Ok(Claim::First(pending)) => Some(pending),
            Err(error) => {
                tracing::warn!(
                    event_id = %id,
                    error = %error,
                    "Repeated delivery not answered: its first delivery was still being stored"
                );
                return Err(error.into());
            }
        },
    };
    let topic = record.topic.clone();
    let started = Instant::now();
    // On an error `pending` is dropped and the id forgotten: a repeat is published again,
    // since the record may not have landed.
    let stored = match ingress.publisher.publish(record).await {
        Ok(stored) => stored,
        Err(error) => return Err(not_stored(ingress, webhook, receipt, &id, &topic, error).await),
    };
    if let Some(pending) = pending {
        let forgotten = pending.stored(&topic, stored);
        ingress.metrics.observe_forgotten_ids(forgotten);
    }
    ingress.metrics.observe_event(
        &topic,
        &webhook.resource,
        &webhook.action,
        started.elapsed(),
    );
    Ok(Accepted::answer(&id, &topic, stored, false))
}

/// An event Kafka (or the spool) did not store: logged, and if Kafka refuses it for good its
/// body is dead-lettered.
async fn not_stored(
    ingress: &Ingress,
    webhook: &Webhook<'_>,
    receipt: &Receipt<'_>,
    id: &str,
    topic: &str,
    error: PublishError,
) -> IngressError {
    tracing::warn!(
        event_id = %id,
        object_id = %webhook.object_id,
        chat_id = webhook.message.as_ref().map(|m| &*m.chat_id),
        %topic,
        error = %error,
        "Event not stored"
    );
    let PublishError::Poison(refused) = error else {
        return error.into();
    };
    let letter = ingress
        .normalizer
        .refused_event(id, webhook, receipt, &refused);
    match dead_letter_refused(ingress, letter, id).await {
        Ok(()) => IngressError::RefusedByKafka {
            refused,
            dead_lettered: true,
        },
        Err(PublishError::Poison(_)) => IngressError::RefusedByKafka {
            refused,
            dead_lettered: false,
        },
        // It may still be stored: the sender retries.
        Err(error) => IngressError::NotStored(error),
    }
}

/// Kafka refused an event for good: its body goes to the dead-letter topic, if that takes it.
/// When that fails for a reason that may pass, the caller answers 503, since the body is not
/// stored yet; only a dead letter refused for good too leaves a 4xx that stores nothing.
async fn dead_letter_refused(
    ingress: &Ingress,
    letter: crate::publish::Record,
    id: &str,
) -> Result<(), PublishError> {
    let code = letter
        .header(headers::ERROR_CODE)
        .unwrap_or_default()
        .to_owned();
    match ingress.publisher.publish(letter).await {
        Ok(_) => {
            ingress.metrics.observe_dead_letter(&code);
            tracing::warn!(event_id = %id, code, "Event refused by Kafka for good; dead-lettered");
            Ok(())
        }
        Err(error) => {
            tracing::error!(
                event_id = %id,
                code,
                error = %error,
                "Event refused by Kafka for good, and its dead letter was not stored"
            );
            Err(error)
        }
    }
}

/// Reserves room for the request's body in `budget` (its declared length, else the largest
/// body), or answers 503 when others hold it all.
fn reserve(
    budget: &Arc<Semaphore>,
    request: &HttpRequest,
    ingress: &Ingress,
) -> Result<OwnedSemaphorePermit, IngressError> {
    let bytes = declared_length(request)
        .unwrap_or(ingress.max_body_bytes as u64)
        .min(ingress.max_body_bytes as u64);
    let kib = u32::try_from(bytes.div_ceil(1024).max(1)).unwrap_or(u32::MAX);
    budget
        .clone()
        .try_acquire_many_owned(kib)
        .map_err(|_| IngressError::Overloaded)
}

fn declared_length(request: &HttpRequest) -> Option<u64> {
    request
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
}

async fn read_body(
    request: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
    deadline: Duration,
) -> Result<Bytes, IngressError> {
    let declared = declared_length(request);
    if declared.is_some_and(|length| length > limit as u64) {
        return Err(IngressError::PayloadTooLarge { limit });
    }
    // Sized from the declared length, so a body takes its own size in memory and not the
    // double a growing buffer would (that is also what the unverified budget counts).
    let mut body = BytesMut::with_capacity(declared.map_or(16 << 10, |n| n as usize));
    let read = async {
        while let Some(chunk) =
            std::future::poll_fn(|cx| Pin::new(&mut payload).poll_next(cx)).await
        {
            let chunk = chunk.map_err(IngressError::UnreadableBody)?;
            if body.len() + chunk.len() > limit {
                return Err(IngressError::PayloadTooLarge { limit });
            }
            body.extend_from_slice(&chunk);
        }
        Ok(())
    };
    match tokio::time::timeout(deadline, read).await {
        Err(_) => Err(IngressError::BodyTimeout(deadline)),
        Ok(Err(error)) => Err(error),
        Ok(Ok(())) => Ok(body.freeze()),
    }
}

#[cfg(test)]
mod tests;
