"""`clipq train | finetune | eval | reproduce` end to end, as a user runs them: real subprocesses on a tiny synthetic world.

Covered: a CLIP pretrained from the command line (options from a `--config` file, the command line overriding one),
fine-tuned for segmentation and depth, and evaluated again (the same metric as the fine-tuning reported); bad usage
(one line on stderr, exit status 2, no traceback); `--help` naming every option with its default; and
`clipq reproduce --config` on the real-data path (`shards`, `ade`, `nyu` given) pointed at a synthetic world's layouts.
"""
import inspect, json, math, re, subprocess, sys, typing
from pathlib import Path

import pytest

from clipq.test_utils import tiny_world

CLIPQ = Path(sys.executable).parent/'clipq'


def run(*args, timeout=300, **kw):
    return subprocess.run([str(CLIPQ), *map(str, args)], capture_output=True, text=True, timeout=timeout, **kw)


def ok(r):
    "Assert a finished command exited 0; on failure show the end of its output."
    assert r.returncode == 0, f'exit {r.returncode}\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}'
    return r


@pytest.fixture(scope='module')
def world():
    # 72 train + 24 val scenes: enough for a batch of 64 (the MAE/supervised default) in `clipq reproduce`
    return tiny_world(n=96, size=32, shard_size=24, formats=('wds', 'ade', 'nyu'))


@pytest.fixture(scope='module')
def trained(world, tmp_path_factory):
    "A CLIP trained by `clipq train --config cfg.json --steps 2` (the config says 5 steps: the command line wins)."
    d = tmp_path_factory.mktemp('train')
    cfg = dict(data=str(world), batch_size=8, steps=5, warmup=1, workers=0, log_every=1, out=str(d/'clip'))
    (d/'cfg.json').write_text(json.dumps(cfg))
    r = ok(run('train', '--config', d/'cfg.json', '--steps', 2))
    return d/'clip', r


def test_train_config_and_override(trained):
    out, r = trained
    assert (out/'model.safetensors').stat().st_size > 0
    cfg = json.loads((out/'config.json').read_text())
    assert cfg['steps'] == 2 and cfg['batch_size'] == 8 and cfg['warmup'] == 1    # CLI over config, config over defaults
    steps = [int(l.split(',')[0]) for l in (out/'log.csv').read_text().splitlines()[1:]]
    assert steps == [1, 2]
    assert 'trained clipq-tiny-vit: 2 steps of 8' in r.stdout and 'Traceback' not in r.stderr
    assert 'deprecated' not in r.stderr, r.stderr     # fastai's import-time notices are hidden by the CLI


def _metrics(path: Path) -> dict: return json.loads(path.read_text())


@pytest.fixture(scope='module')
def seg_run(world, trained, tmp_path_factory):
    "`clipq finetune seg` from the trained CLIP, options on the command line (one epoch of 9 iterations)."
    out = tmp_path_factory.mktemp('seg')/'run'
    ok(run('finetune', 'seg', world, '--backbone', trained[0]/'model.safetensors', '--batch-size', 8, '--iters', 9,
           '--evals', 1, '--out', out, '--no-progress'))
    return out


@pytest.fixture(scope='module')
def depth_run(world, trained, tmp_path_factory):
    "`clipq finetune` for depth, every option from a YAML config but the seed, which the command line overrides."
    d = tmp_path_factory.mktemp('depth')
    (d/'ft.yaml').write_text(f"task: depth\ndata: {world}\nbackbone: {trained[0]/'model.safetensors'}\nbatch_size: 8\n"
                             f"iters: 9\nevals: 1\nseed: 5\nprogress: false\nout: {d/'run'}\n")
    ok(run('finetune', '--config', d/'ft.yaml', '--seed', 1))
    return d/'run'


