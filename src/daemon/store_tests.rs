//! Tests of the job store (a child module of `store`, kept in its own file).
use super::*;

fn store(dir: &tempfile::TempDir) -> Store {
    Store::open(&dir.path().join("jobs.db")).unwrap()
}

/// A job found by the scan (no submitted prompt).
fn nj<'a>(mapping: &'a str, path: &'a str, hash: &'a str, spec: &'a str) -> NewJob<'a> {
    NewJob {
        mapping,
        input_path: path,
        input_hash: hash,
        spec_hash: spec,
        ..NewJob::default()
    }
}

/// Every state change is one conditional write, so what the API does between the daemon's
/// read and its write is never undone: a cancel is not turned back into a retry, an ended
/// job is not cancelled, a running job is not queued a second time.
#[test]
fn writes_that_race_a_cancel_or_a_requeue_keep_the_other_side() {
    let d = tempfile::tempdir().unwrap();
    let mut s = store(&d);
    let Enqueued::New(id) = s.enqueue(&nj("main", "in/a.mp4", "h1", "p1")).unwrap() else {
        panic!("new job expected");
    };
    let job = s.claim_next().unwrap().unwrap();
    assert_eq!((job.id, job.state), (id, State::Running));
    assert!(!s.requeue(id).unwrap(), "a running job is not queued twice");
    assert_eq!(s.get(id).unwrap().state, State::Running);

    // The user cancels while the worker fails: the cancel stands.
    assert_eq!(s.cancel(id).unwrap(), State::Cancelled);
    assert_eq!(
        s.fail(id, "edit", "boom", true, 3).unwrap(),
        State::Cancelled
    );
    s.set_stage(id, "edit").unwrap();
    s.requeue_after_shutdown(id).unwrap();
    let j = s.get(id).unwrap();
    assert_eq!((j.state, j.stage), (State::Cancelled, None));

    // A job that ended keeps its end; cancelling it says so.
    assert!(s.requeue(id).unwrap());
    s.claim_next().unwrap().unwrap();
    s.finish(id, "[]", "{}").unwrap();
    assert_eq!(s.cancel(id).unwrap(), State::Done);
    assert_eq!(s.get(id).unwrap().state, State::Done);
    assert!(matches!(s.requeue(99), Err(StoreError::NotFound(99))));
}

#[test]
fn same_file_twice_is_one_job_and_a_changed_prompt_is_another() {
    let d = tempfile::tempdir().unwrap();
    let s = store(&d);
    let a = s.enqueue(&nj("main", "in/clip.mp4", "h1", "p1")).unwrap();
    assert!(matches!(a, Enqueued::New(_)));
    let Enqueued::New(id) = a else { unreachable!() };
    assert_eq!(
        s.enqueue(&nj("main", "in/copy.mp4", "h1", "p1")).unwrap(),
        Enqueued::Existing(id, State::Queued)
    );
    assert!(matches!(
        s.enqueue(&nj("main", "in/clip.mp4", "h1", "p2")).unwrap(),
        Enqueued::New(_)
    ));
    assert!(matches!(
        s.enqueue(&nj("main", "in/clip.mp4", "h2", "p1")).unwrap(),
        Enqueued::New(_)
    ));
}

/// Regression (issue 16 item 3): a `POST /jobs` with a prompt racing the scan of the same
/// file gave two jobs, which wrote one output set twice or filed a false failure.
#[test]
fn one_file_has_one_live_job() {
    let d = tempfile::tempdir().unwrap();
    let mut s = store(&d);
    let Enqueued::New(scanned) = s.enqueue(&nj("m", "in/a.mp4", "h", "scan")).unwrap() else {
        panic!("new job expected");
    };
    // The user submits a prompt for the queued file: it replaces the scan's job.
    let submitted = NewJob {
        prompt: Some("{}"),
        ..nj("m", "in/a.mp4", "h", "posted")
    };
    let Enqueued::New(posted) = s.enqueue(&submitted).unwrap() else {
        panic!("new job expected");
    };
    let old = s.get(scanned).unwrap();
    assert_eq!(old.state, State::Cancelled);
    assert_eq!(old.stage.as_deref(), Some("superseded"));
    assert!(old.error.unwrap().contains(&format!("job {posted}")));
    // The scan, racing, never takes a submitted prompt's place.
    assert_eq!(
        s.enqueue(&nj("m", "in/a.mp4", "h2", "scan")).unwrap(),
        Enqueued::Existing(posted, State::Queued)
    );
    // Running: another job on the file must wait.
    assert_eq!(s.claim_next().unwrap().unwrap().id, posted);
    let other = NewJob {
        prompt: Some("{\"x\": 1}"),
        ..nj("m", "in/a.mp4", "h", "posted-again")
    };
    assert_eq!(s.enqueue(&other).unwrap(), Enqueued::Busy(posted));
    assert_eq!(s.counts().unwrap()[0], (State::Queued, 0));
    // Another file is not held up.
    assert!(matches!(
        s.enqueue(&nj("m", "in/b.mp4", "hb", "posted-again"))
            .unwrap(),
        Enqueued::New(_)
    ));
    // A running job whose file was replaced ends superseded; a new key is taken unless
    // another job has it.
    assert_eq!(s.rekey(posted, "posted-again").unwrap(), None);
    assert_eq!(s.get(posted).unwrap().spec_hash, "posted-again");
    assert!(s.supersede(posted, "changed").unwrap());
    assert_eq!(s.get(posted).unwrap().state, State::Cancelled);
    assert!(
        !s.supersede(posted, "changed").unwrap(),
        "only a running job"
    );
}

