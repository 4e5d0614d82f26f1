"""Worker processes die with their parent, and a killed run's leftovers are cleaned by the next one (issue 13, item 6).

Each test starts a real parent process, waits until its workers are busy, kills the parent with SIGKILL (no cleanup
code runs) and checks that every worker is gone within a few seconds. Linux only (reads /proc).
"""
import os, signal, subprocess, sys, textwrap, time
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(not Path('/proc/self/stat').exists(), reason='needs Linux /proc')


def _state(pid: int) -> str | None:
    "The process state letter of `pid` (R, S, Z, ...), None when it no longer exists."
    try: return Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError): return None


def _children(pid: int) -> list:
    "Live child processes of `pid`."
    out = []
    for p in Path('/proc').iterdir():
        if not p.name.isdigit(): continue
        try: fields = (p/'stat').read_text().rsplit(')', 1)[1].split()
        except OSError: continue
        if int(fields[1]) == pid and fields[0] not in 'ZX': out.append(int(p.name))
    return out


def _wait(cond, timeout: float, step: float = 0.1):
    "Poll `cond()` until it returns something truthy or `timeout` seconds pass; return its last value."
    end = time.time() + timeout
    while True:
        v = cond()
        if v or time.time() > end: return v
        time.sleep(step)


def _gone(pids) -> bool: return all(_state(p) in (None, 'Z', 'X') for p in pids)


def _kill_parent_check_workers(code: str, n_workers: int, ready=lambda: True, grace: float = 10.0) -> list:
    "Run `code` in a parent process, wait for its `n_workers` children and `ready()`, SIGKILL it; return the workers."
    parent = subprocess.Popen([sys.executable, '-c', textwrap.dedent(code)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    workers = []
    try:
        workers = _wait(lambda: len(c := _children(parent.pid)) >= n_workers and ready() and c, timeout=120)
        assert workers, f'no {n_workers} workers appeared: {parent.poll()} {parent.stderr.read() if parent.poll() is not None else ""}'
        assert parent.poll() is None, 'the job ended before it could be killed'
        parent.send_signal(signal.SIGKILL); parent.wait()
        assert _wait(lambda: _gone(workers), timeout=grace), f'workers {workers} outlived their killed parent'
    finally:
        if parent.poll() is None: parent.kill()
        for w in workers:                                          # never leave a stray process behind a failed test
            try: os.kill(w, signal.SIGKILL)
            except ProcessLookupError: pass
    return workers


def test_synth_pool_dies_with_parent_and_next_run_cleans(tmp_path):
    out = tmp_path/'world'
    code = f'''
        from clipq.synth import write_synth
        write_synth({str(out)!r}, n=200000, size=64, shard_size=200, workers=2, progress=False, preview=False)'''
    tmp_dirs = lambda: list(tmp_path.glob('.world.tmp-*'))
    _kill_parent_check_workers(code, n_workers=2, ready=lambda: any((d/'train').is_dir() for d in tmp_dirs()))
    assert tmp_dirs() and not out.exists()                         # the killed run left its hidden temporary folder
    from clipq.synth import write_synth
    write_synth(out, n=4, size=32, shard_size=2, workers=1, progress=False, preview=False)
    assert tmp_dirs() == [] and (out/'index.parquet').exists()     # ... which the next run on the same folder removed


def test_train_loader_workers_die_with_parent():
    from clipq.test_utils import tiny_world
    world = tiny_world(n=40, size=32, shard_size=10, val_fraction=0)
    # each image takes 3 s to transform: the workers are busy (not idle in torch's own parent check) when killed,
    # and would stay so for 20 s or more without die_with_parent
    code = f'''
        import time, torch
        from clipq.data import train_loader
        def slow(im): time.sleep(3); return torch.zeros(3, 8, 8)
        tok = lambda texts: torch.zeros(len(texts), 4, dtype=torch.long)
        it = iter(train_loader({str(world/'train')!r}, slow, tok, batch_size=4, workers=2, shuffle=0))
        next(it); print('first batch', flush=True)
        time.sleep(600)'''
    _kill_parent_check_workers(code, n_workers=2)
