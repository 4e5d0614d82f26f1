"""`clipq reproduce` as a user runs it: a real subprocess, killed with SIGKILL part-way, then run again.

The rerun must keep every run that had finished (its result file untouched), redo at most the run that was in
progress, and finish with the full report; the notebooks `11b_reproduce.plan` … `11d_reproduce` cover the rest.
"""
import json, os, signal, subprocess, sys, time
from pathlib import Path

import pytest

CLIPQ = [str(Path(sys.executable).parent/'clipq')]


def _finished(out: Path) -> dict:
    return {str(p.parent.relative_to(out/'runs')): p.stat().st_mtime_ns for p in (out/'runs').rglob('result.json')}


@pytest.mark.timeout(1500)
def test_sigkill_then_resume(tmp_path):
    out = tmp_path/'r'
    env = dict(os.environ, PYTHONUNBUFFERED='1')
    p = subprocess.Popen([*CLIPQ, 'reproduce', '--scale', 'smoke', '--out', str(out), '--no-progress'], env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 900
    while time.time() < deadline and p.poll() is None and len(_finished(out) if (out/'runs').exists() else {}) < 4:
        time.sleep(0.5)
    assert p.poll() is None, 'the run ended before it could be killed'
    os.killpg(p.pid, signal.SIGKILL); p.wait()
    before = _finished(out)
    assert len(before) >= 4 and not (out/'results'/'README.md').exists()
    r = subprocess.run([*CLIPQ, 'reproduce', '--scale', 'smoke', '--out', str(out), '--no-progress'], env=env,
                       capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    after = _finished(out)
    assert {k: after[k] for k in before} == before, 'finished runs were redone'
    runs = (out/'results'/'runs.csv').read_text().splitlines()
    assert len(runs) - 1 == sum(k.startswith('finetune/') for k in after) > 0
    results = json.loads((out/'results'/'runs.json').read_text())
    assert set(results) == set(after)


@pytest.mark.timeout(1200)
def test_mci_tower(tmp_path):
    """The mobile tower through the whole plan (the `small` scale's second tower, never run on a CPU otherwise): CLIP
    arms, supervised pretraining (no MAE for a convolutional tower), probes of its multi-scale features, fine-tuning."""
    out = tmp_path/'r'
    r = subprocess.run([*CLIPQ, 'reproduce', '--scale', 'smoke', '--towers', 'clipq-tiny-mci', '--fractions', '1',
                        '--seeds', '0', '--out', str(out), '--no-progress'], capture_output=True, text=True, timeout=1100)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    import pandas as pd
    runs, probes = pd.read_csv(out/'results'/'runs.csv'), pd.read_csv(out/'results'/'probes.csv')
    arms = {'clip-quality', 'clip-alt-0.0', 'clip-alt-0.6', 'clip-filtered', 'supervised', 'random'}
    assert set(runs.tower) == {'tiny-mci'} and set(runs.pretrain) == arms and len(runs) == 2 * len(arms)
    assert set(probes.pretrain) == arms and probes.rmse.notna().any() and probes.mIoU.notna().any()
