"""The fused Triton kernels without a GPU.

* Build check: every kernel variant clipq can launch, compiled for sm_80 and sm_90a at every tile config it can
  autotune over, for bf16, fp16 and fp32 features; the ptxas shipped in the triton wheel must report 0 bytes of
  spill stores (notebook 04c compiles a representative subset).
* Import order: the interpreter is chosen per launch, so the fused loss runs on CPU tensors whether triton was
  imported before or after TRITON_INTERPRET was set, or the variable never set (issue 13, item 11: `nbdev_test`
  over all notebooks in one process).
"""
import subprocess, sys, textwrap

import pytest
import torch

from clipq.triton_build import build_kernel, build_matrix, ptxas_path

MATRIX = build_matrix()
_DT = {torch.bfloat16: 'bf16', torch.float16: 'fp16', torch.float32: 'fp32'}


def _id(case):
    k, dt, cfg, cc, consts = case
    flags = ''.join(f'-{n}{int(v)}' for n, v in consts.items())
    tiles = 'x'.join(str(cfg[n]) for n in ('BM', 'BN', 'BK', 'BD') if n in cfg)
    return f"{k.__name__}{flags}-{_DT[dt]}-sm{cc[0]}{cc[1]}-{tiles}-w{cfg['num_warps']}s{cfg['num_stages']}"


def test_matrix_covers_every_kernel_dtype_and_target():
    names = {k.__name__ for k, *_ in MATRIX}
    assert names == {'lse2_fwd', 'lse2_bwd', 'softplus_fwd', 'softplus_bwd'}
    assert {dt for _, dt, *_ in MATRIX} == set(_DT) and {cc for *_, cc, _ in MATRIX} == {(8, 0), (9, 0)}
    assert len(MATRIX) >= 84


@pytest.mark.skipif(ptxas_path() is None, reason='this triton wheel ships no ptxas: cannot check register spills')
@pytest.mark.parametrize('case', MATRIX, ids=_id)
def test_compiles_without_spills(case):
    k, dt, cfg, cc, consts = case
    r = build_kernel(k, dt, cfg, cc, **consts)
    assert r['regs'] > 0, r                                   # ptxas really reported on this kernel
    assert r['spill_stores'] == 0 and r['spill_loads'] == 0, r


_RUN = '''
import torch, open_clip.loss as ocl
from clipq.loss import ClipLoss, SigLipLoss
from clipq.test_utils import feature_pair
x, y = feature_pair(37, 20, seed=1)
for mine, theirs, extra in ((ClipLoss(impl='fused'), ocl.ClipLoss(), ()), (SigLipLoss(impl='fused'), ocl.SigLipLoss(), (-4.,))):
    a, b = x.clone().requires_grad_(), y.clone().requires_grad_()
    got = mine(a, b, 20., *extra); got.backward()
    c, d = x.clone().requires_grad_(), y.clone().requires_grad_()
    want = theirs(c, d, 20., *extra); want.backward()
    assert abs(got.item() - want.item()) < 1e-4 * abs(want.item()), (got, want)
    assert (a.grad - c.grad).abs().max() < 1e-5 and (b.grad - d.grad).abs().max() < 1e-5
print('ok')
'''


@pytest.mark.parametrize('order', ['triton imported first, no TRITON_INTERPRET',
                                   'triton imported first, TRITON_INTERPRET set afterwards',
                                   'TRITON_INTERPRET=1 before triton is imported'])
def test_fused_on_cpu_whatever_the_import_order(order):
    pre = {'triton imported first, no TRITON_INTERPRET': 'import triton, clipq.triton_loss\n',
           'triton imported first, TRITON_INTERPRET set afterwards':
               'import os, triton, clipq.triton_loss\nos.environ["TRITON_INTERPRET"] = "1"\n',
           'TRITON_INTERPRET=1 before triton is imported': 'import os\nos.environ["TRITON_INTERPRET"] = "1"\nimport triton\n'}[order]
    r = subprocess.run([sys.executable, '-c', pre + textwrap.dedent(_RUN)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and r.stdout.strip().endswith('ok'), r.stderr[-3000:]


def test_compile_after_interpreted_launches():
    "Interpreted launches leave Triton's language untouched: a kernel still compiles afterwards in the same process."
    if ptxas_path() is None: pytest.skip('no ptxas in this triton wheel')
    from clipq.loss import contrastive_loss
    from clipq.test_utils import feature_pair
    from clipq.triton_build import tile_configs
    from clipq.triton_loss import lse2_fwd
    contrastive_loss(*feature_pair(9, 8), 10., impl='fused')
    r = build_kernel(lse2_fwd, torch.bfloat16, tile_configs('fwd', torch.bfloat16, (9, 0))[0], (9, 0), WITH_COL=True)
    assert r['spill_stores'] == 0 and r['regs'] > 0
