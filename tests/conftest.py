"""Shared pytest set-up."""
import os

# Under pytest-xdist (the README's `-n 2`) every worker is one of N processes sharing the machine's cores. torch's
# OpenMP pool would start one thread per core in each worker and in each subprocess a test starts, and spinning pools
# on oversubscribed cores slow each other several-fold (two smoke-scale `clipq reproduce` runs side by side took
# 240 s each instead of 40 s). Give each worker its share of the cores; subprocesses inherit it.
if os.environ.get('PYTEST_XDIST_WORKER'):
    workers = int(os.environ.get('PYTEST_XDIST_WORKER_COUNT', '1'))
    os.environ.setdefault('OMP_NUM_THREADS', str(max(1, (os.cpu_count() or 1) // workers)))
