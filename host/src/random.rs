//! A little randomness where no generator is worth a dependency: jitter
//! for retries and backoff, and where a worker starts among ready nodes.

/// A number in `[0, 1)`, from a randomly keyed hasher (std seeds its keys
/// from the operating system) mixed with the clock.
pub(crate) fn unit() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    hasher.write_u128(now);
    (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    #[test]
    fn unit_is_in_zero_to_one_and_varies() {
        let draws: Vec<f64> = (0..200).map(|_| super::unit()).collect();
        assert!(draws.iter().all(|r| (0.0..1.0).contains(r)), "{draws:?}");
        assert!(draws.windows(2).any(|w| w[0] != w[1]), "all draws equal");
    }
}
