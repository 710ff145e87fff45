//! The OpenAPI document (`GET /api/openapi.json`) against the real server: it is public,
//! every documented operation is served (and no other method at its path), and real
//! answers validate against the schemas the document gives them.

use perch::testing::TestPerch;
use serde_json::{Value, json};
use std::collections::BTreeSet;

const TOKEN: &str = "openapi-test-admin-token";

fn config() -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
admin_token = "{TOKEN}"

[connectors.hooks]
kind = "webhook"
insecure = true
topic = "openapi.test"

[connectors.web]
kind = "local"

[schedules.nightly]
cron = "0 0 3 * * *"
timezone = "Asia/Shanghai"
topic = "nightly"
"#
    )
}

async fn document(t: &TestPerch) -> Value {
    // No token: the document is public.
    let resp = reqwest::get(t.url("/api/openapi.json")).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    resp.json().await.unwrap()
}

/// Every (method, path) the document lists.
fn operations(doc: &Value) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().unwrap().keys() {
            if HTTP_METHODS.contains(&method.as_str()) {
                out.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    out
}

const HTTP_METHODS: [&str; 7] = ["get", "post", "put", "patch", "delete", "head", "options"];

/// A concrete URL path for a templated one: parameters get values that reach the
/// handler without side effects (an unknown connector, a room that does not exist).
fn concrete(path: &str) -> String {
    path.replace("{connector}", "no-such-connector")
        .replace("{sub}", "a/b")
        .replace("{id}", "0190c7e2-7d8a-7000-8000-000000000000")
        .replace("{name}", "no-such-bot")
        .replace("{room}", "no-such-room")
}

#[tokio::test]
async fn the_document_lists_exactly_the_routes_served() {
    let t = TestPerch::start(&config()).await;
    let doc = document(&t).await;
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        doc["openapi"]
    );
    // The whole document, reviewed like code: an API change shows in the diff.
    let mut snapshot = doc.clone();
    snapshot["info"]["version"] = json!("[version]");
    insta::assert_json_snapshot!("openapi_document", snapshot);
    let ops = operations(&doc);
    let listed: BTreeSet<(&str, &str)> =
        ops.iter().map(|(m, p)| (m.as_str(), p.as_str())).collect();
    // What a user of the API finds, by name: a route dropped from the document (or
    // from the router: both come from the same `routes!` call) fails here.
    let expected: BTreeSet<(&str, &str)> = [
        ("POST", "/hooks/{connector}"),
        ("POST", "/hooks/{connector}/{sub}"),
        ("GET", "/api/status"),
        ("GET", "/api/events"),
        ("GET", "/api/events/stream"),
        ("GET", "/api/events/{id}"),
        ("GET", "/api/events/{id}/deliveries"),
        ("GET", "/api/outbox"),
        ("GET", "/api/dead-letters"),
        ("POST", "/api/dead-letters/replay"),
        ("POST", "/api/dead-letters/replay-all"),
        ("GET", "/api/sent"),
        ("GET", "/api/schedules"),
        ("GET", "/api/bots"),
        ("GET", "/api/bots/{name}/items"),
        ("POST", "/api/bots/{name}/items/{id}/press"),
        ("GET", "/api/charts"),
        ("GET", "/api/cards"),
        ("POST", "/api/cards/render"),
        ("POST", "/api/cards/send"),
        ("POST", "/api/bots/{name}/actions"),
        ("GET", "/api/openapi.json"),
        ("GET", "/chat/api/rooms"),
        ("POST", "/chat/api/rooms"),
        ("GET", "/chat/api/rooms/{room}/messages"),
        ("POST", "/chat/api/rooms/{room}/messages"),
        ("POST", "/chat/api/rooms/{room}/actions"),
        ("GET", "/chat/api/bots"),
        ("GET", "/chat/api/stream"),
    ]
    .into_iter()
    .collect();
    assert_eq!(listed, expected);
    // Code generators name methods by operationId: each one unique.
    let mut ids = BTreeSet::new();
    for (method, path) in &ops {
        let id = doc["paths"][path][method.to_lowercase()]["operationId"]
            .as_str()
            .unwrap_or_else(|| panic!("{method} {path} has no operationId"));
        assert!(ids.insert(id.to_string()), "operationId {id} twice");
        // Every operation documents its refusals in perch's one error shape.
        let responses = doc["paths"][path][method.to_lowercase()]["responses"]
            .as_object()
            .unwrap();
        assert!(
            responses.iter().any(|(code, r)| code.starts_with('4')
                && r["content"]["application/json"]["schema"]["$ref"]
                    == "#/components/schemas/ErrorBody")
                || path == "/api/openapi.json",
            "{method} {path} documents no error answer: {responses:?}"
        );
    }

    let http = reqwest::Client::new();
    let paths: BTreeSet<&str> = ops.iter().map(|(_, p)| p.as_str()).collect();
    for path in paths {
        let url = t.url(&concrete(path));
        for method in HTTP_METHODS.map(str::to_uppercase) {
            if method == "HEAD" || method == "OPTIONS" {
                continue;
            }
            let documented = ops.contains(&(method.clone(), path.to_string()));
            let resp = http
                .request(method.parse().unwrap(), &url)
                .bearer_auth(TOKEN)
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            // Headers are enough (the streams stay open); the reason only for errors.
            let reason = if status >= 400 {
                let v: Value = resp.json().await.unwrap();
                v["error"].as_str().unwrap_or_default().to_string()
            } else {
                String::new()
            };
            if documented {
                assert!(
                    status != 405 && reason != "no such path",
                    "{method} {path} is documented but not served: {status} {reason}"
                );
            } else {
                assert_eq!(
                    status, 405,
                    "{method} {path} is served but not documented: {status} {reason}"
                );
            }
        }
    }
    // A path the document does not list is not served either.
    let resp = http
        .get(t.url("/api/nothing-here"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
}

/// The schema of `path`'s `method` answer with `status`, as a validator: the whole
/// document is the root, so the schema's `#/components/schemas/…` references resolve.
fn validator(doc: &Value, method: &str, path: &str, status: &str) -> jsonschema::Validator {
    let schema =
        &doc["paths"][path][method]["responses"][status]["content"]["application/json"]["schema"];
    assert!(
        !schema.is_null(),
        "no JSON schema documented for {method} {path} {status}"
    );
    let mut root = doc.clone();
    root["$schema"] = json!("https://json-schema.org/draft/2020-12/schema");
    root["$ref"] = schema["$ref"].clone();
    if schema.get("$ref").is_none() {
        root["allOf"] = json!([schema]);
    }
    jsonschema::validator_for(&root).expect("a valid JSON Schema")
}

fn assert_valid(v: &jsonschema::Validator, instance: &Value, what: &str) {
    let errors: Vec<String> = v.iter_errors(instance).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{what}: {errors:?}\n{instance:#}");
}

#[tokio::test]
async fn real_answers_match_their_documented_schemas() {
    let t = TestPerch::start(&config()).await;
    let doc = document(&t).await;
    let http = reqwest::Client::new();
    let get = |path: &str| http.get(t.url(path)).bearer_auth(TOKEN).send();

    // An event, so the list and the status have something in them.
    let resp = http
        .post(t.url("/hooks/hooks"))
        .header("content-type", "application/json")
        .body(r#"{"hello": "openapi"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());

    let status_schema = validator(&doc, "get", "/api/status", "200");
    let status: Value = get("/api/status").await.unwrap().json().await.unwrap();
    assert_valid(&status_schema, &status, "GET /api/status");
    assert!(status["connectors"].as_array().unwrap().len() == 2);
    // The check can fail: a wrong type, or a missing field, is caught.
    let mut wrong = status.clone();
    wrong["pending_events"] = json!("many");
    assert!(!status_schema.is_valid(&wrong), "a string count passed");
    let mut missing = status.clone();
    missing.as_object_mut().unwrap().remove("connectors");
    assert!(!status_schema.is_valid(&missing), "a missing field passed");

    let events_schema = validator(&doc, "get", "/api/events", "200");
    let events: Value = perch::testing::eventually(10, "the event is listed", || async {
        let v: Value = get("/api/events").await.unwrap().json().await.unwrap();
        (!v["events"].as_array().unwrap().is_empty()).then_some(v)
    })
    .await;
    assert_valid(&events_schema, &events, "GET /api/events");
    let mut wrong = events.clone();
    wrong["events"][0]["event"]["kind"] = json!("not-a-kind");
    assert!(
        !events_schema.is_valid(&wrong),
        "an unknown event kind passed"
    );

    let id = events["events"][0]["event"]["id"].as_str().unwrap();
    let entry_schema = validator(&doc, "get", "/api/events/{id}", "200");
    let entry: Value = get(&format!("/api/events/{id}"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_valid(&entry_schema, &entry, "GET /api/events/{id}");

    // The other listings, as they are documented.
    for (path, doc_path) in [
        (
            format!("/api/events/{id}/deliveries"),
            "/api/events/{id}/deliveries",
        ),
        ("/api/outbox".to_string(), "/api/outbox"),
        ("/api/dead-letters".to_string(), "/api/dead-letters"),
        ("/api/schedules".to_string(), "/api/schedules"),
    ] {
        let resp = get(&path).await.unwrap();
        assert_eq!(resp.status(), 200, "{path}");
        let body: Value = resp.json().await.unwrap();
        assert_valid(&validator(&doc, "get", doc_path, "200"), &body, &path);
    }
    let schedules: Value = get("/api/schedules").await.unwrap().json().await.unwrap();
    assert_eq!(schedules["schedules"][0]["name"], "nightly");
    let mut wrong = schedules.clone();
    wrong["schedules"][0]["misfire"] = json!("sometimes");
    assert!(
        !validator(&doc, "get", "/api/schedules", "200").is_valid(&wrong),
        "an unknown misfire policy passed"
    );

    // Errors: each as its route documents it.
    // Each reason names what was wrong.
    for (path, doc_path, status, names) in [
        ("/api/events?limit=x", "/api/events", 400, "limit"),
        ("/api/events?since=garbage", "/api/events", 400, "since"),
        (
            "/api/events/not-an-id",
            "/api/events/{id}",
            400,
            "not-an-id",
        ),
        (
            "/api/events/0190c7e2-7d8a-7000-8000-000000000000",
            "/api/events/{id}",
            404,
            "0190c7e2-7d8a-7000-8000-000000000000",
        ),
    ] {
        let resp = get(path).await.unwrap();
        assert_eq!(resp.status().as_u16(), status, "{path}");
        let body: Value = resp.json().await.unwrap();
        let reason = body["error"].as_str().unwrap_or_default();
        assert!(reason.contains(names), "{path}: {reason:?}");
        let schema = validator(&doc, "get", doc_path, &status.to_string());
        assert_valid(&schema, &body, path);
        assert!(
            !schema.is_valid(&json!({ "message": "x" })),
            "an error without `error` passed"
        );
    }
    let resp = http.get(t.url("/api/status")).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    let body: Value = resp.json().await.unwrap();
    assert_valid(
        &validator(&doc, "get", "/api/status", "401"),
        &body,
        "GET /api/status without a token",
    );
}
