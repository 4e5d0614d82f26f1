#!/usr/bin/env python
"""Check that clipq's notebooks read as tutorials (DESIGN.md, "Notebook conventions").

Fails (exit 1) when a notebook
- is committed without outputs (readers on GitHub would see no example, table or plot),
- is over 1 MB (figures too large, or progress bars saved),
- has an exported public definition (`def`/`class` at the top of an `#| export` cell) with no visible code cell
  that carries outputs before the next exported definition (each export is followed by an executed example),
- has a source line in an `#| export` cell over 120 characters (exported lines <= 120 characters); the error names
  the line's number within its cell, its length and its first 60 characters.
Prints, without failing, the notebooks whose source passes about 25k characters and the median size of
their export cells (the aims of the conventions).

    python .ci/check_notebooks.py [NOTEBOOK ...]
"""
import json, re, statistics, sys
from pathlib import Path

DEF = re.compile(r'^(?:async\s+)?(?:def|class)\s+([A-Za-z]\w*)', re.M)
LINE_LIMIT = 120                                   # characters per exported line
EXPORT_FLAGS = {'export', 'exports', 'exporti'}    # nbdev 2 flags of cells whose source goes into the modules


def _src(c) -> str: return ''.join(c['source'])
def _flags(s: str) -> set: return {l[2:].split()[0] for l in s.splitlines() if l.startswith('#|') and l[2:].split()}


def check(path: Path) -> tuple[list, list]:
    nb = json.loads(path.read_text(encoding='utf-8'))
    cells, errors, notes = nb['cells'], [], []
    code = [c for c in cells if c['cell_type'] == 'code']
    if code and not any(c.get('outputs') for c in code): errors.append('committed without outputs')
    if (size := path.stat().st_size) > 1_000_000: errors.append(f'{size/1e6:.1f} MB (over 1 MB)')
    exports = [i for i, c in enumerate(cells) if c['cell_type'] == 'code' and 'export' in _flags(_src(c))]
    for k, i in enumerate(exports):
        names = [n for n in DEF.findall(_src(cells[i])) if not n.startswith('_')]
        if not names: continue
        stop = next((j for j in exports[k + 1:] if DEF.search(_src(cells[j]))), len(cells))
        shown = any(c['cell_type'] == 'code' and c.get('outputs') and not ({'export', 'exports', 'hide'} & _flags(_src(c)))
                    for c in cells[i + 1:stop])
        if not shown: errors.append(f"exported {', '.join(names)} has no executed example after it")
    for c in cells:
        if c['cell_type'] != 'code' or not EXPORT_FLAGS & _flags(_src(c)): continue
        for n, line in enumerate(_src(c).splitlines(), 1):
            if len(line) > LINE_LIMIT:
                errors.append(f'export cell line {n} is {len(line)} characters (limit {LINE_LIMIT}): {line[:60]}')
    chars = sum(len(_src(c)) for c in cells)
    sizes = [len(_src(cells[i])) for i in exports]
    if chars > 25_000: notes.append(f'source {chars/1e3:.0f}k characters (aim: about 25k)')
    if sizes and (m := statistics.median(sizes)) > 800: notes.append(f'median export cell {m:.0f} characters (aim: under 800)')
    return errors, notes


def main(paths) -> int:
    root = Path(__file__).resolve().parents[1]
    nbs = [Path(p) for p in paths] or sorted(n for n in (root/'nbs').glob('*.ipynb') if not n.name.startswith(('_', '.')))
    bad = 0
    for p in nbs:
        errors, notes = check(p)
        for e in errors: print(f'{p.name}: {e}')
        for n in notes: print(f'{p.name}: note: {n}')
        bad += bool(errors)
    print(f'{len(nbs) - bad} of {len(nbs)} notebooks pass' + (f'; fix the {bad} above' if bad else ''))
    return 1 if bad else 0


if __name__ == '__main__': sys.exit(main(sys.argv[1:]))
