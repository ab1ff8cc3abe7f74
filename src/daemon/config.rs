//! The daemon's configuration (`watch/ctxd-watch.toml`): inbox → outbox mappings, each with
//! its own preset and bundle, and the daemon-wide settings. Unknown keys are errors.

use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatchConfig {
    #[serde(default = "default_state")]
    pub state_dir: PathBuf,
    /// How often a pending file is looked at again (and running jobs are checked).
    #[serde(default = "default_poll")]
    pub poll_seconds: f64,
    /// A full rescan of every inbox this often, for events the watcher misses (network
    /// filesystems, overflow).
    #[serde(default = "default_rescan")]
    pub rescan_seconds: f64,
    #[serde(default = "one")]
    pub concurrency: usize,
    #[serde(default = "three")]
    pub max_attempts: u32,
    #[serde(default = "default_grace")]
    pub shutdown_grace_seconds: f64,
    /// Minutes a loaded model stays warm (in memory, ready) after its last job; 0 loads the
    /// models afresh for every job.
    #[serde(default = "default_warm")]
    pub warm_minutes: f64,
    #[serde(default)]
    pub api: ApiConfig,
    #[serde(default)]
    pub mapping: Vec<Mapping>,
    /// Live streams edited from the daemon's start (`ctxd stream`'s settings, plus a name).
    #[serde(default)]
    pub stream: Vec<crate::pipeline::stream_spec::StreamSettings>,
    /// Front a NATS JetStream cluster: jobs run on its `ctxd worker`s instead of here (the
    /// inboxes, outboxes, job store, API and /metrics stay as they are).
    #[serde(default)]
    pub cluster: Option<ClusterConfig>,
}

/// `[cluster]`: where the workers are. Credentials come from the environment
/// (`CTXD_NATS_USER`/`CTXD_NATS_PASSWORD`) or the files named here, never from a URL.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// Server URL(s), comma-separated.
    pub nats: String,
    /// Videos through this folder (mounted by every worker) instead of the object store.
    pub shared: Option<PathBuf>,
    #[serde(default = "one")]
    pub replicas: usize,
    pub creds: Option<PathBuf>,
    pub nkey: Option<PathBuf>,
    pub ca: Option<PathBuf>,
}

impl ClusterConfig {
    pub fn options(&self) -> crate::cluster::ClusterOptions {
        crate::cluster::ClusterOptions {
            url: self.nats.clone(),
            creds: self.creds.clone(),
            nkey: self.nkey.clone(),
            ca: self.ca.clone(),
            replicas: self.replicas,
            shared: self.shared.clone(),
        }
    }
}

/// The status API: on by default, on the loopback interface only.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    #[serde(default = "yes")]
    pub enabled: bool,
    /// `host:port`; port 0 picks a free one (written to `<state_dir>/api.addr`).
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Bearer token every request must carry. The environment variable `CTXD_API_TOKEN`
    /// overrides it, so the secret need not live in the file. Required off loopback.
    pub token: Option<String>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            enabled: true,
            listen: default_listen(),
            token: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mapping {
    pub name: String,
    pub inbox: PathBuf,
    pub outbox: PathBuf,
    pub failed: PathBuf,
    pub done: Option<PathBuf>,
    pub preset: Option<String>,
    pub bundle: Option<PathBuf>,
    #[serde(default = "default_settle")]
    pub settle_seconds: f64,
    #[serde(default = "default_sidecar_grace")]
    pub sidecar_grace_seconds: f64,
    #[serde(default = "default_max_mb")]
    pub max_input_mb: u64,
    /// Inputs longer than this are refused with a reason (seconds of video).
    pub max_duration_seconds: Option<f64>,
    /// A job running longer than this is stopped and failed (not retried).
    pub max_job_seconds: Option<f64>,
}

