"""End-to-end checks of the installed `clipq` command (what a user types after the README's install)."""
import json, subprocess, sys
from pathlib import Path

import pytest

CLIPQ = Path(sys.executable).parent/'clipq'


def run(*args, **kw):
    return subprocess.run([str(CLIPQ), *args], capture_output=True, text=True, timeout=300, **kw)


def test_help_explains_every_command():
    r = run('--help')
    assert r.returncode == 0 and 'synth' in r.stdout
    r = run('synth', '--help')
    assert r.returncode == 0
    for opt in ('--out', '--n', '--seed', '--size', '--overwrite', '--formats', '--workers'): assert opt in r.stdout
    assert 'ADE20k' in r.stdout and 'NYUv2' in r.stdout


def test_synth_end_to_end(tmp_path):
    out = tmp_path/'w'
    r = run('synth', '--out', str(out), '-n', '30', '--size', '32', '--shard-size', '10', '--no-progress')
    assert r.returncode == 0, r.stderr
    assert 'wrote 27 train + 3 val scenes' in r.stdout
    meta = json.loads((out/'meta.json').read_text())
    assert meta['shards'] == {'train': ['shard-000000.tar', 'shard-000001.tar', 'shard-000002.tar'], 'val': ['shard-000000.tar']}
    assert (out/'preview.png').exists() and (out/'index.parquet').exists()
    # an existing output is kept unless --overwrite, and the error says how to proceed
    r = run('synth', '--out', str(out), '-n', '5', '--no-progress')
    assert r.returncode == 2 and '--overwrite' in r.stderr and 'Traceback' not in r.stderr
    assert json.loads((out/'meta.json').read_text())['counts'] == {'train': 27, 'val': 3}


@pytest.mark.parametrize('args,msg', [(['-n', '0'], 'positive'), (['--size', '8'], 'size'),
                                      (['--val-fraction', '1.5'], 'val_fraction'), (['--formats', 'coco'], 'unknown formats'),
                                      (['--workers', '-1'], 'workers must be at least 1'),
                                      (['--size', '100000', '-n', '1'], 'size 100000 needs about')])
def test_synth_bad_arguments_leave_nothing(tmp_path, args, msg):
    r = run('synth', '--out', str(tmp_path/'o'), *args, '--no-progress')
    assert r.returncode == 2 and msg in r.stderr and 'Traceback' not in r.stderr, r.stderr
    assert list(tmp_path.iterdir()) == []


def test_synth_refuses_read_only_folder(tmp_path):
    out = tmp_path/'ro'; out.mkdir(mode=0o555)                    # empty, but made read-only: refused, not replaced
    r = run('synth', '--out', str(out), '-n', '5', '--size', '32', '--no-progress')
    assert r.returncode == 2 and 'read-only' in r.stderr and 'Traceback' not in r.stderr, r.stderr
    assert out.is_dir() and list(out.iterdir()) == [] and (out.stat().st_mode & 0o777) == 0o555


def test_synth_output_follows_umask(tmp_path):
    r = subprocess.run(f'umask 022 && exec {CLIPQ} synth --out {tmp_path/"w"} -n 4 --size 32 --no-progress', shell=True,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert (tmp_path/'w').stat().st_mode & 0o777 == 0o755         # not mkdtemp's 0o700


def test_killed_synth_leaves_no_output(tmp_path):
    import signal, time
    out = tmp_path/'w'
    p = subprocess.Popen([str(CLIPQ), 'synth', '--out', str(out), '-n', '200000', '--workers', '2', '--shard-size', '1000', '--no-progress'],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(3)
    p.send_signal(signal.SIGTERM); p.wait(timeout=60)
    assert p.returncode == 128 + signal.SIGTERM
    assert list(tmp_path.iterdir()) == []  # no half-written output, no temporary left behind
