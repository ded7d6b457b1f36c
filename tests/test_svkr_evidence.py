"""The evidence script runs end to end on toy sizes (scenes, every row) and prints its table and last line.

The numbers of a --tiny run mean nothing (two iterations per network); these tests check that every row
is computed, consistent with the JSON, and printed in the documented format.
"""
import json
import re

import cv2
import numpy as np
import pytest

from conftest import run_python

SCRIPT = 'scripts/experiments/svkr_evidence.py'
LAST = re.compile(r'^depth gain in kernel PSNR: exact ([+-]\d+\.\d\d) dB, estimated ([+-]\d+\.\d\d) dB$')
HEADLINE = 'paper_defocus'  # the structure --quick trains and the last line reports
ROW1_KEYS = ('without depth', 'exact depth', 'estimated depth', 'flat depth (0.5)',
             'shuffled depth (another test scene)')


def _run(tmp_path, *extra):
    out = tmp_path / 'out'
    proc = run_python([SCRIPT, '--tiny', '--threads', '1', '--out', str(out), *extra], timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:]
    lines = [line for line in proc.stdout.strip().splitlines() if line.strip()]
    return lines, out


def _tiny_dpt(path):
    transformers = pytest.importorskip('transformers')
    import torch
    torch.manual_seed(0)
    cfg = transformers.DPTConfig(hidden_size=16, num_hidden_layers=4, num_attention_heads=2, intermediate_size=32,
                                 image_size=32, patch_size=8, neck_hidden_sizes=[8, 8, 16, 16], fusion_hidden_size=8,
                                 backbone_out_indices=[0, 1, 2, 3], head_hidden_size=8)
    transformers.DPTForDepthEstimation(cfg).save_pretrained(str(path))
    return str(path)


def _check_gains(match, res, arch):
    runs = res['runs']
    for group, key in ((1, 'exact depth'), (2, 'estimated depth')):
        gain = np.mean([r['row1'][arch][key] - r['row1'][arch]['without depth'] for r in runs])
        assert abs(gain - float(match.group(group))) < 0.006


def test_quick_mode_prints_row1_and_last_line(tmp_path):
    lines, out = _run(tmp_path, '--quick')
    match = LAST.match(lines[-1])
    assert match, lines[-1]
    assert any(line.startswith('| 0 | mean training kernel') for line in lines)
    rows = [line for line in lines if line.startswith('| 1 | DKENet')]
    assert len(rows) == len(ROW1_KEYS)  # one structure (the headline one), every depth input
    assert all(re.search(r'\| -?\d+\.\d\d \([+-]\d+\.\d\d\) \|', row) for row in rows)  # value (gain)
    assert not any(line.startswith(('| 2 ', '| 3 ', '| 4 ', '| 5 ')) for line in lines)
    assert 'weight-free PRIOR' in '\n'.join(lines)  # no --depth-model: the estimated rows say what they used
    assert re.search(r'receptive field .*paper \d+.*context \d+', '\n'.join(lines))
    assert re.search(r'focus plane from the LR image .*mean error \d\.\d+', '\n'.join(lines))
    assert any('weight-free focus-plane estimate' in line for line in lines if line.startswith('| 0 |'))
    with open(out / 'svkr_evidence_quick.json') as f:
        res = json.load(f)
    assert res['headline_arch'] == HEADLINE and len(res['runs']) == 1
    row1 = res['runs'][0]['row1']
    assert set(row1[HEADLINE]) == set(ROW1_KEYS)
    assert all(np.isfinite(v) and v > 0 for v in row1[HEADLINE].values())
    # the scores of the with-depth network move when its depth map is flattened or taken from another scene
    assert row1[HEADLINE]['exact depth'] != row1[HEADLINE]['flat depth (0.5)']
    assert row1[HEADLINE]['exact depth'] != row1[HEADLINE]['shuffled depth (another test scene)']
    _check_gains(match, res, HEADLINE)
    _check_saved_network_reads_depth(out / f'dkenet_{HEADLINE}_depth_seed0.pth', HEADLINE)


