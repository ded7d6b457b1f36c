"""scripts/experiments/demo_conditions.py names a trained stage that ignores its condition as a defect."""
import os.path as osp
import sys

ROOT = osp.abspath(osp.join(osp.dirname(__file__), osp.pardir))
sys.path.insert(0, osp.join(ROOT, 'scripts', 'experiments'))

import demo_conditions  # noqa: E402


def _rows(exact, flat, nbsr_gt, nbsr_mean):
    return {'mean training kernel everywhere': {'kernel_psnr': [41.8], 'psnr': [nbsr_mean]},
            'DKENet + exact depth': {'kernel_psnr': [exact], 'psnr': [26.6]},
            'DKENet + flat depth': {'kernel_psnr': [flat], 'psnr': [26.6]},
            'ground-truth kernels': {'kernel_psnr': [], 'psnr': [nbsr_gt]}}


def test_conditions_that_change_the_numbers_are_not_defects():
    notes = demo_conditions.ignored_conditions(_rows(42.27, 41.80, 26.95, 26.61))
    assert not any(n.startswith('DEFECT') for n in notes)


def test_a_dkenet_that_ignores_depth_is_a_defect():
    notes = demo_conditions.ignored_conditions(_rows(42.275, 42.27, 26.95, 26.61))
    assert [n for n in notes if n.startswith('DEFECT')] == [
        'DEFECT: "DKENet + exact depth" and "DKENet + flat depth" differ by 0.005 dB kernel PSNR: the trained '
        'DKENet ignores its depth input.']


def test_an_nbsr_that_ignores_its_kernels_is_a_defect():
    # the demo NBSR before its PCA codes were scaled: ground-truth and mean kernels 0.02 dB apart
    notes = demo_conditions.ignored_conditions(_rows(42.27, 41.80, 26.73, 26.71))
    defects = [n for n in notes if n.startswith('DEFECT')]
    assert len(defects) == 1 and 'NBSR' in defects[0] and 'ignores its kernel input' in defects[0]