@pytest.mark.parametrize('task,metric', [('seg', 'mIoU'), ('depth', 'rmse')])
def test_finetune_then_eval(request, world, trained, tmp_path, task, metric):
    run_dir = request.getfixturevalue(f'{task}_run')
    m = _metrics(run_dir/'metrics.json')
    assert m['task'] == task and m['backbone'] == str(trained[0]/'model.safetensors') and m['iters'] == 9
    assert m['n_train'] == 72 and m['n_eval'] == 24 and math.isfinite(m[metric])
    assert json.loads((run_dir/'config.json').read_text())['seed'] == (0 if task == 'seg' else 1)
    assert (run_dir/'model.pt').is_file()
    r = ok(run('eval', run_dir/'model.pt', world, '--out', tmp_path/'ev', '--pictures', 1))
    e = _metrics(tmp_path/'ev'/'metrics.json')
    assert e['task'] == task and e['n_eval'] == m['n_eval']
    assert e[metric] == pytest.approx(m[metric], rel=1e-5, abs=1e-6)
    assert (tmp_path/'ev'/'predictions.png').is_file() and f'{metric}' in r.stdout


def test_finetune_runs_the_iterations_asked(world, tmp_path):
    "`--iters` shorter than an epoch of the training set (72 images, batch 8) is honoured."
    ok(run('finetune', 'seg', world, '--batch-size', 8, '--iters', 3, '--evals', 1, '--out', tmp_path/'r', '--no-progress'))
    assert _metrics(tmp_path/'r'/'metrics.json')['iters'] == 3


def _error_line(r) -> str:
    "The one error line of a refused command (stderr may also hold log lines and library warnings before it)."
    lines = r.stderr.strip().splitlines()
    assert 'Traceback' not in r.stderr and not any(l.startswith('usage:') for l in lines), r.stderr
    errs = [l for l in lines if ': error: ' in l]
    assert len(errs) == 1 and lines[-1] == errs[0], r.stderr
    return errs[0]


W, RUN = '<world>', '<run>'

BAD = [
    ('train', [W, '--bogus', '1'], 'clipq train: error: unrecognized arguments: --bogus 1 (see clipq train --help)'),
    ('train', [], 'the following arguments are required: data'),
    ('train', ['nope', '--steps', '1'], 'nope does not exist'),
    ('train', [W, '--steps', 'abc'], "argument --steps: invalid int value: 'abc'"),
    ('train', [W, '--batch-size', '0'], '--batch-size must be positive, got 0'),
    ('train', [W, '--config', 'nope.yaml'], 'config file nope.yaml does not exist'),
    ('finetune', ['seg', W, '--fraction', '0'], 'fraction must be in (0, 1], got 0.0'),
    ('finetune', [], 'the following arguments are required: task, data'),
    ('finetune', ['seg', 'nope'], 'data nope does not exist'),
    ('finetune', ['segm', W], "task must be 'seg' or 'depth'"),
    ('finetune', ['seg', W, '--bogus'], 'clipq finetune: error: unrecognized arguments: --bogus'),
    ('finetune', ['seg', W, '--backbone', 'nope.safetensors'], 'nope.safetensors does not exist'),
    ('eval', [], 'the following arguments are required: checkpoint, data'),
    ('eval', ['nope', W], 'checkpoint nope does not exist'),
    ('eval', [RUN, W, '--mode', 'bogus'], "mode must be 'whole' or 'slide'"),
    ('eval', [RUN, W, '--fraction', '0'], 'clipq eval: error: unrecognized arguments: --fraction 0'),
    ('eval', [RUN, 'nope'], 'nope does not exist'),
    ('reproduce', ['--fractions', '0'], 'fractions must be in (0, 1], got [0.0]'),
    ('reproduce', ['--scale', 'huge'], "unknown scale 'huge'"),
    ('reproduce', ['--shards', 'nope', '--ade', 'nope', '--nyu', 'nope', '--fractions', '1', '--seeds', '0',
                   '--no-progress'], 'nope does not exist'),
]


def _id(b) -> str:
    cmd, args, _ = getattr(b, 'values', b)
    return f"{cmd}:{' '.join(args)}"


