//! A connector kind from outside perch: `pager`, a made-up platform defined in this
//! file, registered with `Hub::builder().connector_kind::<Pager>("pager")`. It takes a
//! token-checked JSON event on `/hooks/<name>` and sends replies to a strict fake pager
//! server that refuses malformed requests and records every one (a double send shows).
//! Also: `perch check`-style errors for connector kinds (an unknown kind with a
//! did-you-mean, a misspelled setting at its own line) come from the same registry.

use perch::action::{Delivered, MessageBody, Operation, Target};
use perch::connectors::{
    ConnectorEnv, ConnectorKind, Inbound, InboundError, InboundRequest, Reply, SendError,
    SharedConnector,
};
use perch::event::{Chat, ChatType, Event, EventKind, Person};
use perch::testing::TestHub;
use perch::testing::{eventually, serve_fake};
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};

/// `[connectors.<name>] kind = "pager"`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PagerConfig {
    /// Inbound requests carry it in `x-pager-token`.
    token: String,
    /// Where replies are POSTed.
    send_url: String,
}

struct Pager {
    name: String,
    config: PagerConfig,
    http: reqwest::Client,
}

#[async_trait::async_trait]
impl perch::connectors::Connector for Pager {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        "pager"
    }

    fn handle_inbound(&self, req: &InboundRequest) -> Result<Inbound, InboundError> {
        let token = req.headers.get("x-pager-token").map(|v| v.as_bytes());
        if token != Some(self.config.token.as_bytes()) {
            return Err(InboundError::BadToken);
        }
        let body: Value = serde_json::from_slice(&req.body)
            .map_err(|e| InboundError::Malformed(format!("not JSON: {e}")))?;
        let field = |k: &str| {
            body[k]
                .as_str()
                .map(str::to_string)
                .ok_or_else(|| InboundError::Malformed(format!("no string `{k}`")))
        };
        let mut event = Event::new(&self.name, EventKind::Message, req.now);
        event.external_id = Some(field("id")?);
        event.message_id = Some(field("id")?);
        event.text = Some(field("text")?);
        event.chat = Some(Chat {
            id: field("room")?,
            chat_type: ChatType::Group,
        });
        event.sender = Some(Person {
            id: field("from")?,
            name: None,
        });
        Ok(Inbound::Events {
            events: vec![event],
            ack: Reply::ok(json!({"ok": true})),
        })
    }

    async fn execute(&self, op: &Operation, key: &str) -> Result<Delivered, SendError> {
        let Operation::Send {
            to: Target::Chat { id },
            body: MessageBody::Text { text },
            ..
        } = op
        else {
            return Err(SendError::Unsupported("send anything but text to a room"));
        };
        let response = self
            .http
            .post(&self.config.send_url)
            .json(&json!({"room": id, "text": text, "key": key}))
            .send()
            .await
            .map_err(|e| SendError::retry(e.to_string()))?;
        if !response.status().is_success() {
            return Err(SendError::Permanent(format!("HTTP {}", response.status())));
        }
        Ok(Delivered::default())
    }
}

impl ConnectorKind for Pager {
    type Config = PagerConfig;

    fn build(name: &str, config: PagerConfig, env: &ConnectorEnv) -> SharedConnector {
        Arc::new(Pager {
            name: name.to_string(),
            config,
            http: env.http.clone(),
        })
    }

    fn validate(name: &str, config: &PagerConfig, at: usize, issues: &mut perch::config::Issues) {
        if config.token.len() < 8 {
            issues.at(
                at,
                format!("connector `{name}`: token must be at least 8 characters"),
            );
        }
    }
}

/// The fake pager server: takes `{"room", "text", "key"}` (all strings), records it;
/// anything else is a 400 and counted.
#[derive(Default)]
struct PagerLog {
    sent: Vec<Value>,
    refused: usize,
}

async fn fake_pager(log: Arc<Mutex<PagerLog>>) -> String {
    let app = axum::Router::new().route(
        "/send",
        axum::routing::post(move |body: axum::body::Bytes| {
            let log = log.clone();
            async move {
                let v: Option<Value> = serde_json::from_slice(&body).ok();
                let good = v.as_ref().is_some_and(|v| {
                    ["room", "text", "key"].iter().all(|k| v[k].is_string())
                        && v.as_object().is_some_and(|o| o.len() == 3)
                });
                let mut log = log.lock().unwrap();
                match (good, v) {
                    (true, Some(v)) => {
                        log.sent.push(v);
                        axum::http::StatusCode::OK
                    }
                    _ => {
                        log.refused += 1;
                        axum::http::StatusCode::BAD_REQUEST
                    }
                }
            }
        }),
    );
    format!("{}/send", serve_fake(app).await)
}

