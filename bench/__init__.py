"""Load benchmarks for Sentinel (issue 6): wrk against nginx, Sentinel's scenarios and the
inline-touch baseline, on one machine, in one run. Run them with `./scripts/bench`."""