@pytest.mark.parametrize('cmd,args,msg', BAD, ids=map(_id, BAD))
def test_bad_usage_is_one_line_exit_2(request, world, tmp_path, cmd, args, msg):
    subst = {W: str(world)}
    if RUN in args: subst[RUN] = str(request.getfixturevalue('seg_run'))
    r = run(cmd, *[subst.get(a, a) for a in args], *(['--out', tmp_path/'o'] if cmd != 'eval' else []), cwd=tmp_path)
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert msg in _error_line(r)


def test_eval_refuses_unknown_split(world, depth_run):
    r = run('eval', depth_run/'model.pt', world, '--split', 'bogus', '--out', depth_run.parent/'x')
    assert r.returncode == 2 and 'split' in _error_line(r)


def test_error_from_a_fastai_callback_is_one_line(world, tmp_path):
    "A bad value found inside training (fastai wraps it in 'Exception occured in ...') is still one clean line."
    r = run('finetune', 'seg', world, '--schedule', 'bogus', '--batch-size', 8, '--iters', 9, '--evals', 1, '--out',
            tmp_path/'o', '--no-progress')
    assert r.returncode == 2
    line = _error_line(r)
    assert "unknown schedule 'bogus'" in line and 'occured' not in line, line


def _sections(help: str) -> tuple[str, str]:
    "The positional-arguments and the options part of a `--help`, each as one line."
    head, opts = help.split('options:', 1)
    return ' '.join(head.split('positional arguments:')[-1].split()), ' '.join(opts.split())


@pytest.mark.parametrize('cmd,target', [('train', 'clipq.train:train_clip'), ('finetune', 'clipq.dense:finetune'),
                                        ('eval', 'clipq.dense:evaluate'), ('reproduce', 'clipq.reproduce:reproduce')])
def test_help_lists_every_option_with_its_default(cmd, target):
    import importlib, os
    mod, name = target.split(':')
    fn = getattr(importlib.import_module(mod), name)
    r = ok(run(cmd, '--help', env=dict(os.environ, COLUMNS='200')))    # wide: no line breaks inside names
    assert inspect.getdoc(fn).splitlines()[0] in ' '.join(r.stdout.split())     # the docstring describes the command
    positional, opts = _sections(r.stdout)
    flags, prms = {'config': '--config FILE'}, inspect.signature(fn).parameters
    hints = typing.get_type_hints(fn)
    for p in prms.values():
        if p.default is p.empty and p.kind != p.KEYWORD_ONLY:
            assert re.search(rf'(^| ){p.name} \S', positional), f'{cmd}: positional {p.name} is not explained'
        elif isinstance(p.default, bool): flags[p.name] = f"--{'no-' if p.default else ''}{p.name.replace('_', '-')}"
        elif hints.get(p.name) == (bool | None): flags[p.name] = f"--{p.name.replace('_', '-')}, --no-{p.name.replace('_', '-')}"
        else: flags[p.name] = f"--{p.name.replace('_', '-')} {p.name.upper()}"
    starts = {}
    for n, f in flags.items():
        m = re.search(rf'(?:^| ){re.escape(f)}(?=[ ,])', opts)
        assert m, f'{cmd} --help does not list {f}'
        starts[n] = m.start(), m.end()
    begins = sorted(b for b, _ in starts.values()) + [len(opts)]
    for n, (_, end) in starts.items():
        text = opts[end:min(b for b in begins if b >= end)]
        assert len(text.strip()) > 10, f'{cmd} {flags[n]}: no explanation'
        d = prms[n].default if n in prms else None
        if d is not None and d is not inspect.Parameter.empty and not isinstance(d, bool):
            assert f'(default: {d})' in text, f'{cmd} {flags[n]}: no default in {text!r}'


