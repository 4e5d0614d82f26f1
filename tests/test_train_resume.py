"A training process killed with SIGKILL and resumed with `--resume latest` continues exactly as the uninterrupted run."
import signal, subprocess, sys, textwrap

import pytest

RUN = textwrap.dedent('''
    import os, signal, sys, warnings; warnings.filterwarnings('ignore')
    from clipq.train import train_clip, CSVLog
    world, out, kill_at, resume = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] or None
    if kill_at:                                   # die like a preempted job: right after logging step `kill_at`
        orig = CSVLog.after_batch
        def after_batch(self):
            orig(self)
            if self.training and self.train_iter == kill_at: os.kill(os.getpid(), signal.SIGKILL)
        CSVLog.after_batch = after_batch
    sys.exit(train_clip(world, batch_size=8, steps=8, warmup=2, lr=1e-3, workers=2, out=out, save_every=2,
                        resume=resume, log_every=0))
''')


def _run(*args):
    return subprocess.run([sys.executable, '-c', RUN, *map(str, args)], capture_output=True, text=True, timeout=600)


@pytest.fixture(scope='module')
def world(tmp_path_factory):
    from clipq.synth import write_synth
    w = tmp_path_factory.mktemp('w')/'world'
    write_synth(w, n=40, size=32, shard_size=12, val_fraction=0.25, workers=1, formats=('wds',), progress=False, preview=False)
    return w


def test_sigkill_then_resume_is_exact(world, tmp_path):
    import pandas as pd
    from safetensors.torch import load_file
    full = _run(world, tmp_path/'full', 0, '')
    assert full.returncode == 0, full.stderr[-3000:]
    killed = _run(world, tmp_path/'killed', 5, '')
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    ck = sorted(p.name for p in (tmp_path/'killed'/'checkpoints').iterdir())
    assert ck == ['step_00000002.pt', 'step_00000004.pt'], ck               # step 5 was logged but never checkpointed
    assert len(pd.read_csv(tmp_path/'killed'/'log.csv')) == 5
    resumed = _run(world, tmp_path/'killed', 0, 'latest')
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = pd.read_csv(tmp_path/'full'/'log.csv'), pd.read_csv(tmp_path/'killed'/'log.csv')
    assert list(b.step) == list(range(1, 9))                                  # the killed run's step-5 row was replaced
    assert list(a.loss) == list(b.loss)                                       # bit-identical loss curve
    sa, sb = load_file(tmp_path/'full'/'model.safetensors'), load_file(tmp_path/'killed'/'model.safetensors')
    assert sa.keys() == sb.keys() and all((sa[k] == sb[k]).all() for k in sa)
