"""Speed of the built-in synthetic world (clipq.synth).

Measures scenes per second on ONE core for: rendering + captioning only (`make_scene`), and the whole
`write_synth` job (render, JPEG/PNG encoding, webdataset shards, parquet index, and optionally the
ADE20k/NYUv2 layouts); then the whole job with all cores. Target: 10,000 scenes of 64 px in under
a minute on one core.

Then the peak memory of one worker writing scenes of growing size (in a fresh process each, with
`clipq.test_utils.peak_rss_mb`), next to the estimate `write_synth` checks before it starts
(`clipq.synth.synth_memory`): the estimate must stay above the measurement.

    python benchmarks/bench_synth.py                # sizes 64 and 128, 2000 scenes each
    python benchmarks/bench_synth.py --n 10000 --sizes 64 --memory-sizes 512 1024 2048
"""
import argparse, os, platform, shutil, tempfile, time
from pathlib import Path

from clipq.core import get_logger
from clipq.synth import SynthConfig, make_scene, synth_memory, write_synth
from clipq.test_utils import peak_rss_mb


def bench(n: int, size: int, workers: int, formats) -> float:
    out = Path(tempfile.mkdtemp())/'w'
    t = time.perf_counter()
    write_synth(out, n=n, size=size, workers=workers, formats=formats, progress=False, preview=False)
    dt = time.perf_counter() - t
    shutil.rmtree(out.parent)
    return dt


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--n', type=int, default=2000, help='scenes per measurement (default: %(default)s)')
    p.add_argument('--sizes', type=int, nargs='+', default=[64, 128], help='image sizes (default: %(default)s)')
    p.add_argument('--workers', type=int, default=os.cpu_count(), help='workers for the parallel row (default: all cores)')
    p.add_argument('--memory-sizes', type=int, nargs='*', default=[256, 512, 1024],
                   help='sizes for the peak-memory table (default: %(default)s; none to skip)')
    a = p.parse_args()
    get_logger().setLevel('WARNING')
    print(f'machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}')
    print(f'{"size":>5} {"what":<42} {"workers":>7} {"scenes/s":>9} {"10k scenes":>11}')
    for size in a.sizes:
        cfg = SynthConfig(size=size)
        make_scene(0, 0, cfg)  # warm-up (caches)
        t = time.perf_counter()
        for i in range(a.n): make_scene(0, i, cfg)
        rows = [('render + captions (make_scene)', 1, time.perf_counter() - t)]
        rows.append(('write_synth: shards + parquet', 1, bench(a.n, size, 1, ('wds',))))
        rows.append(('write_synth: shards + parquet + ADE + NYU', 1, bench(a.n, size, 1, ('wds', 'ade', 'nyu'))))
        if a.workers > 1: rows.append(('write_synth: shards + parquet + ADE + NYU', a.workers, bench(a.n, size, a.workers, ('wds', 'ade', 'nyu'))))
        for what, w, dt in rows:
            print(f'{size:>5} {what:<42} {w:>7} {a.n/dt:>9.0f} {1e4*dt/a.n:>10.1f}s')
    if a.memory_sizes:
        print(f'\n{"size":>5} {"peak MiB (2 scenes, all formats)":>33} {"bytes/pixel":>11} {"estimate MiB":>12} {"ratio":>6}')
    for size in a.memory_sizes:
        code = f"""
            import os, tempfile
            from dataclasses import asdict
            from clipq.synth import SynthConfig
            from clipq.synth_write import _write_shard
            d = tempfile.mkdtemp()
            for sub in ('train', 'ADEChallengeData2016/images/training', 'ADEChallengeData2016/annotations/training'):
                os.makedirs(f'{{d}}/{{sub}}')
            _write_shard(dict(cfg=asdict(SynthConfig(size={size})), seed=0, out=d, split='train', shard=0, start=0,
                              stop=2, split_start=0, formats=('wds', 'ade', 'nyu')))"""
        setup = 'import numpy, PIL.Image, webdataset, clipq.synth'
        mb = peak_rss_mb(code, setup=setup)
        est = synth_memory(size)/2**20
        print(f'{size:>5} {mb:>33.0f} {mb*2**20/size**2:>11.0f} {est:>12.0f} {est/mb:>6.2f}')


if __name__ == '__main__':
    main()
