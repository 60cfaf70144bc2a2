//! [`MemoryLimiter`]: caps a guest's linear memory and remembers whether
//! the cap was hit, so that the trap that usually follows (an allocator
//! abort) can be reported as out-of-memory.

use wasmtime::ResourceLimiter;

/// Most tables and table elements a step may create: generous for any
/// real component, small enough that a hostile one cannot exhaust the host.
const MAX_TABLE_ELEMENTS: usize = 1 << 20;

/// A [`ResourceLimiter`] with a cap on the total of all linear memories
/// (a component may hold several core instances, each with its own).
pub struct MemoryLimiter {
    limit_bytes: usize,
    total_bytes: usize,
    hit: bool,
}

impl MemoryLimiter {
    /// Allows at most `limit_bytes` of linear memory in all.
    pub fn new(limit_bytes: usize) -> Self {
        Self {
            limit_bytes,
            total_bytes: 0,
            hit: false,
        }
    }

    /// Whether a growth was refused because of the cap.
    pub fn hit(&self) -> bool {
        self.hit
    }
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let total = self
            .total_bytes
            .saturating_sub(current)
            .saturating_add(desired);
        let allowed = total <= self.limit_bytes && maximum.is_none_or(|max| desired <= max);
        if allowed {
            self.total_bytes = total;
        } else {
            self.hit = true;
            tracing::debug!(
                desired,
                total,
                limit = self.limit_bytes,
                "refused memory growth"
            );
        }
        Ok(allowed)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS && maximum.is_none_or(|max| desired <= max))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_covers_all_memories_together() {
        let mut limiter = MemoryLimiter::new(100);
        assert!(limiter.memory_growing(0, 60, None).unwrap());
        assert!(
            !limiter.memory_growing(0, 60, None).unwrap(),
            "second memory over the total"
        );
        assert!(limiter.hit());
        assert!(limiter.memory_growing(0, 40, None).unwrap());
        assert!(
            limiter.memory_growing(40, 40, None).unwrap(),
            "no growth is always fine"
        );
        assert!(!limiter.memory_growing(60, 61, None).unwrap());
    }

    #[test]
    fn a_memory_maximum_is_respected() {
        let mut limiter = MemoryLimiter::new(1000);
        assert!(!limiter.memory_growing(0, 20, Some(10)).unwrap());
    }
}
