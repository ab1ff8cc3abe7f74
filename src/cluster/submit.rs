//! `ctxd submit`: a job per input, keyed by its content and everything that decides its
//! output, its input in the media store, its state `queued`, its message on the work queue;
//! then, with `--wait`, its progress until it ends and its outputs fetched.
//!
//! Submitting what is already queued, running or done adds nothing (one job per key); a failed
//! job is queued again only with `--redo`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{
    input_object, nats_err, Cluster, ClusterError, ClusterOptions, JobMessage, JobState, Result,
    State, Stored, JOBS_SUBJECT,
};
use crate::model::bundle::{sha256_bytes, sha256_file};
use crate::pipeline::spec::JobSpec;

/// One input and what to do with it.
pub struct Submission {
    pub input: PathBuf,
    pub spec: JobSpec,
    pub bundle: PathBuf,
}

pub struct SubmitOptions {
    pub cluster: ClusterOptions,
    /// Queue a failed job again.
    pub redo: bool,
    /// Wait for every job to end, at most this long.
    pub wait: Option<Duration>,
    /// Where waited-for outputs go (default: beside each input).
    pub out_dir: Option<PathBuf>,
}

/// How one submission ended (with `--wait`) or stands (without).
#[derive(Debug, Clone)]
pub struct Submitted {
    pub input: PathBuf,
    pub key: String,
    pub state: State,
    /// What submitting did: `queued`, `already queued`, `already running`, `already done`...
    pub action: String,
    pub reason: Option<String>,
    /// Outputs fetched to this machine.
    pub fetched: Vec<PathBuf>,
}

/// The key of `spec` on `input` run with `bundle`: the input's content hash and the job key
/// the daemon uses (every resolved value, the bundle's identity; no file names).
///
/// # Errors
/// The input or the bundle cannot be read.
pub fn job_key(input: &Path, spec: &JobSpec, bundle: &Path) -> Result<(String, String)> {
    let content = sha256_file(input).map_err(|e| ClusterError::File {
        path: input.to_path_buf(),
        cause: e.to_string(),
    })?;
    let what = crate::daemon::intake::job_key(spec, bundle).map_err(ClusterError::Config)?;
    Ok((
        sha256_bytes(format!("{content}:{what}").as_bytes()),
        content,
    ))
}

/// Submits every job, then (with `wait`) follows them to their end. `say` gets one line per
/// event worth telling a person.
///
/// # Errors
/// The cluster cannot be reached, an input or bundle cannot be read; a job that fails is
/// not an error here (its `Submitted` says so).
pub fn run(
    opts: &SubmitOptions,
    subs: &[Submission],
    say: &(dyn Fn(String) + Sync),
) -> Result<Vec<Submitted>> {
    super::runtime()?.block_on(async {
        let c = super::connect(&opts.cluster, "ctxd submit").await?;
        let mut out = Vec::new();
        for s in subs {
            out.push(submit_one(&c, s, opts.redo).await?);
            let last = &out[out.len() - 1];
            say(format!(
                "{}: {} (job {})",
                s.input.display(),
                last.action,
                &last.key[..12]
            ));
        }
        if let Some(limit) = opts.wait {
            follow(&c, &mut out, limit, say).await?;
            for (s, sub) in subs.iter().zip(out.iter_mut()) {
                if sub.state == State::Done {
                    let dir = opts.out_dir.clone().unwrap_or_else(|| {
                        s.input.parent().map(Path::to_path_buf).unwrap_or_default()
                    });
                    sub.fetched = fetch_outputs(&c, &sub.key, &dir).await?;
                }
            }
        }
        Ok(out)
    })
}

pub(crate) async fn submit_one(c: &Cluster, s: &Submission, redo: bool) -> Result<Submitted> {
    let (key, content) = job_key(&s.input, &s.spec, &s.bundle)?;
    let identity = crate::model::Bundle::open(&s.bundle)
        .and_then(|b| b.identity())
        .map_err(|e| ClusterError::Config(e.to_string()))?;
    let file_name = s
        .input
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "input.mp4".into());
    let object = input_object(&key);
    let size = std::fs::metadata(&s.input)
        .map_err(|e| ClusterError::File {
            path: s.input.clone(),
            cause: e.to_string(),
        })?
        .len();
    if c.media.sha256(&object).await?.as_deref() != Some(content.as_str()) {
        c.media.put(&object, &s.input).await?;
    }
    let message = JobMessage {
        key: key.clone(),
        input: Stored {
            object,
            sha256: content,
            size,
            file_name: file_name.clone(),
        },
        spec: s.spec.clone(),
        bundle_identity: identity,
    };
    let result = |state: State, action: &str, reason: Option<String>| Submitted {
        input: s.input.clone(),
        key: key.clone(),
        state,
        action: action.to_string(),
        reason,
        fetched: Vec::new(),
    };
    let fresh = JobState::queued(&file_name);
    if let Some(rev) = c.put_job(&key, &fresh, None).await? {
        publish(c, &message, rev).await?;
        return Ok(result(State::Queued, "queued", None));
    }
    let Some((state, rev)) = c.job(&key).await? else {
        return Err(ClusterError::Config(format!(
            "job {key}: its state changed while submitting; submit again"
        )));
    };
    Ok(match state.state {
        State::Done => result(State::Done, "already done", None),
        State::Running => result(State::Running, "already running", None),
        State::Queued => {
            // Queued but its message perhaps never sent (a submitter killed in between):
            // sending again is harmless, the workers skip what is already done.
            publish(c, &message, rev).await?;
            result(State::Queued, "already queued", None)
        }
        State::Failed | State::Cancelled if redo => match c.put_job(&key, &fresh, Some(rev)).await?
        {
            Some(new_rev) => {
                publish(c, &message, new_rev).await?;
                result(State::Queued, "queued again (--redo)", None)
            }
            None => result(state.state, "changed meanwhile; not queued", state.reason),
        },
        State::Cancelled => result(
            State::Cancelled,
            "cancelled before (--redo to run it again)",
            state.reason,
        ),
        State::Failed => result(
            State::Failed,
            "already failed (--redo to run it again)",
            state.reason,
        ),
    })
}

