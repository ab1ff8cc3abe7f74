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
//!
//! `--mode batch` does the same to `ctxd batch` over a nested tree (rerun after each kill;
//! attempts from its store, outputs beside their mirrored folders, inputs unchanged);
//! `--mode stream` to `ctxd stream` writing HLS (every segment the playlist lists decodes
//! whole after each kill; the last run ends the playlist with no temporary left).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::harness::{drop_into, unique_clip, WatchRoot, WatchSettings};

mod batch;
mod stream;

use batch::batch_campaign;
use stream::stream_campaign;

#[derive(Args, Debug, Clone)]
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
    #[arg(long, default_value = "models/oracle", value_parser = crate::cli::edit::bundle_dir)]
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
    /// What to crash: the watch daemon, or `ctxd batch` over a folder tree.
    #[arg(long, value_enum, default_value_t = ChaosMode::Watch)]
    pub mode: ChaosMode,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum ChaosMode {
    Watch,
    Batch,
    /// `ctxd stream` from a file read in real time into an HLS folder.
    Stream,
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

impl ChaosResult {
    /// The result of a campaign over jobs (watch or batch).
    fn of_jobs(
        args: &ChaosBenchArgs,
        inputs: &[Input],
        kills_mid_job: usize,
        interrupted_runs: u64,
        tally: &Tally,
        final_run_s: f64,
        violations: Vec<String>,
    ) -> ChaosResult {
        ChaosResult {
            inputs: inputs.len(),
            bad_inputs: inputs.iter().filter(|i| i.bad).count(),
            kills: args.kills,
            kills_mid_job,
            interrupted_runs,
            max_attempts_seen: tally.max_attempts,
            jobs_done: tally.done,
            jobs_failed: tally.failed,
            jobs_given_up: tally.given_up,
            final_run_s,
            violations,
        }
    }
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
    // Inputs are named chaos-NNN.mp4 (a batch's folder also holds its summaries and the
    // mirrored subfolders).
    for name in visible(outbox)
        .into_iter()
        .filter(|n| n.starts_with("chaos-"))
    {
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

/// A reading connection to a store's `jobs` table, or None while there is none yet: a
/// process killed between creating the database file and committing its schema leaves a
/// file without the table, which the next run's `CREATE TABLE IF NOT EXISTS` mends.
fn jobs_table(db: &Path) -> Result<Option<rusqlite::Connection>> {
    if !db.exists() {
        return Ok(None);
    }
    let conn = rusqlite::Connection::open(db)?;
    conn.busy_timeout(Duration::from_secs(10))?;
    let tables: i64 = conn.query_row(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'jobs'",
        [],
        |r| r.get(0),
    )?;
    Ok((tables == 1).then_some(conn))
}

fn read_jobs(db: &Path) -> Result<Vec<JobRow>> {
    let Some(conn) = jobs_table(db)? else {
        return Ok(Vec::new());
    };
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

/// Frames ffprobe decodes from the first video stream, and whether it read the file cleanly.
fn decoded_frames(video: &Path) -> Result<(u64, bool)> {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-count_frames", "-select_streams", "v:0"])
        .args(["-show_entries", "stream=nb_read_frames", "-of", "csv=p=0"])
        .arg(video)
        .output()
        .context("running ffprobe")?;
    // MPEG-TS lists the stream under its program too: the first line is the count.
    let frames = String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.trim().parse().ok())
        .unwrap_or(0);
    Ok((frames, out.status.success() && out.stderr.is_empty()))
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
            unique_clip(i, "320x240", &staged)?;
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
    let r = match args.mode {
        ChaosMode::Watch => watch_campaign(args, &dir, &exe, &bundle, &preset)?,
        ChaosMode::Batch => batch_campaign(args, &dir, &exe, &bundle, &preset)?,
        ChaosMode::Stream => stream_campaign(args, &dir, &exe, &bundle, &preset)?,
    };
    report(args, &r)
}

fn watch_campaign(
    args: &ChaosBenchArgs,
    dir: &Path,
    exe: &Path,
    bundle: &Path,
    preset: &Path,
) -> Result<ChaosResult> {
    let root = WatchRoot::create(
        &dir.join("daemon"),
        &WatchSettings {
            preset,
            bundle,
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
    // Runs a kill cut off, per job, by attempt number: a start killed before it requeued
    // the last one's running job shows that same run again and must not count twice.
    let mut interrupted: HashMap<i64, HashSet<u32>> = HashMap::new();

    let kills_mid_job = kill_loop(
        args,
        &mut rng,
        &mut inputs,
        |inp| root.dir("inbox").join(&inp.name),
        || Ok(root.command(exe, Some(&log))?.spawn()?),
        || read_jobs(&db).is_ok_and(|jobs| jobs.iter().any(|j| j.2 == "running")),
        |k, exited| {
            if let Some(st) = exited {
                violations.push(format!("start {k}: the daemon exited on its own ({st})"));
            }
            // What the kill interrupted, as the store has it now.
            let mut mid = false;
            for (id, _, state, attempts, _) in read_jobs(&db)? {
                if state == "running" {
                    mid |= interrupted.entry(id).or_default().insert(attempts);
                }
            }
            whole_sets_only(&root.dir("outbox"), k, &mut violations);
            Ok(mid)
        },
    )?;

    // The rest of the inputs, then one run left alone until every job has ended.
    for inp in inputs.iter_mut().filter(|i| !i.dropped) {
        arrive(inp, &root.dir("inbox").join(&inp.name))?;
    }
    let t0 = Instant::now();
    let (mut daemon, _) = root.start(exe, Some(&log))?;
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
    let mut tally = Tally::default();
    for inp in &inputs {
        let copies = kept.get(&inp.sha256).copied().unwrap_or(0);
        if copies != 1 {
            violations.push(format!("{}: {copies} copies kept (want 1)", inp.name));
        }
        let stem = inp.name.trim_end_matches(".mp4");
        let record = failed_records.contains(&format!("{}.error.json", inp.name));
        check_outputs(
            inp,
            &root.dir("outbox"),
            sets.get(stem).map(Vec::as_slice),
            record,
            args.max_attempts >= 1000,
            &mut violations,
        )?;
        // The store: one job per input (a file refused at admission has none), ended,
        // attempts counted across the crashes.
        let runs: Vec<&JobRow> = jobs.iter().filter(|j| j.1 == inp.name).collect();
        if runs.len() > 1 || (runs.is_empty() && !(inp.bad && record)) {
            violations.push(format!("{}: {} jobs in the store", inp.name, runs.len()));
        }
        for (id, _, state, attempts, error) in runs {
            let cut = interrupted.get(id).map_or(0, |runs| runs.len() as u64);
            tally.check(
                &inp.name,
                state,
                *attempts,
                error.as_deref(),
                cut,
                &mut violations,
            );
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

    Ok(ChaosResult::of_jobs(
        args,
        &inputs,
        kills_mid_job,
        interrupted.values().map(|r| r.len() as u64).sum(),
        &tally,
        final_run_s,
        violations,
    ))
}

/// An input's outputs at the end: a whole set of videos that decode to every frame, with
/// reports that parse, for a good clip; nothing for a broken one or one that failed.
fn check_outputs(
    inp: &Input,
    folder: &Path,
    set: Option<&[String]>,
    failed: bool,
    good_must_succeed: bool,
    violations: &mut Vec<String>,
) -> Result<()> {
    let stem = inp.name.trim_end_matches(".mp4");
    match set {
        Some(files) if !whole_set(stem, files) => {
            violations.push(format!("{}: output set {files:?}", inp.name));
        }
        Some(_) if inp.bad => violations.push(format!("{}: a broken input has outputs", inp.name)),
        Some(_) if failed => {
            violations.push(format!("{}: outputs and a failure", inp.name));
        }
        Some(_) => {
            for e in EDITS {
                let video = folder.join(format!("{stem}.{e}.mp4"));
                let (frames, clean) = decoded_frames(&video)?;
                if frames != CLIP_FRAMES || !clean {
                    violations.push(format!(
                        "{}: {frames} frames, not {CLIP_FRAMES}",
                        video.display()
                    ));
                }
                let report = folder.join(format!("{stem}.{e}.json"));
                if serde_json::from_slice::<serde_json::Value>(&std::fs::read(&report)?).is_err() {
                    violations.push(format!("{}: not JSON", report.display()));
                }
            }
        }
        None if !failed => {
            violations.push(format!("{}: neither outputs nor a failure", inp.name));
        }
        None if !inp.bad && good_must_succeed => {
            violations.push(format!("{}: a good clip failed", inp.name));
        }
        None => {}
    }
    Ok(())
}

/// Ended jobs counted, and each one's attempts checked against the kills that cut its runs.
#[derive(Default)]
struct Tally {
    done: usize,
    failed: usize,
    given_up: usize,
    max_attempts: u32,
}

impl Tally {
    fn check(
        &mut self,
        name: &str,
        state: &str,
        attempts: u32,
        error: Option<&str>,
        cut: u64,
        violations: &mut Vec<String>,
    ) {
        self.max_attempts = self.max_attempts.max(attempts);
        match state {
            "done" => {
                self.done += 1;
                if u64::from(attempts) != cut + 1 {
                    violations.push(format!(
                        "{name}: done after {attempts} attempt(s) but {cut} run(s) were killed"
                    ));
                }
            }
            "failed" => {
                self.failed += 1;
                let reason = error.unwrap_or_default();
                if reason.is_empty() {
                    violations.push(format!("{name}: failed without a reason"));
                }
                if reason.contains("max_attempts") {
                    self.given_up += 1;
                }
                // Killed runs, plus the one that failed (none when the kills gave up).
                if u64::from(attempts) != cut && u64::from(attempts) != cut + 1 {
                    violations.push(format!(
                        "{name}: failed after {attempts} attempt(s) but {cut} run(s) were killed"
                    ));
                }
            }
            other => violations.push(format!("{name}: ended {other}")),
        }
    }
}

/// Starts a process `args.kills` times and kills each start with SIGKILL after a random
/// life (from the start, or from when `busy()` first says a job runs), inputs arriving at
/// random starts (some before, while nothing runs, some during).
/// `after_kill(k, exited_on_its_own)` inspects the wreck (noting what broke) and says whether
/// a job was running. Returns how many kills hit a running job.
fn kill_loop(
    args: &ChaosBenchArgs,
    rng: &mut rand_chacha::ChaCha8Rng,
    inputs: &mut [Input],
    destination: impl Fn(&Input) -> PathBuf,
    mut spawn: impl FnMut() -> Result<Child>,
    mut busy: impl FnMut() -> bool,
    mut after_kill: impl FnMut(usize, Option<ExitStatus>) -> Result<bool>,
) -> Result<usize> {
    let arrival: Vec<(usize, f64)> = inputs
        .iter()
        .map(|_| (rng.random_range(0..args.kills.max(1)), rng.random::<f64>()))
        .collect();
    let mut mid_job = 0;
    for k in 0..args.kills {
        for (inp, (at, _)) in inputs.iter_mut().zip(&arrival) {
            if *at < k && !inp.dropped {
                arrive(inp, &destination(inp))?;
            }
        }
        let mut child = spawn()?;
        // Mostly short lives (kills while starting, admitting, in the first window), some
        // long enough for jobs to finish and be filed.
        let longest = if rng.random_bool(0.7) {
            args.max_life_ms
        } else {
            3 * args.max_life_ms
        };
        let life = Duration::from_millis(rng.random_range(0..=longest));
        // Half the lives count from the first job seen running (within 10 s), so kills land
        // inside jobs however slow the machine is to start one; the rest from the start.
        let mut t0 = Instant::now();
        let from_busy = rng.random_bool(0.5);
        let mut seen_busy = !from_busy;
        loop {
            if !seen_busy {
                let ended = matches!(child.try_wait(), Ok(Some(_)));
                if ended || busy() || t0.elapsed() > Duration::from_secs(10) {
                    seen_busy = true;
                    t0 = Instant::now();
                }
            } else if t0.elapsed() >= life {
                break;
            }
            let into_life = t0.elapsed().as_secs_f64() / life.as_secs_f64().max(1e-3);
            for (inp, (at, when)) in inputs.iter_mut().zip(&arrival) {
                if *at == k && *when <= into_life && !inp.dropped {
                    arrive(inp, &destination(inp))?;
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let exited = child.try_wait()?;
        let _ = child.kill();
        child.wait()?;
        mid_job += usize::from(after_kill(k, exited)?);
        if !args.json {
            eprint!(
                "\rkill {}/{}  kills that hit work {mid_job}   ",
                k + 1,
                args.kills
            );
        }
    }
    if !args.json {
        eprintln!();
    }
    Ok(mid_job)
}

/// Moves an input from its staging folder to where the process under test finds it.
fn arrive(inp: &mut Input, to: &Path) -> Result<()> {
    let dir = to.parent().context("an arrival path has a folder")?;
    std::fs::create_dir_all(dir)?;
    drop_into(&inp.staged, dir, &inp.name)?;
    inp.dropped = true;
    Ok(())
}

/// The outputs visible in `folder` right after kill `k` are whole sets.
fn whole_sets_only(folder: &Path, k: usize, violations: &mut Vec<String>) {
    for (stem, files) in output_sets(folder) {
        if !whole_set(&stem, &files) {
            violations.push(format!("after kill {k}: partial output set {files:?}"));
        }
    }
}

fn report(args: &ChaosBenchArgs, r: &ChaosResult) -> Result<()> {
    if args.json {
        println!("{}", serde_json::to_string_pretty(r)?);
    } else if matches!(args.mode, ChaosMode::Stream) {
        println!(
            "{} kills, {} of them after segments were listed; the last run ended {} in {:.1} s",
            r.kills,
            r.kills_mid_job,
            if r.jobs_done == 1 { "cleanly" } else { "badly" },
            r.final_run_s
        );
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A kill between creating the database file and committing its schema leaves a file
    /// with no `jobs` table; the chaos checker reads that as "no jobs yet", not an error.
    #[test]
    fn a_store_killed_before_its_schema_reads_as_empty() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("jobs.sqlite");
        assert!(read_jobs(&db).unwrap().is_empty());
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        drop(conn);
        assert!(db.exists());
        assert!(read_jobs(&db).unwrap().is_empty());
        assert!(batch::batch_rows(&db).unwrap().is_empty());
        let store = crate::batch::store::Store::open(&db).unwrap();
        store.plan("k", "in.mp4", "in.mp4").unwrap();
        drop(store);
        assert_eq!(batch::batch_rows(&db).unwrap().len(), 1);
    }
}
