//! [`PoolConfig`]: the size of the pooling instance allocator, which keeps
//! memory, table and instance slots ready so that starting a step costs
//! microseconds instead of fresh `mmap`s and page faults.
//!
//! How a component is placed:
//!
//! - At load, the component is compiled once (for the on-demand engine,
//!   through the compiled-code cache), then the same compiled code is given
//!   to the pooled engine, which checks statically whether the component
//!   fits the pool's slots (core instances, memories and tables per
//!   component, table elements, memory minimums, metadata sizes). A
//!   component that does not fit is logged once and always instantiated
//!   on demand: it runs as before, only without the faster start.
//! - At each invocation, the pool is used if the component fits and the
//!   invocation's [`Limits::memory_bytes`](crate::Limits) is within
//!   [`PoolConfig::memory_bytes`] (a memory slot cannot grow past its
//!   size); otherwise the on-demand engine is. The invocation's
//!   `GuestLimiter` caps memory in both cases.
//! - If every slot is taken (more concurrent invocations than
//!   [`PoolConfig::instances`]), that invocation is instantiated on demand.

use wasmtime::{Enabled, PoolConcurrencyLimitError, PoolingAllocationConfig};

/// Bytes of a memory slot reset in place rather than unmapped when an
/// instance is done (a Rust step touches a few hundred KiB).
const KEEP_RESIDENT: usize = 1 << 20;

/// How big the pooling allocator is. The defaults fit the project's Rust,
/// C, Python and JavaScript steps, measured: a Python step (componentize-py)
/// holds 38 core instances, 2 tables and a table of 5,676 elements; a
/// JavaScript step (ComponentizeJS) 3 core instances, 2 tables and 7,693
/// elements; a Rust step 1-3 core instances, 1 table of a few elements.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolConfig {
    /// Most step instances in the pool at once (default 64); further
    /// concurrent invocations are instantiated on demand.
    pub instances: u32,
    /// Most core module instances in one component (default 64).
    pub core_instances_per_component: u32,
    /// Most linear memories in one component (default 2).
    pub memories_per_component: u32,
    /// Most tables in one component (default 8).
    pub tables_per_component: u32,
    /// Elements of one table slot (default 20,000). A component whose
    /// tables start bigger is instantiated on demand; a table in a pooled
    /// instance cannot grow past this size (growth fails, as under
    /// [`Limits::max_table_elements`](crate::Limits)).
    pub table_elements: usize,
    /// Bytes of one linear memory slot (default 128 MiB, the default
    /// [`Limits::memory_bytes`](crate::Limits)). An invocation allowed more
    /// memory than this is instantiated on demand.
    pub memory_bytes: usize,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            instances: 64,
            core_instances_per_component: 64,
            memories_per_component: 2,
            tables_per_component: 8,
            table_elements: 20_000,
            memory_bytes: 128 << 20,
        }
    }
}

impl PoolConfig {
    /// The wasmtime configuration of this pool. Totals are per-component
    /// limits times [`instances`](Self::instances).
    pub(crate) fn to_wasmtime(&self) -> PoolingAllocationConfig {
        let instances = self.instances.max(1);
        let total = |per: u32| instances.saturating_mul(per.max(1));
        let mut pool = PoolingAllocationConfig::new();
        pool.total_component_instances(instances)
            .total_core_instances(total(self.core_instances_per_component))
            .total_memories(total(self.memories_per_component))
            .total_tables(total(self.tables_per_component))
            .total_stacks(instances)
            .max_core_instances_per_component(self.core_instances_per_component)
            .max_memories_per_component(self.memories_per_component)
            .max_tables_per_component(self.tables_per_component)
            .max_tables_per_module(self.tables_per_component.max(1))
            .max_memories_per_module(self.memories_per_component.max(1))
            .table_elements(self.table_elements)
            .max_memory_size(self.memory_bytes)
            // Room for the metadata of Python's dozens of core instances
            // (the default is 1 MiB).
            .max_component_instance_size(4 << 20)
            // A slot given back is reset by rewriting only the pages the
            // instance touched (found with the PAGEMAP_SCAN ioctl where the
            // kernel has it, Linux 6.7+), up to these many bytes, instead of
            // unmapping them: the next instance starts without page faults.
            // Not with swap on: the scan finds dirty pages only while they
            // are present, so a page swapped out would keep one instance's
            // data for the next in the slot (see `pagemap_scan_is_safe`).
            .pagemap_scan(if pagemap_scan_is_safe() {
                Enabled::Auto
            } else {
                Enabled::No
            })
            .linear_memory_keep_resident(KEEP_RESIDENT)
            .table_keep_resident(KEEP_RESIDENT / 16);
        pool
    }
}

/// Whether resetting pool slots with the PAGEMAP_SCAN ioctl keeps
/// instances apart on this host: only when no swap is active (wasmtime 48's
/// scan looks for pages written *and present*; a written page that was
/// swapped out is neither rewritten nor unmapped, and the next instance in
/// the slot would read it). Read from `/proc/swaps` when the runtime is
/// made; a host where it cannot be read, or that turns swap on later, is
/// not told apart, so the first case resets slots the slower way and the
/// second is the operator's to avoid (run the host without swap).
fn pagemap_scan_is_safe() -> bool {
    match std::fs::read_to_string("/proc/swaps") {
        Ok(swaps) => !swap_active(&swaps),
        Err(error) => {
            tracing::debug!(%error, "cannot read /proc/swaps; pool slots are reset without PAGEMAP_SCAN");
            false
        }
    }
}

/// Whether `/proc/swaps` (its text) lists an active swap area: any line
/// after the header.
fn swap_active(swaps: &str) -> bool {
    let active = swaps.lines().skip(1).any(|line| !line.trim().is_empty());
    if active {
        tracing::info!(
            "swap is on: pool slots are reset without PAGEMAP_SCAN (slower step starts)"
        );
    }
    active
}

/// Whether an instantiation failed only because every pool slot of some
/// kind was in use.
pub(crate) fn is_pool_exhausted(error: &wasmtime::Error) -> bool {
    error
        .chain()
        .any(|cause| cause.is::<PoolConcurrencyLimitError>())
}

#[cfg(test)]
mod tests {
    use super::swap_active;

    #[test]
    fn swap_is_active_when_proc_swaps_lists_an_area() {
        let header = "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n";
        assert!(!swap_active(header));
        assert!(!swap_active(""));
        let zram = format!(
            "{header}/dev/zram0                              partition\t4194300\t\t0\t\t100\n"
        );
        assert!(swap_active(&zram));
        let file = format!("{header}/swapfile file 1048572 0 -2\n");
        assert!(swap_active(&file));
    }
}
