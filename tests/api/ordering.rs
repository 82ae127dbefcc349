//! Per-chat order: a request that starts after another's 202 follows it in the partition.

use crate::helpers::*;

#[tokio::test]
#[ignore = "needs the broker: scripts/test.sh starts it and runs these"]
async fn sequential_messages_of_one_chat_are_read_back_in_order() {
    let app = spawn_app().await;
    app.wait_ready().await;
    let count = 150;
    let mut offsets = Vec::new();
    for n in 0..count {
        let answer = app.post_accepted(message("chat-ordered", n)).await;
        offsets.push(answer["offset"].as_i64().expect("offset"));
    }
    let records = app.read(&app.topics.messages, count).await;
    assert_eq!(records.len(), count);
    let partition = java_partition("chat-ordered", PARTITIONS);
    let texts: Vec<usize> = records
        .iter()
        .map(|r| {
            assert_eq!(r.partition, partition);
            r.json()["message"]["text"]
                .as_str()
                .expect("text")
                .parse()
                .expect("number")
        })
        .collect();
    assert_eq!(texts, (0..count).collect::<Vec<_>>());
    assert!(
        offsets.windows(2).all(|w| w[0] < w[1]),
        "answered offsets increase: {offsets:?}"
    );
}

#[tokio::test]
#[ignore = "needs the broker: scripts/test.sh starts it and runs these"]
async fn concurrent_chats_each_keep_their_own_order() {
    let app = std::sync::Arc::new(spawn_app().await);
    app.wait_ready().await;
    let chats = 8;
    let per_chat = 40;
    let mut senders = Vec::new();
    for c in 0..chats {
        let app = app.clone();
        senders.push(tokio::spawn(async move {
            for n in 0..per_chat {
                app.post_accepted(message(&format!("chat-{c}"), n)).await;
            }
        }));
    }
    for sender in senders {
        sender.await.expect("sender");
    }
    let records = app.read(&app.topics.messages, chats * per_chat).await;
    assert_each_chat_in_order(&records, chats, per_chat);
}
