"""Render README.md from nbs/index.ipynb without Quarto (which cannot be installed everywhere).

Markdown cells are copied as they are, code cells become ```python blocks (directive lines such as
`#| hide` are dropped, hidden cells are skipped), the notebook title's `> summary` line is kept, and
image paths are made relative to the repository root. `--check` exits 1 if README.md is out of date.
"""
import json, re, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def render(nb_path: Path = ROOT/'nbs'/'index.ipynb') -> str:
    nb = json.loads(nb_path.read_text())
    out = []
    for cell in nb['cells']:
        src = ''.join(cell['source'])
        if cell['cell_type'] == 'markdown':
            out.append(re.sub(r'\]\((images/[^)]+)\)', r'](nbs/\1)', src))
        elif cell['cell_type'] == 'code':
            lines = src.splitlines()
            if any(l.strip() in ('#| hide', '#|hide') for l in lines): continue
            code = '\n'.join(l for l in lines if not l.startswith('#|')).strip()
            if code: out.append(f'```python\n{code}\n```')
    return '\n\n'.join(out).strip() + '\n'


if __name__ == '__main__':
    text = render()
    readme = ROOT/'README.md'
    if '--check' in sys.argv:
        if readme.read_text() != text:
            sys.exit('README.md is not in step with nbs/index.ipynb: run `python .ci/render_readme.py` and commit')
        print('README.md is in step with nbs/index.ipynb')
    else:
        readme.write_text(text)
        print(f'wrote {readme}')
