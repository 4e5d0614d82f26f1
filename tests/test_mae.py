"""A pretraining killed with SIGKILL resumes exactly (what a notebook cannot host): the baselines of `clipq.mae`
checkpoint through `clipq.callbacks.Checkpoint`; a process killed mid-run and restarted ends with the same encoder
as an uninterrupted run."""
import os, signal, subprocess, sys, textwrap, time

import pytest
import torch

from clipq.callbacks import list_checkpoints
from clipq.models import read_state_dict
from clipq.test_utils import tiny_world

ARGS = dict(images_seen=120, batch_size=12, seed=0, device='cpu', save_every=2)   # 10 steps


def _script(fn: str, world, out) -> str:
    return textwrap.dedent(f"""
        import logging, warnings; warnings.simplefilter('ignore')
        from clipq.mae import {fn}
        {fn}({str(world)!r}, {str(out)!r}, backbone={'clipq-tiny-mci' if fn == 'pretrain_supervised' else 'clipq-tiny-vit'!r},
             **{ARGS!r})
    """)


@pytest.mark.parametrize('fn', ['pretrain_mae', 'pretrain_supervised'])
def test_sigkill_resume(fn, tmp_path):
    import clipq.mae as mae
    world = tiny_world(n=48, size=32)
    backbone = 'clipq-tiny-mci' if fn == 'pretrain_supervised' else 'clipq-tiny-vit'
    ref = getattr(mae, fn)(world, tmp_path/'ref', backbone=backbone, **ARGS)

    out = tmp_path/'killed'
    p = subprocess.Popen([sys.executable, '-c', _script(fn, world, out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        t0 = time.time()
        while time.time() - t0 < 300:                                  # kill once a mid-run checkpoint exists
            cks = list_checkpoints(out/'checkpoints')
            if cks and int(cks[-1].stem.split('_')[1]) >= 4: break
            assert p.poll() is None, f"the run ended before it could be killed: {p.stderr.read().decode()[-2000:]}"
            time.sleep(0.02)
        os.kill(p.pid, signal.SIGKILL)
    finally:
        p.wait()
    assert p.returncode == -signal.SIGKILL
    assert not (out/'encoder.safetensors').exists(), "killed after the end: the test saw no interrupted run"
    step = int(list_checkpoints(out/'checkpoints')[-1].stem.split('_')[1])
    assert 4 <= step < 10

    got = getattr(mae, fn)(world, out, backbone=backbone, **ARGS)   # resumes from the newest checkpoint
    a, b = read_state_dict(ref), read_state_dict(got)
    assert sorted(a) == sorted(b)
    assert all(torch.equal(a[k], b[k]) for k in a), f"{fn}: resumed encoder differs from the uninterrupted run"
    import pandas as pd
    log = pd.read_csv(out/'log.csv')
    assert log['step'].tolist() == list(range(1, 11))                 # one row per step, no duplicates from the replay
