//! The JSON API the page uses (and only it), over the control library.
//!
//! | route | what |
//! |---|---|
//! | `GET /api/session` | who you are, the CSRF token; 401 when a login is needed |
//! | `POST /api/login`, `POST /api/logout` | sessions (cookie) |
//! | `GET /api/search?q&from&to&f…&after&size&aggs` | a page, the histogram, field values |
//! | `GET /api/export?format=ndjson\|csv&cap&…` | the whole result up to the cap |
//! | `GET /api/line/{id}` | one line with its provenance |
//! | `GET /api/context/{id}?before&after` | lines around it in its file |
//! | `GET /api/tail?q&f…` | server-sent events: lines live from Kafka |
//! | `GET /api/banner` | why results may be incomplete |
//! | `GET /api/fleet` | agents, the transfer group's lag |
//! | `GET/PUT /api/collect/{host}`, `POST …/validate`, `GET …/history`, `POST …/rollback` | collect entries |
//!
//! `f` is `field:value` (or `-field:value` to exclude), repeated. Every
//! error is JSON `{"error": "…"}` with a 4xx status when the request is at
//! fault (a malformed query is a 400 with Elasticsearch's reason) and 502
//! when a service behind fails: never a 500 for bad input.

use crate::auth::{cookie_value, Denied, Principal, COOKIE};
use crate::App;
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::Utc;
use control::explore::{self, Explore, FieldFilter};
use control::Error;
use serde::Deserialize;
use serde_json::{json, Value};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

/// An error as the page gets it.
pub struct ApiError {
    status: StatusCode,
    body: Value,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            body: json!({"error": message.into()}),
        }
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        let status = match &e {
            Error::BadArgument { .. } | Error::Invalid(_) | Error::Config(_) => {
                StatusCode::BAD_REQUEST
            }
            Error::Conflict { .. } => StatusCode::CONFLICT,
            Error::NotFound(_) => StatusCode::NOT_FOUND,
            Error::Refused { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Error::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            _ => StatusCode::BAD_GATEWAY,
        };
        let mut body = json!({"error": e.to_string()});
        if let Error::Conflict {
            expected, actual, ..
        } = &e
        {
            body["expected"] = (*expected).into();
            body["actual"] = (*actual).into();
        }
        Self { status, body }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body)).into_response()
    }
}

type ApiResult<T> = Result<T, ApiError>;

pub fn routes(app: Arc<App>) -> Router {
    let api = Router::new()
        .route("/api/search", get(search))
        .route("/api/export", get(export))
        .route("/api/line/{id}", get(line))
        .route("/api/context/{id}", get(context))
        .route("/api/tail", get(tail))
        .route("/api/banner", get(banner))
        .route("/api/fleet", get(fleet))
        .route("/api/collect/{host}", get(collect_get).put(collect_put))
        .route("/api/collect/{host}/validate", post(collect_validate))
        .route("/api/collect/{host}/history", get(collect_history))
        .route("/api/collect/{host}/rollback", post(collect_rollback))
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&app),
            guard,
        ));
    Router::new()
        .route("/api/session", get(session))
        .route("/api/login", post(login))
        .route("/api/logout", post(logout))
        .merge(api)
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such API route") })
        .with_state(app)
}

fn caller(app: &App, headers: &HeaderMap) -> Option<Principal> {
    let cookie = headers
        .get(header::COOKIE)
        .and_then(|v| v.to_str().ok())
        .and_then(|c| cookie_value(c, COOKIE));
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    app.auth.principal(cookie, bearer)
}

async fn guard(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let who = caller(&app, req.headers());
    let write = !matches!(*req.method(), Method::GET | Method::HEAD);
    let csrf = req
        .headers()
        .get("x-csrf-token")
        .and_then(|v| v.to_str().ok());
    match app.auth.check(who.as_ref(), write, csrf) {
        Ok(()) => next.run(req).await,
        Err(Denied::Unauthenticated) => {
            ApiError::new(StatusCode::UNAUTHORIZED, "log in first").into_response()
        }
        Err(Denied::Forbidden) => ApiError::new(
            StatusCode::FORBIDDEN,
            "your role (viewer) may not change anything; an admin may",
        )
        .into_response(),
        Err(Denied::Csrf) => ApiError::new(
            StatusCode::FORBIDDEN,
            "missing or wrong X-CSRF-Token (reload the page)",
        )
        .into_response(),
    }
}

async fn session(State(app): State<Arc<App>>, headers: HeaderMap) -> ApiResult<Json<Value>> {
    match caller(&app, &headers) {
        Some(p) => Ok(Json(
            json!({"auth_required": app.auth.required(), "user": p}),
        )),
        None => Err(ApiError::new(StatusCode::UNAUTHORIZED, "log in first")),
    }
}

