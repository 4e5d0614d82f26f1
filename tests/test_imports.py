"""Every exported module imports on its own in a fresh interpreter and uses no undefined name.

The notebook tests run the exported code in the notebook's namespace, where a name imported only in a
test cell still resolves; these checks catch exported modules that forget an import.
"""
import pkgutil, re, subprocess, sys
from pathlib import Path

import pytest

import clipq

MODULES = sorted(m.name for m in pkgutil.iter_modules(clipq.__path__, 'clipq.') if not m.name.startswith('clipq._'))


@pytest.mark.parametrize('mod', MODULES)
def test_module_imports_alone(mod):
    r = subprocess.run([sys.executable, '-c', f'import {mod}; print(len(getattr({mod}, "__all__", [])))'],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]


def test_every_public_name_exists():
    for mod in MODULES:
        m = __import__(mod, fromlist=['*'])
        missing = [n for n in getattr(m, '__all__', []) if not hasattr(m, n)]
        assert not missing, f'{mod}.__all__ names missing objects: {missing}'


def _explicit(src: str) -> str:
    "`src` with each `from .mod import *` (clipq's re-exporting modules) spelt out from `mod.__all__`, so pyflakes can check it."
    def names(m):
        mod = __import__(f'clipq.{m[1]}', fromlist=['*'])
        return f"from .{m[1]} import ({', '.join(mod.__all__)})" if getattr(mod, '__all__', None) else m[0]
    return re.sub(r'^from \.(\w+) import \*.*$', names, src, flags=re.M)


def test_no_undefined_names():
    "pyflakes over the exported package: a name used but never defined or imported fails here, not in a user's run."
    from pyflakes.api import check
    from pyflakes.reporter import Reporter
    import io
    out = io.StringIO()
    for f in sorted(Path(clipq.__file__).parent.glob('*.py')): check(_explicit(f.read_text()), str(f), Reporter(out, out))
    # a name listed in __all__ that the module provides lazily, through a module-level __getattr__, is not undefined
    # (clipq.core.lazy_reexport's, or one of its own)
    lazy = {str(f) for f in Path(clipq.__file__).parent.glob('*.py') if re.search(r'^(def __getattr__|__getattr__ = )', f.read_text(), re.M)}
    bad = [l for l in out.getvalue().splitlines() if ('undefined name' in l or 'unable to detect undefined' in l)
           and not (l.split(':')[0] in lazy and l.rstrip().endswith('in __all__'))]
    assert not bad, '\n'.join(bad)
