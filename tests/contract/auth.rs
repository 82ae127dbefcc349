//! Who may send: tokens in each place the contract names, Standard Webhooks signatures, and
//! nothing stored for strangers.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::app::*;

#[tokio::test]
async fn accepts_the_token_in_each_place_the_contract_names() {
    // The same webhook each time, each to be stored: repeats are not answered from memory.
    let app = spawn(&[("BRIDGE_DEDUP_WINDOW_S", "0")]).await;
    let requests = [
        app.client.post(app.webhook_url()).bearer_auth(TOKEN),
        app.client
            .post(app.webhook_url())
            .header("X-Webhook-Token", TOKEN),
        app.client
            .post(format!("{}?token={TOKEN}", app.webhook_url())),
    ];
    for request in requests {
        let response = request.body(SEED).send().await.expect("sent");
        assert_eq!(response.status(), 202);
    }
    assert_eq!(app.recorder.stored().len(), 3);
}

#[tokio::test]
async fn refuses_strangers_with_401_and_stores_nothing_not_even_a_dead_letter() {
    let app = spawn(&[]).await;
    let requests = [
        app.client.post(app.webhook_url()),
        app.client
            .post(app.webhook_url())
            .bearer_auth("wrong-token"),
        app.client
            .post(app.webhook_url())
            .header("X-Webhook-Token", format!("{TOKEN}x")),
        app.client.post(format!("{}?token=nope", app.webhook_url())),
        app.client
            .post(app.webhook_url())
            .header("webhook-id", "msg_1")
            .header("webhook-timestamp", "1")
            .header("webhook-signature", "v1,AAAA"),
    ];
    for request in requests {
        let (status, body) = error_of(request.body(SEED).send().await.expect("sent")).await;
        assert_eq!(status, 401, "{body}");
        assert_eq!(body["error"]["code"], "unauthorized");
    }
    let response = app
        .client
        .post(app.webhook_url())
        .body("not json")
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 401);
    assert!(app.recorder.stored().is_empty());
}

fn sign(key: &[u8], id: &str, timestamp: u64, body: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("key");
    mac.update(format!("{id}.{timestamp}.{body}").as_bytes());
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    )
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

#[tokio::test]
async fn a_signed_request_is_stored_under_its_webhook_id_and_a_forged_or_stale_one_is_not() {
    let key = b"a signing key of the contract tests";
    let secret = format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(key)
    );
    let app = spawn(&[
        ("BRIDGE_AUTH_TOKENS", ""),
        ("BRIDGE_WEBHOOK_SECRETS", &secret),
    ])
    .await;
    let signed = |id: &str, ts: u64, signature: String| {
        app.client
            .post(app.webhook_url())
            .header("webhook-id", id)
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", signature)
            .body(SEED)
            .send()
    };
    let ts = now();
    let response = signed("msg_signed_1", ts, sign(key, "msg_signed_1", ts, SEED))
        .await
        .expect("sent");
    assert_eq!(response.status(), 202);
    let answer: serde_json::Value = response.json().await.expect("json");
    assert_eq!(answer["id"], "msg_signed_1");
    let stored = app.recorder.stored();
    assert_eq!(header(&stored[0], "ce_id"), Some("msg_signed_1"));

    let forged = signed(
        "msg_signed_2",
        ts,
        sign(b"another key", "msg_signed_2", ts, SEED),
    );
    assert_eq!(forged.await.expect("sent").status(), 401);
    let stale = ts - 3600;
    let old = signed(
        "msg_signed_3",
        stale,
        sign(key, "msg_signed_3", stale, SEED),
    );
    assert_eq!(old.await.expect("sent").status(), 401);
    let tokens = app
        .client
        .post(app.webhook_url())
        .bearer_auth(TOKEN)
        .body(SEED)
        .send();
    assert_eq!(
        tokens.await.expect("sent").status(),
        401,
        "no tokens configured here"
    );
    assert_eq!(app.recorder.stored().len(), 1);
}
