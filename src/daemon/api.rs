//! The status API (axum, HTTP/1), on 127.0.0.1 by default, with an optional bearer token:
//!
//! - `GET /healthz`: liveness, never needs the token;
//! - `GET /jobs[?state=queued&limit=100]`, `GET /jobs/{id}`: state, stage, progress, timings,
//!   error, outputs;
//! - `POST /jobs`: `{"path": "clip.mp4", "mapping"?, "folder"?: "inbox"|"done"|"failed", "prompt"?:
//!   {sidecar fields}, "redo"?: bool}` queues a file that is already in a configured folder;
//! - `DELETE /jobs/{id}`: cancels a queued or running job;
//! - `GET /metrics`: Prometheus text;
//! - `GET /streams`, `GET /streams/{name}`: each `[[stream]]`'s state, frames, fps, delay,
//!   drops, restarts and the prompt in force;
//! - `PATCH /streams/{name}`: `{"prompt": "...", "source"?, "negative"?, "guidance"?}`: a new
//!   prompt, checked as a prompt file is, in force from the stream's next window.
//!
//! A submitted path is one file name inside the mapping's inbox (or done or failed folder): absolute
//! paths, `..`, subfolders and symlinks are refused, so no request can reach outside the
//! configured folders. The API has its own store connection (WAL lets it read while the loop
//! writes) and wakes the loop when it queues or cancels.

use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::extract::{Path as UrlPath, Query, Request, State as Ext};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::config::{ApiConfig, Mapping};
use super::intake::{self, Paths, Refusal};
use super::live::{Live, LiveJob};
use super::run::Waker;
use super::stable::is_temporary;
use super::store::{Enqueued, Job, State, Store, StoreError};
use super::streams::{StreamView, Streams};
use crate::pipeline::stream_spec::PushedPrompt;

struct Shared {
    store: Mutex<Store>,
    db: PathBuf,
    live: Arc<Live>,
    mappings: Vec<Mapping>,
    paths: Arc<Paths>,
    token: Option<String>,
    waker: Waker,
    streams: Arc<Streams>,
}

type Api = Arc<Shared>;

/// An error answer: a status and one message, as `{"error": "..."}`.
struct Failure(StatusCode, String);

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        (self.0, Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(id) => Failure(StatusCode::NOT_FOUND, format!("no job {id}")),
            e => Failure(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        }
    }
}

/// A job as the API shows it: the stored record, with JSON fields parsed and live progress.
#[derive(Serialize)]
struct JobView {
    #[serde(flatten)]
    job: Job,
    outputs: Option<serde_json::Value>,
    prompt: Option<serde_json::Value>,
    timings: Option<serde_json::Value>,
    live: Option<LiveJob>,
}

fn view(mut job: Job, live: &Live) -> JobView {
    let parse = |s: &Option<String>| s.as_deref().and_then(|t| serde_json::from_str(t).ok());
    let live = live.job(job.id);
    // A running job's stage is where its worker is (loading, editing, writing); an ended
    // job's is where it ended.
    if let Some(l) = &live {
        job.stage.get_or_insert_with(|| l.stage.to_string());
    }
    JobView {
        outputs: parse(&job.outputs),
        prompt: parse(&job.prompt),
        timings: parse(&job.timings),
        live,
        job,
    }
}

