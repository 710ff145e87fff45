//! `kind = "http"`: an internal HTTP JSON API that bots query (BI figures, CRM records,
//! device registries). Bots call `BotContext::fetch(<name>, DataRequest)` and get JSON.
//!
//! Base URL, headers (secrets from `${ENV}`), a timeout and retries are configured; a
//! retry happens on connect errors, timeouts, 5xx and 429 (honouring `Retry-After` up to
//! the timeout). Failures come back as `SourceError`s worded for the person who asked.

use super::*;
use crate::config::{EnvString, Secret, de_duration};
use serde::Deserialize;

fn default_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_retries() -> u32 {
    2
}

/// `[connectors.<name>] kind = "http"`
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpSourceConfig {
    /// Base URL; request paths are appended to it.
    pub base_url: EnvString,
    /// Name used in messages to people ("BI API timed out after 5 s"). Default: the
    /// connector's name.
    #[serde(default)]
    pub display_name: Option<String>,
    /// Headers sent with every request (values may be secrets: `"Bearer ${BI_TOKEN}"`).
    #[serde(default)]
    pub headers: BTreeMap<String, Secret>,
    /// Time allowed for one request.
    #[schemars(with = "crate::config::DurationText")]
    #[serde(default = "default_timeout", deserialize_with = "de_duration")]
    pub timeout: Duration,
    /// Extra attempts after a failure worth retrying.
    #[serde(default = "default_retries")]
    pub retries: u32,
}

impl HttpSourceConfig {
    pub fn validate(&self, name: &str, at: usize, issues: &mut crate::config::Issues) {
        match reqwest::Url::parse(&self.base_url) {
            Ok(u) if u.scheme() == "http" || u.scheme() == "https" => {}
            _ => issues.at(
                at,
                format!(
                    "connector `{name}`: base_url {:?} is not an http(s) URL",
                    &*self.base_url
                ),
            ),
        }
        for (h, v) in &self.headers {
            if reqwest::header::HeaderName::from_bytes(h.as_bytes()).is_err() {
                issues.at(
                    at,
                    format!("connector `{name}`: {h:?} is not a valid header name"),
                );
            } else if reqwest::header::HeaderValue::from_str(v.expose()).is_err() {
                // The value may be a secret: name the header, never show the value.
                issues.at(
                    at,
                    format!("connector `{name}`: the value of header {h:?} is not a valid header value (control characters or line breaks)"),
                );
            }
        }
    }
}

pub struct HttpSource {
    name: String,
    display: String,
    config: HttpSourceConfig,
    http: reqwest::Client,
}

impl HttpSource {
    pub fn new(name: &str, config: HttpSourceConfig, http: reqwest::Client) -> Self {
        HttpSource {
            name: name.to_string(),
            display: config
                .display_name
                .clone()
                .unwrap_or_else(|| name.to_string()),
            config,
            http,
        }
    }

    fn url(&self, path: &str) -> String {
        format!(
            "{}/{}",
            self.config.base_url.trim_end_matches('/'),
            path.trim_start_matches('/')
        )
    }

    async fn once(
        &self,
        req: &DataRequest,
    ) -> Result<serde_json::Value, (SourceError, bool, Option<Duration>)> {
        let url = self.url(&req.path);
        let mut r = match &req.body {
            Some(body) => self.http.post(&url).json(body),
            None => self.http.get(&url),
        };
        r = r.query(&req.query).timeout(self.config.timeout);
        // Configured headers replace any of the same name (`headers()` replaces, `header()`
        // appends): a configured `Content-Type` must not become a second header line.
        let mut configured = reqwest::header::HeaderMap::new();
        for (k, v) in &self.config.headers {
            if let (Ok(name), Ok(value)) = (
                reqwest::header::HeaderName::from_bytes(k.as_bytes()),
                reqwest::header::HeaderValue::from_str(v.expose()),
            ) {
                configured.insert(name, value);
            }
        }
        r = r.headers(configured);
        let resp = r.send().await.map_err(|e| {
            let err = if e.is_timeout() {
                SourceError::Timeout {
                    source_name: self.display.clone(),
                    after: self.config.timeout,
                }
            } else {
                // reqwest's text can include the URL; keep only the kind of failure.
                let detail = if e.is_connect() {
                    "connection failed".to_string()
                } else {
                    "request failed".to_string()
                };
                SourceError::Unreachable {
                    source_name: self.display.clone(),
                    detail,
                }
            };
            (err, true, None)
        })?;
        let status = resp.status();
        let retry_after = super::retry_after(resp.headers());
        let text = resp.text().await.map_err(|_| {
            (
                SourceError::Timeout {
                    source_name: self.display.clone(),
                    after: self.config.timeout,
                },
                true,
                None,
            )
        })?;
        if status.as_u16() == 404 {
            return Err((
                SourceError::NotFound {
                    source_name: self.display.clone(),
                    path: req.path.clone(),
                },
                false,
                None,
            ));
        }
        if !status.is_success() {
            let retry = status.is_server_error() || status.as_u16() == 429;
            let detail: String = text.chars().take(120).collect();
            return Err((
                SourceError::Status {
                    source_name: self.display.clone(),
                    status: status.as_u16(),
                    detail,
                },
                retry,
                retry_after,
            ));
        }
        serde_json::from_str(&text).map_err(|e| {
            (
                SourceError::Decode {
                    source_name: self.display.clone(),
                    detail: format!("not JSON ({e})"),
                },
                false,
                None,
            )
        })
    }
}

#[async_trait]
impl DataSource for HttpSource {
    async fn fetch(&self, req: &DataRequest) -> Result<serde_json::Value, SourceError> {
        let mut attempt = 0;
        loop {
            match self.once(req).await {
                Ok(v) => return Ok(v),
                Err((e, retry, after)) if retry && attempt < self.config.retries => {
                    attempt += 1;
                    let wait = after
                        .unwrap_or(Duration::from_millis(200 * u64::from(attempt)))
                        .min(self.config.timeout);
                    tracing::warn!(source = %self.name, attempt, error = %e, "data source failed, retrying");
                    tokio::time::sleep(wait).await;
                }
                Err((e, _, _)) => return Err(e),
            }
        }
    }
}

#[async_trait]
impl Connector for HttpSource {
    fn name(&self) -> &str {
        &self.name
    }
    fn kind(&self) -> &'static str {
        "http"
    }

    fn secrets(&self) -> Vec<&str> {
        self.config.headers.values().map(Secret::expose).collect()
    }
    async fn execute(&self, _op: &Operation, _key: &str) -> Result<Delivered, SendError> {
        Err(SendError::Unsupported(
            "send messages (it is a data source)",
        ))
    }
    fn data_source(&self) -> Option<&dyn DataSource> {
        Some(self)
    }
}

impl crate::connectors::ConnectorKind for HttpSource {
    type Config = HttpSourceConfig;

    fn build(
        name: &str,
        config: HttpSourceConfig,
        env: &crate::connectors::ConnectorEnv,
    ) -> crate::connectors::SharedConnector {
        std::sync::Arc::new(HttpSource::new(name, config, env.http.clone()))
    }

    fn validate(
        name: &str,
        config: &HttpSourceConfig,
        at: usize,
        issues: &mut crate::config::Issues,
    ) {
        config.validate(name, at, issues);
    }
}
