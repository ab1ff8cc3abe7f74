//! Scale-out on NATS JetStream: `ctxd worker` runs jobs that `ctxd submit` queues, on as many
//! machines as share a NATS cluster. Nothing here is home-made protocol; each concern uses the
//! JetStream primitive built for it:
//!
//! - **Work queue**: stream [`JOBS_STREAM`] (work-queue retention, subjects `ctxd.jobs.<key>`),
//!   read by one durable pull consumer [`CONSUMER`] that every worker shares. Explicit acks;
//!   `AckWait` [`ACK_WAIT`], which a running job's heartbeat (`+WPI`, every third of it) keeps
//!   from expiring however long the job; `MaxDeliver` finite ([`MAX_DELIVER`]); a worker asks
//!   for no more messages than it has free slots, so it never holds more than `--slots`.
//! - **Job state**: KV bucket [`STATE_BUCKET`], one entry per job key ([`JobState`]: queued,
//!   running on which worker, stage, progress, done with its outputs, failed with its reason).
//!   Every change is a compare-and-set on the entry's revision, so two workers can never both
//!   believe they own a job, and the entry's history counts its runs.
//! - **Workers**: KV bucket [`WORKERS_BUCKET`], one entry per live worker, rewritten every
//!   few seconds; entries expire with the bucket's max age, so a killed worker disappears.
//! - **Videos**: the object store [`MEDIA_BUCKET`] (chunked, SHA-256 digests), or a folder
//!   every worker mounts (`--shared DIR`). Inputs are `in/<key>`, outputs `out/<key>/<file>`,
//!   written under names fixed by the job key, so a rerun replaces and never doubles them.
//! - **Dead letters**: stream [`DEAD_STREAM`] (`ctxd.dead.<key>`): a job that failed for good,
//!   with its reason and attempts.
//!
//! **Exactly once.** A job's key is the hash of its input's content and of everything that
//! decides its output (the resolved spec, the bundle's identity): submitting the same work
//! twice is one job. A worker acks only after the outputs and the `done` state are stored; a
//! delivery of a job whose state is already `done` is acked and skipped; a job whose outputs
//! were stored (its `manifest.json` is written last) but whose state was not is marked done
//! without running again.

pub mod media;
pub mod remote;
pub mod scratch;
pub mod status;
pub mod submit;
pub mod worker;

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::{self, consumer, kv, stream};
use serde::{Deserialize, Serialize};

use crate::pipeline::spec::JobSpec;

pub const JOBS_STREAM: &str = "CTXD_JOBS";
pub const JOBS_SUBJECT: &str = "ctxd.jobs";
pub const DEAD_STREAM: &str = "CTXD_DEAD";
pub const DEAD_SUBJECT: &str = "ctxd.dead";
pub const CONSUMER: &str = "ctxd-workers";
pub const STATE_BUCKET: &str = "ctxd-jobs";
pub const WORKERS_BUCKET: &str = "ctxd-workers";
pub const MEDIA_BUCKET: &str = "ctxd-media";
/// JetStream's default; a running job's heartbeat comes every third of it.
pub const ACK_WAIT: Duration = Duration::from_secs(30);
/// Deliveries of one job before it is failed for good (a crash on every attempt included).
pub const MAX_DELIVER: i64 = 5;
/// How long a worker's entry outlives its last heartbeat.
pub const WORKER_TTL: Duration = Duration::from_secs(15);
/// The cluster-wide bound on jobs delivered and not yet acked (each worker also keeps its own
/// at or below its slots).
pub const MAX_ACK_PENDING: i64 = 256;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("NATS {url}: {cause}")]
    Connect { url: String, cause: String },
    #[error("{0}")]
    Config(String),
    #[error("NATS: {what}: {cause}")]
    Nats { what: String, cause: String },
    #[error("{path}: {cause}")]
    File { path: PathBuf, cause: String },
}

pub type Result<T> = std::result::Result<T, ClusterError>;

/// `what` failed with `e` (any NATS error), as one line.
pub fn nats_err(what: impl Into<String>) -> impl FnOnce(&dyn std::fmt::Display) -> ClusterError {
    let what = what.into();
    move |e| ClusterError::Nats {
        what,
        cause: e.to_string(),
    }
}