def test_synth_takes_a_config_file_too(tmp_path):
    "The hand-written `clipq synth` takes `--config` like the generated subcommands (keys: its option names)."
    (tmp_path/'s.yaml').write_text('n: 40\nsize: 32\nshard_size: 5\nworkers: 1\nno_progress: true\nformats: [wds]\n')
    ok(run('synth', '--config', tmp_path/'s.yaml', '--out', tmp_path/'w', '-n', 12))
    meta = json.loads((tmp_path/'w'/'meta.json').read_text())
    assert sum(meta['counts'].values()) == 12 and len(meta['shards']['train']) == 3
    (tmp_path/'bad.yaml').write_text('scenes: 3\n')
    r = run('synth', '--config', tmp_path/'bad.yaml', '--out', tmp_path/'w2')
    assert r.returncode == 2 and "unknown options ['scenes']" in _error_line(r)


SYNONYMS = {'batch size': {'--batch-size', '--bs'}, 'loader workers': {'--workers', '--num-workers'},
            'checkpoint cadence': {'--save-every', '--checkpoint-every'}, 'no progress output': {'--no-progress', '--no-progress'}}


def test_option_names_are_consistent_across_subcommands():
    "One concept, one option name, in every subcommand that has it."
    import argparse
    from clipq.cli import build_parser
    sub = next(a for a in build_parser(full=True)._actions if isinstance(a, argparse._SubParsersAction))
    used = {name: {o for a in p._actions for o in a.option_strings} for name, p in sub.choices.items()}
    spelled = {k: {o for opts in used.values() for o in opts & alts} for k, alts in SYNONYMS.items()}
    assert all(len(v) == 1 for v in spelled.values()), spelled


def test_score_takes_a_synth_folder_like_train(world, tmp_path):
    "The same data argument means the same data in `clipq train` and `clipq score` (a `clipq synth` folder)."
    r = run('score', world, '--out', tmp_path/'s', '--workers', 0, '--batch-size', 16, '--no-progress')
    ok(r)
    assert len(list((tmp_path/'s').glob('*.parquet'))) == 3                   # one per train shard


@pytest.mark.timeout(1500)
def test_reproduce_real_data_path_on_synthetic_layouts(tmp_path):
    "`clipq reproduce --config` with `shards`/`ade`/`nyu` given: the plan runs on them and writes no synthetic world."
    # 120 train scenes: the scorer-filtered arm keeps 30 % of them, at least one CLIP batch of the smoke scale (32)
    world = tiny_world(n=160, size=32, shard_size=40, formats=('wds', 'ade', 'nyu'))
    cfg = dict(shards=str(world/'train'/'*.tar'), ade=str(world), nyu=str(world/'nyu'), fractions=[1.0], seeds=[0])
    (tmp_path/'cfg.yaml').write_text(''.join(f'{k}: {json.dumps(v)}\n' for k, v in cfg.items()))
    out = tmp_path/'r'
    r = run('reproduce', '--scale', 'smoke', '--config', tmp_path/'cfg.yaml', '--out', out, '--no-progress', timeout=1200)
    ok(r)
    runs = out/'runs'
    assert not (runs/'world').exists()
    given = {k: json.loads((runs/'data'/k/'result.json').read_text()) for k in ('pool', 'ade', 'nyu')}
    assert given['pool']['path'] == cfg['shards'] and given['ade']['path'] == cfg['ade']
    fts = sorted(runs.glob('finetune/*/*/*/f1.0/s0/result.json'))
    assert len(fts) == 12                        # six pretrainings (random init included) x two tasks
    for f in fts:
        c = json.loads((f.parent/'ft'/'config.json').read_text())
        assert c['data'] == (cfg['ade'] if c['task'] == 'seg' else cfg['nyu'])
    probes = sorted(runs.glob('probe/*/*/result.json'))
    assert len(probes) == 6                      # a frozen-feature probe of each backbone, with PROBE_ROWS rows at most
    assert all({r['task'] for r in json.loads(f.read_text())['rows']} == {'seg', 'depth'} for f in probes)
    readme = (out/'results'/'README.md').read_text()
    for arm in ('clip-quality', 'clip-alt', 'clip-filtered', 'mae', 'supervised', 'random'): assert f'| {arm} |' in readme
