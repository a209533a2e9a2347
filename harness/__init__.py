"""What the tests and the benchmarks both run against: a moto server, an isolated AWS environment,
helper subprocesses, and store wrappers.

Top-level, beside `sentinel/`, `tests/` and `bench/`, so the benchmarks need not import the test
suite; and outside `sentinel*`, so the wheel never ships it (it needs moto and boto3, which the
product does not). It is imported from the repository root, like `tests` and `bench`.
"""
