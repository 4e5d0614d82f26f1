"""Randomised cross-checks of clipq's dense metrics against independent NumPy references (the notebook
`08a_dense_metrics` holds the hand-built adversarial cases; here many random ones, still fast)."""
import numpy as np
import pytest
import torch

from clipq.dense_metrics import seg_metrics, SegMetric, depth_metrics, DepthMetric, DEPTH_KEYS


def ref_seg(preds, gts, C, ignore=255):
    I, P, L = np.zeros(C), np.zeros(C), np.zeros(C)
    for p, g in zip(preds, gts):
        keep = g != ignore
        for c in range(C):
            I[c] += np.sum((p == c) & (g == c) & keep); P[c] += np.sum((p == c) & keep); L[c] += np.sum((g == c) & keep)
    with np.errstate(all='ignore'): iou, acc = I / (P + L - I), I / L
    return dict(mIoU=np.nanmean(iou), mAcc=np.nanmean(acc), aAcc=I.sum() / L.sum(), IoU=iou, Acc=acc)


@pytest.mark.parametrize('seed', range(40))
def test_seg_random(seed):
    rng = np.random.default_rng(seed)
    C = int(rng.integers(2, 8))
    n = int(rng.integers(1, 5))
    shapes = [tuple(rng.integers(1, 12, 2)) for _ in range(n)]
    preds = [rng.integers(-1, C + 2, s) for s in shapes]            # some out-of-range predictions
    gts = [np.where(rng.random(s) < rng.random(), 255, rng.integers(0, max(1, C - 2), s)) for s in shapes]  # top classes absent
    if not any((g != 255).any() for g in gts): gts[0].flat[0] = 0
    m, r = seg_metrics(preds, gts, C), ref_seg(preds, gts, C)
    for k in ('mIoU', 'mAcc', 'aAcc'): np.testing.assert_allclose(m[k], r[k], rtol=1e-12)
    np.testing.assert_allclose(m['IoU'], r['IoU'], rtol=1e-12)   # NaN positions must agree too
    np.testing.assert_allclose(m['Acc'], r['Acc'], rtol=1e-12)
    acc = SegMetric(C)
    for p, g in zip(preds, gts): acc.update([torch.tensor(p)], [torch.tensor(g)])
    np.testing.assert_allclose(acc.compute()['mIoU'], r['mIoU'], rtol=1e-12)


def ref_depth(preds, gts, lo=1e-3, hi=10.0):
    errs = []
    for p, g in zip(preds, gts):
        p = np.array(p, np.float64)
        p[p < lo] = lo; p[p > hi] = hi; p[np.isinf(p)] = hi; p[np.isnan(p)] = lo
        valid = (g > lo) & (g < hi)
        if g.shape == (480, 640):
            em = np.zeros(valid.shape, bool); em[45:471, 41:601] = True; valid &= em
        if not valid.any(): continue
        gg, pp = g[valid], p[valid]
        th = np.maximum(gg / pp, pp / gg); e = np.log(pp) - np.log(gg)
        errs.append([(th < 1.25).mean(), (th < 1.25**2).mean(), (th < 1.25**3).mean(), np.mean(np.abs(gg - pp) / gg),
                     np.mean((gg - pp)**2 / gg), np.sqrt(((gg - pp)**2).mean()), np.sqrt((e**2).mean()),
                     np.mean(np.abs(np.log10(pp) - np.log10(gg))), np.sqrt(np.mean(e**2) - np.mean(e)**2) * 100])
    return dict(zip(DEPTH_KEYS, np.mean(errs, 0))), len(errs)


@pytest.mark.parametrize('seed', range(25))
def test_depth_random(seed):
    rng = np.random.default_rng(100 + seed)
    shapes = [tuple(rng.integers(1, 20, 2)) for _ in range(int(rng.integers(1, 4)))]
    if seed % 5 == 0: shapes.append((480, 640))
    gts = [np.where(rng.random(s) < .3, 0.0, rng.uniform(0, 12, s)) for s in shapes]
    preds = [rng.uniform(-2, 14, s) for s in shapes]
    preds[0].flat[:3] = [np.nan, np.inf, -np.inf][:preds[0].size]
    gts[0].flat[0] = 5.0
    m = depth_metrics(preds, gts)
    r, n = ref_depth(preds, gts)
    assert m['n_images'] == n and m['n_skipped'] == len(gts) - n
    for k in DEPTH_KEYS: np.testing.assert_allclose(m[k], r[k], rtol=1e-10)
    acc = DepthMetric()
    for p, g in zip(preds, gts): acc.update([torch.tensor(p)], [torch.tensor(g)])
    for k in DEPTH_KEYS: np.testing.assert_allclose(acc.compute()[k], r[k], rtol=1e-6)   # float32 tensors
