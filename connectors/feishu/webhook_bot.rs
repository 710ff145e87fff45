//! `kind = "feishu_webhook"`: a Feishu/Lark **custom group bot** — one group's incoming
//! webhook. Send-only: it cannot receive messages or card clicks (refs §3), so cards it
//! posts should not rely on buttons.
//!
//! Flow: outbox → **this connector** → `POST <webhook_url>`.
//!
//! Bodies (refs §3): text `{"msg_type":"text","content":{"text"}}`; post with the extra
//! `post` level; cards as an **object** in `card`. With a `secret`, `timestamp` (Unix
//! seconds, a string) and `sign` are added at the top level. With a `keyword`, every
//! message is made to contain it. Bodies over 20 KB are refused before sending.

use super::*;
use crate::action::MessageBody;
use crate::config::{EnvString, Secret};
use serde_json::{Value, json};

/// Largest body the custom bot accepts (refs §3: 20 KB).
const MAX_BODY_BYTES: usize = 20 * 1024;

/// `[connectors.<name>] kind = "feishu_webhook"`
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FeishuWebhookConfig {
    /// Language of perch's built-in texts for people on this connector: `en` or
    /// `zh-CN` (default: `[server] locale`). A bot's own `locale` wins.
    #[serde(default)]
    pub locale: Option<crate::i18n::Locale>,
    /// The bot's webhook address, `https://open.feishu.cn/open-apis/bot/v2/hook/<token>`
    /// (Lark: `open.larksuite.com`). It is a credential: set it from the environment.
    pub webhook_url: Secret,
    /// The signing secret, when the bot's security settings enable "signature
    /// verification". Adds `timestamp` and `sign` to every message.
    #[serde(default)]
    pub secret: Option<Secret>,
    /// The custom keyword, when the bot's security settings require one: messages that do
    /// not contain it get it appended (Feishu would refuse them with 19024).
    #[serde(default)]
    pub keyword: Option<EnvString>,
    /// How markdown bodies are sent: `post` (an `md` element) or `text`.
    #[serde(default)]
    pub markdown: MarkdownAs,
}

impl FeishuWebhookConfig {
    pub fn validate(&self, name: &str, at: usize, issues: &mut crate::config::Issues) {
        // Never echo the URL: its last segment is the bot's token.
        match reqwest::Url::parse(self.webhook_url.expose()) {
            Ok(u) if u.scheme() == "https" || u.scheme() == "http" => {}
            _ => issues.at(at, format!("connector `{name}`: webhook_url is not an http(s) URL (expected https://open.feishu.cn/open-apis/bot/v2/hook/<token>)")),
        }
        if self.keyword.as_deref().is_some_and(|k| k.trim().is_empty()) {
            issues.at(
                at,
                format!("connector `{name}`: keyword is empty; remove it or set the bot's keyword"),
            );
        }
    }
}

pub struct FeishuWebhook {
    name: String,
    config: FeishuWebhookConfig,
    http: reqwest::Client,
    clock: crate::clock::SharedClock,
}

impl FeishuWebhook {
    pub fn new(name: &str, config: FeishuWebhookConfig, env: &ConnectorEnv) -> Self {
        FeishuWebhook {
            name: name.to_string(),
            config,
            http: env.http.clone(),
            clock: env.clock.clone(),
        }
    }

    /// The JSON body for `body`, signed when a secret is set, at time `now_secs`.
    pub fn body(&self, body: &MessageBody, now_secs: i64) -> Result<Value, SendError> {
        let keyword = self
            .config
            .keyword
            .as_deref()
            .map(str::trim)
            .filter(|k| !k.is_empty());
        let with_keyword = |text: &str| match keyword {
            Some(k) if !text.contains(k) => format!("{text}\n{k}"),
            _ => text.to_string(),
        };
        let mut out = match body {
            MessageBody::Text { text } => {
                json!({ "msg_type": "text", "content": { "text": with_keyword(text) } })
            }
            MessageBody::Markdown { text } if self.config.markdown == MarkdownAs::Text => {
                json!({ "msg_type": "text", "content": { "text": with_keyword(text) } })
            }
            // [unverified] refs §3 shows only `text`/`at` runs for custom-bot posts; the
            // `md` run is from the app API (§2.2). `markdown = "text"` is the fallback.
            MessageBody::Markdown { text } => {
                json!({ "msg_type": "post", "content": { "post": { "zh_cn": {
                "title": "", "content": [[{ "tag": "md", "text": with_keyword(text) }]] } } } })
            }
            MessageBody::Card { card } => {
                let mut card = feishu_card(card, "feishu_webhook")?;
                if let Some(k) = keyword
                    && !card.to_string().contains(k)
                {
                    add_keyword_to_card(&mut card, k);
                }
                json!({ "msg_type": "interactive", "card": card })
            }
        };
        if let Some(secret) = self.config.secret.as_ref().filter(|s| !s.is_empty()) {
            out["timestamp"] = json!(now_secs.to_string());
            out["sign"] = json!(crypto::custom_bot_sign(now_secs, secret.expose()));
        }
        let size = out.to_string().len();
        if size > MAX_BODY_BYTES {
            return Err(SendError::Permanent(format!(
                "message is {size} bytes; a Feishu custom bot accepts at most 20 KB (send less, or use an app bot)"
            )));
        }
        Ok(out)
    }
}

