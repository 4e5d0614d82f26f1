"""Training throughput: `clipq train` (clipq.train.train_clip) vs open_clip's `open_clip_train.main`, side by side.

Both train the same model from random init with the same global batch, precision, optimiser (AdamW, lr, warm-up), data
workers and number of steps, one after the other in fresh processes, on the same images and captions: a `clipq synth`
world, which clipq reads from its webdataset shards and open_clip_train (`--oc-data csv`, the default) from the same
JPEG files and alt-texts unpacked into a folder with a tab-separated CSV (its `--dataset-type csv`: one file opened,
decoded, preprocessed and tokenised per sample). Both decode every image; neither caches. (open_clip_train's
webdataset reader fails with the installed webdataset, `KeyError: 'fname'` in `group_by_keys_nothrow`, so it cannot
read the shards themselves.) `--oc-data synthetic` gives open_clip_train its blank-image source instead (no
decoding at all), the figure earlier versions of this script reported. The figure is samples/s per step as each
trainer measures it itself (wall time from the end of one step to the end of the next, data loading included:
open_clip's `samples_per_second`, clipq's `samples_per_s` in log.csv), median over the steps after the first `--skip`;
`--repeats R` runs each pair R times, alternating, and reports the median of the R medians.

    python benchmarks/bench_train.py                                  # tiny config and ViT-B-32 at batch 16, CPU
    python benchmarks/bench_train.py --configs clipq-tiny-vit:32 clipq-tiny-vit:128 --steps 100 --repeats 3
    python benchmarks/bench_train.py --configs ViT-B-16:256 --precision amp_bf16 --device cuda    # on a GPU

open_clip_train does not know clipq's tiny model configs: its process imports `clipq.models` first, which registers them
with open_clip, then calls `open_clip_train.main.main(argv)` unchanged.
"""
import argparse, json, os, platform, re, statistics, subprocess, sys, tempfile, time
from pathlib import Path

OPENCLIP = '''
import sys, warnings; warnings.filterwarnings('ignore')
import clipq.models                      # registers clipq-tiny-* with open_clip
from open_clip_train.main import main
main(sys.argv[1:])
'''

CLIPQ = '''
import json, sys, warnings; warnings.filterwarnings('ignore')
from clipq.train import train_clip
sys.exit(train_clip(**json.loads(sys.argv[1])))
'''


