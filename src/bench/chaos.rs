//! `ctxd bench chaos`: the daemon's crash promises checked by crashing it. A watch run of
//! clips and broken files, several edits per job, two workers, is killed with SIGKILL at
//! random moments (while starting, admitting, editing, writing, filing) and restarted each
//! time; inputs keep arriving, some while it is down. After every kill, and at the end:
//!
//! - no output set is partial: for each input, the outbox shows all its edits or none;
//! - at the end, no input is lost (each one's bytes are in `done/` or `failed/`), no output
//!   is duplicated or cut short (every video decodes to the frames of its source), every job
//!   is done or failed with its reason, and a job's attempts count every run a kill
//!   interrupted (read from the job store right after each kill) plus the one that ended it.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::harness::{drop_into, unique_clip, WatchRoot, WatchSettings};

#[derive(Args, Debug)]
pub struct ChaosBenchArgs {
    /// Inputs dropped over the run (good clips and broken files).
    #[arg(long, default_value_t = 20)]
    pub jobs: usize,
    /// How many of them are broken (cut short, or not video at all).
    #[arg(long, default_value_t = 4)]
    pub bad: usize,
    /// SIGKILLs, each at a random moment after a start.
    #[arg(long, default_value_t = 100)]
    pub kills: usize,
    /// How long a start lives before its kill, in milliseconds: uniform in 0..this for most
    /// starts, in 0..3x this for three in ten (so jobs also finish between kills).
    #[arg(long, default_value_t = 2500)]
    pub max_life_ms: u64,
    /// Jobs the daemon runs at once.
    #[arg(long, default_value_t = 2)]
    pub concurrency: usize,
    /// The daemon's `max_attempts` (high: every good clip should end edited; lower it to see
    /// jobs given up after repeated crashes, which is also checked).
    #[arg(long, default_value_t = 1000)]
    pub max_attempts: u32,
    /// Bundle the daemon uses.
    #[arg(long, default_value = "models/oracle")]
    pub bundle: PathBuf,
    /// DDIM steps per edit.
    #[arg(long, default_value_t = 6)]
    pub steps: usize,
    /// Seed for the kill moments and the drop order.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Keep the run's folders and the daemon's log here (default: a temporary folder).
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// The edits every job makes (from the inbox's `_defaults.toml`).
const EDITS: [&str; 2] = ["red", "blue"];
const DEFAULTS: &str =
    "source = \"a test pattern\"\n[[edit]]\nprompt = \"red\"\n[[edit]]\nprompt = \"blue\"\n";
/// Frames in every good clip (1 s at 10 fps).
const CLIP_FRAMES: u64 = 10;

#[derive(Debug, Serialize)]
struct ChaosResult {
    inputs: usize,
    bad_inputs: usize,
    kills: usize,
    /// Kills that found at least one job running.
    kills_mid_job: usize,
    /// Job runs the kills interrupted, summed over jobs.
    interrupted_runs: u64,
    max_attempts_seen: u32,
    jobs_done: usize,
    jobs_failed: usize,
    /// Failed because kills used up their attempts (only with a low --max-attempts).
    jobs_given_up: usize,
    final_run_s: f64,
    /// Every broken promise found; empty when the run passed.
    violations: Vec<String>,
}

struct Input {
    name: String,
    bad: bool,
    sha256: String,
    staged: PathBuf,
    dropped: bool,
}

fn sha256_file(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(format!("{:x}", Sha256::digest(&bytes)))
}

/// Visible files of a folder (not hidden, not a temporary name).
fn visible(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !crate::daemon::stable::is_temporary(Path::new(n)))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Outputs per input stem: how many of the edits' videos and reports are in the outbox.
fn output_sets(outbox: &Path) -> BTreeMap<String, Vec<String>> {
    let mut sets: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for name in visible(outbox) {
        let stem = name.split('.').next().unwrap_or_default().to_string();
        sets.entry(stem).or_default().push(name);
    }
    sets
}

/// A whole output set: each edit's video and report, nothing else.
fn whole_set(stem: &str, files: &[String]) -> bool {
    let mut want: Vec<String> = EDITS
        .iter()
        .flat_map(|e| [format!("{stem}.{e}.mp4"), format!("{stem}.{e}.json")])
        .collect();
    want.sort();
    let mut got = files.to_vec();
    got.sort();
    got == want
}

/// (id, input file name, state, attempts, error) of every job in the store.
type JobRow = (i64, String, String, u32, Option<String>);

fn read_jobs(db: &Path) -> Result<Vec<JobRow>> {
    if !db.exists() {
        return Ok(Vec::new());
    }
    let conn = rusqlite::Connection::open(db)?;
    conn.busy_timeout(Duration::from_secs(10))?;
    let mut st = conn.prepare("SELECT id, input_path, state, attempts, error FROM jobs")?;
    let rows = st.query_map([], |r| {
        let path: String = r.get(1)?;
        let name = Path::new(&path)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or(path);
        Ok((r.get(0)?, name, r.get(2)?, r.get(3)?, r.get(4)?))
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

fn decoded_frames(video: &Path) -> Result<u64> {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-count_frames", "-select_streams", "v:0"])
        .args(["-show_entries", "stream=nb_read_frames", "-of", "csv=p=0"])
        .arg(video)
        .output()
        .context("running ffprobe")?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0))
}

fn make_inputs(staging: &Path, n: usize, bad: usize) -> Result<Vec<Input>> {
    std::fs::create_dir_all(staging)?;
    let mut inputs = Vec::new();
    for i in 0..n {
        // Broken ones spread through the run.
        let is_bad = bad > 0 && i % (n / bad).max(1) == (n / bad).max(1) - 1 && {
            let made = inputs.iter().filter(|x: &&Input| x.bad).count();
            made < bad
        };
        let name = format!("chaos-{i:03}.mp4");
        let staged = staging.join(&name);
        if is_bad && i % 2 == 0 {
            std::fs::write(&staged, format!("input {i} is not a video\n").repeat(40))?;
        } else {
            unique_clip(i, &staged)?;
            if is_bad {
                let bytes = std::fs::read(&staged)?;
                std::fs::write(&staged, &bytes[..bytes.len() / 2])?;
            }
        }
        inputs.push(Input {
            name,
            bad: is_bad,
            sha256: sha256_file(&staged)?,
            staged,
            dropped: false,
        });
    }
    Ok(inputs)
}

pub fn chaos(args: &ChaosBenchArgs) -> Result<()> {
    if args.jobs == 0 || args.bad > args.jobs {
        bail!("--jobs must be at least 1 and --bad at most --jobs");
    }
    let (dir, _tmp) = super::work_dir(args.work_dir.as_deref())?;
    let (exe, bundle, preset) =
        super::binary_bench_setup(&dir, &args.bundle, args.steps, 1.0, 128)?;
    let root = WatchRoot::create(
        &dir.join("daemon"),
        &WatchSettings {
            preset: &preset,
            bundle: &bundle,
            concurrency: args.concurrency,
            extra: &format!("max_attempts = {}", args.max_attempts),
        },
        DEFAULTS,
    )?;
    let log = dir.join("daemon.log");
    let db = root.dir("state").join("jobs.db");
    let mut inputs = make_inputs(&dir.join("staging"), args.jobs, args.bad)?;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(args.seed);
    let mut violations: Vec<String> = Vec::new();
    let mut interrupted: HashMap<i64, u64> = HashMap::new();
    let mut kills_mid_job = 0;

    // Each input arrives at a random start: before it (while the daemon is down) or at a
    // random moment of its life.
    let arrival: Vec<(usize, f64)> = inputs
        .iter()
        .map(|_| (rng.random_range(0..args.kills.max(1)), rng.random::<f64>()))
        .collect();
    for k in 0..args.kills {
        for (inp, (at, _)) in inputs.iter_mut().zip(&arrival) {
            if *at < k && !inp.dropped {
                drop_into(&inp.staged, &root.dir("inbox"), &inp.name)?;
                inp.dropped = true;
            }
        }
        let mut daemon = root.spawn(&exe, Some(&log))?;
        // Mostly short lives (kills while starting, admitting, in the first window), some
        // long enough for jobs to finish and be filed.
        let longest = if rng.random_bool(0.7) {
            args.max_life_ms
        } else {
            3 * args.max_life_ms
        };
        let life = Duration::from_millis(rng.random_range(0..=longest));
        let t0 = Instant::now();
        while t0.elapsed() < life {
            let into_life = t0.elapsed().as_secs_f64() / life.as_secs_f64().max(1e-3);
            for (inp, (at, when)) in inputs.iter_mut().zip(&arrival) {
                if *at == k && *when <= into_life && !inp.dropped {
                    drop_into(&inp.staged, &root.dir("inbox"), &inp.name)?;
                    inp.dropped = true;
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        if let Some(st) = daemon.exited()? {
            violations.push(format!("start {k}: the daemon exited on its own ({st})"));
        }
        daemon.kill9()?;
        // What the kill interrupted, as the store has it now.
        let mut mid = false;
        for (id, _, state, _, _) in read_jobs(&db)? {
            if state == "running" {
                *interrupted.entry(id).or_default() += 1;
                mid = true;
            }
        }
        kills_mid_job += usize::from(mid);
        for (stem, files) in output_sets(&root.dir("outbox")) {
            if !whole_set(&stem, &files) {
                violations.push(format!("after kill {k}: partial output set {files:?}"));
            }
        }
        if !args.json {
            eprint!(
                "\rkill {}/{}  mid-job kills {kills_mid_job}   ",
                k + 1,
                args.kills
            );
        }
    }
    if !args.json {
        eprintln!();
    }

    // The rest of the inputs, then one run left alone until every job has ended.
    for inp in inputs.iter_mut().filter(|i| !i.dropped) {
        drop_into(&inp.staged, &root.dir("inbox"), &inp.name)?;
        inp.dropped = true;
    }
    let t0 = Instant::now();
    let (mut daemon, _) = root.start(&exe, Some(&log))?;
    loop {
        let jobs = read_jobs(&db)?;
        let open = jobs
            .iter()
            .filter(|j| j.2 == "queued" || j.2 == "running")
            .count();
        let waiting = visible(&root.dir("inbox"))
            .iter()
            .filter(|n| n.ends_with(".mp4"))
            .count();
        if open == 0 && waiting == 0 {
            break;
        }
        if daemon.exited()?.is_some() {
            bail!(
                "the daemon exited during the final run: see {}",
                log.display()
            );
        }
        if t0.elapsed() > Duration::from_secs(600) {
            bail!(
                "jobs still open after 600 s ({open} in the store, {waiting} in the inbox): see {}",
                log.display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let final_run_s = t0.elapsed().as_secs_f64();
    daemon.stop()?;

    // Nothing lost: every input's bytes are in done/ or failed/, once.
    let mut kept: HashMap<String, usize> = HashMap::new();
    for sub in ["done", "failed", "inbox"] {
        for name in visible(&root.dir(sub)) {
            if name.ends_with(".mp4") {
                *kept
                    .entry(sha256_file(&root.dir(sub).join(&name))?)
                    .or_default() += 1;
            }
        }
    }
    let sets = output_sets(&root.dir("outbox"));
    let jobs = read_jobs(&db)?;
    let failed_records = visible(&root.dir("failed"));
    let (mut done, mut failed, mut given_up, mut max_attempts_seen) = (0, 0, 0, 0);
    for inp in &inputs {
        let copies = kept.get(&inp.sha256).copied().unwrap_or(0);
        if copies != 1 {
            violations.push(format!("{}: {copies} copies kept (want 1)", inp.name));
        }
        let stem = inp.name.trim_end_matches(".mp4");
        let record = failed_records.contains(&format!("{}.error.json", inp.name));
        let runs: Vec<&JobRow> = jobs.iter().filter(|j| j.1 == inp.name).collect();
        match sets.get(stem) {
            Some(files) if !whole_set(stem, files) => {
                violations.push(format!("{}: output set {files:?}", inp.name));
            }
            Some(_) if inp.bad => {
                violations.push(format!("{}: a broken input has outputs", inp.name))
            }
            Some(_) if record => {
                violations.push(format!("{}: outputs and a failure record", inp.name))
            }
            Some(_) => {
                for e in EDITS {
                    let video = root.dir("outbox").join(format!("{stem}.{e}.mp4"));
                    let frames = decoded_frames(&video)?;
                    if frames != CLIP_FRAMES {
                        violations.push(format!(
                            "{}: {frames} frames, not {CLIP_FRAMES}",
                            video.display()
                        ));
                    }
                    let report = root.dir("outbox").join(format!("{stem}.{e}.json"));
                    if serde_json::from_slice::<serde_json::Value>(&std::fs::read(&report)?)
                        .is_err()
                    {
                        violations.push(format!("{}: not JSON", report.display()));
                    }
                }
            }
            None if !record => violations.push(format!(
                "{}: neither outputs nor a failure record",
                inp.name
            )),
            None if !inp.bad && args.max_attempts >= 1000 => {
                violations.push(format!("{}: a good clip failed", inp.name))
            }
            None => {}
        }
        // The store: one job per input (a file refused at admission has none), ended,
        // attempts counted across the crashes.
        if runs.len() > 1 || (runs.is_empty() && !(inp.bad && record)) {
            violations.push(format!("{}: {} jobs in the store", inp.name, runs.len()));
        }
        for (id, _, state, attempts, error) in runs {
            let cut = interrupted.get(id).copied().unwrap_or(0);
            max_attempts_seen = max_attempts_seen.max(*attempts);
            match state.as_str() {
                "done" => {
                    done += 1;
                    if u64::from(*attempts) != cut + 1 {
                        violations.push(format!(
                            "{}: done after {attempts} attempt(s) but {cut} run(s) were killed",
                            inp.name
                        ));
                    }
                }
                "failed" => {
                    failed += 1;
                    let reason = error.as_deref().unwrap_or_default();
                    if reason.is_empty() {
                        violations.push(format!("{}: failed without a reason", inp.name));
                    }
                    if reason.contains("max_attempts") {
                        given_up += 1;
                    }
                    // Killed runs, plus the one that failed (none when the kills gave up).
                    let ok = u64::from(*attempts) == cut || u64::from(*attempts) == cut + 1;
                    if !ok {
                        violations.push(format!(
                            "{}: failed after {attempts} attempt(s) but {cut} run(s) were killed",
                            inp.name
                        ));
                    }
                }
                other => violations.push(format!("{}: ended {other}", inp.name)),
            }
        }
    }
    // Nothing but whole sets and records anywhere; no temporary left behind.
    for sub in ["outbox", "failed", "done", "inbox"] {
        for e in std::fs::read_dir(root.dir(sub))?.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.starts_with('.') || n.contains(".part") {
                violations.push(format!("{sub}/{n}: a temporary file left behind"));
            }
        }
    }

    let r = ChaosResult {
        inputs: inputs.len(),
        bad_inputs: inputs.iter().filter(|i| i.bad).count(),
        kills: args.kills,
        kills_mid_job,
        interrupted_runs: interrupted.values().sum(),
        max_attempts_seen,
        jobs_done: done,
        jobs_failed: failed,
        jobs_given_up: given_up,
        final_run_s,
        violations,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!(
            "{} inputs ({} broken), {} kills ({} mid-job, {} job runs interrupted, most attempts {})",
            r.inputs, r.bad_inputs, r.kills, r.kills_mid_job, r.interrupted_runs, r.max_attempts_seen
        );
        println!(
            "jobs: {} done, {} failed ({} given up after crashes); final run {:.1} s",
            r.jobs_done, r.jobs_failed, r.jobs_given_up, r.final_run_s
        );
        if r.violations.is_empty() {
            println!("every promise held");
        } else {
            for v in &r.violations {
                println!("VIOLATION {v}");
            }
        }
    }
    if !r.violations.is_empty() {
        bail!("{} broken promise(s)", r.violations.len());
    }
    Ok(())
}