#[test]
fn claims_in_order_and_never_twice() {
    let d = tempfile::tempdir().unwrap();
    let mut s1 = store(&d);
    let mut s2 = store(&d); // a second connection, as a second worker would have
    for i in 0..4 {
        s1.enqueue(&nj("m", &format!("{i}.mp4"), &format!("h{i}"), "p"))
            .unwrap();
    }
    let mut seen = Vec::new();
    for k in 0..4 {
        let j = if k % 2 == 0 {
            s1.claim_next()
        } else {
            s2.claim_next()
        }
        .unwrap()
        .unwrap();
        assert_eq!(j.state, State::Running);
        assert_eq!(j.attempts, 1);
        seen.push(j.id);
    }
    assert_eq!(seen, vec![1, 2, 3, 4]);
    assert!(s1.claim_next().unwrap().is_none());
}

#[test]
fn a_crash_leaves_running_jobs_that_a_restart_requeues() {
    let d = tempfile::tempdir().unwrap();
    {
        let mut s = store(&d);
        s.enqueue(&nj("m", "a.mp4", "ha", "p")).unwrap();
        s.enqueue(&nj("m", "b.mp4", "hb", "p")).unwrap();
        let a = s.claim_next().unwrap().unwrap();
        s.finish(a.id, "[\"out/a.red.mp4\"]", "{}").unwrap();
        let b = s.claim_next().unwrap().unwrap();
        s.set_stage(b.id, "invert").unwrap();
        // dropped here without finishing b: the process died
    }
    let mut s = store(&d);
    assert_eq!(s.recover(3).unwrap().0, 1);
    let b = s.claim_next().unwrap().unwrap();
    assert_eq!(b.input_path, "b.mp4");
    assert_eq!(b.attempts, 2, "the interrupted attempt counts");
    // The finished job is not redone.
    assert!(s.claim_next().unwrap().is_none());
    assert_eq!(s.get(1).unwrap().state, State::Done);
}

#[test]
fn a_job_that_crashes_the_daemon_every_time_fails_at_the_cap() {
    // Regression: `recover` requeued a crashing job forever and `max_attempts` never
    // applied, so one bad job crash-looped the daemon.
    let d = tempfile::tempdir().unwrap();
    for crash in 1..=3 {
        let mut s = store(&d);
        if crash == 1 {
            s.enqueue(&nj("m", "bad.mp4", "h", "p")).unwrap();
        }
        let (requeued, failed) = s.recover(3).unwrap();
        assert_eq!((requeued, failed.len()), (usize::from(crash > 1), 0));
        let job = s.claim_next().unwrap().unwrap();
        assert_eq!(job.attempts, crash);
        // the daemon dies here, with the job running
    }
    let s = store(&d);
    let (requeued, failed) = s.recover(3).unwrap();
    assert_eq!((requeued, failed.len()), (0, 1));
    let job = s.get(failed[0].id).unwrap();
    assert_eq!(job.state, State::Failed);
    assert_eq!(job.stage.as_deref(), Some("crash"));
    assert!(job.error.unwrap().contains("3 time(s)"));

    // A graceful shutdown does not use up an attempt.
    let mut s = store(&d);
    s.enqueue(&nj("m", "ok.mp4", "h2", "p")).unwrap();
    let j = s.claim_next().unwrap().unwrap();
    s.requeue_after_shutdown(j.id).unwrap();
    let again = s.claim_next().unwrap().unwrap();
    assert_eq!((again.id, again.attempts), (j.id, 1));
}

#[test]
fn retries_stop_at_the_cap() {
    let d = tempfile::tempdir().unwrap();
    let mut s = store(&d);
    s.enqueue(&nj("m", "x.mp4", "hx", "p")).unwrap();
    for attempt in 1..=3 {
        let j = s.claim_next().unwrap().unwrap();
        assert_eq!(j.attempts, attempt);
        let st = s.fail(j.id, "encode", "disk full", true, 3).unwrap();
        assert_eq!(
            st,
            if attempt < 3 {
                State::Queued
            } else {
                State::Failed
            }
        );
    }
    let j = s.get(1).unwrap();
    assert_eq!(
        (j.state, j.stage.as_deref(), j.error.as_deref()),
        (State::Failed, Some("encode"), Some("disk full"))
    );
    assert!(s.claim_next().unwrap().is_none());
    // The user asks again.
    s.requeue(1).unwrap();
    assert_eq!(s.claim_next().unwrap().unwrap().attempts, 1);
}

#[test]
fn counts_and_cancel() {
    let d = tempfile::tempdir().unwrap();
    let mut s = store(&d);
    s.enqueue(&nj("m", "a", "a", "p")).unwrap();
    s.enqueue(&nj("m", "b", "b", "p")).unwrap();
    let a = s.claim_next().unwrap().unwrap();
    assert_eq!(s.cancel(2).unwrap(), State::Cancelled);
    s.finish(a.id, "[]", "{}").unwrap();
    assert_eq!(
        s.cancel(a.id).unwrap(),
        State::Done,
        "a finished job stays done"
    );
    let counts: std::collections::HashMap<_, _> = s.counts().unwrap().into_iter().collect();
    assert_eq!(counts[&State::Done], 1);
    assert_eq!(counts[&State::Cancelled], 1);
    assert_eq!(counts[&State::Queued], 0);
    assert_eq!(s.list(Some(State::Done), 10).unwrap().len(), 1);
    assert!(matches!(s.get(99), Err(StoreError::NotFound(99))));
}