/// Make a card contain the keyword: a last element carrying it (2.0 cards keep their
/// elements under `body`).
fn add_keyword_to_card(card: &mut Value, keyword: &str) {
    let is_v2 = card.get("schema").and_then(Value::as_str) == Some("2.0");
    let element = if is_v2 {
        json!({ "tag": "markdown", "content": keyword })
    } else {
        json!({ "tag": "div", "text": { "tag": "plain_text", "content": keyword } })
    };
    let list = if is_v2 {
        card.pointer_mut("/body/elements")
    } else {
        card.get_mut("elements")
    };
    match list.and_then(Value::as_array_mut) {
        Some(elements) => elements.push(element),
        None if is_v2 => card["body"] = json!({ "elements": [element] }),
        None => card["elements"] = json!([element]),
    }
}

/// The custom bot's answer → result (refs §3: check `code == 0`; the codes below).
fn judge(status: u16, text: &str) -> Result<(), SendError> {
    let doc: Option<Value> = serde_json::from_str(text).ok();
    let code = doc
        .as_ref()
        .and_then(|d| d.get("code").or_else(|| d.get("StatusCode")))
        .and_then(Value::as_i64);
    let msg = doc
        .as_ref()
        .and_then(|d| d.get("msg").or_else(|| d.get("StatusMessage")))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .chars()
        .take(200)
        .collect::<String>();
    match code {
        Some(0) => Ok(()),
        Some(19021) => Err(SendError::Permanent(format!(
            "custom bot refused the signature (19021: {msg}): check `secret` and that this host's clock is within 1 h"
        ))),
        Some(19024) => Err(SendError::Permanent(format!(
            "custom bot requires a keyword the message lacks (19024: {msg}): set `keyword` to the bot's keyword"
        ))),
        Some(11232) => Err(SendError::retry(format!(
            "custom bot frequency limit (11232: {msg}); 100/min and 5/s per bot"
        ))),
        Some(9499) => Err(SendError::Permanent(format!(
            "custom bot says the body is malformed (9499: {msg})"
        ))),
        Some(19002) => Err(SendError::Permanent(format!(
            "custom bot says a parameter is invalid (19002: {msg})"
        ))),
        Some(c) if status >= 500 => Err(SendError::retry(format!(
            "custom bot error {c} with HTTP {status}: {msg}"
        ))),
        Some(c) => Err(SendError::Permanent(format!("custom bot error {c}: {msg}"))),
        None if status == 429 || status >= 500 || status == 408 => Err(SendError::retry(format!(
            "custom bot answered HTTP {status}"
        ))),
        None if (200..300).contains(&status) => {
            Err(SendError::retry("custom bot answered without a code"))
        }
        None => Err(SendError::Permanent(format!(
            "custom bot answered HTTP {status}: {}",
            text.chars().take(200).collect::<String>()
        ))),
    }
}

#[async_trait]
impl Connector for FeishuWebhook {
    fn name(&self) -> &str {
        &self.name
    }
    fn kind(&self) -> &'static str {
        "feishu_webhook"
    }

    fn secrets(&self) -> Vec<&str> {
        let c = &self.config;
        [Some(&c.webhook_url), c.secret.as_ref()]
            .into_iter()
            .flatten()
            .map(Secret::expose)
            .collect()
    }

    /// Sends to the one group the webhook belongs to: the target is ignored, and so is
    /// `reply_to` (a custom bot cannot reply in a thread).
    async fn execute(
        &self,
        op: &Operation,
        _idempotency_key: &str,
    ) -> Result<Delivered, SendError> {
        let Operation::Send { body, .. } = op else {
            return Err(SendError::Unsupported(
                "do that: a Feishu custom group bot can only send messages",
            ));
        };
        let payload = self.body(body, self.clock.now().timestamp())?;
        let resp = self
            .http
            .post(self.config.webhook_url.expose())
            .header("content-type", "application/json; charset=utf-8")
            .body(payload.to_string())
            .send()
            .await
            // `without_url`: the URL holds the bot's token.
            .map_err(|e| {
                SendError::retry(format!(
                    "custom bot: cannot reach Feishu: {}",
                    e.without_url()
                ))
            })?;
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        judge(status, &text)?;
        Ok(Delivered::default())
    }

    /// refs §3: 5/s and 100/min per bot; the webhook is one chat.
    fn rate_limits(&self) -> RateLimits {
        RateLimits {
            per_second: Some(5),
            burst: Some(5),
            per_chat_per_second: None,
            per_minute: Some(100),
        }
    }
}

impl crate::connectors::ConnectorKind for FeishuWebhook {
    type Config = FeishuWebhookConfig;

