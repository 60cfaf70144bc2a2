//! One store call: its deadline, its attempts, and what a fault means.
//!
//! A call runs until its deadline (the [`CallContext`]'s, else the store's
//! `call_timeout`): the wait for a pooled connection and every statement
//! stop there. A statement still running at the deadline is cancelled on
//! the server (with the connection's cancel token) and its connection
//! dropped from the pool. A read is then answered
//! [`ContextStoreError::Timeout`] at once. A write waits a moment longer
//! for the statement's own answer, so that it is never answered `Timeout`
//! and applied anyway: if the cancel came too late, the call is answered
//! with the commit's result; if no answer comes, with a storage error
//! saying that the write may have been applied.
//!
//! Transient faults (see [`is_transient`]) are tried again, on another
//! connection, after a pause that doubles from 10 ms to 500 ms with
//! jitter, for as long as the deadline allows. Every statement the store
//! retries is idempotent or write-once; an attempt is told whether an
//! earlier one may have committed ([`Retry::uncertain`]), so that a
//! write-once insert that then meets its own row answers `Ok`.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use deadpool::managed::PoolError;
use tokio_postgres::NoTls;

use super::errors::{error, is_cancelled, is_transient, keeps_connection, message};
use super::pool::Conn;
use super::{PostgresContextStore, storage};
use crate::error::ContextStoreError;
use crate::store::CallContext;

/// How long a write whose statement was cancelled at the deadline waits
/// for the statement's own answer (committed, or cancelled).
const CANCEL_GRACE: Duration = Duration::from_secs(2);

/// The first pause between attempts; it doubles up to [`MOST_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(10);

/// The longest pause between attempts.
const MOST_PAUSE: Duration = Duration::from_millis(500);

/// Why an attempt failed.
#[derive(Debug)]
pub(super) enum Fault {
    /// The database or the connection failed.
    Pg(tokio_postgres::Error),
    /// The answer of the call (a refusal such as write-once or fencing).
    Store(ContextStoreError),
}

impl From<tokio_postgres::Error> for Fault {
    fn from(e: tokio_postgres::Error) -> Self {
        Self::Pg(e)
    }
}

impl From<ContextStoreError> for Fault {
    fn from(e: ContextStoreError) -> Self {
        Self::Store(e)
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Pg(e) => f.write_str(&message(e)),
            Self::Store(e) => fmt::Display::fmt(e, f),
        }
    }
}

/// Whether a call reads or writes: a read stopped at its deadline is
/// answered at once, a write once its fate is known (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Effect {
    /// Changes nothing.
    Read,
    /// Changes the database; refused by a read-only store.
    Write,
}

/// What an attempt is told about the attempts before it.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Retry {
    /// An earlier attempt was interrupted after its statement was sent:
    /// it may have committed. A write-once insert that meets a row equal
    /// to its own then answers `Ok` (it landed).
    pub(super) uncertain: bool,
}

/// One attempt's work on a connection.
pub(super) type Work<'c, T> = Pin<Box<dyn Future<Output = Result<T, Fault>> + Send + 'c>>;

/// How an attempt ended, when it did not succeed.
enum Failure {
    /// The call's answer: not tried again.
    Final(ContextStoreError),
    /// Worth another attempt; `sent`: the statement may have reached the server.
    Transient {
        error: tokio_postgres::Error,
        sent: bool,
    },
    /// The deadline passed; `unknown`: a write may have been applied.
    Deadline {
        unknown: bool,
        waiting: &'static str,
    },
}

/// How the statement of an attempt ended.
enum Ran<T> {
    /// By the deadline.
    Done(Result<T, Fault>),
    /// Cancelled at the deadline (a read: not waited for).
    Stopped,
    /// A write, answered after its cancel was sent.
    Late(Result<T, Fault>),
    /// A write that gave no answer after its cancel.
    Lost,
}

/// Pauses between attempts: doubling, with jitter.
struct Backoff {
    next: Duration,
}

impl Backoff {
    fn new() -> Self {
        Self { next: FIRST_PAUSE }
    }

    /// The next pause: between half the current step and all of it.
    fn pause(&mut self) -> Duration {
        let step = self.next;
        self.next = (step * 2).min(MOST_PAUSE);
        step / 2 + jitter(step / 2)
    }
}

