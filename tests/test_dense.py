"""Dense fine-tuning tests a notebook cannot host: a run killed with SIGKILL resumes from its last checkpoint."""
import os, signal, subprocess, sys, time
from pathlib import Path

import pytest

from clipq.test_utils import tiny_world

CODE = """
import sys, torch; torch.set_num_threads(1)
from clipq.dense import finetune
finetune('depth', sys.argv[1], 'clipq-tiny-mci', out=sys.argv[2], iters=40, evals=2, checkpoint_every=4, quiet=True)
"""


def _run(world, out, **kw):
    return subprocess.Popen([sys.executable, '-c', CODE, str(world), str(out)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, 'OMP_NUM_THREADS': '1'}, **kw)


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
    assert not (out / 'metrics.json').exists(), 'the run finished before it could be killed; lower checkpoint_every'
    killed_at = max(int(f.stem.split('_')[1]) for f in (out / 'checkpoints').glob('step_*.pt'))
    assert killed_at > 0
    q = _run(world, out)
    _, err = q.communicate(timeout=500)
    assert q.returncode == 0, err[-3000:]
    assert 'resuming from' in err and (out / 'metrics.json').exists() and (out / 'model.pt').exists()
    steps = [int(l.split(',')[0]) for l in (out / 'log.csv').read_text().splitlines()[1:]]
    assert steps == list(range(1, 41)), steps      # one row per step, none lost or repeated across the kill
