//! The epoch ticker: a thread that advances the engine's epoch at a fixed
//! interval, so that invocations can be given wall-clock deadlines.

use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::Duration;

use wasmtime::Engine;

/// How often the epoch advances: the resolution of every timeout.
pub const TICK: Duration = Duration::from_millis(10);

/// Advances `engine`'s epoch every [`TICK`] until dropped.
pub struct EpochTicker {
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl EpochTicker {
    /// Starts the ticker thread for `engines`.
    pub fn start(engines: Vec<Engine>) -> std::io::Result<Self> {
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("contextstore-epoch".into())
            .spawn(move || {
                while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(TICK) {
                    for engine in &engines {
                        engine.increment_epoch();
                    }
                }
            })?;
        Ok(Self {
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// The number of ticks that covers `timeout` (at least one).
    pub fn ticks_for(timeout: Duration) -> u64 {
        let ticks = timeout.as_nanos().div_ceil(TICK.as_nanos());
        u64::try_from(ticks).unwrap_or(u64::MAX).max(1)
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_round_up_and_never_zero() {
        assert_eq!(EpochTicker::ticks_for(Duration::ZERO), 1);
        assert_eq!(EpochTicker::ticks_for(Duration::from_millis(1)), 1);
        assert_eq!(EpochTicker::ticks_for(Duration::from_millis(10)), 1);
        assert_eq!(EpochTicker::ticks_for(Duration::from_millis(11)), 2);
        assert_eq!(EpochTicker::ticks_for(Duration::from_secs(1)), 100);
        assert_eq!(EpochTicker::ticks_for(Duration::MAX), u64::MAX);
    }
}
