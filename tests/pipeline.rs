//! The core pipeline end to end, on a real server: webhook → journal → router → bot →
//! outbox → connector.

mod common;
use common::*;

const CONFIG: &str = r#"
[server]
listen = "127.0.0.1:0"

[connectors.web]
kind = "local"

[connectors.events]
kind = "webhook"
secret = "s3cret"
topic_header = "X-Perch-Topic"
id_header = "X-Perch-Delivery"

[bots.builds]
kind = "notify"
connector = "web"
chat = "general"
text = "Build failed: {{payload.repo}}"

[[routes]]
connector = "events"
topic = "build.*"
bots = ["builds"]
"#;

#[tokio::test]
async fn signed_event_reaches_the_chat() {
    let t = TestPerch::start(CONFIG).await;
    let body = br#"{"repo":"shop"}"#;
    let resp = reqwest::Client::new()
        .post(t.url("/hooks/events"))
        .header("X-Perch-Topic", "build.failed")
        .header("X-Perch-Delivery", "d-1")
        .header("X-Perch-Signature", format!("sha256={}", sign("s3cret", body)))
        .body(body.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let store = t.perch().shared.store.clone();
    let msgs = eventually(10, "message in #general", || {
        let store = store.clone();
        async move {
            let v = store.kv_scan("web/web", "msg/general/").await.unwrap();
            (!v.is_empty()).then_some(v)
        }
    })
    .await;
    let text = String::from_utf8_lossy(&msgs[0].1).to_string();
    assert!(text.contains("Build failed: shop"), "{text}");
}
