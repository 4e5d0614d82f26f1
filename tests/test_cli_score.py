"""End-to-end checks of `clipq score` and `clipq filter` as a user runs them: the installed command in a fresh
process, a local checkpoint, interruption (SIGTERM, then SIGKILL) and resume, offline errors, and selection."""
import json, os, signal, subprocess, sys, time
from pathlib import Path

import pandas as pd
import pytest

CLIPQ = Path(sys.executable).parent/'clipq'
N_SHARDS = 24
TINY = {'embed_dim': 32, 'vision_cfg': {'image_size': 32, 'layers': 2, 'width': 64, 'head_width': 32, 'patch_size': 8},
        'text_cfg': {'context_length': 77, 'vocab_size': 49408, 'width': 32, 'heads': 2, 'layers': 1}}


def run(*args, env=None, **kw):
    return subprocess.run([str(CLIPQ), *map(str, args)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})}, **kw)


@pytest.fixture(scope='module')
def world(tmp_path_factory):
    "A synthetic world in 24 small shards, a tiny model config and a checkpoint of it (seeded random weights)."
    import torch
    from clipq.synth import write_synth
    from clipq.models import load_clip
    d = tmp_path_factory.mktemp('score')
    write_synth(d/'w', n=4*N_SHARDS, size=32, shard_size=4, val_fraction=0, workers=1, formats=('wds',), progress=False, preview=False)
    (d/'tiny.json').write_text(json.dumps(TINY))
    model, _, _ = load_clip(d/'tiny.json', seed=0)
    torch.save({'state_dict': model.state_dict()}, d/'tiny.pt')
    r = run('score', d/'w/train', '--model', d/'tiny.json', '--checkpoint', d/'tiny.pt', '--out', d/'ref',
            '--workers', '0', '--batch-size', '3', '--no-progress')
    assert r.returncode == 0, r.stderr
    return d


def scores(folder):
    return {p.name: pd.read_parquet(p) for p in sorted(Path(folder).glob('*.parquet'))}


def test_help():
    r = run('score', '--help')
    assert r.returncode == 0
    for opt in ('--model', '--pretrained', '--checkpoint', '--out', '--batch-size', '--prefix', '--references', '--overwrite'): assert opt in r.stdout
    assert 'resumes' in r.stdout and 'CLIPScore' in r.stdout
    r = run('filter', '--help')
    assert r.returncode == 0
    for opt in ('--threshold', '--top-percent', '--best-of-k', '--sources', '--shards-out'): assert opt in r.stdout


def test_score_output_matches_the_api(world):
    "The command's rows equal the library's, computed on the same checkpoint."
    from clipq.scorer import Scorer
    from clipq.data import read_wds
    ref = scores(world/'ref')
    assert len(ref) == N_SHARDS
    sc = Scorer.from_name(str(world/'tiny.json'), checkpoint=world/'tiny.pt')
    df = sc.score_samples(read_wds(world/'w/train/shard-000005.tar'), batch_size=3)
    got = next(v for k, v in ref.items() if k.startswith('shard-000005-'))
    assert list(got.columns) == ['key', 'caption_idx', 'source', 'cosine', 'clipscore']
    assert (got.key.values == df.key.values).all() and (got.caption_idx.values == df.caption_idx.values).all()
    assert abs(got.cosine.values - df.cosine.values).max() < 1e-5
    summary = json.loads((world/'ref/summary.json').read_text())           # the folder, merged from its runs
    assert summary['pairs'] == 4*N_SHARDS*6 and summary['bad_samples']['problems'] == {}
    assert summary['captions_truncated'] == 0 and summary['score_files'] == N_SHARDS
    assert summary['runs'][0]['model']['checkpoint'] == str((world/'tiny.pt').resolve())
    assert summary['settings']['weights'] == json.loads((world/'ref/settings.json').read_text())['weights']


def _children(pid):
    "Child process ids of `pid` (Linux /proc)."
    kids = []
    for t in Path(f'/proc/{pid}/task').glob('*'):
        try: kids += [int(c) for c in (t/'children').read_text().split()]
        except OSError: pass
    return kids