/// Runs `f` on the API's store connection on a blocking thread: SQLite may wait up to its
/// busy timeout for the daemon's writes, which must not stall the async workers serving
/// other requests (`/healthz` among them).
async fn with_store<T: Send + 'static>(
    api: &Api,
    f: impl FnOnce(&Store) -> Result<T, Failure> + Send + 'static,
) -> Result<T, Failure> {
    let api = api.clone();
    tokio::task::spawn_blocking(move || f(&crate::sync::lock(&api.store)))
        .await
        .map_err(|e| Failure(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
}

async fn healthz(Ext(api): Ext<Api>) -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok", "uptime_s": api.live.uptime_s() }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    state: Option<String>,
    limit: Option<usize>,
}

async fn list_jobs(
    Ext(api): Ext<Api>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Vec<JobView>>, Failure> {
    let state = match q.state.as_deref() {
        None => None,
        Some(s) => Some(
            State::ALL
                .into_iter()
                .find(|st| st.as_str() == s)
                .ok_or_else(|| {
                    Failure(
                        StatusCode::BAD_REQUEST,
                        format!("unknown state '{s}' (queued, running, done, failed, cancelled)"),
                    )
                })?,
        ),
    };
    let limit = q.limit.unwrap_or(100).min(10_000);
    let jobs = with_store(&api, move |s| Ok(s.list(state, limit)?)).await?;
    Ok(Json(jobs.into_iter().map(|j| view(j, &api.live)).collect()))
}

async fn get_job(Ext(api): Ext<Api>, UrlPath(id): UrlPath<i64>) -> Result<Json<JobView>, Failure> {
    let job = with_store(&api, move |s| Ok(s.get(id)?)).await?;
    Ok(Json(view(job, &api.live)))
}

async fn cancel_job(
    Ext(api): Ext<Api>,
    UrlPath(id): UrlPath<i64>,
) -> Result<Json<serde_json::Value>, Failure> {
    let (before, after) = with_store(&api, move |s| Ok((s.get(id)?.state, s.cancel(id)?))).await?;
    if after != State::Cancelled || before == State::Cancelled {
        return Err(Failure(
            StatusCode::CONFLICT,
            format!("job {id} is already {}", before.as_str()),
        ));
    }
    api.live.cancel(id);
    Ok(Json(serde_json::json!({ "id": id, "state": after })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Submit {
    /// A file name in the mapping's inbox (or done folder).
    path: String,
    /// Needed when more than one mapping is configured.
    mapping: Option<String>,
    /// `inbox` (default), `done` or `failed` (to try a failed input again).
    folder: Option<String>,
    /// The sidecar format, as JSON; replaces the video's sidecar for this job.
    prompt: Option<serde_json::Value>,
    /// Edit again even when the same content and prompt were already edited.
    #[serde(default)]
    redo: bool,
}

/// The file a submission names, if it is inside a configured folder.
/// `path` when it is one plain file name (no folder, no `..`, not absolute).
fn one_file_name(path: &str) -> Option<&std::ffi::OsStr> {
    let mut parts = Path::new(path).components();
    match (parts.next(), parts.next()) {
        (Some(Component::Normal(only)), None) => Some(only),
        _ => None,
    }
}

/// What `POST /jobs` checks in a body before it touches any folder: the JSON, the file name
/// and the submitted prompt (as the daemon will parse it). The fuzz targets call it.
///
/// # Errors
/// The first problem found.
pub fn check_submit_body(body: &[u8]) -> Result<(), String> {
    let s: Submit = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    one_file_name(&s.path).ok_or_else(|| format!("'{}' is not a file name", s.path))?;
    if let Some(p) = &s.prompt {
        intake::parse_submitted(&p.to_string()).map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn confine(api: &Shared, s: &Submit) -> Result<(Mapping, PathBuf), Failure> {
    let refuse = |msg: String| Failure(StatusCode::FORBIDDEN, msg);
    let m = match &s.mapping {
        Some(name) => api
            .mappings
            .iter()
            .find(|m| &m.name == name)
            .ok_or_else(|| Failure(StatusCode::NOT_FOUND, format!("no mapping named '{name}'")))?,
        None if api.mappings.len() == 1 => &api.mappings[0],
        None => {
            return Err(Failure(
                StatusCode::BAD_REQUEST,
                "more than one mapping is configured: say which with \"mapping\"".into(),
            ))
        }
    };
    let root = match s.folder.as_deref().unwrap_or("inbox") {
        "inbox" => &m.inbox,
        "failed" => &m.failed,
        "done" => m.done.as_ref().ok_or_else(|| {
            Failure(
                StatusCode::BAD_REQUEST,
                format!("mapping '{}' has no done folder", m.name),
            )
        })?,
        other => {
            return Err(Failure(
                StatusCode::BAD_REQUEST,
                format!("folder '{other}' is not 'inbox', 'done' or 'failed'"),
            ))
        }
    };
    let Some(only) = one_file_name(&s.path) else {
        return Err(refuse(format!(
            "'{}' is not a file name: absolute paths, '..' and subfolders are refused; give the name of a file in the {} folder",
            s.path,
            s.folder.as_deref().unwrap_or("inbox")
        )));
    };
    let path = root.join(only);
    if is_temporary(&path) || intake::is_prompt_file(&path) {
        return Err(Failure(
            StatusCode::BAD_REQUEST,
            format!("'{}' is a temporary or prompt file, not a video", s.path),
        ));
    }
    let meta = std::fs::symlink_metadata(&path).map_err(|_| {
        Failure(
            StatusCode::NOT_FOUND,
            format!("'{}' is not in {}", s.path, root.display()),
        )
    })?;
    if !meta.file_type().is_file() {
        return Err(refuse(format!(
            "'{}' is a symlink or a folder; only regular files are taken",
            s.path
        )));
    }
    // Belt and braces: the resolved file must still sit directly in the folder.
    let inside = match (path.canonicalize(), root.canonicalize()) {
        (Ok(p), Ok(r)) => p.parent() == Some(r.as_path()),
        _ => false,
    };
    if !inside {
        return Err(refuse(format!(
            "'{}' resolves outside {}",
            s.path,
            root.display()
        )));
    }
    Ok((m.clone(), path))
}

async fn submit_job(
    Ext(api): Ext<Api>,
    Json(s): Json<Submit>,
) -> Result<(StatusCode, Json<serde_json::Value>), Failure> {
    let (m, path) = confine(&api, &s)?;
    let prompt = s.prompt.as_ref().map(|p| p.to_string());
    // Probing and hashing read the whole file: off the async threads.
    let worker = api.clone();
    let (answer, status) = tokio::task::spawn_blocking(move || {
        // A connection of its own: hashing a large file must not hold up the other routes.
        let store = Store::open(&worker.db)?;
        let shown = path.display().to_string();
        match intake::admit(&m, &path, &store, &worker.paths, prompt.as_deref()) {
            Ok(Enqueued::New(id)) => {
                tracing::info!("job {id} queued through the API: {shown}");
                Ok((serde_json::json!({ "id": id, "state": "queued", "new": true }), StatusCode::CREATED))
            }
            Ok(Enqueued::Existing(id, st)) if s.redo && !matches!(st, State::Queued | State::Running) => {
                // Cancelled, but its worker is still winding down: queued now, a second
                // worker would take the same job beside it.
                if worker.live.job(id).is_some() {
                    return Err(Failure(
                        StatusCode::CONFLICT,
                        format!("job {id} is still stopping; ask again in a moment"),
                    ));
                }
                if !store.requeue(id)? {
                    // Queued or running again since the read above (another request): one run.
                    let now = store.get(id)?.state;
                    return Ok((serde_json::json!({ "id": id, "state": now, "new": false }), StatusCode::OK));
                }
                store.set_input_path(id, &shown)?;
                tracing::info!("job {id} queued again through the API: {shown}");
                Ok((serde_json::json!({ "id": id, "state": "queued", "new": false }), StatusCode::OK))
            }
            Ok(Enqueued::Existing(id, st)) => Ok((
                serde_json::json!({
                    "id": id, "state": st, "new": false,
                    "note": "the same content and prompt already have this job; pass \"redo\": true to edit again",
                }),
                StatusCode::OK,
            )),
            Ok(Enqueued::Busy(id)) => Err(Failure(
                StatusCode::CONFLICT,
                format!("job {id} is running on {shown}; cancel it (DELETE /jobs/{id}) or wait for it to end"),
            )),
            Err(Refusal::Rejected { stage, cause }) => Err(Failure(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("{stage}: {cause}"),
            )),
            Err(Refusal::Transient(cause)) => Err(Failure(StatusCode::SERVICE_UNAVAILABLE, cause)),
        }
    })
    .await
    .map_err(|e| Failure(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    api.waker.wake();
    Ok((status, Json(answer)))
}

async fn metrics(Ext(api): Ext<Api>) -> Result<Response, Failure> {
    let counts = with_store(&api, |s| Ok(s.counts()?)).await?;
    let mut text = api.live.metrics(&counts);
    text.push_str(&api.streams.metrics());
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response())
}

async fn list_streams(Ext(api): Ext<Api>) -> Json<Vec<StreamView>> {
    Json(api.streams.views())
}

async fn get_stream(
    Ext(api): Ext<Api>,
    UrlPath(name): UrlPath<String>,
) -> Result<Json<StreamView>, Failure> {
    api.streams
        .get(&name)
        .map(|h| Json(h.view()))
        .ok_or_else(|| Failure(StatusCode::NOT_FOUND, format!("no stream '{name}'")))
}

/// A new prompt for a running stream, checked as a prompt file is; it takes effect at the
/// stream's next window (after one window of transition).
async fn patch_stream(
    Ext(api): Ext<Api>,
    UrlPath(name): UrlPath<String>,
    body: Result<Json<PushedPrompt>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<serde_json::Value>), Failure> {
    let Json(pushed) = body.map_err(|e| Failure(StatusCode::BAD_REQUEST, e.body_text()))?;
    let handle = api
        .streams
        .get(&name)
        .cloned()
        .ok_or_else(|| Failure(StatusCode::NOT_FOUND, format!("no stream '{name}'")))?;
    // Checking loads the preset from disk: off the async thread.
    let accepted = tokio::task::spawn_blocking(move || handle.push(&pushed))
        .await
        .map_err(|e| Failure(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(|e| Failure(StatusCode::BAD_REQUEST, e))?;
    Ok((
        StatusCode::ACCEPTED,
        Json(serde_json::json!({ "accepted": accepted, "takes_effect": "next window" })),
    ))
}

/// Every route but `/healthz` needs `Authorization: Bearer <token>` when a token is set.
async fn auth(Ext(api): Ext<Api>, req: Request, next: Next) -> Response {
    if let Some(token) = &api.token {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if !given.is_some_and(|g| constant_time_eq(g.as_bytes(), token.as_bytes())) {
            return (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                Json(serde_json::json!({ "error": "missing or wrong bearer token" })),
            )
                .into_response();
        }
    }
    next.run(req).await
}

/// Compares without leaking where the first difference is.
/// Compares SHA-256 digests (always 32 bytes) byte by byte without stopping early, so the
/// time taken says nothing about the token, its length included.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use sha2::{Digest, Sha256};
    let (x, y) = (Sha256::digest(a), Sha256::digest(b));
    x.iter()
        .zip(y.iter())
        .fold(0u8, |acc, (p, q)| acc | (p ^ q))
        == 0
}

/// The running server; `stop` ends it after in-flight requests.
pub struct Server {
    pub addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    pub fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Binds `cfg.listen` now (so a taken port is a startup error) and serves on its own thread.
///
/// # Errors
/// The address cannot be bound, or the store cannot be opened.
pub fn start(
    cfg: &ApiConfig,
    db: &Path,
    live: Arc<Live>,
    mappings: Vec<Mapping>,
    paths: Arc<Paths>,
    waker: Waker,
    streams: Arc<Streams>,
) -> anyhow::Result<Server> {
    let listener = std::net::TcpListener::bind(&cfg.listen)
        .map_err(|e| anyhow::anyhow!("status API: cannot listen on {}: {e}", cfg.listen))?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let shared = Arc::new(Shared {
        store: Mutex::new(Store::open(db)?),
        db: db.to_path_buf(),
        live,
        mappings,
        paths,
        token: cfg.token.clone(),
        waker,
        streams,
    });
    let app = Router::new()
        .route("/jobs", get(list_jobs).post(submit_job))
        .route("/jobs/{id}", get(get_job).delete(cancel_job))
        .route("/metrics", get(metrics))
        .route("/streams", get(list_streams))
        .route("/streams/{name}", get(get_stream).patch(patch_stream))
        .route_layer(middleware::from_fn_with_state(shared.clone(), auth))
        .route("/healthz", get(healthz))
        .with_state(shared);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("status-api".into())
        .spawn(move || {
            rt.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => return tracing::error!("status API: {e}"),
                };
                let stop = async {
                    let _ = rx.await;
                };
                if let Err(e) = axum::serve(listener, app)
                    .with_graceful_shutdown(stop)
                    .await
                {
                    tracing::error!("status API: {e}");
                }
            })
        })?;
    Ok(Server {
        addr,
        shutdown: Some(tx),
        thread: Some(thread),
    })
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
    }
}