fn default_state() -> PathBuf {
    PathBuf::from("state")
}
fn default_poll() -> f64 {
    0.5
}
fn default_rescan() -> f64 {
    10.0
}
fn default_warm() -> f64 {
    10.0
}
fn yes() -> bool {
    true
}
fn default_listen() -> String {
    "127.0.0.1:7878".into()
}
fn one() -> usize {
    1
}
fn three() -> u32 {
    3
}
fn default_grace() -> f64 {
    30.0
}
fn default_settle() -> f64 {
    1.0
}
fn default_sidecar_grace() -> f64 {
    2.0
}
fn default_max_mb() -> u64 {
    4096
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_')
}

impl WatchConfig {
    /// Reads `path`; relative paths inside are taken from the file's folder. Creates the
    /// folders it names.
    ///
    /// # Errors
    /// A message naming the file and the cause (unknown key, missing mapping, bad folder).
    pub fn load(path: &Path) -> Result<WatchConfig, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut c = WatchConfig::parse(&text, path)?;
        for dir in std::iter::once(&c.state_dir).chain(c.mapping.iter().flat_map(|m| {
            [&m.inbox, &m.outbox, &m.failed]
                .into_iter()
                .chain(m.done.as_ref())
        })) {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("{}: cannot create {}: {e}", path.display(), dir.display()))?;
        }
        // Absolute from here on: the job store records input paths, and a restart from
        // another working directory must find them.
        let real = |p: &mut PathBuf| -> Result<(), String> {
            *p = std::fs::canonicalize(&*p)
                .map_err(|e| format!("{}: {}: {e}", path.display(), p.display()))?;
            Ok(())
        };
        real(&mut c.state_dir)?;
        for m in &mut c.mapping {
            real(&mut m.inbox)?;
            real(&mut m.outbox)?;
            real(&mut m.failed)?;
            if let Some(done) = &mut m.done {
                real(done)?;
            }
            if let Some(b) = &mut m.bundle {
                *b = std::path::absolute(&*b).unwrap_or_else(|_| b.clone());
            }
            // Outputs landing in the inbox would be edited again, and again.
            if [&m.outbox, &m.failed]
                .into_iter()
                .chain(m.done.as_ref())
                .any(|d| d == &m.inbox)
            {
                return Err(format!(
                    "{}: mapping '{}': the inbox cannot also be its outbox, failed or done folder",
                    path.display(),
                    m.name
                ));
            }
        }
        Ok(c)
    }

    /// Parses and checks the text of a config at `path` without touching the filesystem:
    /// folders are made absolute (from the file's folder) but not created. Every value that
    /// could later panic or overflow is refused here.
    ///
    /// # Errors
    /// A message naming the file and the cause.
    pub fn parse(text: &str, path: &Path) -> Result<WatchConfig, String> {
        let mut c: WatchConfig =
            toml::from_str(text).map_err(|e| format!("{}: {}", path.display(), e.message()))?;
        let base = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let abs = |p: &Path| {
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                base.join(p)
            }
        };
        if c.mapping.is_empty() && c.stream.is_empty() {
            return Err(format!(
                "{}: no [[mapping]] and no [[stream]]",
                path.display()
            ));
        }
        let mut names = std::collections::HashSet::new();
        for st in &mut c.stream {
            if !valid_name(&st.name) || !names.insert(st.name.clone()) {
                return Err(format!(
                    "{}: stream name '{}' must be unique and letters, digits, - or _",
                    path.display(),
                    st.name
                ));
            }
            // Files named in the config are found from the config's folder, as folders are.
            let local = |s: &str| s != "-" && !s.contains("://") && !s.contains(':');
            if local(&st.input) {
                st.input = abs(Path::new(&st.input)).display().to_string();
            }
            if local(&st.output) {
                let trailing = st.output.ends_with('/');
                st.output = abs(Path::new(&st.output)).display().to_string();
                if trailing && !st.output.ends_with('/') {
                    st.output.push('/');
                }
            }
            st.prompt_file = st.prompt_file.as_deref().map(abs);
            st.bundle = st.bundle.as_deref().map(abs);
        }
        c.state_dir = abs(&c.state_dir);
        for m in &mut c.mapping {
            m.inbox = abs(&m.inbox);
            m.outbox = abs(&m.outbox);
            m.failed = abs(&m.failed);
            m.done = m.done.as_deref().map(abs);
            m.bundle = m.bundle.as_deref().map(abs);
            if !valid_name(&m.name) {
                return Err(format!(
                    "{}: mapping name '{}' must be letters, digits, - or _",
                    path.display(),
                    m.name
                ));
            }
        }
        // Every duration becomes a `Duration`, which panics on NaN, infinity, negatives and
        // overflow: refuse those here, naming the key.
        let year = 366.0 * 86400.0;
        let mut durations = vec![
            ("poll_seconds".to_string(), Some(c.poll_seconds)),
            ("rescan_seconds".to_string(), Some(c.rescan_seconds)),
            (
                "shutdown_grace_seconds".to_string(),
                Some(c.shutdown_grace_seconds),
            ),
            ("warm_minutes".to_string(), Some(c.warm_minutes * 60.0)),
        ];
        for m in &c.mapping {
            let key = |k: &str| format!("mapping '{}': {k}", m.name);
            durations.push((key("settle_seconds"), Some(m.settle_seconds)));
            durations.push((key("sidecar_grace_seconds"), Some(m.sidecar_grace_seconds)));
            durations.push((key("max_duration_seconds"), m.max_duration_seconds));
            durations.push((key("max_job_seconds"), m.max_job_seconds));
        }
        for (key, v) in durations {
            if let Some(v) = v.filter(|v| !(v.is_finite() && (0.0..=year).contains(v))) {
                return Err(format!(
                    "{}: {key} = {v} is out of range (0 to one year)",
                    path.display()
                ));
            }
        }
        // `max_input_mb` is multiplied into bytes: keep that product in range (1 EiB).
        if let Some(m) = c.mapping.iter().find(|m| m.max_input_mb > (1 << 40)) {
            return Err(format!(
                "{}: mapping '{}': max_input_mb = {} is out of range (at most {})",
                path.display(),
                m.name,
                m.max_input_mb,
                1u64 << 40
            ));
        }
        // An empty token would match a bare `Bearer ` header: never a valid secret.
        if c.api.token.as_deref().is_some_and(|t| t.trim().is_empty()) {
            return Err(format!(
                "{}: [api] token is empty; give a secret or remove the key",
                path.display()
            ));
        }
        if let Ok(token) = std::env::var("CTXD_API_TOKEN") {
            c.api.token = Some(token).filter(|t| !t.trim().is_empty());
        }
        if c.api.enabled {
            let addr: std::net::SocketAddr = c.api.listen.parse().map_err(|_| {
                format!(
                    "{}: [api] listen '{}' is not host:port (e.g. 127.0.0.1:7878)",
                    path.display(),
                    c.api.listen
                )
            })?;
            if !addr.ip().is_loopback() && c.api.token.is_none() {
                return Err(format!(
                    "{}: [api] listen '{}' is reachable from other machines: set a token (or CTXD_API_TOKEN)",
                    path.display(),
                    c.api.listen
                ));
            }
        }
        let mut names = std::collections::HashSet::new();
        for m in &c.mapping {
            if !names.insert(&m.name) {
                return Err(format!(
                    "{}: two mappings are named '{}'",
                    path.display(),
                    m.name
                ));
            }
            for (key, v) in [
                ("max_duration_seconds", m.max_duration_seconds),
                ("max_job_seconds", m.max_job_seconds),
            ] {
                if v.is_some_and(|v| v.is_nan() || v <= 0.0) {
                    return Err(format!(
                        "{}: mapping '{}': {key} must be above 0",
                        path.display(),
                        m.name
                    ));
                }
            }
        }
        if c.concurrency == 0 || c.max_attempts == 0 {
            return Err(format!(
                "{}: concurrency and max_attempts must be at least 1",
                path.display()
            ));
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<WatchConfig, String> {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("watch.toml");
        std::fs::write(&path, text).unwrap();
        WatchConfig::load(&path)
    }

    #[test]
    fn the_shipped_config_loads() {
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("watch/ctxd-watch.toml");
        let c = load(&std::fs::read_to_string(shipped).unwrap()).unwrap();
        assert_eq!(c.api.listen, "127.0.0.1:7878");
        assert_eq!(c.mapping[0].max_job_seconds, Some(7200.0));
    }

    #[test]
    fn a_cluster_table_fronts_a_nats_cluster_and_its_typos_are_named() {
        let m = "[[mapping]]\nname = \"a\"\ninbox = \"i\"\noutbox = \"o\"\nfailed = \"f\"\n";
        let c = load(&format!(
            "[cluster]\nnats = \"nats://q:4222\"\nreplicas = 3\n{m}"
        ))
        .unwrap();
        let o = c.cluster.unwrap().options();
        assert_eq!(
            (o.url.as_str(), o.replicas, o.shared),
            ("nats://q:4222", 3, None)
        );
        assert!(load(m).unwrap().cluster.is_none());
        let e = load(&format!("[cluster]\nnats = \"x\"\npasword = \"p\"\n{m}")).unwrap_err();
        assert!(e.contains("pasword"), "{e}");
    }

    #[test]
    fn mistakes_are_named() {
        let m = "[[mapping]]\nname = \"a\"\ninbox = \"i\"\noutbox = \"o\"\nfailed = \"f\"\n";
        let e = load(&format!("polll_seconds = 1\n{m}")).unwrap_err();
        assert!(e.contains("polll_seconds"), "{e}");
        let e = load(&format!("[api]\nlisten = \"0.0.0.0:7878\"\n{m}")).unwrap_err();
        assert!(e.contains("token"), "{e}");
        assert!(load(&format!(
            "[api]\nlisten = \"0.0.0.0:7878\"\ntoken = \"t\"\n{m}"
        ))
        .is_ok());
        let e = load(&format!("{m}{m}")).unwrap_err();
        assert!(e.contains("two mappings"), "{e}");
        let e =
            load("[[mapping]]\nname = \"a\"\ninbox = \"i\"\noutbox = \"./i\"\nfailed = \"f\"\n")
                .unwrap_err();
        assert!(e.contains("cannot also be"), "{e}");
        let e = load(&format!("{m}max_job_seconds = 0\n")).unwrap_err();
        assert!(e.contains("max_job_seconds"), "{e}");
        // Durations that would panic in `Duration::from_secs_f64`, a byte limit that would
        // overflow, an empty token: refused, naming the key.
        for bad in [
            "poll_seconds = -1\n",
            "shutdown_grace_seconds = inf\n",
            "rescan_seconds = nan\n",
            "warm_minutes = 1e300\n",
        ] {
            let e = load(&format!("{bad}{m}")).unwrap_err();
            let key = bad.split(' ').next().unwrap();
            assert!(e.contains(key) && e.contains("out of range"), "{e}");
        }
        for bad in [
            "settle_seconds = -0.5",
            "sidecar_grace_seconds = inf",
            "max_job_seconds = inf",
        ] {
            let e = load(&format!("{m}{bad}\n")).unwrap_err();
            assert!(
                e.contains("mapping 'a'") && e.contains(bad.split(' ').next().unwrap()),
                "{e}"
            );
        }
        let e = load(&format!("{m}max_input_mb = 9223372036854775807\n")).unwrap_err();
        assert!(e.contains("max_input_mb"), "{e}");
        let e = load(&format!("[api]\ntoken = \"\"\n{m}")).unwrap_err();
        assert!(e.contains("token is empty"), "{e}");
        let e = load("[api]\nlisten = \"nowhere\"\n[[mapping]]\nname = \"a b\"\ninbox = \"i\"\noutbox = \"o\"\nfailed = \"f\"\n").unwrap_err();
        assert!(e.contains("letters, digits"), "{e}");
    }
}
