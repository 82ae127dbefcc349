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
    UnreadableBody(String),
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

impl IngressError {
    pub fn code(&self) -> &'static str {
        match self {
            IngressError::Unauthorized => "unauthorized",
            IngressError::PayloadTooLarge { .. } => "payload_too_large",
            IngressError::UnreadableBody(_) => "unreadable_body",
            IngressError::BodyTimeout(_) => "request_timeout",
            IngressError::Rejected(rejection) => rejection.code(),
            IngressError::Overloaded => "overloaded",
            IngressError::NotStored(PublishError::QueueFull) => "queue_full",
            IngressError::NotStored(PublishError::TooLarge { .. }) => "payload_too_large",
            IngressError::NotStored(PublishError::Poison(refused))
            | IngressError::RefusedByKafka { refused, .. }
                if refused.is_too_large() =>
            {
                "payload_too_large"
            }
            IngressError::NotStored(PublishError::Poison(_))
            | IngressError::RefusedByKafka { .. } => "refused_by_kafka",
            IngressError::NotStored(PublishError::DiskFull { .. }) => "spool_full",
            IngressError::NotStored(PublishError::Timeout(_) | PublishError::NotDurable(_)) => {
                "publish_timeout"
            }
            IngressError::NotStored(PublishError::VolumeStalled { .. }) => "volume_stalled",
            IngressError::NotStored(
                PublishError::Refused(_)
                | PublishError::Replacing
                | PublishError::ProducerClosed
                | PublishError::Storage(_),
            ) => "publish_failed",
            IngressError::NotFound => "not_found",
            IngressError::MethodNotAllowed => "method_not_allowed",
        }
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

    fn retry_after(&self) -> Option<u32> {
        match self {
            IngressError::Overloaded
            | IngressError::NotStored(
                PublishError::QueueFull | PublishError::VolumeStalled { .. },
            ) => Some(RETRY_AFTER_OVERLOADED),
            IngressError::NotStored(PublishError::TooLarge { .. } | PublishError::Poison(_)) => {
                None
            }
            IngressError::NotStored(_) => Some(RETRY_AFTER_UNAVAILABLE),
            _ => None,
        }
    }
}

impl ResponseError for IngressError {
    fn status_code(&self) -> StatusCode {
        match self {
            IngressError::Unauthorized => StatusCode::UNAUTHORIZED,
            IngressError::PayloadTooLarge { .. }
            | IngressError::NotStored(PublishError::TooLarge { .. }) => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            // Kafka will never take it: a 4xx, so that the sender does not retry forever.
            IngressError::NotStored(PublishError::Poison(refused))
            | IngressError::RefusedByKafka { refused, .. }
                if refused.is_too_large() =>
            {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            IngressError::NotStored(PublishError::Poison(_))
            | IngressError::RefusedByKafka { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            IngressError::UnreadableBody(_) => StatusCode::BAD_REQUEST,
            IngressError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            IngressError::Rejected(rejection) if rejection.is_malformed() => {
                StatusCode::BAD_REQUEST
            }
            IngressError::Rejected(_) => StatusCode::UNPROCESSABLE_ENTITY,
            IngressError::Overloaded | IngressError::NotStored(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            IngressError::NotFound => StatusCode::NOT_FOUND,
            IngressError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut body = json!({"error": {"code": self.code(), "message": self.to_string()}});
        match self {
            IngressError::Rejected(_) => body["deadLettered"] = json!(true),
            IngressError::RefusedByKafka { dead_lettered, .. } => {
                body["deadLettered"] = json!(dead_lettered);
            }
            _ => {}
        }
        let mut response = HttpResponse::build(self.status_code());
        if self.leaves_body_unread() {
            // Keeping the connection would mean reading (and buffering) the rest of a body
            // nobody wants: close it instead, so a refused sender costs nothing more.
            response.force_close();
        }
        if let Some(seconds) = self.retry_after() {
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