def _running(pid):
    "Is `pid` a live process (zombies waiting to be reaped count as gone)?"
    try: return Path(f'/proc/{pid}/stat').read_text().rsplit(') ', 1)[1][0] != 'Z'
    except (OSError, IndexError): return False


def _interrupt(cmd, out, sig, at_least):
    "Start `cmd`, wait until `out` holds `at_least` score files, send `sig`; return (returncode, files then, orphans)."
    p = subprocess.Popen([str(CLIPQ), *map(str, cmd)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    t0 = time.time()
    while len(list(Path(out).glob('*.parquet'))) < at_least:
        if p.poll() is not None: pytest.fail(f'run ended before it could be interrupted: {p.stderr.read()[-2000:]}')
        if time.time() - t0 > 240: p.kill(); pytest.fail('no score file appeared within 240 s')
        time.sleep(0.01)
    kids = _children(p.pid)                                              # the DataLoader workers
    p.send_signal(sig)
    p.communicate(timeout=120)
    t0 = time.time()
    while any(map(_running, kids)) and time.time() - t0 < 30: time.sleep(0.1)
    return p.returncode, len(list(Path(out).glob('*.parquet'))), [k for k in kids if _running(k)]


def test_interrupted_runs_resume_to_exactly_the_same_rows(world):
    out = world/'resumed'
    cmd = ['score', world/'w/train/shard-{000000..000023}.tar', '--model', world/'tiny.json', '--checkpoint', world/'tiny.pt',
           '--out', out, '--workers', '2', '--batch-size', '3', '--no-progress']
    rc, n1, orphans = _interrupt(cmd, out, signal.SIGTERM, 1)
    assert rc == 128 + signal.SIGTERM and 1 <= n1 < N_SHARDS
    assert not [p for p in out.iterdir() if '.tmp-' in p.name]          # SIGTERM unwinds: no temporary files left
    assert not orphans
    rc, n2, orphans = _interrupt(cmd, out, signal.SIGKILL, n1 + 1)
    assert rc == -signal.SIGKILL and n1 < n2 < N_SHARDS
    assert not orphans, f'data-loading workers {orphans} outlived their SIGKILLed parent'
    assert list((out/'.claims').glob('*.claim'))                         # the killed run's claims stay: taken over below
    r = run(*cmd)
    assert r.returncode == 0, r.stderr
    assert f'({n2} already complete' in r.stdout and f'of {N_SHARDS}:' in r.stdout, r.stdout
    got, ref = scores(out), scores(world/'ref')
    assert list(got) == list(ref)
    for name in ref: pd.testing.assert_frame_equal(got[name], ref[name], check_exact=True)
    r = run(*cmd)                                                        # nothing left to do
    assert r.returncode == 0 and f'scored 0 shards ({N_SHARDS} already complete' in r.stdout


def test_weights_errors_are_one_line(world, tmp_path):
    env = {'HF_HUB_OFFLINE': '1', 'HF_HOME': str(tmp_path/'hf'), 'XDG_CACHE_HOME': str(tmp_path/'cache')}
    r = run('score', world/'w/train', '--model', 'ViT-B-32', '--pretrained', 'openai', '--out', tmp_path/'o', env=env)
    assert r.returncode == 2 and 'could not obtain weights' in r.stderr and '--checkpoint' in r.stderr, r.stderr
    assert 'Traceback' not in r.stderr
    r = run('score', world/'w/train', '--model', 'ViT-B-32', '--checkpoint', world/'tiny.pt', '--out', tmp_path/'o')
    assert r.returncode == 2 and 'does not fit the model' in r.stderr and 'Traceback' not in r.stderr, r.stderr
    r = run('score', world/'w/train', '--model', 'ViT-B-32', '--pretrained', 'openai', '--checkpoint', world/'tiny.pt', '--out', tmp_path/'o')
    assert r.returncode == 2 and ('not allowed with' in r.stderr or 'not both' in r.stderr), r.stderr
    assert not (tmp_path/'o').exists() or not list((tmp_path/'o').glob('*.parquet'))


def test_filter_end_to_end(world, tmp_path):
    from clipq.data import read_wds, train_loader
    from clipq.models import load_clip
    r = run('filter', world/'ref', '--out', tmp_path/'sel.parquet', '--best-of-k', '--top-percent', '25',
            '--shards-out', tmp_path/'kept', '--shard-size', '10')
    assert r.returncode == 0, r.stderr
    n_img = 4*N_SHARDS
    assert f'kept {n_img//4} of {n_img} images' in r.stdout, r.stdout
    sel = pd.read_parquet(tmp_path/'sel.parquet')
    pool = pd.concat(scores(world/'ref').values()).groupby('key').clipscore.max()
    assert set(sel.key) == set(pool.sort_values(ascending=False).index[:n_img//4])     # no ties with float scores
    kept = list(read_wds(tmp_path/'kept'))
    assert sorted(s.key for s in kept) == sorted(sel.key) and all(len(s.captions) == 1 for s in kept)
    _, pre, tok = load_clip(str(world/'tiny.json'))
    xb, tb = next(iter(train_loader(world/'w/train', pre, tok, batch_size=1000, workers=0, shuffle=0, keep=tmp_path/'sel.parquet', drop_last=False)))
    assert len(xb) == n_img//4
    # the narrowed shards and the selection work together: the same samples with the same chosen captions
    xk, tk = next(iter(train_loader(tmp_path/'kept', pre, tok, batch_size=1000, workers=0, shuffle=0, keep=tmp_path/'sel.parquet', drop_last=False)))
    assert len(xk) == n_img//4 and sorted(map(tuple, tk.tolist())) == sorted(map(tuple, tb.tolist()))
    # a selection saved inside the scores folder is not read back as scores
    r = run('filter', world/'ref', '--out', world/'ref/sel-inside.parquet', '--best-of-k', '--threshold', '-1', '--overwrite')
    assert r.returncode == 0 and f'kept {n_img} of {n_img} images' in r.stdout, r.stdout + r.stderr
    r = run('filter', world/'ref', '--out', world/'ref/sel-inside.parquet', '--best-of-k', '--threshold', '-1', '--overwrite')
    assert r.returncode == 0 and f'kept {n_img} of {n_img} images (best caption each) ({n_img} images' in r.stdout, r.stdout + r.stderr
    assert 'ignored: sel-inside.parquet' in r.stderr
    (world/'ref/sel-inside.parquet').unlink()
    # DataComp-style: alt-text only, a threshold
    r = run('filter', world/'ref', '--out', tmp_path/'alt.parquet', '--sources', 'alt', '--threshold', '0', '--score', 'cosine')
    assert r.returncode == 0, r.stderr
    alt = pd.read_parquet(tmp_path/'alt.parquet')
    assert set(alt.source) <= {'alt'} and (alt.cosine >= 0).all()


def test_same_file_names_empty_shards_and_parquet_folders(world, tmp_path):
    "train/shard-000000.tar and val/shard-000000.tar get their own score files; empty and all-corrupt shards do not stop a job; folders of parquets are shards."
    import shutil
    import pyarrow as pa, pyarrow.parquet as pq
    from clipq.data import read_wds, write_tar
    base = ['--model', world/'tiny.json', '--checkpoint', world/'tiny.pt', '--workers', '0', '--no-progress']
    for split, src in (('train', 0), ('val', 1)):
        (tmp_path/split).mkdir(); shutil.copy(world/f'w/train/shard-00000{src}.tar', tmp_path/split/'shard-000000.tar')
    r = run('score', tmp_path/'train', '--out', tmp_path/'sc', *base)
    assert r.returncode == 0 and 'scored 1 shards (0 already complete' in r.stdout, r.stdout + r.stderr
    r = run('score', tmp_path/'val', '--out', tmp_path/'sc', *base)
    assert r.returncode == 0 and 'scored 1 shards (0 already complete' in r.stdout, r.stdout + r.stderr
    assert len(scores(tmp_path/'sc')) == 2
    summary = json.loads((tmp_path/'sc/summary.json').read_text())
    assert summary['runs'][-1]['pairs_scored'] == 4*6 and summary['pairs'] == 2*4*6 and summary['score_files'] == 2
    r = run('filter', tmp_path/'sc', '--out', tmp_path/'sel.parquet', '--threshold', '-1', '--score', 'cosine')
    assert r.returncode == 0 and 'kept 48 of 48 pairs (8 images' in r.stdout, r.stdout + r.stderr
    # an empty shard and an all-corrupt shard next to a good one
    (tmp_path/'few').mkdir()
    write_tar(tmp_path/'few/empty.tar', [])
    write_tar(tmp_path/'few/allbad.tar', [{'__key__': 'x', 'jpg': b'not a jpeg', 'txt': b'a caption'}])
    shutil.copy(world/'w/train/shard-000002.tar', tmp_path/'few/good.tar')
    r = run('score', tmp_path/'few', '--out', tmp_path/'fsc', *base)
    assert r.returncode == 0 and 'scored 3 shards' in r.stdout and 'corrupt_image: 1' in r.stdout, r.stdout + r.stderr
    assert sorted(len(d) for d in scores(tmp_path/'fsc').values()) == [0, 0, 24]
    assert json.loads((tmp_path/'fsc/summary.json').read_text())['pairs'] == 24
    # a folder of parquet files holding the images
    rows = [{'key': s.key, 'jpg': s.raw['jpg'], 'caption': s.by_source(True)[0]} for s in read_wds(world/'w/train/shard-000003.tar', keep_raw=True)]
    (tmp_path/'pq').mkdir(); pq.write_table(pa.Table.from_pylist(rows), tmp_path/'pq/part-0.parquet')
    r = run('score', tmp_path/'pq', '--out', tmp_path/'psc', *base)
    assert r.returncode == 0 and 'scored 1 shards' in r.stdout and ': 4 pairs' in r.stdout, r.stdout + r.stderr


def _other_checkpoint(path, like):
    "Save seeded random weights of the tiny model, in the same format (and size) as checkpoint `like`, to `path`."
    import torch
    from clipq.models import load_clip
    tmp = path.parent/f'.other-{os.getpid()}'/like.name                  # torch.save records the file name: keep it
    tmp.parent.mkdir()
    torch.save({'state_dict': load_clip(like.parent/'tiny.json', seed=1)[0].state_dict()}, tmp)
    os.replace(tmp, path); tmp.parent.rmdir()
    assert path.stat().st_size == like.stat().st_size
    return path


def test_two_runs_share_a_pool_and_a_conflicting_run_is_refused(world, tmp_path):
    "Two processes started with the same command split the pool (each shard scored once, rows as one run's); a run"
    " with other weights, started at the same time, is refused, and exactly one of the two wins the folder."
    out = tmp_path/'shared'
    cmd = ['score', world/'w/train', '--model', world/'tiny.json', '--checkpoint', world/'tiny.pt', '--out', out,
           '--workers', '0', '--batch-size', '3', '--no-progress']
    ps = [subprocess.Popen([str(CLIPQ), *map(str, cmd)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
          for _ in range(2)]
    res = [p.communicate(timeout=300) for p in ps]
    assert [p.returncode for p in ps] == [0, 0], res
    parts = [json.loads(f.read_text()) for f in (out/'.runs').glob('*.json')]
    assert sorted(p['pid'] for p in parts) == sorted(p.pid for p in ps)
    assert sum(p['scored'] for p in parts) == N_SHARDS, [(p['scored'], p['scored_elsewhere']) for p in parts]
    got, ref = scores(out), scores(world/'ref')
    assert list(got) == list(ref)
    for name in ref: pd.testing.assert_frame_equal(got[name], ref[name], check_exact=True)
    summary = json.loads((out/'summary.json').read_text())
    assert summary['score_files'] == N_SHARDS and len(summary['runs']) == 2 and not list((out/'.claims').iterdir())
    # other weights: refused at start, nothing changed
    other = _other_checkpoint(tmp_path/'other.pt', world/'tiny.pt')
    r = run(*[other if c == world/'tiny.pt' else c for c in cmd])
    assert r.returncode == 2 and 'other settings' in r.stderr and 'Traceback' not in r.stderr, r.stderr
    for name, df in scores(out).items(): pd.testing.assert_frame_equal(df, ref[name], check_exact=True)
    # two conflicting runs at once on a fresh folder: one wins, the other is refused
    out2 = tmp_path/'race'
    cmds = [[out2 if c == out else c for c in cmd], [out2 if c == out else other if c == world/'tiny.pt' else c for c in cmd]]
    ps = [subprocess.Popen([str(CLIPQ), *map(str, c)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
          for c in cmds]
    res = [p.communicate(timeout=300) for p in ps]
    assert sorted(p.returncode for p in ps) == [0, 2], res
    loser = next(r for p, r in zip(ps, res) if p.returncode == 2)
    assert 'other settings' in loser[1], loser[1]
    assert len(scores(out2)) == N_SHARDS


def test_weights_are_identified_by_content(world, tmp_path):
    "A checkpoint overwritten in place by other weights of the same size is refused; a random init is seeded, so a"
    " resumed random-init run continues with the same model."
    import shutil
    ck = tmp_path/'ck.pt'
    shutil.copy(world/'tiny.pt', ck)
    base = ['--model', world/'tiny.json', '--workers', '0', '--no-progress']
    r = run('score', world/'w/train/shard-000000.tar', '--out', tmp_path/'o', '--checkpoint', ck, *base)
    assert r.returncode == 0, r.stderr
    _other_checkpoint(ck, world/'tiny.pt')                                # same path, same size, other weights
    r = run('score', world/'w/train/shard-00000{0..1}.tar', '--out', tmp_path/'o', '--checkpoint', ck, *base)
    assert r.returncode == 2 and 'other settings' in r.stderr and 'weights' in r.stderr, r.stderr
    assert len(scores(tmp_path/'o')) == 1
    # random init, no weights given: seeded, so a resume is the same model and gives the same rows as one run
    r = run('score', world/'w/train/shard-000000.tar', '--out', tmp_path/'r1', *base)
    assert r.returncode == 0, r.stderr
    r = run('score', world/'w/train/shard-00000{0..1}.tar', '--out', tmp_path/'r1', *base)
    assert r.returncode == 0 and '(1 already complete' in r.stdout, r.stdout + r.stderr
    r = run('score', world/'w/train/shard-00000{0..1}.tar', '--out', tmp_path/'r2', *base)
    a, b = scores(tmp_path/'r1'), scores(tmp_path/'r2')
    assert list(a) == list(b)
    for name in a: pd.testing.assert_frame_equal(a[name], b[name], check_exact=True)


def test_unreadable_shards_give_status_1(world, tmp_path):
    "The library side of `clipq score`'s exit status: 1 when a shard could not be read, after writing what could be."
    from clipq.scorer import score
    (tmp_path/'zero.tar').write_bytes(b'')
    (tmp_path/'junk.parquet').write_bytes(b'not a parquet file')
    args = dict(model=str(world/'tiny.json'), checkpoint=str(world/'tiny.pt'), workers=0, no_progress=True)
    assert score([str(tmp_path/'zero.tar'), str(tmp_path/'junk.parquet')], out=str(tmp_path/'o'), **args) == 1
    summary = json.loads((tmp_path/'o/summary.json').read_text())
    assert summary['failed_shards'] == sorted([str(tmp_path/'zero.tar'), str(tmp_path/'junk.parquet')])
    assert score([str(world/'w/train/shard-000000.tar'), str(tmp_path/'zero.tar')], out=str(tmp_path/'o'), **args) == 1
    assert len(scores(tmp_path/'o')) == 1
    assert score([str(world/'w/train/shard-000000.tar')], out=str(tmp_path/'o'), **args) == 0
    # and the command: exit status 1, the unreadable shard named, the readable one scored
    r = run('score', world/'w/train/shard-000001.tar', tmp_path/'zero.tar', '--out', tmp_path/'c', '--model', world/'tiny.json',
            '--checkpoint', world/'tiny.pt', '--workers', '0', '--no-progress')
    assert r.returncode == 1 and 'zero.tar' in r.stdout + r.stderr, r.stdout + r.stderr
    assert len(scores(tmp_path/'c')) == 1
