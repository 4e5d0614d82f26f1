"""Run every notebook in `nbs/` as a test (the notebooks are clipq's test suite).

One pytest test per notebook, each in its own `nbdev_test` process with a time limit (nbdev 2 has no
per-cell timeout). Extra test flags (e.g. `cuda`, `slow`) come from `$CLIPQ_TEST_FLAGS`.
"""
import os, subprocess, sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted(p for p in (ROOT/'nbs').glob('*.ipynb') if not p.name.startswith(('_', '.')))
TIMEOUT_S = {           # per-notebook overrides, seconds: the heaviest notebooks (a few minutes on a quiet 2-core CPU)
    '04c_loss.triton_build': 900, '05c_models.transfer': 900, '07e_train': 900, '07f_train_tiny': 1200, '08e_dense': 900,
    '09c_mae': 1200, '11d_reproduce': 1200}
DEFAULT_TIMEOUT_S = 600


@pytest.mark.parametrize('nb', NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook(nb):
    nbdev_test = Path(sys.executable).parent/'nbdev_test'
    cmd = [str(nbdev_test), '--path', str(nb), '--flags', os.environ.get('CLIPQ_TEST_FLAGS', '')]
    limit = TIMEOUT_S.get(nb.stem, DEFAULT_TIMEOUT_S)
    try:
        r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=limit)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f'{nb.name} did not finish within {limit}s\n{(e.stderr or b"")[-4000:]!r}')
    assert r.returncode == 0, f'{nb.name} failed:\n{r.stdout[-4000:]}\n{r.stderr[-8000:]}'


def test_plain_nbdev_test_shares_a_process():
    """Plain `nbdev_test` runs notebooks one after another in a shared process: a notebook that imports triton (through
    clipq.scorer/clipq.models) must not break the loss notebooks' Triton interpreter runs that follow it (issue 13)."""
    nbdev_test = Path(sys.executable).parent/'nbdev_test'
    cmd = [str(nbdev_test), '--n_workers', '0', '--path', 'nbs', '--file_re', r'^(03a_scorer|04a_loss|04b_loss\.triton)\.ipynb$']
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=DEFAULT_TIMEOUT_S)
    assert r.returncode == 0, f'{r.stdout[-4000:]}\n{r.stderr[-8000:]}'
