#!/usr/bin/env python
"""Benchmark the CLIP contrastive loss: open_clip's ClipLoss against clipq's reference, chunked and fused losses.

One forward+backward of the loss (gradients for both feature matrices and the logit scale) per measurement.
Every row of the table is measured in this one process, the implementations interleaved for each N, so
the time ratios against open_clip compare like with like. Columns:

  time      median fwd+bwd wall time over --repeats runs (after one warm-up run)
  TFLOP/s   8*N^2*D / time: the work a fused forward+backward that recomputes the logits must do
            (forward 2N^2D, backward recompute + two products 6N^2D), so 100 % would be the floor
  peak mem  extra peak memory of one fwd+bwd beyond the inputs: on CUDA max_memory_allocated after
            reset_peak_memory_stats; on the CPU the peak-RSS (ru_maxrss / VmHWM) increase over the RSS just
            before, in a fresh subprocess per configuration (high-water mark reset via /proc/self/clear_refs
            after a full-size warm-up run)
  x o_c     ratios against open_clip's ClipLoss at the same N (time, memory)

  % peak    TFLOP/s over the card's peak for the dtype (bf16/fp16: dense tensor-core peak; fp32: the non-tensor
            FP32 peak, since the fused kernel and open_clip both run fp32 without TF32), from the table PEAKS
  largest N the largest batch whose loss (forward only, no_grad) each implementation computes on the card,
            doubling N from the largest measured one up to --fit-max (CUDA only; skipped with --no-fit)

Implementations whose memory grows as N^2 (open_clip, reference) are skipped above --max-quadratic-n; the
row then shows the memory they would need (three N x N fp32 matrices). The fused Triton kernel runs only
on CUDA here (on the CPU it runs through Triton's interpreter, for tests, not for timing).

The GPU run (issue 12; a few minutes on an H100):   python benchmarks/bench_loss.py --device cuda
  = --n 8192 32768 65536 131072 --d 768 --dtype bf16 fp32, fused vs chunked vs open_clip (and reference).
Without a GPU:   python benchmarks/bench_loss.py --device cpu --dry-run
  prints the plan and the analytic roofline the GPU figures will be compared against.
"""
import argparse, ctypes, importlib, json, math, os, resource, statistics, subprocess, sys, time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))   # clipq from this checkout

IMPLS = ('open_clip', 'reference', 'chunked', 'fused')
QUADRATIC = ('open_clip', 'reference')
DTYPES = dict(fp32=torch.float32, bf16=torch.bfloat16, fp16=torch.float16)
# dense peaks in TFLOP/s: (bf16/fp16 tensor cores, fp32 without tensor cores); matched on the device name
PEAKS = {'H200': (989., 67.), 'GH200': (989., 67.), 'H100 PCIe': (756., 51.), 'H100': (989., 67.), 'H800': (989., 67.),
         'A100': (312., 19.5), 'A800': (312., 19.5), 'L40S': (362., 91.6), 'L4': (121., 30.3), 'A10': (125., 31.2),
         'RTX 4090': (165., 82.6), 'B200': (2250., 80.)}
GPU_DEFAULTS = dict(n=[8192, 32768, 65536, 131072], d=768, dtypes=['bf16', 'fp32'])
CPU_DEFAULTS = dict(n=[1024, 2048, 4096, 8192], d=512, dtypes=['fp32'])


def card_peak(name, dtype):
    "The card's dense peak TFLOP/s for `dtype` from PEAKS (the longest matching key), or None."
    hits = [k for k in PEAKS if k.lower() in name.lower()]
    if not hits: return None
    bf16, fp32 = PEAKS[max(hits, key=len)]
    return fp32 if dtype == 'fp32' else bf16


def make_loss(impl, chunk_size=None):
    if impl == 'open_clip':
        import open_clip.loss as ocl
        return ocl.ClipLoss()
    from clipq.loss import contrastive_loss
    return lambda x, y, s: contrastive_loss(x, y, s, impl=impl, chunk_size=chunk_size)


