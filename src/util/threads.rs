//! Thread counts.

/// The number of worker threads to use when none is given: the number of logical CPUs
/// (`std::thread::available_parallelism`), at least 1.
pub fn default_workers() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}
