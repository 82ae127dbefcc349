//! The one place where ingress failures become HTTP statuses and JSON error bodies.

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, ResponseError};
use serde_json::json;

use crate::omnichat::Rejection;
use crate::publish::PublishError;
use crate::publish::refusal::Refused;

/// Why a webhook was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum IngressError {
    #[error("no valid credential was presented")]
    Unauthorized,
    #[error("the body is larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("the body could not be read: {0}")]
    UnreadableBody(#[source] actix_web::error::PayloadError),
    #[error("the body did not arrive within {0:?}")]
    BodyTimeout(std::time::Duration),
    /// The body was dead-lettered and the sender told why.
    #[error("{0}")]
    Rejected(Rejection),
    #[error("the bridge is at its limit of concurrent requests")]
    Overloaded,
    #[error("the event was not stored: {0}")]
    NotStored(#[from] PublishError),
    /// Kafka will never take this record; the body went to the dead-letter topic if that
    /// topic took it, and no topic ever will if it did not.
    #[error("Kafka refuses this record for good ({code}): {refused}", code = refused.code_name())]
    RefusedByKafka {
        refused: Refused,
        dead_lettered: bool,
    },
    #[error("no such endpoint")]
    NotFound,
    #[error("method not allowed")]
    MethodNotAllowed,
}

/// Seconds a sender should wait before retrying a 503.
const RETRY_AFTER_OVERLOADED: u32 = 1;
const RETRY_AFTER_UNAVAILABLE: u32 = 5;

/// How an ingress failure is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answer {
    pub status: StatusCode,
    pub code: &'static str,
    /// Seconds, on a 503.
    pub retry_after: Option<u32>,
}

impl Answer {
    const fn new(status: StatusCode, code: &'static str) -> Self {
        Self {
            status,
            code,
            retry_after: None,
        }
    }

    const fn retry(code: &'static str, seconds: u32) -> Self {
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code,
            retry_after: Some(seconds),
        }
    }
}

impl IngressError {
    /// The one mapping from a failure to its status, code and `Retry-After`.
    pub fn answer(&self) -> Answer {
        use IngressError::*;
        match self {
            Unauthorized => Answer::new(StatusCode::UNAUTHORIZED, "unauthorized"),
            PayloadTooLarge { .. } | NotStored(PublishError::TooLarge { .. }) => too_large(),
            UnreadableBody(_) => Answer::new(StatusCode::BAD_REQUEST, "unreadable_body"),
            BodyTimeout(_) => Answer::new(StatusCode::REQUEST_TIMEOUT, "request_timeout"),
            Rejected(rejection) if rejection.is_malformed() => {
                Answer::new(StatusCode::BAD_REQUEST, rejection.code())
            }
            Rejected(rejection) => Answer::new(StatusCode::UNPROCESSABLE_ENTITY, rejection.code()),
            // Kafka will never take it: a 4xx, so that the sender does not retry forever.
            NotStored(PublishError::Poison(refused)) | RefusedByKafka { refused, .. } => {
                match refused.is_too_large() {
                    true => too_large(),
                    false => Answer::new(StatusCode::UNPROCESSABLE_ENTITY, "refused_by_kafka"),
                }
            }
            Overloaded => Answer::retry("overloaded", RETRY_AFTER_OVERLOADED),
            NotStored(error) => not_stored(error),
            NotFound => Answer::new(StatusCode::NOT_FOUND, "not_found"),
            MethodNotAllowed => Answer::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
        }
    }

    pub fn code(&self) -> &'static str {
        self.answer().code
    }

    /// Refusals that may come before the body is read.
    fn leaves_body_unread(&self) -> bool {
        matches!(
            self,
            IngressError::Unauthorized
                | IngressError::Overloaded
                | IngressError::PayloadTooLarge { .. }
                | IngressError::BodyTimeout(_)
                | IngressError::UnreadableBody(_)
        )
    }
}

fn too_large() -> Answer {
    Answer::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
}

/// A record not stored for a reason that may pass: 503, the sender retries.
fn not_stored(error: &PublishError) -> Answer {
    match error {
        PublishError::QueueFull => Answer::retry("queue_full", RETRY_AFTER_OVERLOADED),
        PublishError::VolumeStalled { .. } => {
            Answer::retry("volume_stalled", RETRY_AFTER_OVERLOADED)
        }
        PublishError::DiskFull { .. } => Answer::retry("spool_full", RETRY_AFTER_UNAVAILABLE),
        PublishError::Timeout(_) | PublishError::NotDurable(_) => {
            Answer::retry("publish_timeout", RETRY_AFTER_UNAVAILABLE)
        }
        PublishError::TooLarge { .. } => too_large(),
        PublishError::Poison(_)
        | PublishError::Refused(_)
        | PublishError::Replacing
        | PublishError::ProducerClosed
        | PublishError::Storage(_) => Answer::retry("publish_failed", RETRY_AFTER_UNAVAILABLE),
    }
}

impl ResponseError for IngressError {
    fn status_code(&self) -> StatusCode {
        self.answer().status
    }

    fn error_response(&self) -> HttpResponse {
        let answer = self.answer();
        let mut body = json!({"error": {"code": answer.code, "message": self.to_string()}});
        match self {
            IngressError::Rejected(_) => body["deadLettered"] = json!(true),
            IngressError::RefusedByKafka { dead_lettered, .. } => {
                body["deadLettered"] = json!(dead_lettered);
            }
            _ => {}
        }
        let mut response = HttpResponse::build(answer.status);
        if self.leaves_body_unread() {
            // Keeping the connection would mean reading (and buffering) the rest of a body
            // nobody wants: close it instead, so a refused sender costs nothing more.
            response.force_close();
        }
        if let Some(seconds) = answer.retry_after {
            response.insert_header((header::RETRY_AFTER, HeaderValue::from(seconds)));
        }
        match self {
            IngressError::MethodNotAllowed => {
                response.insert_header((header::ALLOW, "POST"));
            }
            IngressError::Unauthorized => {
                response.insert_header((header::WWW_AUTHENTICATE, "Bearer"));
            }
            _ => {}
        }
        response.json(body)
    }
}