#[derive(Deserialize)]
struct LoginBody {
    name: String,
    password: String,
}

async fn login(State(app): State<Arc<App>>, Json(b): Json<LoginBody>) -> Response {
    if !app.auth.required() {
        return ApiError::new(
            StatusCode::BAD_REQUEST,
            "no users are configured: no login needed",
        )
        .into_response();
    }
    match app.auth.login(&b.name, &b.password) {
        Some((id, p)) => {
            let cookie = format!(
                "{COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}",
                app.auth.ttl().as_secs()
            );
            let mut r = Json(json!({"user": p})).into_response();
            if let Ok(v) = HeaderValue::from_str(&cookie) {
                r.headers_mut().insert(header::SET_COOKIE, v);
            }
            r
        }
        None => {
            // Slows guessing down.
            tokio::time::sleep(Duration::from_millis(500)).await;
            ApiError::new(StatusCode::UNAUTHORIZED, "wrong name or password").into_response()
        }
    }
}

async fn logout(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    if let Some(c) = headers
        .get(header::COOKIE)
        .and_then(|v| v.to_str().ok())
        .and_then(|c| cookie_value(c, COOKIE))
    {
        app.auth.logout(c);
    }
    let mut r = Json(json!({"ok": true})).into_response();
    r.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static(
            "logconsole_session=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0",
        ),
    );
    r
}

/// The query string's pairs, in order (`f` repeats).
fn pairs(raw: Option<String>) -> ApiResult<Vec<(String, String)>> {
    serde_urlencoded::from_str(raw.as_deref().unwrap_or(""))
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("query string: {e}")))
}

fn one<'a>(p: &'a [(String, String)], k: &str) -> Option<&'a str> {
    p.iter().find(|(a, _)| a == k).map(|(_, v)| v.as_str())
}

fn number(p: &[(String, String)], k: &str, default: usize) -> ApiResult<usize> {
    one(p, k).map_or(Ok(default), |v| {
        v.parse().map_err(|_| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("{k}: `{v}` is not a number"),
            )
        })
    })
}

fn filters(p: &[(String, String)]) -> ApiResult<Vec<FieldFilter>> {
    Ok(p.iter()
        .filter(|(k, _)| k == "f")
        .map(|(_, v)| FieldFilter::parse(v))
        .collect::<Result<_, _>>()?)
}

/// The search a request asks for.
fn explore_of(p: &[(String, String)]) -> ApiResult<Explore> {
    let time = |k: &str| -> ApiResult<chrono::DateTime<Utc>> {
        let v = one(p, k).ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("{k}: missing (an RFC 3339 time)"),
            )
        })?;
        control::search::parse_time(v)
            .map_err(|m| ApiError::new(StatusCode::BAD_REQUEST, format!("{k}: {m}")))
    };
    Ok(Explore {
        query: one(p, "q").unwrap_or("").to_string(),
        from: time("from")?,
        to: time("to")?,
        filters: filters(p)?,
        size: number(p, "size", 100)?,
        after: one(p, "after")
            .filter(|s| !s.is_empty())
            .map(str::to_string),
        aggregations: one(p, "aggs") != Some("0"),
    })
}

async fn search(State(app): State<Arc<App>>, RawQuery(q): RawQuery) -> ApiResult<Json<Value>> {
    let e = explore_of(&pairs(q)?)?;
    let page = app.logs.explore(&e).await?;
    Ok(Json(serde_json::to_value(page).unwrap_or_default()))
}

async fn export(State(app): State<Arc<App>>, RawQuery(q): RawQuery) -> ApiResult<Response> {
    let p = pairs(q)?;
    let e = explore_of(&p)?;
    let format = one(&p, "format").unwrap_or("ndjson");
    let cap = number(&p, "cap", explore::EXPORT_CAP)?;
    if cap == 0 || cap > explore::EXPORT_CAP {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("cap: {cap} is not within 1..={}", explore::EXPORT_CAP),
        ));
    }
    let (lines, more) = app.logs.export(&e, cap).await?;
    let (body, ctype, ext) = match format {
        "ndjson" => (
            lines
                .iter()
                .map(|l| l.source.to_string() + "\n")
                .collect::<String>(),
            "application/x-ndjson",
            "ndjson",
        ),
        "csv" => (explore::csv(&lines), "text/csv; charset=utf-8", "csv"),
        other => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("format: `{other}` is not ndjson or csv"),
            ))
        }
    };
    let mut r = body.into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    let name = format!(
        "attachment; filename=\"logs-{}.{ext}\"",
        Utc::now().format("%Y%m%dT%H%M%SZ")
    );
    if let Ok(v) = HeaderValue::from_str(&name) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    h.insert("x-export-lines", HeaderValue::from(lines.len()));
    h.insert("x-export-cap", HeaderValue::from(cap));
    h.insert(
        "x-export-truncated",
        HeaderValue::from_static(if more { "true" } else { "false" }),
    );
    Ok(r)
}