def _check_saved_network_reads_depth(path, arch):
    """The saved (scored) with-depth DKENet: a flat depth map changes its kernels, beyond float noise."""
    import torch
    from ssr_app.experiments import svkr_evidence as evidence
    net = evidence.build_dkenet(arch, True, 0)
    net.load_state_dict(torch.load(str(path), map_location='cpu'))
    net.eval()
    torch.manual_seed(0)
    lr, other_lr = torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16)
    ramp = torch.linspace(0, 1, 16).view(1, 1, 16, 1).expand(1, 1, 16, 16)
    with torch.no_grad():
        k_ramp, k_flat, k_other = net(lr, ramp), net(lr, torch.full_like(ramp, 0.5)), net(other_lr, ramp)
    # after two iterations the depth path is still near its initialisation, where it moves the kernels about
    # 1/700 as much as another image does (measured); float32 rounding of the kernels is ~1e-10
    assert (k_ramp - k_flat).abs().max() > 1e-4 * (k_ramp - k_other).abs().max()


def test_full_mode_every_row_two_seeds_with_a_depth_network(tmp_path):
    dpt = _tiny_dpt(tmp_path / 'dpt')
    lines, out = _run(tmp_path, '--seeds', '0,1', '--jobs', '2', '--photo-rows', '--depth-model', dpt,
                      '--depth-input-size', '32', '--sr-finetune', '2')
    match = LAST.match(lines[-1])
    assert match, lines[-1]
    # the prior appears only in row 6 (the old photograph rows, labelled), never as the estimated depth
    text = '\n'.join(line for line in lines if not line.startswith('| 6 |') and 'photo' not in line.lower())
    assert 'weight-free PRIOR' not in text and 'depth network dpt' in text
    # NBSR was also trained inside the loop (stage 3) before rows 2-5
    everything = '\n'.join(lines)
    assert '+ 2 inside the loop (stage 3, frozen DKENet, lr 0.0005, ground-truth kernel loss weight ' in everything
    assert 'NBSR in the loop (stage 3), seed 1' in everything
    for arch in ('paper', HEADLINE):
        rows = [line for line in lines if line.startswith(f'| 1 | DKENet {arch},')]
        assert len(rows) == len(ROW1_KEYS)
        assert all(re.search(r'\d+\.\d\d ± \d+\.\d\d \([+-]\d+\.\d\d ± \d+\.\d\d\)', row) for row in rows)
    assert sum(line.startswith('| 2 | SVKR T = ') for line in lines) == 4
    assert sum(line.startswith('| 3 | NBSR') for line in lines) == 3
    assert sum(line.startswith('| 4 | SR with deviated') for line in lines) == 4
    assert sum(line.startswith('| 5 | depth network on') for line in lines) >= 4
    row6 = [line for line in lines if line.startswith('| 6 | photographs, weight-free PRIOR depth')]
    assert len(row6) == 5 and all(re.search(r'\d+\.\d\d ± \d+\.\d\d', row) for row in row6)
    with open(out / 'svkr_evidence_full.json') as f:
        res = json.load(f)
    assert [r['seed'] for r in res['runs']] == [0, 1]
    _check_gains(match, res, HEADLINE)
    for run in res['runs']:
        for arch in ('paper', HEADLINE):
            assert abs(run['row1'][arch]['exact depth'] - run['row1'][arch]['flat depth (0.5)']) > 1e-6
        assert len(run['row2']['kernel_psnr']) == len(run['row2']['sr_psnr']) == 4
        # K¹ = K⁰ by Algorithm 1 (I⁰ = LR): T = 0 and T = 1 score the same kernels (up to float32 rounding)
        assert abs(run['row2']['kernel_psnr'][0] - run['row2']['kernel_psnr'][1]) < 1e-4
        curves = run['row4']['curves']
        assert len(curves) == 4 and all(len(c) == 5 and all(np.isfinite(c)) for c in curves.values())
        # the undeviated point of the GT-kernel curve is NBSR with GT kernels (row 3; --tiny has fewer test
        # scenes than row 4 scores, so both rows see the same ones)
        i = run['row4']['kernel_width_factors'].index(1.0)
        assert abs(curves['K: ground truth'][i] - run['row3']['ground-truth kernels']) < 1e-6
        assert {'HR image', 'LR image (what K0 uses)', 'bicubic LR', 'SVKR SR, T = 3'} <= set(run['row5'])
        # row 4 keeps every test scene's scores: the curves are their means, the noise of a drop comes from them
        per_image = run['row4']['per_image']
        assert all(np.asarray(v).shape == (run['row4']['test_scenes'], 5) for v in per_image.values())
        assert np.allclose(np.mean(per_image['K: ground truth'], axis=0), curves['K: ground truth'])
        # stage 3 measured what it did to NBSR: sensitivity before and at every quarter, codes, parameter groups
        st = run['stage3']
        assert st['sensitivity'][0][0] == 0 and st['sensitivity'][-1][0] == 2
        assert set(st['sensitivity'][0][1]) == {'GT a=0.5', 'GT a=1', 'GT a=2', 'K0'}
        assert abs(st['sensitivity'][-1][1]['GT a=1'] - run['row3']['ground-truth kernels']) < 1e-6
        assert set(st['parameter_groups']) == {'kernel path', 'image trunk'}
        assert all(g['mean gradient norm'] > 0 and g['relative weight change'] > 0 for g in st['parameter_groups'].values())
        assert 0 < st['kernel_codes']['ground-truth code spread'] < 10
    assert sum(line.startswith('stage 3, seed ') for line in lines) == 2
    # each reference curve of row 4: one line on its ends, and a DEFECT line for each end within the noise
    for label, name in (('width of the ground-truth kernels', 'a'), ('gamma of the exact depth', 'g')):
        summary = [line for line in lines if line.startswith(f'SR PSNR against the {label} (row 4): true ')]
        assert len(summary) == 1
        ends = re.findall(r'= (\S+): ([+-]\d+\.\d\d) dB \(noise (\d+\.\d\d)\)', summary[0])
        assert len(ends) == 2
        for x, drop, noise in ends:
            defect = any(line.startswith(f'DEFECT: SR PSNR against the {label} (row 4) is flat towards {name} = {x}:')
                         for line in lines)
            if abs(float(drop) - float(noise)) > 0.01:  # away from the boundary, where the rounding could decide
                assert defect == (float(drop) <= float(noise)), summary[0]
    png = cv2.imread(str(out / 'row4_deviation.png'))
    assert png is not None and png.shape[0] > 100 and png.shape[1] > 400
    # --reuse: the same DKENets and stage 2 NBSRs loaded instead of trained give the same rows, bit for bit
    again = tmp_path / 'again'
    proc = run_python([SCRIPT, '--tiny', '--threads', '1', '--seeds', '0,1', '--depth-model', dpt, '--depth-input-size',
                       '32', '--sr-finetune', '2', '--reuse', str(out), '--out', str(again)], timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert 'loaded from' in proc.stdout
    with open(again / 'svkr_evidence_full.json') as f:
        reused = json.load(f)
    for run, rerun in zip(res['runs'], reused['runs']):
        for key in ('row1', 'row2', 'row3', 'row4'):
            assert run[key] == rerun[key], key
        assert run['stage3']['sensitivity'] == rerun['stage3']['sensitivity']
    proc = run_python([SCRIPT, '--tiny', '--threads', '1', '--seeds', '0', '--iters', '3', '--reuse', str(out),
                       '--out', str(tmp_path / 'other')], timeout=600)
    assert proc.returncode != 0 and 'other settings' in proc.stdout
