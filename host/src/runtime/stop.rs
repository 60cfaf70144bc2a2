//! [`StopSignal`]: stopping an invocation from outside, at once, as its
//! deadline would (the flow runner stops a step whose claim was lost).

use tokio::sync::watch;

/// Stops the invocations that watch it, with a reason. Cheap to clone; all
/// clones are one signal. Once stopped it stays stopped.
#[derive(Clone, Debug)]
pub struct StopSignal {
    sender: std::sync::Arc<watch::Sender<Option<String>>>,
}

impl Default for StopSignal {
    fn default() -> Self {
        Self::new()
    }
}

impl StopSignal {
    /// A signal not yet given.
    pub fn new() -> Self {
        Self {
            sender: std::sync::Arc::new(watch::Sender::new(None)),
        }
    }

    /// Stops every invocation watching this signal (the first reason given
    /// is kept).
    pub fn stop(&self, reason: impl Into<String>) {
        let reason = reason.into();
        self.sender.send_if_modified(|current| {
            if current.is_some() {
                return false;
            }
            *current = Some(reason);
            true
        });
    }

    /// Why the signal was given, if it was.
    pub fn reason(&self) -> Option<String> {
        self.sender.borrow().clone()
    }

    /// Resolves with the reason once the signal is given.
    pub async fn stopped(&self) -> String {
        let mut receiver = self.sender.subscribe();
        let reason = match receiver.wait_for(Option::is_some).await {
            Ok(reason) => reason.clone(),
            // The sender lives as long as `self`: not reached.
            Err(_) => None,
        };
        match reason {
            Some(reason) => reason,
            None => std::future::pending().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_given_signal_resolves_with_its_first_reason() {
        let signal = StopSignal::new();
        assert_eq!(signal.reason(), None);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let other = signal.clone();
        let waited = rt.block_on(async move {
            let waiter = tokio::spawn(async move { other.stopped().await });
            tokio::task::yield_now().await;
            signal.stop("claim lost");
            signal.stop("second");
            waiter.await.unwrap()
        });
        assert_eq!(waited, "claim lost");
    }
}
