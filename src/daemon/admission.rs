//! Admission off the daemon's loop: probing and hashing read whole files (up to a mapping's
//! `max_input_mb`), which must not hold up time limits, finished jobs, API wake-ups or a
//! shutdown. A few threads, each with its own store connection, admit the files the scan
//! hands them and send back what happened; the loop files the results.

use std::path::PathBuf;
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};

use super::config::Mapping;
use super::intake::{self, Paths, Refusal};
use super::run::Waker;
use super::store::{Enqueued, Store};

struct Ask {
    mapping: Mapping,
    path: PathBuf,
}

/// What admitting one file gave.
pub struct Answer {
    pub mapping: String,
    pub path: PathBuf,
    pub result: Result<Enqueued, Refusal>,
}

pub struct Admission {
    asks: Option<Sender<Ask>>,
    answers: Receiver<Answer>,
}

/// Files admitted at once: two, so one large file does not hold up a small one behind it.
const THREADS: usize = 2;

impl Admission {
    /// Starts the admission threads on the store at `db`.
    ///
    /// # Errors
    /// A thread cannot be started.
    pub fn start(db: PathBuf, paths: Arc<Paths>, waker: Waker) -> std::io::Result<Admission> {
        let (ask_tx, ask_rx) = crossbeam_channel::unbounded::<Ask>();
        let (answer_tx, answers) = crossbeam_channel::unbounded();
        for i in 0..THREADS {
            let (rx, tx, db, paths, waker) = (
                ask_rx.clone(),
                answer_tx.clone(),
                db.clone(),
                paths.clone(),
                waker.clone(),
            );
            std::thread::Builder::new()
                .name(format!("admit-{i}"))
                .spawn(move || {
                    let store = Store::open(&db);
                    for ask in rx.iter() {
                        let result = match &store {
                            Ok(store) => {
                                intake::admit(&ask.mapping, &ask.path, store, &paths, None)
                            }
                            Err(e) => Err(Refusal::Transient(e.to_string())),
                        };
                        let answer = Answer {
                            mapping: ask.mapping.name.clone(),
                            path: ask.path,
                            result,
                        };
                        if tx.send(answer).is_err() {
                            return;
                        }
                        waker.wake();
                    }
                })?;
        }
        Ok(Admission {
            asks: Some(ask_tx),
            answers,
        })
    }

    /// Hands `path` of mapping `m` over to be admitted.
    pub fn ask(&self, m: &Mapping, path: PathBuf) {
        if let Some(tx) = &self.asks {
            let _ = tx.send(Ask {
                mapping: m.clone(),
                path,
            });
        }
    }

    /// Answers that have arrived, without waiting.
    pub fn answers(&self) -> Vec<Answer> {
        self.answers.try_iter().collect()
    }

    /// No more asks: the threads end once they have answered what they hold. Nobody waits
    /// for a file still being hashed; its next start admits it again.
    pub fn close(&mut self) {
        self.asks = None;
    }
}