/// A random duration below `range`, so that callers that failed together
/// do not retry together.
fn jitter(range: Duration) -> Duration {
    range.mul_f64(crate::random::unit())
}

impl PostgresContextStore {
    /// Runs `work` on a pooled connection until it succeeds, fails for
    /// good, or the call's deadline passes (see the module docs). `what`
    /// names the call in errors and logs; `args` is what `work` reads.
    pub(super) async fn call<A, T, F>(
        &self,
        cx: &CallContext,
        effect: Effect,
        what: &'static str,
        args: &A,
        mut work: F,
    ) -> Result<T, ContextStoreError>
    where
        A: Sync + ?Sized,
        T: Send,
        F: for<'c> FnMut(&'c mut Conn, &'c A, Retry) -> Work<'c, T> + Send,
    {
        if effect == Effect::Write && self.read_only {
            return Err(storage(
                &self.target,
                format!("this store was opened read-only: {what} is not allowed"),
            ));
        }
        let deadline = cx.deadline.unwrap_or_else(|| {
            Instant::now()
                .checked_add(self.options.call_timeout)
                .unwrap_or_else(crate::store::call::far_future)
        });
        if Instant::now() >= deadline {
            return Err(ContextStoreError::Timeout(format!(
                "{what}: the call's deadline passed before it reached the database"
            )));
        }
        let mut backoff = Backoff::new();
        let mut retry = Retry::default();
        let mut attempts = 0u32;
        #[cfg(feature = "metrics")]
        let began = Instant::now();
        loop {
            attempts += 1;
            let failure = match self.attempt(deadline, effect, args, &mut work, retry).await {
                Ok(answer) => {
                    #[cfg(feature = "metrics")]
                    if effect == Effect::Write {
                        crate::metrics::record_commit(
                            crate::metrics::Backend::Postgres,
                            began.elapsed(),
                        );
                    }
                    if attempts > 1 {
                        tracing::debug!(database = %self.target, what, attempts, "succeeded after retrying");
                    }
                    return Ok(answer);
                }
                Err(failure) => failure,
            };
            match failure {
                Failure::Final(e) => return Err(e),
                Failure::Deadline { unknown, waiting } => {
                    return Err(if unknown || retry.uncertain {
                        self.unknown_outcome(what, "the deadline passed before it answered")
                    } else {
                        ContextStoreError::Timeout(format!(
                            "{what}: the call's deadline passed while waiting {waiting}"
                        ))
                    });
                }
                Failure::Transient { error: e, sent } => {
                    retry.uncertain |= sent && effect == Effect::Write;
                    let pause = backoff.pause();
                    let why = message(&e);
                    if Instant::now() + pause >= deadline {
                        tracing::warn!(database = %self.target, what, attempts, error = %why,
                            "giving up at the call's deadline");
                        return Err(if retry.uncertain {
                            self.unknown_outcome(what, &why)
                        } else {
                            storage(
                                &self.target,
                                format!(
                                    "{what}: {why} (tried {attempts} times until the call's deadline)"
                                ),
                            )
                        });
                    }
                    if attempts >= 3 {
                        tracing::warn!(database = %self.target, what, attempts, error = %why, ?pause, "retrying");
                    } else {
                        tracing::debug!(database = %self.target, what, attempts, error = %why, ?pause, "retrying");
                    }
                    self.retries.fetch_add(1, Ordering::Relaxed);
                    self.sleep(pause).await;
                }
            }
        }
    }