async fn line(State(app): State<Arc<App>>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let hit = app.logs.line(&id).await?;
    Ok(Json(serde_json::to_value(hit).unwrap_or_default()))
}

async fn context(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<Value>> {
    let p = pairs(q)?;
    let before = number(&p, "before", 20)?;
    let after = number(&p, "after", 20)?;
    let c = control::context::context(&app.cfg.control, &id, before, after)
        .await
        .map_err(|e| match e {
            Error::BadArgument { arg, message } => Error::BadArgument {
                arg: arg.replace("-B", "before").replace("-A", "after"),
                message,
            },
            other => other,
        })?;
    Ok(Json(serde_json::to_value(c).unwrap_or_default()))
}

/// Lines buffered for one live view before new ones are dropped (the
/// page is told how many).
const TAIL_BUFFER: usize = 2000;
/// Live views open at once (each is a Kafka consumer of every partition).
pub const MAX_LIVE_VIEWS: usize = 32;

async fn tail(
    State(app): State<Arc<App>>,
    RawQuery(q): RawQuery,
) -> ApiResult<Sse<impl futures::Stream<Item = Result<Event, Infallible>>>> {
    let p = pairs(q)?;
    let query = control::live::Query::parse(one(&p, "q").unwrap_or(""))?;
    let fs = filters(&p)?;
    let permit = Arc::clone(&app.live_views).try_acquire_owned().map_err(|_| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{MAX_LIVE_VIEWS} live views are open already (each reads Kafka); close one and retry"),
        )
    })?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Event>(TAIL_BUFFER);
    let cfg = app.cfg.control.clone();
    tokio::spawn(async move {
        // Held until the tail ends (the page closed the view).
        let _permit = permit;
        let closed = tx.clone();
        let started_tx = tx.clone();
        let warn_tx = tx.clone();
        let (mut dropped, mut told) = (0u64, 0u64);
        let r = control::tail::tail(
            &cfg,
            &control::tail::Tail::default(),
            async move { closed.closed().await },
            |pos| {
                let _ = started_tx.try_send(
                    Event::default()
                        .event("started")
                        .data(json!({"partitions": pos.len()}).to_string()),
                );
            },
            |l| {
                if !query.matches(&l.source) || !fs.iter().all(|f| f.matches(&l.source)) {
                    return;
                }
                let hit = explore::Hit {
                    highlight: None,
                    provenance: explore::Provenance::of(l),
                    line: l.clone(),
                };
                // The count of lines dropped so far, once there is room again.
                if dropped > told
                    && tx
                        .try_send(Event::default().event("dropped").data(dropped.to_string()))
                        .is_ok()
                {
                    told = dropped;
                }
                let data = serde_json::to_string(&hit).unwrap_or_default();
                if tx
                    .try_send(Event::default().event("line").data(data))
                    .is_err()
                {
                    dropped += 1;
                }
            },
            |w| {
                let _ = warn_tx.try_send(Event::default().event("warning").data(w));
            },
        )
        .await;
        if let Err(e) = r {
            tracing::warn!(error = %e, "live tail ended");
            let _ = warn_tx
                .send(Event::default().event("failed").data(e.to_string()))
                .await;
        }
    });
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx).map(Ok::<_, Infallible>);
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(10))))
}

use futures::StreamExt;

/// Agents and the transfer group's lag; each part says if it could not be read.
async fn fleet_state(app: &App) -> (Value, Value, Vec<control::completeness::Gap>) {
    use control::completeness::{gaps, Gap};
    let mut unknown = Vec::new();
    let agents = match app.control().await {
        Ok(mut c) => c.agents().await,
        Err(e) => Err(e),
    };
    let lag = control::lag::lag(&app.cfg.control, &app.cfg.console.group, &[]).await;
    let mut g = match (&agents, &lag) {
        (Ok(a), Ok(l)) => gaps(a, l),
        (Ok(a), Err(_)) => gaps(a, &[]),
        (Err(_), Ok(l)) => gaps(&[], l),
        (Err(_), Err(_)) => Vec::new(),
    };
    let agents_v = match agents {
        Ok(a) => json!(a),
        Err(e) => {
            unknown.push(Gap::Unknown {
                what: format!("the agents' state: {e}"),
            });
            json!({"error": e.to_string()})
        }
    };
    let lag_v = match lag {
        Ok(l) => json!(l),
        Err(Error::NotFound(m)) => json!({"error": format!("not found: {m}"), "none": true}),
        Err(e) => {
            unknown.push(Gap::Unknown {
                what: format!("the transfer's lag: {e}"),
            });
            json!({"error": e.to_string()})
        }
    };
    g.extend(unknown);
    (agents_v, lag_v, g)
}

