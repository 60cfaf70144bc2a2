//! [`Grant`]: what one step invocation may touch in the store. Deny by default.

/// Global keys that start with this prefix belong to the host (the flow
/// journal, say): no grant reaches them, whatever its prefixes.
pub const RESERVED_PREFIX: &str = "contextstore.";

/// The capabilities of one invocation.
///
/// Always granted: reading the invocation's own node output and the
/// outputs of its declared upstreams (the nodes its
/// [`Invocation`](crate::Invocation) names, see
/// [`Invocation::with_upstream`](crate::Invocation::with_upstream)) with
/// `get` and `list-keys`, and writing the invocation's own node output
/// (`put` of its own `(flow-run-id, node-id)`). Everything else is denied
/// unless granted here: reading the other nodes of the run only with
/// [`read_run`](Self::read_run); other runs can never be read, other runs
/// and other nodes never written, and globals are reachable only under the
/// key prefixes below. A denied call returns `access-denied` to the guest
/// and changes nothing.
///
/// ```
/// use contextstore::Grant;
///
/// let grant = Grant::default()
///     .read_globals("config/")
///     .write_globals("cache/step-a/");
/// assert!(grant.may_read_global("config/region"));
/// assert!(!grant.may_read_global("secrets/token"));
/// assert!(grant.may_write_global("cache/step-a/page-1"));
/// assert!(!grant.may_write_global("config/region"));
/// assert!(!grant.read_run);
/// assert!(Grant::default().read_whole_run().read_run);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Grant {
    /// Key prefixes under which globals may be read (`get-global`).
    pub global_read: Vec<String>,
    /// Key prefixes under which globals may be written (`put-global`,
    /// `upsert-global`). Writing does not imply reading.
    pub global_write: Vec<String>,
    /// Whether reads (`get`, `list-keys`) reach every node of the
    /// invocation's own flow run, not only its own node and its declared
    /// upstreams. Off by default; other runs stay out of reach either way.
    pub read_run: bool,
}

impl Grant {
    /// Allows reading globals whose key starts with `prefix` (`""` allows all).
    pub fn read_globals(mut self, prefix: impl Into<String>) -> Self {
        self.global_read.push(prefix.into());
        self
    }

    /// Allows writing globals whose key starts with `prefix` (`""` allows all).
    pub fn write_globals(mut self, prefix: impl Into<String>) -> Self {
        self.global_write.push(prefix.into());
        self
    }

    /// Widens reads (`get`, `list-keys`) to every node of the invocation's
    /// own flow run ([`read_run`](Self::read_run)).
    pub fn read_whole_run(mut self) -> Self {
        self.read_run = true;
        self
    }

    /// Whether `key` is under a granted read prefix (and not reserved).
    pub fn may_read_global(&self, key: &str) -> bool {
        !is_reserved(key) && self.global_read.iter().any(|p| key.starts_with(p.as_str()))
    }

    /// Whether `key` is under a granted write prefix (and not reserved).
    pub fn may_write_global(&self, key: &str) -> bool {
        !is_reserved(key)
            && self
                .global_write
                .iter()
                .any(|p| key.starts_with(p.as_str()))
    }
}

/// Whether `key` is under [`RESERVED_PREFIX`].
pub fn is_reserved(key: &str) -> bool {
    key.starts_with(RESERVED_PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn denies_everything_by_default() {
        let grant = Grant::default();
        assert!(!grant.may_read_global(""));
        assert!(!grant.may_write_global("any"));
    }

    #[test]
    fn empty_prefix_grants_every_key() {
        let grant = Grant::default().read_globals("");
        assert!(grant.may_read_global(""));
        assert!(grant.may_read_global("anything"));
    }

    #[test]
    fn prefixes_match_bytes_not_path_segments() {
        let grant = Grant::default().write_globals("a/");
        assert!(grant.may_write_global("a/"));
        assert!(grant.may_write_global("a/b"));
        assert!(!grant.may_write_global("a"));
        assert!(!grant.may_write_global("ab/"));
        assert!(!grant.may_read_global("a/b"), "write does not imply read");
    }

    #[test]
    fn reserved_keys_are_out_of_reach_of_every_grant() {
        let grant = Grant::default()
            .read_globals("")
            .write_globals("")
            .read_globals(RESERVED_PREFIX)
            .write_globals("contextstore.flow/");
        for key in [
            "contextstore.flow/run/node",
            "contextstore.",
            "contextstore.x",
        ] {
            assert!(!grant.may_read_global(key), "{key}");
            assert!(!grant.may_write_global(key), "{key}");
        }
        assert!(grant.may_read_global("contextstore"));
        assert!(grant.may_write_global("contextstorex"));
    }
}
