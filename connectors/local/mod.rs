//! `kind = "local"`: the built-in web chat. A real connector: people's messages go
//! through the journal, router and outbox like any platform's; bots' answers come back
//! through `execute`. History lives in the store and survives restarts.
//!
//! (Minimal core; the UI, HTTP API and live updates are filled in by the web-chat work.)

use super::*;
use crate::action::{MessageBody, Target};
use serde::{Deserialize, Serialize};

/// `[connectors.<name>] kind = "local"`
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct LocalConfig {
    /// Title shown in the browser.
    #[serde(default)]
    pub title: Option<String>,
}

/// One message in a room.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ChatMessage {
    pub id: String,
    pub room: String,
    pub author: String,
    pub from_bot: bool,
    pub body: MessageBody,
    pub at: chrono::DateTime<chrono::Utc>,
}

pub struct Local {
    name: String,
    env: ConnectorEnv,
}

impl Local {
    pub fn new(name: &str, _config: LocalConfig, env: &ConnectorEnv) -> Self {
        Local {
            name: name.to_string(),
            env: env.clone(),
        }
    }

    fn ns(&self) -> String {
        format!("web/{}", self.name)
    }

    /// Messages of a room, oldest first.
    pub async fn history(&self, room: &str) -> Result<Vec<ChatMessage>, crate::store::StoreError> {
        let mut out = Vec::new();
        for (_, raw) in self
            .env
            .store
            .kv_scan(&self.ns(), &format!("msg/{room}/"))
            .await?
        {
            out.push(serde_json::from_slice(&raw)?);
        }
        Ok(out)
    }
}

#[async_trait]
impl Connector for Local {
    fn name(&self) -> &str {
        &self.name
    }
    fn kind(&self) -> &'static str {
        "local"
    }

    async fn execute(&self, op: &Operation, idempotency_key: &str) -> Result<Delivered, SendError> {
        match op {
            Operation::Send { to, body, .. } => {
                let room = match to {
                    Target::Chat { id } => id.clone(),
                    Target::Person { id, .. } => format!("@{id}"),
                };
                let msg = ChatMessage {
                    id: idempotency_key.to_string(),
                    room: room.clone(),
                    author: idempotency_key
                        .split('/')
                        .nth(1)
                        .unwrap_or("perch")
                        .to_string(),
                    from_bot: true,
                    body: body.clone(),
                    at: self.env.clock.now(),
                };
                let raw =
                    serde_json::to_vec(&msg).map_err(|e| SendError::Permanent(e.to_string()))?;
                let key = format!("msg/{room}/{}", idempotency_key);
                self.env
                    .store
                    .kv_put(&self.ns(), &key, &raw)
                    .await
                    .map_err(|e| SendError::retry(e.to_string()))?;
                Ok(Delivered {
                    id: Some(idempotency_key.to_string()),
                    detail: serde_json::Value::Null,
                })
            }
            _ => Err(SendError::Unsupported("do that in the web chat yet")),
        }
    }
}
