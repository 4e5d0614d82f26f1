"""Dense fine-tuning tests a notebook cannot host: a run killed with SIGKILL resumes from its last checkpoint, exactly."""
import csv, os, signal, subprocess, sys, time
from pathlib import Path

import pytest
import torch

from clipq.test_utils import tiny_world

# 40 iterations in 10 epochs of 4 batches of 8: 32 samples drawn (without replacement) from the 36 training images
# each epoch, so the resumed run must replay the loader's draw; checkpoints every 3 steps fall inside epochs.
CODE = """
import sys, torch; torch.set_num_threads(1)
from clipq.dense import finetune
finetune('depth', sys.argv[1], 'clipq-tiny-mci', out=sys.argv[2], iters=40, evals=10, save_every=3, progress=False)
"""


def _run(world, out, **kw):
    return subprocess.Popen([sys.executable, '-c', CODE, str(world), str(out)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, 'OMP_NUM_THREADS': '1'}, **kw)


def _losses(out: Path) -> dict:
    with open(out / 'log.csv', newline='') as f: return {int(r['step']): r['loss'] for r in csv.DictReader(f)}


@pytest.mark.timeout(600)
def test_killed_run_resumes(tmp_path):
    world = tiny_world(formats=('wds', 'ade', 'nyu'))
    out = tmp_path / 'run'
    p = _run(world, out)
    deadline = time.time() + 400
    while time.time() < deadline and not list((out / 'checkpoints').glob('step_*.pt')):
        if p.poll() is not None: pytest.fail(f'finetune ended before its first checkpoint:\n{p.stderr.read()[-3000:]}')
        time.sleep(0.2)
    time.sleep(1.0)
    p.send_signal(signal.SIGKILL); p.wait()
    assert not (out / 'metrics.json').exists(), 'the run finished before it could be killed; lower save_every'
    killed_at = max(int(f.stem.split('_')[1]) for f in (out / 'checkpoints').glob('step_*.pt'))
    assert killed_at > 0
    q = _run(world, out)
    _, err = q.communicate(timeout=500)
    assert q.returncode == 0, err[-3000:]
    assert 'resuming from' in err and (out / 'metrics.json').exists() and (out / 'model.pt').exists()
    losses = _losses(out)
    assert list(losses) == list(range(1, 41)), list(losses)   # one row per step, none lost or repeated across the kill
    ref = _run(world, tmp_path / 'ref')                         # the same run, never killed
    _, err = ref.communicate(timeout=500)
    assert ref.returncode == 0, err[-3000:]
    assert losses == _losses(tmp_path / 'ref'), f'killed at step {killed_at}: the resumed run trained on other data'
    a, b = (torch.load(o / 'model.pt', weights_only=True)['state_dict'] for o in (out, tmp_path / 'ref'))
    assert all(torch.equal(a[k], b[k]) for k in a)
