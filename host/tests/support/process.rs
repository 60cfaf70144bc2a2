//! Child processes in tests: waiting for one without hanging the test.

use std::process::{Child, Output};
use std::time::{Duration, Instant};

/// Waits for `child`, killing it and failing the test after `limit`.
pub fn wait_at_most(mut child: Child, limit: Duration) -> Output {
    let start = Instant::now();
    while child.try_wait().expect("child status").is_none() {
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("child output")
}