/// Where the cluster is and how to log in. Credentials never come from the command line (a
/// shared machine shows every process's arguments): a URL with a user or password in it is
/// refused; they come from files or the environment.
#[derive(Debug, Clone, Default)]
pub struct ClusterOptions {
    /// One or more server URLs, comma-separated (`nats://h1:4222,nats://h2:4222`); `tls://`
    /// requires TLS.
    pub url: String,
    /// A `.creds` file (JWT and nkey seed), else `$CTXD_NATS_CREDS`.
    pub creds: Option<PathBuf>,
    /// A file holding an nkey seed, else `$CTXD_NATS_NKEY`.
    pub nkey: Option<PathBuf>,
    /// A CA certificate (PEM) to trust for TLS, else `$CTXD_NATS_CA`.
    pub ca: Option<PathBuf>,
    /// Replicas of every stream and bucket this creates (3 on a 3-node cluster).
    pub replicas: usize,
    /// Inputs and outputs through this folder instead of the object store.
    pub shared: Option<PathBuf>,
}

fn env_path(name: &str) -> Option<PathBuf> {
    std::env::var_os(name)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// Connects to the cluster and opens (creating where missing) the streams, the consumer and
/// the buckets.
pub async fn connect(opts: &ClusterOptions, name: &str) -> Result<Cluster> {
    let connect_err = |cause: String| ClusterError::Connect {
        url: opts.url.clone(),
        cause,
    };
    let mut addrs = Vec::new();
    for u in opts.url.split(',').map(str::trim).filter(|u| !u.is_empty()) {
        let addr: async_nats::ServerAddr = u
            .parse()
            .map_err(|e: std::io::Error| connect_err(format!("{u}: {e}")))?;
        if addr.has_user_pass() {
            return Err(ClusterError::Config(format!(
                "{}:{}: credentials in a URL show in every process list; put them in \
                 CTXD_NATS_USER and CTXD_NATS_PASSWORD, or a creds file (--nats-creds)",
                addr.host(),
                addr.port()
            )));
        }
        addrs.push(addr);
    }
    if addrs.is_empty() {
        return Err(ClusterError::Config(
            "no NATS server: give --nats URL or set CTXD_NATS_URL".into(),
        ));
    }
    let file_err = |path: &PathBuf| {
        let path = path.clone();
        move |e: std::io::Error| ClusterError::File {
            path,
            cause: e.to_string(),
        }
    };
    let mut o = match opts.creds.clone().or_else(|| env_path("CTXD_NATS_CREDS")) {
        Some(path) => async_nats::ConnectOptions::with_credentials_file(&path)
            .await
            .map_err(file_err(&path))?,
        None => async_nats::ConnectOptions::new(),
    };
    if let Some(path) = opts.nkey.clone().or_else(|| env_path("CTXD_NATS_NKEY")) {
        let seed = std::fs::read_to_string(&path).map_err(file_err(&path))?;
        o = o.nkey(seed.trim().to_string());
    }
    if let (Ok(user), Ok(pass)) = (
        std::env::var("CTXD_NATS_USER"),
        std::env::var("CTXD_NATS_PASSWORD"),
    ) {
        o = o.user_and_password(user, pass);
    }
    if let Some(ca) = opts.ca.clone().or_else(|| env_path("CTXD_NATS_CA")) {
        o = o.add_root_certificates(ca).require_tls(true);
    }
    if opts.url.contains("tls://") {
        o = o.require_tls(true);
    }
    let client = o
        .name(name)
        .connection_timeout(Duration::from_secs(5))
        .connect(addrs)
        .await
        .map_err(|e| connect_err(e.to_string()))?;
    retried(|| Cluster::open(client.clone(), opts)).await
}

/// The connection and every JetStream resource ctxd uses.
pub struct Cluster {
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    pub jobs: stream::Stream,
    pub state: kv::Store,
    pub workers: kv::Store,
    pub media: media::Media,
}

impl Cluster {
    async fn open(client: async_nats::Client, opts: &ClusterOptions) -> Result<Cluster> {
        let mut js = jetstream::new(client.clone());
        // short, and asked again (`retried`): see there
        js.set_timeout(Duration::from_secs(2));
        let replicas = opts.replicas.max(1);
        let jobs = js
            .get_or_create_stream(stream::Config {
                name: JOBS_STREAM.into(),
                subjects: vec![format!("{JOBS_SUBJECT}.>")],
                retention: stream::RetentionPolicy::WorkQueue,
                num_replicas: replicas,
                // a resubmission inside this window is dropped by its message id
                duplicate_window: Duration::from_secs(120),
                ..Default::default()
            })
            .await
            .map_err(|e| nats_err("the job stream")(&e))?;
        js.get_or_create_stream(stream::Config {
            name: DEAD_STREAM.into(),
            subjects: vec![format!("{DEAD_SUBJECT}.>")],
            num_replicas: replicas,
            ..Default::default()
        })
        .await
        .map_err(|e| nats_err("the dead-letter stream")(&e))?;
        jobs.get_or_create_consumer(
            CONSUMER,
            consumer::pull::Config {
                durable_name: Some(CONSUMER.into()),
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: ACK_WAIT,
                max_deliver: MAX_DELIVER,
                max_ack_pending: MAX_ACK_PENDING,
                num_replicas: replicas,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| nats_err("the workers' consumer")(&e))?;
        let state = bucket(
            &js,
            kv::Config {
                bucket: STATE_BUCKET.into(),
                description: "ctxd job state, by job key".into(),
                // every change of a job is kept (a run's claim, progress, end), up to this many
                history: 64,
                num_replicas: replicas,
                ..Default::default()
            },
        )
        .await?;
        let workers = bucket(
            &js,
            kv::Config {
                bucket: WORKERS_BUCKET.into(),
                description: "live ctxd workers".into(),
                history: 1,
                max_age: WORKER_TTL,
                num_replicas: replicas,
                ..Default::default()
            },
        )
        .await?;
        let media = media::Media::open(&js, opts.shared.as_deref(), replicas).await?;
        Ok(Cluster {
            client,
            js,
            jobs,
            state,
            workers,
            media,
        })
    }

    /// A job's state and its entry's revision, if it has one.
    pub async fn job(&self, key: &str) -> Result<Option<(JobState, u64)>> {
        retried(|| self.job_once(key)).await
    }

    async fn job_once(&self, key: &str) -> Result<Option<(JobState, u64)>> {
        let entry = self
            .state
            .entry(key)
            .await
            .map_err(|e| nats_err(format!("job {key}"))(&e))?;
        match entry {
            Some(e) if e.operation == kv::Operation::Put => {
                let s: JobState = serde_json::from_slice(&e.value).map_err(|err| {
                    ClusterError::Config(format!("job {key}: unreadable state: {err}"))
                })?;
                Ok(Some((s, e.revision)))
            }
            _ => Ok(None),
        }
    }

    /// Writes `state` if the entry is still at `revision` (None: only if there is none);
    /// the new revision, or None when someone else wrote first.
    pub async fn put_job(
        &self,
        key: &str,
        state: &JobState,
        revision: Option<u64>,
    ) -> Result<Option<u64>> {
        let bytes: bytes::Bytes = serde_json::to_vec(state)
            .map_err(|e| ClusterError::Config(e.to_string()))?
            .into();
        let r = match revision {
            Some(rev) => match self.state.update(key, bytes.clone(), rev).await {
                Ok(r) => Ok(Some(r)),
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(None),
                // Timed out: the write may have landed all the same. If the entry holds
                // exactly what we wrote, it did.
                Err(e) => match self.state.entry(key).await {
                    Ok(Some(now)) if now.value == bytes => Ok(Some(now.revision)),
                    _ => Err(nats_err(format!("job {key}"))(&e)),
                },
            },
            None => self
                .state
                .create(key, bytes)
                .await
                .map(Some)
                .or_else(|e| match e.kind() {
                    kv::CreateErrorKind::AlreadyExists => Ok(None),
                    _ => Err(nats_err(format!("job {key}"))(&e)),
                }),
        };
        r
    }

    /// Marks a job cancelled unless it has ended (compare-and-set, tried again when another
    /// writer got in first): the state it has now and whether this call cancelled it, or
    /// None when there is no such job.
    pub async fn cancel_job(&self, key: &str, why: &str) -> Result<Option<(State, bool)>> {
        for _ in 0..10 {
            let Some((mut s, rev)) = self.job(key).await? else {
                return Ok(None);
            };
            if s.state.ended() {
                return Ok(Some((s.state, false)));
            }
            s.state = State::Cancelled;
            s.reason = Some(why.to_string());
            s.stage = None;
            s.finished_at = Some(now());
            if self.put_job(key, &s, Some(rev)).await?.is_some() {
                return Ok(Some((State::Cancelled, true)));
            }
        }
        Err(ClusterError::Config(format!(
            "job {key}: its state kept changing; cancel again"
        )))
    }
}

/// The runtime a command's cluster calls run on (one thread: they wait on the network).
pub(crate) fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| ClusterError::Config(format!("tokio: {e}")))
}

