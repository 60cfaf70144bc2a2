//! [`GuestLimiter`]: caps what a guest's instances may allocate (linear
//! memory in all, table elements in all, and the numbers of instances,
//! tables and memories) and remembers whether the memory cap was hit, so
//! that the trap that usually follows (an allocator abort) can be reported
//! as out-of-memory.

use wasmtime::ResourceLimiter;

use crate::limits::Limits;

/// A [`ResourceLimiter`] over all the instances of one invocation.
pub struct GuestLimiter {
    memory_limit: usize,
    memory_total: usize,
    elements_limit: usize,
    elements_total: usize,
    instances: usize,
    tables: usize,
    memories: usize,
    memory_hit: bool,
}

impl GuestLimiter {
    /// The limiter for `limits`.
    pub fn new(limits: &Limits) -> Self {
        Self {
            memory_limit: limits.memory_bytes,
            memory_total: 0,
            elements_limit: limits.max_table_elements,
            elements_total: 0,
            instances: limits.max_instances,
            tables: limits.max_tables,
            memories: limits.max_memories,
            memory_hit: false,
        }
    }

    /// Whether a memory growth was refused because of the cap.
    pub fn memory_hit(&self) -> bool {
        self.memory_hit
    }
}

/// `total - current + desired`, if that stays within `limit`.
fn grow(total: usize, current: usize, desired: usize, limit: usize) -> Option<usize> {
    let next = total.saturating_sub(current).saturating_add(desired);
    (next <= limit).then_some(next)
}

impl ResourceLimiter for GuestLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        match grow(self.memory_total, current, desired, self.memory_limit) {
            Some(total) if maximum.is_none_or(|max| desired <= max) => {
                self.memory_total = total;
                Ok(true)
            }
            _ => {
                self.memory_hit = true;
                tracing::debug!(desired, limit = self.memory_limit, "refused memory growth");
                Ok(false)
            }
        }
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        match grow(self.elements_total, current, desired, self.elements_limit) {
            Some(total) if maximum.is_none_or(|max| desired <= max) => {
                self.elements_total = total;
                Ok(true)
            }
            _ => {
                tracing::debug!(desired, limit = self.elements_limit, "refused table growth");
                Ok(false)
            }
        }
    }

    fn instances(&self) -> usize {
        self.instances
    }

    fn tables(&self) -> usize {
        self.tables
    }

    fn memories(&self) -> usize {
        self.memories
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(memory_bytes: usize, max_table_elements: usize) -> GuestLimiter {
        GuestLimiter::new(&Limits {
            memory_bytes,
            max_table_elements,
            ..Limits::default()
        })
    }

    #[test]
    fn the_memory_cap_covers_all_memories_together() {
        let mut limiter = limiter(100, 10);
        assert!(limiter.memory_growing(0, 60, None).unwrap());
        assert!(
            !limiter.memory_growing(0, 60, None).unwrap(),
            "second memory over the total"
        );
        assert!(limiter.memory_hit());
        assert!(limiter.memory_growing(0, 40, None).unwrap());
        assert!(
            limiter.memory_growing(40, 40, None).unwrap(),
            "no growth is always fine"
        );
        assert!(!limiter.memory_growing(60, 61, None).unwrap());
    }

    #[test]
    fn a_memory_maximum_is_respected() {
        let mut limiter = limiter(1000, 10);
        assert!(!limiter.memory_growing(0, 20, Some(10)).unwrap());
    }

    #[test]
    fn the_element_cap_covers_all_tables_together() {
        let mut limiter = limiter(100, 10);
        assert!(limiter.table_growing(0, 6, None).unwrap());
        assert!(!limiter.table_growing(0, 6, None).unwrap());
        assert!(limiter.table_growing(0, 4, None).unwrap());
        assert!(!limiter.table_growing(4, 5, None).unwrap());
        assert!(!limiter.memory_hit(), "tables are not memory");
    }

    #[test]
    fn counts_come_from_the_limits() {
        let limits = Limits {
            max_instances: 3,
            max_tables: 4,
            max_memories: 5,
            ..Limits::default()
        };
        let limiter = GuestLimiter::new(&limits);
        assert_eq!(
            (limiter.instances(), limiter.tables(), limiter.memories()),
            (3, 4, 5)
        );
    }
}
