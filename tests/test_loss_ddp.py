"""Two gloo processes on the CPU: clipq's distributed losses against open_clip's and against one process
holding the whole batch (a notebook cannot host processes that must rendezvous)."""
import importlib, math, os, socket, tempfile
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn
import torch.nn.functional as F

WORLD, N_LOCAL, D, D_IN = 2, 13, 24, 10      # 13 pairs per rank: odd, not a tile/chunk multiple
SCALE, BIAS = 30., -5.


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _batch():
    "The global batch, identical in every process."
    g = torch.Generator().manual_seed(0)
    x = F.normalize(torch.randn(WORLD * N_LOCAL, D, generator=g), dim=-1)
    y = F.normalize(x + torch.randn(WORLD * N_LOCAL, D, generator=g), dim=-1)
    inp = torch.randn(WORLD * N_LOCAL, D_IN, generator=g)
    return x, y, inp


def _model():
    torch.manual_seed(1)
    return nn.Linear(D_IN, 2 * D)


def _run(loss_fn, x, y, log_scale, bias=None):
    "Loss and gradients w.r.t. x, y, log-scale (and bias) on fresh leaves."
    leaves = [t.detach().clone().requires_grad_() for t in (x, y, log_scale) + ((bias,) if bias is not None else ())]
    args = leaves[:2] + [leaves[2].exp()] + leaves[3:]
    loss = loss_fn(*args)
    loss.backward()
    return [loss.detach()] + [t.grad for t in leaves]


def _features(model, inp):
    out = model(inp)
    return F.normalize(out[:, :D], dim=-1), F.normalize(out[:, D:], dim=-1)


def _worker(rank, port, outdir):
    # the fused Triton kernels run on these CPU tensors through Triton's interpreter (chosen per launch: no
    # TRITON_INTERPRET needed, and triton may be imported before clipq's kernels)
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    importlib.import_module('triton')
    torch.set_num_threads(1)
    dist.init_process_group('gloo', rank=rank, world_size=WORLD)
    import open_clip.loss as ocl
    from clipq.loss import ClipLoss, SigLipLoss, distributed_contrastive_loss
    x, y, inp = _batch()
    sl = slice(rank * N_LOCAL, (rank + 1) * N_LOCAL)
    xl, yl = x[sl], y[sl]
    ls, lb = torch.tensor(math.log(SCALE)), torch.tensor(BIAS)
    res = {}
    for local in (False, True):
        for gwg in (False, True):
            kw = dict(local_loss=local, gather_with_grad=gwg, rank=rank, world_size=WORLD)
            res['open_clip', local, gwg] = _run(ocl.ClipLoss(**kw), xl, yl, ls)
            for impl in ('reference', 'chunked', 'fused'):
                res['clipq', impl, local, gwg] = _run(ClipLoss(impl=impl, chunk_size=4, **kw), xl, yl, ls)
    res['functional'] = _run(lambda a, b, s: distributed_contrastive_loss(a, b, s, impl='chunked', chunk_size=5), xl, yl, ls)
    res['siglip_open_clip'] = _run(ocl.SigLipLoss(rank=rank, world_size=WORLD), xl, yl, ls, lb)
    for impl in ('reference', 'chunked', 'fused'):
        res['siglip', impl] = _run(SigLipLoss(rank=rank, world_size=WORLD, impl=impl, chunk_size=4), xl, yl, ls, lb)
    # a DDP-wrapped model trained on the local half: its averaged gradients are the whole-batch gradients
    ddp = nn.parallel.DistributedDataParallel(_model())
    loss_fn = ClipLoss(local_loss=True, gather_with_grad=True, rank=rank, world_size=WORLD, impl='chunked')
    loss = loss_fn(*_features(ddp, inp[sl]), SCALE)
    loss.backward()
    res['ddp'] = [loss.detach()] + [p.grad.clone() for p in ddp.parameters()]
    torch.save(res, Path(outdir) / f'rank{rank}.pt')
    dist.barrier()
    dist.destroy_process_group()


@pytest.fixture(scope='module')
def results():
    with tempfile.TemporaryDirectory() as d:
        mp.spawn(_worker, args=(_free_port(), d), nprocs=WORLD, join=True)
        yield [torch.load(Path(d) / f'rank{r}.pt', weights_only=True) for r in range(WORLD)]


def _close(got, want, rel=1e-5, floor=1.0):
    for g, w in zip(got, want):
        err = (g.double() - w.double()).abs().max().item()
        assert err <= rel * max(w.abs().max().item(), floor), f'max abs err {err:.3g}'


@pytest.mark.parametrize('local', [False, True])
@pytest.mark.parametrize('gwg', [False, True])
@pytest.mark.parametrize('impl', ['reference', 'chunked', 'fused'])
def test_matches_open_clip_on_each_rank(results, local, gwg, impl):
    for r in range(WORLD):
        _close(results[r]['clipq', impl, local, gwg], results[r]['open_clip', local, gwg])


def test_equals_single_process(results):
    "local_loss + gather_with_grad: rank losses average to the whole-batch loss, rank gradients / W equal its gradients."
    from clipq.loss import contrastive_loss
    x, y, _ = _batch()
    single = _run(lambda a, b, s: contrastive_loss(a, b, s, impl='reference'), x, y, torch.tensor(math.log(SCALE)))
    for key in [('clipq', impl, True, True) for impl in ('reference', 'chunked', 'fused')] + ['functional']:
        ranks = [results[r][key] for r in range(WORLD)]
        _close([sum(rk[0] for rk in ranks) / WORLD], [single[0]])
        _close([torch.cat([rk[1] for rk in ranks]) / WORLD, torch.cat([rk[2] for rk in ranks]) / WORLD], single[1:3], floor=SCALE / len(x))
        _close([sum(rk[3] for rk in ranks) / WORLD], [single[3]])
    # without local_loss every rank computes the whole loss
    for r in range(WORLD): _close(results[r]['clipq', 'chunked', False, True][:1], single[:1])


def test_siglip_matches_open_clip(results):
    for r in range(WORLD):
        for impl in ('reference', 'chunked', 'fused'):
            _close(results[r]['siglip', impl], results[r]['siglip_open_clip'], floor=SCALE / N_LOCAL)


def test_ddp_gradients_equal_single_process(results):
    from clipq.loss import contrastive_loss
    _, _, inp = _batch()
    model = _model()
    loss = contrastive_loss(*_features(model, inp), SCALE, impl='reference')
    loss.backward()
    _close([sum(results[r]['ddp'][0] for r in range(WORLD)) / WORLD], [loss.detach()])
    for r in range(WORLD):                                   # DDP leaves the same averaged gradients on every rank
        _close(results[r]['ddp'][1:], [p.grad for p in model.parameters()])