/// Publishes the job's message; its id (key and state revision) makes a repeat inside the
/// stream's duplicate window a no-op.
async fn publish(c: &Cluster, m: &JobMessage, revision: u64) -> Result<()> {
    let payload = serde_json::to_vec(m).map_err(|e| ClusterError::Config(e.to_string()))?;
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(
        async_nats::header::NATS_MESSAGE_ID,
        format!("{}.{revision}", m.key).as_str(),
    );
    let ack =
        c.js.publish_with_headers(format!("{JOBS_SUBJECT}.{}", m.key), headers, payload.into())
            .await
            .map_err(|e| nats_err(format!("queueing job {}", m.key))(&e))?;
    ack.await
        .map_err(|e| nats_err(format!("queueing job {}", m.key))(&e))?;
    Ok(())
}

/// Cancels jobs named by key or by a unique prefix of at least 8 characters (as `submit`
/// and `status --jobs` print them): per name, the full key, the state the job has now and
/// whether this call cancelled it (false: it had already ended so).
///
/// # Errors
/// The cluster cannot be reached; a name matches no job or several.
pub fn cancel(opts: &ClusterOptions, names: &[String]) -> Result<Vec<(String, State, bool)>> {
    super::runtime()?.block_on(async {
        let c = super::connect(opts, "ctxd cancel").await?;
        let keys = super::bucket_keys(&c.state, super::STATE_BUCKET).await?;
        let mut out = Vec::new();
        for name in names {
            let found: Vec<&String> = if name.len() >= 8 {
                keys.iter()
                    .filter(|k| k.starts_with(name.as_str()))
                    .collect()
            } else {
                Vec::new()
            };
            let key = match found.as_slice() {
                [one] => (*one).clone(),
                [] => {
                    return Err(ClusterError::Config(format!(
                        "{name}: no such job (give its key or 8+ leading characters of it)"
                    )))
                }
                _ => {
                    return Err(ClusterError::Config(format!(
                        "{name}: matches {} jobs; give more of the key",
                        found.len()
                    )))
                }
            };
            let why = format!("cancelled by `ctxd cancel` at {}", super::now().round());
            match c.cancel_job(&key, &why).await? {
                Some((state, now)) => out.push((key, state, now)),
                None => {
                    return Err(ClusterError::Config(format!("{name}: no such job")));
                }
            }
        }
        Ok(out)
    })
}

/// Polls every job's state until all have ended or `limit` passes, telling each change.
async fn follow(
    c: &Cluster,
    subs: &mut [Submitted],
    limit: Duration,
    say: &(dyn Fn(String) + Sync),
) -> Result<()> {
    let since = Instant::now();
    let mut seen: Vec<String> = vec![String::new(); subs.len()];
    loop {
        let mut open = 0;
        for (i, s) in subs.iter_mut().enumerate() {
            let Some((st, _)) = c.job(&s.key).await? else {
                continue;
            };
            s.state = st.state;
            s.reason = st.reason.clone();
            let line = match st.state {
                State::Running => format!(
                    "running on {} ({}, {} frames)",
                    st.worker.as_deref().unwrap_or("?"),
                    st.stage.as_deref().unwrap_or("starting"),
                    st.frames_done
                ),
                State::Failed | State::Cancelled => format!(
                    "{}: {}",
                    st.state.name(),
                    st.reason.as_deref().unwrap_or("no reason given")
                ),
                other => other.name().to_string(),
            };
            // progress lines only when the stage or state changes, not per frame
            let gist = format!("{:?}{:?}{:?}", st.state, st.stage, st.worker);
            if gist != seen[i] {
                say(format!("{}: {line}", s.input.display()));
                seen[i] = gist;
            }
            if !st.state.ended() {
                open += 1;
            }
        }
        if open == 0 {
            return Ok(());
        }
        if since.elapsed() > limit {
            return Err(ClusterError::Config(format!(
                "{open} job(s) still not ended after {} s (they go on in the cluster; \
                 `ctxd status` follows them)",
                limit.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Fetches a done job's outputs (videos and reports) into `dir`.
async fn fetch_outputs(c: &Cluster, key: &str, dir: &Path) -> Result<Vec<PathBuf>> {
    let Some((st, _)) = c.job(key).await? else {
        return Ok(Vec::new());
    };
    std::fs::create_dir_all(dir).map_err(|e| ClusterError::File {
        path: dir.to_path_buf(),
        cause: e.to_string(),
    })?;
    let mut got = Vec::new();
    for o in &st.outputs {
        let name = Path::new(&o.file_name)
            .file_name()
            .map(|n| n.to_os_string())
            .unwrap_or_default();
        let dest = dir.join(name);
        c.media.get(&o.object, &o.sha256, &dest).await?;
        got.push(dest);
    }
    Ok(got)
}