def _world(folder: Path, n: int, size: int) -> Path:
    from clipq.synth import write_synth
    w = folder/f'world-{n}-{size}'
    if not w.exists():
        write_synth(w, n=n, size=size, shard_size=max(1, n // 8), val_fraction=0., workers=1, formats=('wds',),
                    progress=False, preview=False)
    return w


def _csv(world: Path) -> Path:
    "The world's training JPEGs and alt-texts as files plus a tab-separated CSV, for open_clip_train's csv reader."
    import csv, tarfile
    folder, table = world/'oc-csv', world/'oc-train.csv'
    if table.exists(): return table
    folder.mkdir(exist_ok=True)
    rows = {}
    for shard in sorted((world/'train').glob('*.tar')):
        with tarfile.open(shard) as tf:
            for m in tf:
                key, _, ext = m.name.partition('.')
                row = rows.setdefault(key, {})
                if ext == 'jpg':
                    (folder/m.name).write_bytes(tf.extractfile(m).read())
                    row['filepath'] = str(folder/m.name)
                elif ext == 'txt': row['title'] = ' '.join(tf.extractfile(m).read().decode().split())
    with open(table.with_suffix('.tmp'), 'w', newline='') as f:
        w = csv.DictWriter(f, ['filepath', 'title'], delimiter='\t'); w.writeheader()
        w.writerows(r for r in rows.values() if len(r) == 2)
    table.with_suffix('.tmp').rename(table)
    return table


def run_openclip(model: str, batch: int, steps: int, precision: str, workers: int, lr: float,
                 device: str, logs: Path, csv_file: Path | None = None) -> list:
    "Per-step samples/s reported by open_clip_train (log every step), on `csv_file` or its synthetic source."
    data = (['--dataset-type', 'csv', '--train-data', str(csv_file), '--csv-img-key', 'filepath',
             '--csv-caption-key', 'title'] if csv_file else ['--dataset-type', 'synthetic'])
    argv = [*data, '--train-num-samples', str(batch * steps),
            '--model', model, '--batch-size', str(batch), '--epochs', '1', '--lr', str(lr), '--warmup', '1',
            '--wd', '0.2', '--precision', precision, '--workers', str(workers), '--device', device,
            '--save-frequency', '0', '--val-frequency', '0', '--zeroshot-frequency', '0', '--log-every-n-steps', '1',
            '--logs', str(logs), '--name', f'oc-{model}-{batch}-{time.time_ns()}', '--seed', '0', '--report-to', '']
    r = subprocess.run([sys.executable, '-c', OPENCLIP, *argv], capture_output=True, text=True, timeout=7200)
    text = r.stdout + r.stderr
    rates = [float(m) for m in re.findall(r'Batch \(t\): [\d.]+, ([\d.e+]+)/s,', text)]
    if r.returncode or not rates: raise RuntimeError(f"open_clip_train failed ({r.returncode}):\n{text[-3000:]}")
    return rates


def run_clipq(world: Path, model: str, batch: int, steps: int, precision: str, workers: int, lr: float,
              device: str, out: Path) -> list:
    "Per-step samples/s from clipq's log.csv."
    import csv
    kw = dict(data=str(world), model=model, captions='alt', batch_size=batch, steps=steps, lr=lr, warmup=1, wd=0.2,
              precision=precision, workers=workers, out=str(out), overwrite=True, log_every=0, device=device)
    r = subprocess.run([sys.executable, '-c', CLIPQ, json.dumps(kw)], capture_output=True, text=True, timeout=7200)
    if r.returncode: raise RuntimeError(f"clipq train failed ({r.returncode}):\n{(r.stdout + r.stderr)[-3000:]}")
    with open(out/'log.csv') as f: return [float(row['samples_per_s']) for row in csv.DictReader(f)]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--configs', nargs='+', default=['clipq-tiny-vit:32', 'ViT-B-32:16'], help='MODEL:BATCH pairs')
    ap.add_argument('--steps', type=int, default=12)
    ap.add_argument('--skip', type=int, default=2, help='first steps left out of the median (warm-up)')
    ap.add_argument('--precision', default='fp32', help="open_clip's name: fp32 | amp_bf16 (clipq: fp32 | bf16)")
    ap.add_argument('--device', default='cpu')
    ap.add_argument('--workers', type=int, default=2)
    ap.add_argument('--lr', type=float, default=5e-4)
    ap.add_argument('--size', type=int, default=64, help='image size of the synthetic world (both resize it)')
    ap.add_argument('--dir', default=None, help='working folder (default: a temporary one)')
    ap.add_argument('--oc-data', default='csv', choices=['csv', 'synthetic'],
                    help="open_clip_train's data: the same JPEGs via its csv reader, or its blank synthetic images")
    ap.add_argument('--repeats', type=int, default=1, help='runs of each pair (alternating); median of their medians')
    a = ap.parse_args()
    tmp = Path(a.dir or tempfile.mkdtemp(prefix='bench-train-'))
    cq_prec = {'fp32': 'fp32', 'amp_bf16': 'bf16', 'pure_bf16': 'bf16'}[a.precision]
    load = os.getloadavg()[0] if hasattr(os, 'getloadavg') else float('nan')
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load {load:.1f}; "
          f"device {a.device}, {a.precision}, {a.steps} steps, {a.workers} workers, median after {a.skip} steps, "
          f"{a.repeats} repeat(s); open_clip_train data: {a.oc_data}\n")
    print('| model | batch | open_clip_train samples/s | clipq train samples/s | clipq / open_clip |')
    print('|---|---|---|---|---|')
    for cfg in a.configs:
        model, batch = cfg.split(':'); batch = int(batch)
        w = _world(tmp, n=batch * a.steps + batch, size=a.size)
        table = _csv(w) if a.oc_data == 'csv' else None
        med = lambda r: statistics.median(r[a.skip:] or r)
        oc, cq = [], []
        for _ in range(a.repeats):
            oc.append(med(run_openclip(model, batch, a.steps, a.precision, a.workers, a.lr, a.device, tmp/'oc-logs',
                                       table)))
            cq.append(med(run_clipq(w, model, batch, a.steps, cq_prec, a.workers, a.lr, a.device, tmp/f'cq-{model}')))
        m_oc, m_cq = statistics.median(oc), statistics.median(cq)
        print(f'| {model} | {batch} | {m_oc:.1f} | {m_cq:.1f} | {m_cq / m_oc:.2f}× |', flush=True)
    print(f"\nload average after: {os.getloadavg()[0]:.1f}" if hasattr(os, 'getloadavg') else '')


if __name__ == '__main__':
    main()