def make_inputs(n, d, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = F.normalize(torch.randn(n, d, generator=g), dim=-1).to(device, dtype).requires_grad_()
    y = F.normalize(torch.randn(n, d, generator=g), dim=-1).to(device, dtype).requires_grad_()
    log_scale = torch.tensor(math.log(100.), device=device, requires_grad=True)
    return x, y, log_scale


def fwd_bwd(fn, x, y, log_scale):
    x.grad = y.grad = log_scale.grad = None
    loss = fn(x, y, log_scale.exp())
    loss.backward()
    return loss


def sync(device):
    if device.type == 'cuda': torch.cuda.synchronize(device)


def _rss():
    "Resident set size of this process now (bytes; Linux)."
    with open('/proc/self/statm') as f: return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')


def _hwm():
    """Peak resident set size of this process's memory (bytes): VmHWM, the value behind ru_maxrss, read
    from /proc because ru_maxrss also keeps the parent's RSS at fork time, which clear_refs cannot reset."""
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith('VmHWM:'): return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

def cpu_peak_worker(impl, n, d, dtype, chunk_size):
    """Run in a fresh process: peak RSS during one steady-state fwd+bwd (VmHWM, i.e. ru_maxrss) minus the RSS
    just before. One full-size warm-up run comes first (its first touch of library code and thread pools is
    not the loss's memory); the high-water mark it leaves is reset (`/proc/self/clear_refs`), and the parent
    starts this process with a fixed glibc mmap threshold, so large tensors are mapped and unmapped (RSS
    follows live memory) instead of reusing heap memory freed earlier."""
    for mod in ('open_clip.loss', 'clipq.loss'): importlib.import_module(mod)   # same modules loaded for every row
    x, y, ls = make_inputs(n, d, DTYPES[dtype], torch.device('cpu'))
    fn = make_loss(impl, chunk_size)
    fwd_bwd(fn, x, y, ls)             # full-size warm-up: libraries, code pages and thread pools are loaded
    x.grad = y.grad = ls.grad = None
    try: ctypes.CDLL('libc.so.6').malloc_trim(0)
    except OSError: pass
    try:
        with open('/proc/self/clear_refs', 'w') as f: f.write('5')   # reset the peak-RSS high-water mark
    except OSError: print('warning: cannot reset the RSS high-water mark; peak may include earlier allocations', file=sys.stderr)
    r0 = _rss()
    fwd_bwd(fn, x, y, ls)
    return max(_hwm() - r0, 0)


def cpu_peak(impl, n, d, dtype, chunk_size, threads):
    cmd = [sys.executable, __file__, '--_worker', impl, '--n', str(n), '--d', str(d), '--dtype', dtype, '--threads', str(threads)]
    if chunk_size: cmd += ['--chunk-size', str(chunk_size)]
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_='131072', MALLOC_TRIM_THRESHOLD_='131072')
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode != 0: return None, r.stderr.strip().splitlines()[-1] if r.stderr.strip() else f'exit {r.returncode}'
    return json.loads(r.stdout.strip().splitlines()[-1]), None


def fmt_bytes(b):
    if b is None: return '-'
    for unit, k in (('GiB', 2**30), ('MiB', 2**20), ('KiB', 2**10)):
        if abs(b) >= k: return f'{b / k:.2f} {unit}'
    return f'{b} B'


def plan(device, a):
    "The configurations this run will measure: (dtype, N, impl, action)."
    cuda = device.type == 'cuda' or a.dry_run                  # a dry run shows the GPU plan
    maxq = a.max_quadratic_n or (1 << 30 if cuda else 16384)
    impls = [i for i in a.impls if i != 'fused' or cuda]
    return [(dt, n, i, f'skip: needs ~{fmt_bytes(4 * n * n * 4)} (> --max-quadratic-n)' if i in QUADRATIC and n > maxq
             else 'fwd+bwd' + (f' (needs ~{fmt_bytes(4 * n * n * 4)}: OOM above the card)' if i in QUADRATIC and cuda else ''))
            for dt in a.dtypes for n in a.n for i in impls], maxq


def print_roofline(a):
    "The analytic roofline (clipq.triton_build.roofline) for the first N and D of this run, on an H100 and an A100."
    from clipq.triton_build import roofline
    n = 65536 if 65536 in a.n else max(a.n)                     # issue 12's compass point
    print(f'\n## Analytic roofline at N={n}, D={a.d}, bf16 (from clipq.triton_build.roofline; bounds, not measurements)\n')
    rows = roofline(n=n, d=a.d)
    cols = [c for c in rows[-1] if c not in ('step',)]
    print('| step | ' + ' | '.join(cols) + ' |')
    print('|---|' + '---|' * len(cols))
    for r in rows:
        print(f"| {r['step']} | " + ' | '.join(f'{r[c]:.3g}' if c in r else '' for c in cols) + ' |')
    useful = 8 * n * n * a.d
    print(f'\nuseful work 8N²D = {useful:.3g} FLOP: at 60 % of the H100 bf16 peak that is {useful / (0.6 * 989e12) * 1e3:.1f} ms; '
          f"open_clip needs ~{fmt_bytes(4 * n * n * 4)} extra for its N×N fp32 matrices")


