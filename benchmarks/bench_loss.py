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

Implementations whose memory grows as N^2 (open_clip, reference) are skipped above --max-quadratic-n; the
row then shows the memory they would need (three N x N fp32 matrices). The fused Triton kernel runs only
on CUDA. Example: python benchmarks/bench_loss.py --n 1024 4096 8192 32768 --d 512
"""
import argparse, ctypes, importlib, json, math, os, resource, statistics, subprocess, sys, time

import torch
import torch.nn.functional as F

IMPLS = ('open_clip', 'reference', 'chunked', 'fused')
QUADRATIC = ('open_clip', 'reference')
DTYPES = dict(fp32=torch.float32, bf16=torch.bfloat16, fp16=torch.float16)


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


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--n', type=int, nargs='+', default=[1024, 2048, 4096, 8192], help='batch sizes N (default: 1024 2048 4096 8192)')
    p.add_argument('--d', type=int, default=512, help='feature width D (default 512)')
    p.add_argument('--dtype', choices=list(DTYPES), default=None, help='feature dtype (default: bf16 on CUDA, fp32 on CPU)')
    p.add_argument('--impls', nargs='+', choices=IMPLS, default=list(IMPLS), help='implementations to measure (fused: CUDA only)')
    p.add_argument('--repeats', type=int, default=3, help='timed runs per configuration after one warm-up (default 3; 0 on the CPU: memory only)')
    p.add_argument('--device', default=None, help='cuda or cpu (default: cuda if available)')
    p.add_argument('--chunk-size', type=int, default=None, help="rows per block for impl='chunked' (default: ~16 MiB of logits per block)")
    p.add_argument('--max-quadratic-n', type=int, default=None,
                   help='largest N for the O(N^2)-memory implementations (default: 16384 on CPU; on CUDA whatever fits)')
    p.add_argument('--threads', type=int, default=None, help='torch CPU threads (default: torch default)')
    p.add_argument('--no-mem', action='store_true', help='skip the CPU memory subprocesses')
    p.add_argument('--_worker', default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.threads: torch.set_num_threads(a.threads)
    if a._worker:
        print(json.dumps(cpu_peak_worker(a._worker, a.n[0], a.d, a.dtype or 'fp32', a.chunk_size)))
        return
    device = torch.device(a.device or ('cuda' if torch.cuda.is_available() else 'cpu'))
    dtype = a.dtype or ('bf16' if device.type == 'cuda' else 'fp32')
    impls = [i for i in a.impls if i != 'fused' or device.type == 'cuda']
    maxq = a.max_quadratic_n or (16384 if device.type == 'cpu' else 1 << 30)
    name = torch.cuda.get_device_name(device) if device.type == 'cuda' else f'CPU, {torch.get_num_threads()} torch threads'
    print(f'# clipq loss benchmark: {name}; D={a.d}, {dtype}, fwd+bwd, median of {a.repeats}; torch {torch.__version__}\n', flush=True)

    rows = []
    for n in a.n:
        x, y, ls = make_inputs(n, a.d, DTYPES[dtype], device)
        live = [i for i in impls if i not in QUADRATIC or n <= maxq]
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
        for i in impls:
            if i not in live:
                rows.append((n, i, '-', '-', f'skipped (needs ~{fmt_bytes(4 * n * n * 4)})', '-', '-', '-')); continue
            if i in errs: rows.append((n, i, '-', '-', errs[i], '-', '-', '-')); continue
            t = statistics.median(times[i]) if times[i] else None
            m = peaks.get(i)
            rows.append((n, i, f'{t * 1e3:.1f} ms' if t else '-', f'{flop / t / 1e12:.3f}' if t else '-', fmt_bytes(m),
                         f'{t / ref_t:.2f}x' if (t and ref_t) else '-', f'{m / ref_m:.3f}x' if (ref_m and m is not None) else '-',
                         f'{vals[i]:.6f}' if i in vals else '-'))
        print(f'done N={n}', file=sys.stderr, flush=True)

    head = ('N', 'impl', 'fwd+bwd', 'TFLOP/s (8N²D)', 'extra peak mem', 'time ×open_clip', 'mem ×open_clip', 'loss')
    print('| ' + ' | '.join(head) + ' |')
    print('|' + '---|' * len(head))
    for r in rows: print('| ' + ' | '.join(str(c) for c in r) + ' |')


if __name__ == '__main__':
    main()
