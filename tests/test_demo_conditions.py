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


def _accuracy_table(own, other):
    import depth_accuracy
    from ssr_utils.evaluation import ResultTable
    methods = [f'{e} on {i}' for e in ('network', 'prior') for i in ('HR', depth_accuracy.OTHER_SCENE)]
    table = ResultTable(depth_accuracy.METRICS, methods)
    for key, (a, b) in enumerate(zip(own, other)):
        for est in ('network', 'prior'):
            table.add(f's{key}', f'{est} on HR', {'absrel': a, 'delta1': 0.5})
            table.add(f's{key}', f'{est} on {depth_accuracy.OTHER_SCENE}', {'absrel': b, 'delta1': 0.5})
    return depth_accuracy.image_use_notes(table)


def test_a_depth_network_that_reads_its_image_is_not_a_defect():
    notes = _accuracy_table([0.20, 0.24], [0.36, 0.38])
    assert not any(n.startswith('DEFECT') for n in notes)
    assert notes[0] == ('network: AbsRel 0.220 on its own HR image, 0.370 on another scene\'s image (gain from '
                        'reading the image: +0.150).')


def test_a_depth_network_that_outputs_a_layout_is_a_defect():
    # the demo's first depth network (300 CPU iterations): 0.363 on its own image, 0.367 on another scene's
    notes = _accuracy_table([0.363], [0.367])
    defects = [n for n in notes if n.startswith('DEFECT')]
    assert len(defects) == 1 and 'layout' in defects[0]
