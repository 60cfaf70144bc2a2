//! [`MemoryLimiter`]: caps a guest's linear memory and remembers whether
//! the cap was hit, so that the trap that usually follows (an allocator
//! abort) can be reported as out-of-memory.

use wasmtime::ResourceLimiter;

/// Most tables and table elements a step may create: generous for any
/// real component, small enough that a hostile one cannot exhaust the host.
const MAX_TABLE_ELEMENTS: usize = 1 << 20;

/// A [`ResourceLimiter`] with a memory cap.
pub struct MemoryLimiter {
    limit_bytes: usize,
    hit: bool,
}

impl MemoryLimiter {
    /// Allows at most `limit_bytes` of linear memory per memory.
    pub fn new(limit_bytes: usize) -> Self {
        Self {
            limit_bytes,
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
        _current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let allowed = desired <= self.limit_bytes && maximum.is_none_or(|max| desired <= max);
        if !allowed {
            self.hit = true;
            tracing::debug!(desired, limit = self.limit_bytes, "refused memory growth");
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