def fit_search(impl, dtype, d, device, start, limit, chunk_size, time_limit):
    "Largest N (doubling from `start`, at most `limit`) whose loss (forward, no_grad) runs on `device`."
    fn, best, n = make_loss(impl, chunk_size), None, start
    while n <= limit:
        try:
            x, y, ls = make_inputs(n, d, DTYPES[dtype], device)
            sync(device); t0 = time.perf_counter()
            with torch.no_grad(): fn(x, y, ls.exp()).item()
            sync(device); dt = time.perf_counter() - t0
            best = n
            del x, y, ls
        except torch.OutOfMemoryError:
            break
        finally:
            if device.type == 'cuda': torch.cuda.empty_cache()
        if dt > time_limit: return best, f'stopped: {dt:.0f} s per loss at N={n}'
        n *= 2
    return best, ('OOM above' if n <= limit else f'--fit-max {limit} reached')


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--n', type=int, nargs='+', default=None,
                   help='batch sizes N (default: 8192 32768 65536 131072 on CUDA, 1024 2048 4096 8192 on the CPU)')
    p.add_argument('--d', type=int, default=None, help='feature width D (default: 768 on CUDA, 512 on the CPU)')
    p.add_argument('--dtype', dest='dtypes', nargs='+', choices=list(DTYPES), default=None,
                   help='feature dtypes (default: bf16 fp32 on CUDA, fp32 on the CPU)')
    p.add_argument('--impls', nargs='+', choices=IMPLS, default=list(IMPLS), help='implementations to measure (fused: CUDA only)')
    p.add_argument('--repeats', type=int, default=3, help='timed runs per configuration after one warm-up (default 3; 0 on the CPU: memory only)')
    p.add_argument('--device', default=None, help='cuda or cpu (default: cuda if available)')
    p.add_argument('--chunk-size', type=int, default=None, help="rows per block for impl='chunked' (default: ~16 MiB of logits per block)")
    p.add_argument('--max-quadratic-n', type=int, default=None,
                   help='largest N for the O(N^2)-memory implementations (default: 16384 on CPU; on CUDA whatever fits)')
    p.add_argument('--threads', type=int, default=None, help='torch CPU threads (default: torch default)')
    p.add_argument('--no-mem', action='store_true', help='skip the CPU memory subprocesses')
    p.add_argument('--no-fit', action='store_true', help='skip the largest-N search (CUDA)')
    p.add_argument('--fit-max', type=int, default=1 << 20, help='largest N tried by the largest-N search (default 1048576)')
    p.add_argument('--fit-time-limit', type=float, default=60., help='stop the largest-N search after a loss this slow (s)')
    p.add_argument('--dry-run', action='store_true', help='print the plan and the analytic roofline, measure nothing')
    p.add_argument('--_worker', default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.threads: torch.set_num_threads(a.threads)
    if a._worker:
        print(json.dumps(cpu_peak_worker(a._worker, a.n[0], a.d, a.dtypes[0], a.chunk_size)))
        return
    device = torch.device(a.device or ('cuda' if torch.cuda.is_available() else 'cpu'))
    if device.type == 'cuda' and not torch.cuda.is_available() and not a.dry_run:
        raise SystemExit('--device cuda: no CUDA device here (use --dry-run to print the plan)')
    dflt = GPU_DEFAULTS if device.type == 'cuda' or a.dry_run else CPU_DEFAULTS
    a.n, a.d, a.dtypes = a.n or dflt['n'], a.d or dflt['d'], a.dtypes or dflt['dtypes']
    configs, maxq = plan(device, a)
    if a.dry_run:
        print(f'# clipq loss benchmark plan (dry run on {device.type}): D={a.d}, fwd+bwd, median of {a.repeats} after one warm-up\n')
        print('| dtype | N | impl | action |\n|---|---|---|---|')
        for dt, n, i, act in configs: print(f'| {dt} | {n} | {i} | {act} |')
        if not a.no_fit: print(f'\nthen, on CUDA: the largest N (loss only) per implementation and dtype, doubling up to {a.fit_max}')
        print('\npeak TFLOP/s used for "% peak" (bf16/fp16, fp32): ' + ', '.join(f'{k} {v[0]:g}/{v[1]:g}' for k, v in PEAKS.items()))
        print_roofline(a)
        return
    name = torch.cuda.get_device_name(device) if device.type == 'cuda' else f'CPU, {torch.get_num_threads()} torch threads'
    print(f'# clipq loss benchmark: {name}; D={a.d}, fwd+bwd, median of {a.repeats}; torch {torch.__version__}\n', flush=True)

    rows, fits = [], []
    for dtype in a.dtypes:
        peak = card_peak(name, dtype) if device.type == 'cuda' else None
        largest = {}
        for n in a.n:
            x, y, ls = make_inputs(n, a.d, DTYPES[dtype], device)
            live = [i for dt_, n_, i, act in configs if dt_ == dtype and n_ == n and not act.startswith('skip')]
            fns = {i: make_loss(i, a.chunk_size) for i in live}
            times, peaks, vals, errs = {i: [] for i in live}, {}, {}, {}
            for i in live:                                               # warm-up (and on CUDA: peak memory)
                if a.repeats == 0 and device.type == 'cpu': continue     # memory only
                try:
                    sync(device)
                    if device.type == 'cuda':
                        torch.cuda.empty_cache(); torch.cuda.reset_peak_memory_stats(device); m0 = torch.cuda.memory_allocated(device)
                    vals[i] = fwd_bwd(fns[i], x, y, ls).item()
                    sync(device)
                    if device.type == 'cuda': peaks[i] = torch.cuda.max_memory_allocated(device) - m0
                    largest[i] = n
                except torch.OutOfMemoryError:
                    errs[i] = 'OOM'; x.grad = y.grad = ls.grad = None
                    if device.type == 'cuda': torch.cuda.empty_cache()
            for _ in range(a.repeats):                                   # interleaved timed runs
                for i in live:
                    if i in errs: continue
                    sync(device); t0 = time.perf_counter()
                    fwd_bwd(fns[i], x, y, ls)
                    sync(device); times[i].append(time.perf_counter() - t0)
            del x, y, ls
            if device.type == 'cpu' and not a.no_mem:
                for i in live:
                    if i not in errs: peaks[i], err = cpu_peak(i, n, a.d, dtype, a.chunk_size, a.threads or torch.get_num_threads())
                    if i not in errs and err: errs[i] = err
            flop = 8 * n * n * a.d
            ref_t = statistics.median(times['open_clip']) if times.get('open_clip') else None
            ref_m = peaks.get('open_clip')
            for dt_, n_, i, act in configs:
                if dt_ != dtype or n_ != n: continue
                if act.startswith('skip'): rows.append((dtype, n, i, '-', '-', '-', act[6:], '-', '-', '-')); continue
                if i in errs: rows.append((dtype, n, i, '-', '-', '-', errs[i], '-', '-', '-')); continue
                t = statistics.median(times[i]) if times[i] else None
                m = peaks.get(i)
                rows.append((dtype, n, i, f'{t * 1e3:.1f} ms' if t else '-', f'{flop / t / 1e12:.3f}' if t else '-',
                             f'{flop / t / 1e12 / peak * 100:.1f} %' if (t and peak) else '-', fmt_bytes(m),
                             f'{t / ref_t:.2f}x' if (t and ref_t) else '-', f'{m / ref_m:.3f}x' if (ref_m and m is not None) else '-',
                             f'{vals[i]:.6f}' if i in vals else '-'))
            print(f'done {dtype} N={n}', file=sys.stderr, flush=True)
        if device.type == 'cuda' and not a.no_fit:
            for i in [i for i in a.impls if i in largest]:
                best, why = fit_search(i, dtype, a.d, device, 2 * largest[i], a.fit_max, a.chunk_size, a.fit_time_limit)
                fits.append((dtype, i, best or largest[i], why))
                print(f'done fit {dtype} {i}', file=sys.stderr, flush=True)

    head = ('dtype', 'N', 'impl', 'fwd+bwd', 'TFLOP/s (8N²D)', '% peak', 'extra peak mem', 'time ×open_clip', 'mem ×open_clip', 'loss')
    print('| ' + ' | '.join(head) + ' |')
    print('|' + '---|' * len(head))
    for r in rows: print('| ' + ' | '.join(str(c) for c in r) + ' |')
    if fits:
        print(f'\nLargest N whose loss (forward) ran, D={a.d}:\n\n| dtype | impl | largest N | note |\n|---|---|---|---|')
        for r in fits: print('| ' + ' | '.join(str(c) for c in r) + ' |')


if __name__ == '__main__':
    main()