/// Opens a KV bucket, creating its stream where missing. The stream is made here, with the
/// settings async-nats gives a bucket, because the crate's own `create_key_value` first reads
/// the account's info in a form only NATS 2.10+ sends (Debian 12 ships 2.9).
async fn bucket(js: &jetstream::Context, cfg: kv::Config) -> Result<kv::Store> {
    let name = cfg.bucket.clone();
    if let Ok(s) = js.get_key_value(&name).await {
        return Ok(s);
    }
    js.get_or_create_stream(stream::Config {
        name: format!("KV_{name}"),
        description: Some(cfg.description),
        subjects: vec![format!("$KV.{name}.>")],
        max_messages_per_subject: cfg.history.max(1),
        max_age: cfg.max_age,
        storage: cfg.storage,
        allow_rollup: true,
        deny_delete: true,
        // Reads go to the stream leader. Direct gets (any replica answers) timed out for as
        // long as a replica's node was down on NATS 2.9 (measured: most reads after a kill).
        allow_direct: false,
        num_replicas: cfg.num_replicas.max(1),
        discard: stream::DiscardPolicy::New,
        ..Default::default()
    })
    .await
    .map_err(|e| nats_err(format!("KV bucket {name}"))(&e))?;
    js.get_key_value(&name)
        .await
        .map_err(|e| nats_err(format!("KV bucket {name}"))(&e))
}

