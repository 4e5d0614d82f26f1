"""Pairs/s of the clipq caption scorer (`clipq.scorer.score_shards`, what `clipq score` runs) against a plain loop over
open_clip's `encode_image` / `encode_text` on the same model, the same shards and the same batch size, in one run.

Both score every (image, caption) pair of every sample (K quality captions + the alt-text of the synthetic world),
with CLIPScore's "A photo depicts" prefix, and must agree on the scores (checked). The plain loop decodes with
webdataset in the main process and encodes each batch; clipq decodes/preprocesses/tokenises in DataLoader workers,
encodes each image once per batch, runs the causal text tower on length-sorted chunks cut after their end tokens,
and writes one parquet per shard. Model creation is not timed. "Model busy" is the share of wall time spent in the
model forward (timed around a forward that ends with a device-to-host copy): on a GPU, the share the data pipeline
keeps the GPU fed; well below 100 % means the loader is the bottleneck.

    python benchmarks/bench_scorer.py                      # ViT-B-32 (random init), 128 synthetic images x 6 captions
    python benchmarks/bench_scorer.py --model ViT-B-16 --images 2048 --batch-size 256 --device cuda --workers 8
"""
import argparse, os, platform, shutil, sys, tempfile, time
from pathlib import Path

import numpy as np
import torch


def plain_loop(urls, model, preprocess, tokenizer, batch_size, device, prefix, busy):
    "The baseline: webdataset decode in this process, open_clip encode_image/encode_text per batch, cosine per pair."
    import webdataset as wds
    ds = wds.WebDataset(urls, shardshuffle=False, empty_check=False).decode('pil').to_tuple('__key__', 'jpg', 'json')
    out, batch = [], []
    def flush():
        imgs = torch.stack([preprocess(im) for _, im, _ in batch]).to(device)
        caps = [(i, c) for i, (_, _, j) in enumerate(batch) for c in j['captions']]
        toks = tokenizer([f'{prefix} {c}' for _, c in caps]).to(device)
        t0 = time.perf_counter()
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == 'cuda'):
            fi = model.encode_image(imgs).float()
            ft = model.encode_text(toks).float()
        fi, ft = fi/fi.norm(dim=-1, keepdim=True), ft/ft.norm(dim=-1, keepdim=True)
        owner = torch.tensor([i for i, _ in caps], device=device)
        out.append((fi[owner]*ft).sum(-1).cpu().numpy())
        busy[0] += time.perf_counter() - t0
        batch.clear()
    for s in ds:
        batch.append(s)
        if len(batch) == batch_size: flush()
    if batch: flush()
    return np.concatenate(out)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--model', default='ViT-B-32', help='open_clip model name or config .json (default: %(default)s, random init)')
    p.add_argument('--checkpoint', default=None, help='local weights for the model (optional; speed does not depend on them)')
    p.add_argument('--images', type=int, default=128, help='synthetic images to score (default: %(default)s; 6 captions each)')
    p.add_argument('--size', type=int, default=64, help='synthetic image size in pixels before preprocessing (default: %(default)s)')
    p.add_argument('--shard-size', type=int, default=32, help='images per shard (default: %(default)s)')
    p.add_argument('--batch-size', type=int, default=32, help='images per batch, both methods (default: %(default)s)')
    p.add_argument('--workers', type=int, default=1, help='clipq data-loading workers (default: %(default)s)')
    p.add_argument('--device', default=None, help='torch device (default: cuda if available, else cpu)')
    a = p.parse_args(argv)

    from clipq.synth import write_synth
    from clipq.scorer import Scorer, score_shards, load_scores, CLIPSCORE_PREFIX
    tmp = Path(tempfile.mkdtemp(prefix='bench_scorer-'))
    try:
        write_synth(tmp/'w', n=a.images, size=a.size, shard_size=a.shard_size, val_fraction=0, workers=1, formats=('wds',),
                    progress=False, preview=False)
        urls = sorted(str(u) for u in (tmp/'w/train').glob('*.tar'))
        torch.manual_seed(0)
        scorer = Scorer.from_name(a.model, checkpoint=a.checkpoint, device=a.device)
        dev = scorer.device
        sync = (lambda: torch.cuda.synchronize()) if dev.type == 'cuda' else (lambda: None)

        busy_plain, busy_clipq = [0.0], [0.0]
        sync(); t0 = time.perf_counter()
        cos_plain = plain_loop(urls, scorer.model, scorer.preprocess, scorer.tokenizer, a.batch_size, dev, CLIPSCORE_PREFIX, busy_plain)
        sync(); t_plain = time.perf_counter() - t0

        forward = scorer.forward
        def timed_forward(b):                    # model time (the forward ends with a copy to the CPU, so it is synchronous)
            t = time.perf_counter(); r = forward(b); busy_clipq[0] += time.perf_counter() - t; return r
        scorer.forward = timed_forward
        sync(); t0 = time.perf_counter()
        summary = score_shards(urls, tmp/'scores', scorer, batch_size=a.batch_size, workers=a.workers, progress=False)
        sync(); t_clipq = time.perf_counter() - t0
        cos_clipq = load_scores(tmp/'scores').cosine.to_numpy()

        n = len(cos_plain)
        assert len(cos_clipq) == n == summary['pairs_scored'], (len(cos_clipq), n)
        diff = float(np.abs(cos_clipq - cos_plain).max())
        gpu = torch.cuda.get_device_name(dev) if dev.type == 'cuda' else None
        cpu = f'{platform.processor() or platform.machine()}, {os.cpu_count()} cores, load avg {os.getloadavg()[0]:.1f}'
        print(f'model {a.model} (random init unless --checkpoint), {a.images} images x 6 captions = {n} pairs, '
              f'{a.size}px -> {tuple(scorer.model.visual.image_size)}, batch {a.batch_size}, clipq workers {a.workers}')
        print(f'device: {gpu or "cpu"} ({cpu}), torch {torch.__version__}, {torch.get_num_threads()} threads')
        print(f'max |cos clipq - cos plain| = {diff:.2e}\n')
        print('| method | seconds | pairs/s | ratio | model busy (% of wall time) |')
        print('|---|---:|---:|---:|---:|')
        print(f'| plain open_clip loop (encode_image/encode_text) | {t_plain:.2f} | {n/t_plain:.1f} | 1.00 | {100*busy_plain[0]/t_plain:.0f} |')
        print(f'| clipq score_shards (parquet per shard) | {t_clipq:.2f} | {n/t_clipq:.1f} | {t_plain/t_clipq:.2f} | {100*busy_clipq[0]/t_clipq:.0f} |')
        return 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == '__main__':
    sys.exit(main())
