//! The sign-in pages and calls:
//!
//! | method and path        | what                                                        |
//! |------------------------|-------------------------------------------------------------|
//! | `GET  /login`          | the sign-in page (`local` mode)                             |
//! | `POST /auth/login {name, password}` | sign in: sets the session cookie, answers `{user, role, csrf}` |
//! | `POST /auth/logout`    | sign out (needs the CSRF token): the session is deleted     |
//! | `GET  /auth/session`   | who am I: `{mode, user, role, csrf}` (the pages' first call) |
//! | `GET  /auth/feishu/start?next=` | Feishu login: to Feishu's authorize page (`feishu.rs`) |
//! | `GET  /auth/feishu/callback?code&state` | back from Feishu: the session, then `next` |
//!
//! Refusals are a 4xx with a one-line reason, like the rest of perch.

use super::{Auth, AuthError, AuthMode, Role, SessionInfo, Viewer};
use crate::server::ApiError;
use axum::extract::rejection::JsonRejection;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::Deserialize;
use serde_json::json;
use std::net::SocketAddr;
use std::sync::Arc;

const LOGIN_HTML: &str = include_str!("static/login.html");

pub fn routes(auth: Arc<Auth>) -> Router {
    Router::new()
        .route("/login", get(login_page))
        .route("/auth/login", post(login))
        .route("/auth/logout", post(logout))
        .route("/auth/session", get(session))
        .route("/auth/feishu/start", get(feishu_start))
        .route("/auth/feishu/callback", get(feishu_callback))
        .with_state(auth)
}

/// The sign-in page; in `feishu` mode, straight on to Feishu.
async fn login_page(State(auth): State<Arc<Auth>>, Query(q): Query<NextQuery>) -> Response {
    if auth.mode() == AuthMode::Feishu {
        let next = super::feishu::safe_next(q.next.as_deref());
        let to = format!("/auth/feishu/start?next={}", urlencode(&next));
        return axum::response::Redirect::to(&to).into_response();
    }
    Html(LOGIN_HTML).into_response()
}

#[derive(Deserialize)]
struct NextQuery {
    next: Option<String>,
}

fn urlencode(s: &str) -> String {
    let mut url = reqwest::Url::parse("http://x/").expect("a fixed URL parses");
    url.query_pairs_mut().append_pair("v", s);
    url.query()
        .unwrap_or("v=")
        .trim_start_matches("v=")
        .to_string()
}

/// The `Set-Cookie` of the state cookie: `SameSite=Lax`, because Feishu's redirect back
/// is a cross-site navigation that a `Strict` cookie would not come with.
fn state_cookie(value: Option<&str>, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    let name = super::feishu::STATE_COOKIE;
    match value {
        Some(v) => {
            format!("{name}={v}; Path=/auth/feishu; HttpOnly; SameSite=Lax; Max-Age=600{secure}")
        }
        None => format!("{name}=; Path=/auth/feishu; HttpOnly; SameSite=Lax; Max-Age=0{secure}"),
    }
}

fn feishu_error(e: super::feishu::FeishuLoginError) -> ApiError {
    use super::feishu::FeishuLoginError as E;
    let status = match &e {
        E::Off => StatusCode::NOT_FOUND,
        E::BadState => StatusCode::BAD_REQUEST,
        E::Refused(_) => StatusCode::UNAUTHORIZED,
        E::OtherTenant => StatusCode::FORBIDDEN,
        E::Unreachable(_) => StatusCode::BAD_GATEWAY,
        E::Store(e) => return ApiError::internal("sign-in: store error", e),
    };
    tracing::info!(reason = %e, "Feishu sign-in refused");
    ApiError::new(status, e.to_string())
}

/// `GET /auth/feishu/start?next=/console`: to Feishu's authorize page.
async fn feishu_start(
    State(auth): State<Arc<Auth>>,
    Query(q): Query<NextQuery>,
) -> Result<Response, ApiError> {
    let next = super::feishu::safe_next(q.next.as_deref());
    let (state, url) = auth.feishu_start(&next).await.map_err(feishu_error)?;
    Ok((
        StatusCode::SEE_OTHER,
        [
            (header::LOCATION, url),
            (
                header::SET_COOKIE,
                state_cookie(Some(&state), auth.config.secure_cookie),
            ),
        ],
    )
        .into_response())
}

#[derive(Deserialize)]
struct Callback {
    code: Option<String>,
    state: Option<String>,
}