/// The keys of a bucket, from its stream's subjects: one request the stream leader answers
/// (the crate's `keys()` needs a consumer, whose creation timed out on NATS 2.9 while a node
/// was down). Sorted.
pub async fn bucket_keys(store: &kv::Store, bucket: &str) -> Result<Vec<String>> {
    retried(|| bucket_keys_once(store, bucket)).await
}

async fn bucket_keys_once(store: &kv::Store, bucket: &str) -> Result<Vec<String>> {
    use futures_util::StreamExt;
    let prefix = format!("$KV.{bucket}.");
    let mut subjects = store
        .stream
        .info_with_subjects(format!("{prefix}>"))
        .await
        .map_err(|e| nats_err(format!("listing {bucket}"))(&e))?;
    let mut keys = Vec::new();
    while let Some(s) = subjects.next().await {
        let (subject, _) = s.map_err(|e| nats_err(format!("listing {bucket}"))(&e))?;
        keys.push(subject.trim_start_matches(&prefix).to_string());
    }
    keys.sort();
    Ok(keys)
}

/// Runs an idempotent request up to four times. On NATS 2.9, once a node of a cluster is
/// lost, a share of JetStream requests go unanswered for minutes (measured: about a third)
/// although the cluster keeps its quorum; asking again gets an answer.
pub async fn retried<T, F, Fut>(mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let mut tries = 0;
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if tries >= 3 => return Err(e),
            Err(e) => {
                tracing::debug!("{e}; asking again");
                tokio::time::sleep(Duration::from_millis(100 << tries)).await;
                tries += 1;
            }
        }
    }
}

/// Seconds since the Unix epoch.
pub fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// A stored file: where it lies in the media store, its content hash and size.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stored {
    pub object: String,
    pub sha256: String,
    pub size: u64,
    /// The file's own name (the input's as submitted; an output's as `ctxd edit` names it).
    pub file_name: String,
}