    /// One attempt: a connection from the pool, and `work` on it.
    async fn attempt<A, T, F>(
        &self,
        deadline: Instant,
        effect: Effect,
        args: &A,
        work: &mut F,
        retry: Retry,
    ) -> Result<T, Failure>
    where
        A: Sync + ?Sized,
        T: Send,
        F: for<'c> FnMut(&'c mut Conn, &'c A, Retry) -> Work<'c, T> + Send,
    {
        let mut conn = match self.timeout_at(deadline, self.pool.get()).await {
            Err(_) => {
                return Err(Failure::Deadline {
                    unknown: false,
                    waiting: "for a database connection",
                });
            }
            Ok(Err(e)) => return Err(self.pool_failure(e)),
            Ok(Ok(conn)) => conn,
        };
        let cancel = conn.client.cancel_token();
        let ran = {
            let mut running = work(&mut conn, args, retry);
            match self.timeout_at(deadline, &mut running).await {
                Ok(result) => Ran::Done(result),
                Err(_) => {
                    self.handle.spawn(async move {
                        if let Err(e) = cancel.cancel_query(NoTls).await {
                            tracing::debug!(error = %e, "could not cancel a statement past its deadline");
                        }
                    });
                    match effect {
                        Effect::Read => Ran::Stopped,
                        Effect::Write => {
                            match self
                                .timeout_at(Instant::now() + CANCEL_GRACE, running)
                                .await
                            {
                                Ok(result) => Ran::Late(result),
                                Err(_) => Ran::Lost,
                            }
                        }
                    }
                }
            }
        };
        let result = match ran {
            Ran::Done(result) => result,
            other => {
                // The connection had a cancel sent on it: it never serves
                // another statement (the cancel could hit that one).
                drop(deadpool::managed::Object::take(conn));
                return match other {
                    Ran::Late(Ok(answer)) => Ok(answer),
                    Ran::Late(Err(Fault::Store(e))) => Err(Failure::Final(e)),
                    Ran::Late(Err(Fault::Pg(e))) if is_cancelled(&e) => Err(Failure::Deadline {
                        unknown: false,
                        waiting: "for the database",
                    }),
                    Ran::Late(Err(Fault::Pg(e))) if !is_transient(&e) => {
                        Err(Failure::Final(self.pg_error(&e)))
                    }
                    Ran::Stopped => Err(Failure::Deadline {
                        unknown: false,
                        waiting: "for the database",
                    }),
                    _ => Err(Failure::Deadline {
                        unknown: true,
                        waiting: "for the database",
                    }),
                };
            }
        };
        match result {
            Ok(answer) => Ok(answer),
            Err(Fault::Store(e)) => Err(Failure::Final(e)),
            Err(Fault::Pg(e)) if is_transient(&e) => {
                if !keeps_connection(&e) {
                    drop(deadpool::managed::Object::take(conn));
                }
                Err(Failure::Transient {
                    error: e,
                    sent: true,
                })
            }
            Err(Fault::Pg(e)) => Err(Failure::Final(self.pg_error(&e))),
        }
    }

    /// A failure to check out a connection.
    fn pool_failure(&self, e: PoolError<Fault>) -> Failure {
        match e {
            PoolError::Backend(Fault::Pg(e)) if is_transient(&e) => Failure::Transient {
                error: e,
                sent: false,
            },
            PoolError::Backend(Fault::Pg(e)) => Failure::Final(self.pg_error(&e)),
            PoolError::Backend(Fault::Store(e)) => Failure::Final(e),
            PoolError::Closed => Failure::Final(storage(
                &self.target,
                "the connection pool is closed".into(),
            )),
            other => Failure::Final(storage(
                &self.target,
                format!("no database connection: {other}"),
            )),
        }
    }

    /// A database error as a storage error naming the target.
    pub(super) fn pg_error(&self, e: &tokio_postgres::Error) -> ContextStoreError {
        super::errors::naming(&self.target, error(e))
    }

    /// The answer of a write whose fate could not be learnt.
    fn unknown_outcome(&self, what: &str, why: &str) -> ContextStoreError {
        storage(
            &self.target,
            format!(
                "{what}: the connection was interrupted while the write was being committed, \
                 and its outcome could not be learnt ({why}): it may have been applied"
            ),
        )
    }

    /// `tokio::time::timeout_at` on the store's own timer: it works from
    /// any caller, inside a tokio runtime or not.
    pub(super) fn timeout_at<F: Future>(
        &self,
        deadline: Instant,
        future: F,
    ) -> tokio::time::Timeout<F> {
        let _runtime = self.handle.enter();
        tokio::time::timeout_at(deadline.into(), future)
    }

    /// `tokio::time::sleep` on the store's own timer.
    fn sleep(&self, pause: Duration) -> tokio::time::Sleep {
        let _runtime = self.handle.enter();
        tokio::time::sleep(pause)
    }
}
