"""Two gloo processes training on halves of each batch reach the parameters of one process trained on whole batches.

Plain SGD: AdamW divides each coordinate's step by its gradient's magnitude, so coordinates whose gradient is zero in exact
arithmetic (attention key biases: softmax is shift-invariant) move by ±lr on rounding noise, in any two runs that sum in a
different order; SGD shows the gradients themselves are the same, AdamW is a deterministic function of them."""
import os, tempfile, warnings

import pytest
import torch
import torch.multiprocessing as mp

STEPS, B, K = 3, 8, 2          # steps, global batch, captions per image


def _data():
    from clipq.test_utils import tiny_clip
    _, _, tok = tiny_clip()
    g = torch.Generator().manual_seed(0)
    words = ['red', 'blue', 'green', 'white', 'black', 'yellow']
    shapes = ['disk', 'star', 'ring', 'heart', 'cross', 'square', 'hexagon', 'diamond']
    out = []
    for s in range(STEPS):
        caps = [[f'a {words[(i + s + j) % 6]} {shapes[(i * 3 + j) % 8]}' for j in range(K)] for i in range(B)]
        toks = tok([c for cs in caps for c in cs]).view(B, K, -1)
        out.append((torch.randn(B, 3, 64, 64, generator=g), toks))
    return out


def _train(batches, accum: int) -> dict:
    import fastai.callback.progress  # noqa: F401  (patches Learner.no_bar)
    from clipq.test_utils import tiny_clip
    from fastai.optimizer import SGD
    from clipq.train import clip_learner
    model = tiny_clip(seed=0)[0]
    learn = clip_learner(model, batches, None, lr=0.5, wd=0., warmup=1, accum=accum, precision='fp32', opt_func=SGD)
    with learn.no_bar(), learn.no_logging(): learn.fit(1)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _worker(rank: int, ws: int, init: str, out: str):
    import torch.distributed as dist
    warnings.filterwarnings('ignore')
    torch.set_num_threads(1)
    dist.init_process_group('gloo', init_method=f'file://{init}', rank=rank, world_size=ws)
    try:
        n = B // ws
        local = [(x[rank * n:(rank + 1) * n], t[rank * n:(rank + 1) * n]) for x, t in _data()]
        sd = _train(local, accum=2)                            # GradCache inside each process too
        if rank == 0: torch.save(sd, out)
    finally: dist.destroy_process_group()


@pytest.mark.timeout(600)
def test_two_gloo_processes_equal_one():
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, 'ddp.pt')
        mp.spawn(_worker, args=(2, os.path.join(d, 'init'), out), nprocs=2, join=True)
        ddp = torch.load(out, weights_only=True)
    single = _train(_data(), accum=1)
    diffs = {k: (ddp[k] - single[k]).abs().max().item() for k in single}
    worst = max(diffs, key=diffs.get)
    assert diffs[worst] < 1e-5, (worst, diffs[worst])
    from clipq.test_utils import tiny_clip
    start = tiny_clip(seed=0)[0].state_dict()
    assert max((single[k] - start[k]).abs().max().item() for k in single) > 1e-4   # the weights did move