fn config(send_url: &str) -> String {
    format!(
        r#"
[connectors.pager]
kind = "pager"
token = "pager-token-1"
send_url = "{send_url}"

[bots.echo]
kind = "echo"

[[routes]]
connector = "pager"
bots = ["echo"]
"#
    )
}

#[tokio::test]
async fn a_connector_kind_from_outside_perch_receives_an_event_and_sends_once() {
    let log = Arc::new(Mutex::new(PagerLog::default()));
    let url = fake_pager(log.clone()).await;
    let hub = TestHub::start(
        perch::Hub::builder().connector_kind::<Pager>("pager"),
        &config(&url),
    )
    .await;
    let client = reqwest::Client::new();
    let post = |token: &'static str, body: Value| {
        client
            .post(format!("{}/hooks/pager", hub.url()))
            .header("x-pager-token", token)
            .json(&body)
            .send()
    };
    let page = json!({"id": "p-1", "room": "r-9", "from": "u-7", "text": "hello pager"});

    // A wrong token is refused, and nothing is stored or sent.
    let refused = post("wrong-token", page.clone()).await.unwrap();
    assert_eq!(refused.status(), 401);

    let accepted = post("pager-token-1", page.clone()).await.unwrap();
    assert_eq!(accepted.status(), 200, "{:?}", accepted.text().await);
    // The same page again (a platform retry): deduplicated by its id.
    let again = post("pager-token-1", page).await.unwrap();
    assert_eq!(again.status(), 200);

    eventually(10, "a send to the pager", || async {
        (!log.lock().unwrap().sent.is_empty()).then_some(())
    })
    .await;
    // Time for a double send to show up, if there were one.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let log = log.lock().unwrap();
    assert_eq!(log.refused, 0, "perch sent a malformed request");
    assert_eq!(log.sent.len(), 1, "sent: {:?}", log.sent);
    assert_eq!(log.sent[0]["room"], "r-9");
    assert_eq!(log.sent[0]["text"], "hello pager");
    // Nothing went to the kit's own platform.
    assert!(hub.platform().ops().is_empty());
}

#[test]
fn connector_kind_errors_name_the_kind_and_the_line() {
    let hub = perch::Hub::builder().connector_kind::<Pager>("pager");
    let path = std::path::Path::new("perch.toml");
    let check = |text: &str| match hub.parse(text, path) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(e) => e.to_string(),
    };

    // An unknown kind: did-you-mean over the registered kinds, built-in and added.
    let err = check("[connectors.p]\nkind = \"pagr\"\ntoken = \"pager-token-1\"\n");
    assert!(err.contains("perch.toml:2:"), "{err}");
    assert!(
        err.contains("unknown kind `pagr` (did you mean `pager`?)"),
        "{err}"
    );
    assert!(err.contains("webhook") && err.contains("pager"), "{err}");

    // A misspelled setting is refused at its own line (the struct denies unknown fields).
    let err = check(
        "[connectors.p]\nkind = \"pager\"\ntoken = \"pager-token-1\"\nsend_ur = \"http://x\"\n",
    );
    assert!(err.contains("perch.toml:4:"), "{err}");
    assert!(
        err.contains("connector `p`") && err.contains("send_ur"),
        "{err}"
    );

    // The kind's own check runs too.
    let err =
        check("[connectors.p]\nkind = \"pager\"\ntoken = \"short\"\nsend_url = \"http://x\"\n");
    assert!(err.contains("token must be at least 8 characters"), "{err}");

    // Without the registration, `pager` is unknown: kinds come only from the registry.
    let err = match perch::Hub::builder().parse(
        "[connectors.p]\nkind = \"pager\"\ntoken = \"pager-token-1\"\nsend_url = \"http://x\"\n",
        path,
    ) {
        Ok(_) => panic!("pager accepted without being registered"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("unknown kind `pager`"), "{err}");

    // A built-in kind's typo still points at the key.
    let err = match perch::Hub::builder().parse(
        "[connectors.w]\nkind = \"webhook\"\ninsecure = true\nsned_url = \"http://x\"\n",
        path,
    ) {
        Ok(_) => panic!("typo accepted"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("perch.toml:4:") && err.contains("sned_url"),
        "{err}"
    );
}