    fn build(
        name: &str,
        config: FeishuWebhookConfig,
        env: &crate::connectors::ConnectorEnv,
    ) -> crate::connectors::SharedConnector {
        std::sync::Arc::new(FeishuWebhook::new(name, config, env))
    }

    fn validate(
        name: &str,
        config: &FeishuWebhookConfig,
        at: usize,
        issues: &mut crate::config::Issues,
    ) {
        config.validate(name, at, issues);
    }

    fn locale(config: &FeishuWebhookConfig) -> Option<crate::i18n::Locale> {
        config.locale
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bot(secret: Option<&str>, keyword: Option<&str>) -> FeishuWebhook {
        let config = FeishuWebhookConfig {
            locale: None,
            webhook_url: Secret::new("http://127.0.0.1:1/open-apis/bot/v2/hook/t"),
            secret: secret.map(Secret::new),
            keyword: keyword.map(|k| EnvString(k.to_string())),
            markdown: MarkdownAs::Post,
        };
        FeishuWebhook {
            name: "group".into(),
            config,
            http: reqwest::Client::new(),
            clock: Arc::new(crate::clock::SystemClock),
        }
    }

    #[test]
    fn signed_text_body_matches_vector_f() {
        let b = bot(Some("demo-secret"), None)
            .body(&MessageBody::text("hi"), 1599360473)
            .unwrap();
        assert_eq!(
            b,
            json!({"msg_type":"text","content":{"text":"hi"},"timestamp":"1599360473","sign":"3/MaVZ8JLIy4TUG+7KSFJqvUkTKd+HWY8g+56DZWq8s="})
        );
    }

    #[test]
    fn post_has_the_extra_level_and_card_is_an_object() {
        let b = bot(None, None)
            .body(&MessageBody::markdown("**x**"), 0)
            .unwrap();
        assert_eq!(
            b.pointer("/content/post/zh_cn/content/0/0/tag"),
            Some(&json!("md"))
        );
        let card = json!({"header":{"title":"T"},"elements":[{"type":"divider"}]});
        let b = bot(None, None)
            .body(&MessageBody::Card { card: card.clone() }, 0)
            .unwrap();
        assert_eq!(b["msg_type"], "interactive");
        assert!(b["card"].is_object() && b.get("content").is_none());
        assert!(b.get("sign").is_none());
    }

    #[test]
    fn keyword_is_added_only_when_missing() {
        let b = bot(None, Some("[perch]"))
            .body(&MessageBody::text("hello"), 0)
            .unwrap();
        assert_eq!(b["content"]["text"], "hello\n[perch]");
        let b = bot(None, Some("[perch]"))
            .body(&MessageBody::text("[perch] hello"), 0)
            .unwrap();
        assert_eq!(b["content"]["text"], "[perch] hello");
        let b = bot(None, Some("KW"))
            .body(
                &MessageBody::Card {
                    card: json!({"header":{"title":"T"}}),
                },
                0,
            )
            .unwrap();
        assert!(b["card"].to_string().contains("KW"));
        let b = bot(None, Some("KW"))
            .body(
                &MessageBody::Card {
                    card: json!({"elements":[{"type":"divider"}]}),
                },
                0,
            )
            .unwrap();
        assert_eq!(
            b.pointer("/card/elements/1/text/content"),
            Some(&json!("KW"))
        );
    }

    #[test]
    fn oversized_body_is_refused() {
        let e = bot(None, None)
            .body(&MessageBody::text("x".repeat(21 * 1024)), 0)
            .unwrap_err();
        assert!(matches!(e, SendError::Permanent(m) if m.contains("20 KB")));
    }

    #[test]
    fn error_codes_map_to_clear_errors() {
        assert!(judge(200, r#"{"code":0,"msg":"success","data":{}}"#).is_ok());
        assert!(judge(200, r#"{"StatusCode":0,"StatusMessage":"success"}"#).is_ok());
        assert!(
            matches!(judge(200, r#"{"code":19021,"msg":"sign match fail"}"#), Err(SendError::Permanent(m)) if m.contains("secret"))
        );
        assert!(
            matches!(judge(200, r#"{"code":19024,"msg":"Key Words Not Found"}"#), Err(SendError::Permanent(m)) if m.contains("keyword"))
        );
        assert!(matches!(
            judge(200, r#"{"code":11232,"msg":"frequency limited"}"#),
            Err(SendError::Retry { .. })
        ));
        assert!(matches!(
            judge(400, r#"{"code":9499,"msg":"Bad Request"}"#),
            Err(SendError::Permanent(_))
        ));
        assert!(matches!(
            judge(200, r#"{"code":19002,"msg":"param invalid"}"#),
            Err(SendError::Permanent(_))
        ));
        assert!(matches!(
            judge(502, "bad gateway"),
            Err(SendError::Retry { .. })
        ));
        assert!(matches!(
            judge(404, "not found"),
            Err(SendError::Permanent(_))
        ));
    }
}
