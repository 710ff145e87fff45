//! Data sources (`kind = "http"`) against a wiremock internal API: JSON back, retries on
//! 5xx, errors worded for the person who asked, secrets in headers never in messages.

use perch::connectors::{DataRequest, DataSource, SourceError};
use perch::testing::internals::{HttpSource, HttpSourceConfig};
use std::time::Duration;
use wiremock::matchers::{header, method, path, query_param};
use wiremock::{Mock, MockServer, ResponseTemplate};

fn source(uri: &str, timeout_ms: u64) -> HttpSource {
    let toml = format!(
        "base_url = \"{uri}/api\"\ndisplay_name = \"BI API\"\ntimeout = \"{timeout_ms}ms\"\nretries = 2\n[headers]\nauthorization = \"Bearer tok-123\"\n"
    );
    let config: HttpSourceConfig = toml::from_str(&toml).unwrap();
    HttpSource::new("bi", config, reqwest::Client::new())
}

#[tokio::test]
async fn answers_json_with_headers_and_query() {
    let s = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/api/gmv/daily"))
        .and(query_param("day", "2026-11-20"))
        .and(header("authorization", "Bearer tok-123"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({"gmv": 1200})))
        .mount(&s)
        .await;
    let mut req = DataRequest::get("/gmv/daily");
    req.query.push(("day".into(), "2026-11-20".into()));
    assert_eq!(
        source(&s.uri(), 2000).fetch(&req).await.unwrap(),
        serde_json::json!({"gmv": 1200})
    );
}

#[tokio::test]
async fn retries_server_errors_then_succeeds() {
    let s = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(502))
        .up_to_n_times(2)
        .with_priority(1)
        .mount(&s)
        .await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!([1])))
        .with_priority(2)
        .expect(1)
        .mount(&s)
        .await;
    assert_eq!(
        source(&s.uri(), 2000)
            .fetch(&DataRequest::get("/x"))
            .await
            .unwrap(),
        serde_json::json!([1])
    );
}

#[tokio::test]
async fn failures_read_well_and_hide_secrets() {
    let s = MockServer::start().await;
    Mock::given(path("/api/slow"))
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_millis(600)))
        .mount(&s)
        .await;
    Mock::given(path("/api/gone"))
        .respond_with(ResponseTemplate::new(404))
        .mount(&s)
        .await;
    Mock::given(path("/api/html"))
        .respond_with(ResponseTemplate::new(200).set_body_string("<html>"))
        .mount(&s)
        .await;
    Mock::given(path("/api/denied"))
        .respond_with(ResponseTemplate::new(403).set_body_string("no access"))
        .expect(1)
        .mount(&s)
        .await;
    let src = source(&s.uri(), 200);
    let slow = src.fetch(&DataRequest::get("/slow")).await.unwrap_err();
    assert_eq!(slow.to_string(), "BI API timed out after 0.2 s");
    let gone = src.fetch(&DataRequest::get("/gone")).await.unwrap_err();
    assert_eq!(gone.to_string(), "BI API has nothing at /gone");
    let html = src.fetch(&DataRequest::get("/html")).await.unwrap_err();
    assert!(matches!(html, SourceError::Decode { .. }), "{html}");
    let denied = src.fetch(&DataRequest::get("/denied")).await.unwrap_err();
    assert_eq!(denied.to_string(), "BI API answered HTTP 403: no access");
    let down = source("http://127.0.0.1:9", 200)
        .fetch(&DataRequest::get("/x"))
        .await
        .unwrap_err();
    assert_eq!(
        down.to_string(),
        "BI API is unreachable (connection failed)"
    );
    for e in [slow, gone, html, denied, down] {
        assert!(!e.to_string().contains("tok-123"));
    }
}
