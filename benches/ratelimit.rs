//! Rate-limit decision cost without Redis (the Redis path is measured by
//! the load harness, `../shared/bench/run.sh`): the memory limiter's
//! decision for one hot subject and across many subjects, and rendering a
//! decision's headers.
//!
//! Run: `cargo bench --bench ratelimit -- --warm-up-time 1 --measurement-time 3`.

fn main() {}
