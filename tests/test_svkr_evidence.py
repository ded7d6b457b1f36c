"""The evidence script runs end to end (on toy sizes) and prints its table and the last line."""
import json
import os.path as osp
import re

import cv2
import numpy as np

from conftest import run_python

SCRIPT = osp.join('scripts', 'experiments', 'svkr_evidence.py')
LAST = re.compile(r'^kernel PSNR with depth minus without depth: ([+-]\d+\.\d\d) dB$')


def _photos(folder, num=4, size=96):
    import skimage.data
    folder.mkdir()
    for i, name in enumerate(('astronaut', 'coffee', 'chelsea', 'rocket')[:num]):
        img = getattr(skimage.data, name)()[:size, :size, ::-1]
        cv2.imwrite(str(folder / f'{i}.png'), np.ascontiguousarray(img))
    return str(folder)


def _run(tmp_path, *extra):
    data = _photos(tmp_path / 'photos')
    out = tmp_path / 'out'
    args = [SCRIPT, '--tiny', '--threads', '1', '--hr-downscale', '1', '--data', data, '--out', str(out), *extra]
    proc = run_python(args, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:]
    lines = [line for line in proc.stdout.strip().splitlines() if line.strip()]
    return lines, out


def test_quick_mode_prints_row1_and_last_line(tmp_path):
    lines, out = _run(tmp_path, '--quick')
    match = LAST.match(lines[-1])
    assert match, lines[-1]
    rows = [line for line in lines if line.startswith('| 1 DKENet')]
    assert len(rows) == 4 and not any(line.startswith('| 2 ') for line in lines)
    with open(out / 'svkr_evidence_quick.json') as f:
        res = json.load(f)
    row1 = res['row1_kernel_psnr']
    diff = row1['with depth (dataset depth)'] - row1['without depth']
    assert abs(diff - float(match.group(1))) < 0.006
    assert all(np.isfinite(v) and v > 0 for v in row1.values())


def test_full_mode_prints_three_rows(tmp_path):
    lines, out = _run(tmp_path)
    assert LAST.match(lines[-1])
    assert sum(line.startswith('| 2 SVKR | T = ') for line in lines) == 4
    assert sum(line.startswith('| 3 NBSR') for line in lines) == 3
    with open(out / 'svkr_evidence_full.json') as f:
        res = json.load(f)
    assert len(res['row2']['kernel_psnr']) == len(res['row2']['sr_psnr']) == 4
    # K¹ = K⁰ by Algorithm 1 (I⁰ = LR), so T = 0 and T = 1 score the same kernels
    # (equal up to float32 rounding of 0.9·K + 0.1·K)
    assert abs(res['row2']['kernel_psnr'][0] - res['row2']['kernel_psnr'][1]) < 1e-4