/// What `ctxd submit` publishes: everything a worker needs, nothing it must look up.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobMessage {
    pub key: String,
    pub input: Stored,
    pub spec: JobSpec,
    /// The bundle identity the key was made with; a worker on another bundle refuses the job.
    pub bundle_identity: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Queued,
    Running,
    Done,
    Failed,
    /// Cancelled by a submitter (`ctxd cancel`, or a fronting daemon whose own job was
    /// cancelled or timed out): a worker running it stops and stores nothing; `--redo` queues
    /// it again.
    Cancelled,
}

impl State {
    pub fn name(self) -> &'static str {
        match self {
            State::Queued => "queued",
            State::Running => "running",
            State::Done => "done",
            State::Failed => "failed",
            State::Cancelled => "cancelled",
        }
    }

    pub fn ended(self) -> bool {
        matches!(self, State::Done | State::Failed | State::Cancelled)
    }
}

/// A job's entry in [`STATE_BUCKET`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobState {
    pub state: State,
    /// The input's file name as submitted.
    pub input: String,
    /// The worker running it (or that last ran it).
    #[serde(default)]
    pub worker: Option<String>,
    /// The stage of a running job: `fetching`, `loading`, `editing`, `writing`, `storing`.
    #[serde(default)]
    pub stage: Option<String>,
    #[serde(default)]
    pub frames_done: u64,
    #[serde(default)]
    pub frames_total: Option<u64>,
    /// Runs started (deliveries that got as far as claiming the job).
    #[serde(default)]
    pub attempts: u32,
    /// Why it failed (or why the last attempt did, while it waits for the next).
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub outputs: Vec<Stored>,
    pub submitted_at: f64,
    #[serde(default)]
    pub started_at: Option<f64>,
    #[serde(default)]
    pub finished_at: Option<f64>,
    /// Seconds the engine ran (the last run).
    #[serde(default)]
    pub run_s: Option<f64>,
}

impl JobState {
    pub fn queued(input: &str) -> JobState {
        JobState {
            state: State::Queued,
            input: input.to_string(),
            worker: None,
            stage: None,
            frames_done: 0,
            frames_total: None,
            attempts: 0,
            reason: None,
            outputs: Vec::new(),
            submitted_at: now(),
            started_at: None,
            finished_at: None,
            run_s: None,
        }
    }
}

/// A live worker's entry in [`WORKERS_BUCKET`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerInfo {
    pub id: String,
    pub host: String,
    pub pid: u32,
    pub slots: usize,
    pub running: Vec<String>,
    pub done: u64,
    pub failed: u64,
    pub started_at: f64,
    pub seen_at: f64,
    pub bundle: String,
}

/// The media-store name of a job's input.
pub fn input_object(key: &str) -> String {
    format!("in/{key}")
}

/// The media-store name of one of a job's output files.
pub fn output_object(key: &str, file: &str) -> String {
    format!("out/{key}/{file}")
}

/// The list of a job's outputs, stored after them: its presence says they are all there.
pub fn manifest_object(key: &str) -> String {
    format!("out/{key}/manifest.json")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_and_old_entries_read() {
        let s = JobState::queued("clip.mp4");
        let back: JobState = serde_json::from_slice(&serde_json::to_vec(&s).unwrap()).unwrap();
        assert_eq!(back.state, State::Queued);
        assert_eq!(back.input, "clip.mp4");
        // fields added later default
        let minimal = r#"{"state":"done","input":"a.mp4","submitted_at":1.0}"#;
        let m: JobState = serde_json::from_str(minimal).unwrap();
        assert!(m.state.ended() && m.outputs.is_empty() && m.attempts == 0);
    }

    #[tokio::test]
    async fn credentials_in_a_url_are_refused_before_connecting() {
        let o = ClusterOptions {
            url: "nats://alice:secret@127.0.0.1:1".into(),
            ..Default::default()
        };
        let e = connect(&o, "t").await.err().unwrap().to_string();
        assert!(
            e.contains("CTXD_NATS_USER") && !e.contains("secret@"),
            "{e}"
        );
        let none = ClusterOptions::default();
        let e = connect(&none, "t").await.err().unwrap().to_string();
        assert!(e.contains("--nats"), "{e}");
    }
}