/// `GET /auth/feishu/callback?code&state`: the session, then on to where they started.
async fn feishu_callback(
    State(auth): State<Arc<Auth>>,
    headers: axum::http::HeaderMap,
    Query(q): Query<Callback>,
) -> Result<Response, ApiError> {
    let state = q.state.unwrap_or_default();
    let code = q.code.unwrap_or_default();
    let cookie_state = super::cookie(&headers, super::feishu::STATE_COOKIE);
    let ((session, _csrf), next) = auth
        .feishu_callback(&auth.http, &code, &state, cookie_state.as_deref())
        .await
        .map_err(feishu_error)?;
    let mut resp = (StatusCode::SEE_OTHER, [(header::LOCATION, next)]).into_response();
    let h = resp.headers_mut();
    for c in [
        auth.cookie_header(Some(&session)),
        state_cookie(None, auth.config.secure_cookie),
    ] {
        if let Ok(v) = axum::http::HeaderValue::from_str(&c) {
            h.append(header::SET_COOKIE, v);
        }
    }
    Ok(resp)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Login {
    name: String,
    password: String,
}

async fn login(
    State(auth): State<Arc<Auth>>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    body: Result<Json<Login>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(b) = body?;
    let peer = peer.map(|Extension(ConnectInfo(addr))| addr.ip());
    let signed_in = auth.sign_in(&b.name, &b.password, peer).await;
    let (cookie, csrf) = match signed_in {
        Ok(session) => session,
        Err(e @ AuthError::Throttled { retry_after, .. }) => {
            tracing::info!(user = %crate::telemetry::escape(&b.name), reason = %e, "sign-in refused");
            let seconds = retry_after.as_secs().max(1).to_string();
            let refusal = ApiError::new(StatusCode::TOO_MANY_REQUESTS, e.to_string());
            return Ok(([(header::RETRY_AFTER, seconds)], refusal).into_response());
        }
        Err(e) => {
            return Err(match e {
                AuthError::Store(e) => ApiError::internal("sign-in: store error", e),
                AuthError::WrongMode(_) => ApiError::new(StatusCode::BAD_REQUEST, e.to_string()),
                _ => ApiError::new(StatusCode::UNAUTHORIZED, e.to_string()),
            });
        }
    };
    tracing::info!(user = %crate::telemetry::escape(&b.name), "signed in");
    let role = auth.role_of(&b.name);
    Ok((
        [(header::SET_COOKIE, auth.cookie_header(Some(&cookie)))],
        Json(json!({ "user": b.name, "role": role, "csrf": csrf })),
    )
        .into_response())
}

/// Sign out. The middleware has already checked the CSRF token (a session's POST).
async fn logout(
    State(auth): State<Arc<Auth>>,
    session: Option<Extension<SessionInfo>>,
) -> Result<Response, ApiError> {
    if let Some(Extension(s)) = session {
        auth.sign_out(&s.cookie)
            .await
            .map_err(|e| ApiError::internal("sign-out: store error", e))?;
    }
    Ok((
        [(header::SET_COOKIE, auth.cookie_header(None))],
        Json(json!({ "signed_out": true })),
    )
        .into_response())
}

/// Who the browser is. In `proxy` mode the proxy already signed the person in: the
/// first call starts the session that holds their CSRF token.
async fn session(
    State(auth): State<Arc<Auth>>,
    Extension(viewer): Extension<Viewer>,
    session: Option<Extension<SessionInfo>>,
) -> Result<Response, ApiError> {
    let mode = auth.mode();
    match viewer {
        Viewer::Dev => Ok(Json(json!({
            "mode": mode,
            "user": null,
            "warning": "dev mode: nobody signs in, anyone who can reach this page can post as anyone (perch only allows it on a loopback address)",
        }))
        .into_response()),
        Viewer::User(id) => {
            let (csrf, cookie) = match session {
                Some(Extension(s)) => (s.csrf, None),
                None if mode == AuthMode::Proxy => {
                    let (cookie, csrf) = auth
                        .new_session(&id.name)
                        .await
                        .map_err(|e| ApiError::internal("sign-in: store error", e))?;
                    (csrf, Some(cookie))
                }
                None => {
                    return Err(ApiError::new(StatusCode::UNAUTHORIZED, "not signed in"));
                }
            };
            let body = Json(json!({
                "mode": mode,
                "user": id.name,
                "role": id.role,
                "csrf": csrf,
            }));
            Ok(match cookie {
                Some(c) => ([(header::SET_COOKIE, auth.cookie_header(Some(&c)))], body).into_response(),
                None => body.into_response(),
            })
        }
        Viewer::Anonymous => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            match mode {
                AuthMode::Proxy => "not signed in: the proxy did not name you (or is not in auth.proxy_addresses)",
                _ => "not signed in (sign in at /login)",
            },
        )),
    }
}

/// For admin pages: a signed-in admin, or the refusal.
pub fn require_admin(viewer: &Viewer) -> Result<(), ApiError> {
    match viewer {
        Viewer::User(i) if i.role == Role::Admin => Ok(()),
        Viewer::User(i) => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!("`{}` is not an admin", i.name),
        )),
        _ => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "not signed in (sign in at /login, or send the admin token)",
        )),
    }
}

/// Who posts or clicks (the web chat) or presses a button (the console's Bots page). Dev mode: the name the browser sends. Signed in: the person
/// signed in; an `author` that names anyone else is refused (a forged author).
pub fn author_of(viewer: &Viewer, sent: Option<&str>) -> Result<String, ApiError> {
    match viewer {
        Viewer::Dev => sent.map(str::to_string).ok_or_else(|| {
            ApiError::new(StatusCode::BAD_REQUEST, "author is missing: pick a name")
        }),
        Viewer::User(me) => match sent {
            Some(a) if a.trim() != me.name => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!(
                    "author is decided by your sign-in: you are `{}`, not `{}`",
                    me.name,
                    a.trim()
                ),
            )),
            _ => Ok(me.name.clone()),
        },
        Viewer::Anonymous => Err(not_signed_in()),
    }
}

pub fn not_signed_in() -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "not signed in (sign in at /login)",
    )
}