fn gaps_json(g: &[control::completeness::Gap]) -> Value {
    g.iter()
        .map(|x| {
            let mut v = serde_json::to_value(x).unwrap_or_default();
            v["text"] = x.text().into();
            v
        })
        .collect()
}

async fn banner(State(app): State<Arc<App>>) -> Json<Value> {
    let (_, _, g) = fleet_state(&app).await;
    Json(json!({"gaps": gaps_json(&g), "checked_at": Utc::now().to_rfc3339()}))
}

async fn fleet(State(app): State<Arc<App>>) -> Json<Value> {
    let (agents, lag, g) = fleet_state(&app).await;
    Json(json!({
        "agents": agents,
        "lag": lag,
        "group": app.cfg.console.group,
        "gaps": gaps_json(&g),
        "checked_at": Utc::now().to_rfc3339(),
    }))
}

fn check_host(host: &str) -> ApiResult<()> {
    if host.is_empty() || host.contains('/') || host.len() > 253 {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("host `{host}`: empty, too long or with `/`"),
        ));
    }
    Ok(())
}

async fn collect_get(
    State(app): State<Arc<App>>,
    Path(host): Path<String>,
) -> ApiResult<Json<Value>> {
    check_host(&host)?;
    let mut c = app.control().await?;
    let key = c.collect_key(&host);
    Ok(Json(match c.get(&host).await? {
        Some(s) => {
            json!({"key": key, "value": control::collect::pretty(&s.value), "revision": s.mod_revision})
        }
        None => json!({"key": key, "value": null, "revision": 0}),
    }))
}

#[derive(Deserialize)]
struct PutBody {
    value: String,
    /// The revision the page read (0: absent).
    expected: i64,
}

async fn collect_validate(
    State(app): State<Arc<App>>,
    Path(host): Path<String>,
    Json(b): Json<PutBody>,
) -> ApiResult<Json<Value>> {
    check_host(&host)?;
    let mut c = app.control().await?;
    let v = c.validate(&host, b.value.as_bytes(), &[]).await?;
    let old = c
        .get(&host)
        .await?
        .map(|s| control::collect::pretty(&s.value))
        .unwrap_or_default();
    let key = c.collect_key(&host);
    let diff = control::collect::diff(&old, &control::collect::pretty(b.value.as_bytes()), &key);
    let roots = match v.roots {
        control::collect::RootsSource::Published(h) => json!(h),
        control::collect::RootsSource::Given => json!([]),
    };
    Ok(Json(
        json!({"entries": v.entries.len(), "diff": diff, "checked_against": roots}),
    ))
}

async fn collect_put(
    State(app): State<Arc<App>>,
    Path(host): Path<String>,
    Json(b): Json<PutBody>,
) -> ApiResult<Json<Value>> {
    check_host(&host)?;
    let mut c = app.control().await?;
    let w = c
        .put(&host, b.value.as_bytes(), Some(b.expected), &[], false)
        .await?;
    tracing::info!(key = %w.key, revision = ?w.revision, "collect entries written from the console");
    Ok(Json(json!(w)))
}

async fn collect_history(
    State(app): State<Arc<App>>,
    Path(host): Path<String>,
) -> ApiResult<Json<Value>> {
    check_host(&host)?;
    let mut c = app.control().await?;
    let h = c.history(&host).await?;
    Ok(Json(json!(h
        .iter()
        .rev()
        .map(|r| json!({"revision": r.revision, "value": r.value.as_deref().map(control::collect::pretty)}))
        .collect::<Vec<_>>())))
}

#[derive(Deserialize)]
struct RollbackBody {
    revision: i64,
}

async fn collect_rollback(
    State(app): State<Arc<App>>,
    Path(host): Path<String>,
    Json(b): Json<RollbackBody>,
) -> ApiResult<Json<Value>> {
    check_host(&host)?;
    let mut c = app.control().await?;
    let w = c.rollback(&host, b.revision, &[]).await?;
    tracing::info!(key = %w.key, to = b.revision, "collect entries rolled back from the console");
    Ok(Json(json!(w)))
}
