//! The OpenAPI 3.1 document of perch's HTTP API: the admin API (`/api`), the inbound
//! hooks (`/hooks`) and the web chat's API (`/chat/api`), served at `GET /api/openapi.json`.
//!
//! It is not written by hand: each handler carries a `#[utoipa::path]` annotation and is
//! mounted with utoipa-axum's `routes!`, which registers the route on the axum router
//! and its operation in the document in one call, so the two cannot drift apart. The
//! schemas are derived (`ToSchema`, `IntoParams`) from the types the handlers use.

use super::ApiError;
use serde::Serialize;
use std::sync::OnceLock;
use utoipa::openapi::OpenApi;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};

/// Every refusal perch answers: 4xx or 5xx with one line of JSON.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// What was wrong, in one line (5xx reasons are generic: details go to the log).
    pub error: String,
}

/// The name of the admin API's security scheme in the document.
pub const ADMIN_AUTH: &str = "admin_token";

/// The whole document: every documented route of `/api`, `/hooks` and `/chat/api`.
pub fn document() -> OpenApi {
    let mut doc = utoipa::openapi::OpenApiBuilder::new()
        .info(
            utoipa::openapi::InfoBuilder::new()
                .title("perch")
                .version(env!("CARGO_PKG_VERSION"))
                .description(Some(
                    "perch's HTTP API: the admin API (`/api`, `Authorization: Bearer <server.admin_token>` \
                     or a signed-in admin), inbound events (`/hooks/<connector>`, verified by \
                     each connector's own signature) and the web chat (`/chat/api`). Every \
                     refusal is one line of JSON: `{\"error\": \"...\"}`.",
                ))
                .build(),
        )
        .build();
    doc.merge(super::documented_routes().into_openapi());
    doc.merge(crate::connectors::local::openapi());
    let components = doc
        .components
        .get_or_insert_with(utoipa::openapi::Components::new);
    components.add_security_scheme(
        ADMIN_AUTH,
        SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
    );
    // axum's catch-all segment `{*sub}` is OpenAPI's plain `{sub}` (documented as the
    // rest of the path, slashes included).
    let paths = std::mem::take(&mut doc.paths.paths);
    doc.paths.paths = paths
        .into_iter()
        .map(|(path, item)| (path.replace("{*", "{"), item))
        .collect();
    doc
}

/// The document as JSON, built once.
pub fn document_json() -> &'static str {
    static JSON: OnceLock<String> = OnceLock::new();
    JSON.get_or_init(|| {
        document().to_json().unwrap_or_else(|e| {
            tracing::error!(error = %e, "could not serialise the OpenAPI document");
            String::from("{}")
        })
    })
}

/// `GET /api/openapi.json`. Public, unlike the rest of `/api`: it describes the API's
/// shape and holds no data (no connector names, no events), and clients and code
/// generators fetch it before they have a token.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "admin",
    responses((status = 200, description = "This document (OpenAPI 3.1)", content_type = "application/json", body = Object))
)]
pub async fn openapi_json() -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        document_json(),
    )
        .into_response())
}
