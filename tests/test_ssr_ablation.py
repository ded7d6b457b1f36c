"""scripts/experiments/ssr_ablation.py --tiny: every arm trained and scored, each removal, Figs. 8/9, the
perception-distortion rows, the tables, the plots and the summary line (toy sizes; the numbers mean nothing)."""
import json
import os.path as osp
import re

import cv2
import pytest

from conftest import run_python

SUMMARY = re.compile(r'^full vs LR only: [+-]\d+\.\d\d dB PSNR; SSR vs SVKR at fidelity setting: [+-]\d+\.\d\d dB; '
                     r'removing depth: [+-]\d+\.\d\d dB, removing kernel: [+-]\d+\.\d\d dB$')


@pytest.fixture(scope='module')
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp('ablation')
    proc = run_python(['scripts/experiments/ssr_ablation.py', '--tiny', '--threads', '1', '--out', str(out)],
                      timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:]
    with open(out / 'ssr_ablation.json') as f:
        return out, proc.stdout, json.load(f)


def test_the_run_ends_with_the_summary_line(tiny_run):
    _, stdout, _ = tiny_run
    assert SUMMARY.match(stdout.strip().splitlines()[-1]), stdout.strip().splitlines()[-1]


def test_every_arm_is_trained_and_scored_with_each_of_its_conditions_removed(tiny_run):
    from ssr_app.experiments import ssr_ablation as ablation
    _, _, results = tiny_run
    assert list(results['arms']) == list(ablation.ARMS)
    trainable = {}
    for arm, (_, modalities, _, _, _) in ablation.ARMS.items():
        ev = results['arms'][arm]['0']
        for set_name in ablation.TEST_SETS:
            assert ev[set_name]['metrics']['psnr'] > 5, (arm, set_name)
        assert sorted(ev['scenes']['removed']) == sorted(modalities), arm
        trainable[arm] = results['train'][arm][0]['trainable']
    # the regimes and fusion methods train what they should: from scratch far more, concat far less
    assert trainable['scratch'] > 3 * trainable['full'] > 3 * trainable['concat']
    # an extra seed (tiny: the full arm's seed 1) is trained after every arm's first seed and enters the means;
    # Figs. 8/9 and the PD curve are measured on the first seed only
    assert list(results['arms']['full']) == ['0', '1'] and len(results['train']['full']) == 2
    assert 'deviation' not in results['arms']['full']['1'] and 'pd' not in results['arms']['full']['1']
    full = results['arms']['full']['0']
    assert list(full['deviation']['kernel']) == ['0.7', '1.4'] and list(full['deviation']['depth']) == ['0.63', '1.6']
    for arm in ('full', 'full_it'):
        assert [(r['steps'], r['strength'], r['vae_residual']) for r in results['arms'][arm]['0']['pd']] == \
            [(1, 1.0, False), (2, 0.5, True)]
        assert results['settings'][arm]['0']['fidelity'] is not None


def test_the_regimes_differ_in_the_unets_starting_weights_only(tmp_path):
    from ssr_app.experiments import ssr_ablation as abl
    from ssr_pipelines.builder import SCHEDULE_KEYS, scheduler_from_options
    res = abl.tiny_resources(str(tmp_path / 'res'))
    cfg = abl.MODES['tiny']
    schedules = {}
    for arm in ('full', 'scratch'):
        opt = abl.arm_options(arm, res, cfg, 0, str(tmp_path / arm))
        sched = scheduler_from_options(opt['diffusion'], opt['network_g'].get('pretrained_path'))
        schedules[arm] = {k: sched.config[k] for k in SCHEDULE_KEYS}
    assert schedules['full']['prediction_type'] == 'v_prediction' and schedules['full']['num_train_timesteps'] == 100
    assert schedules['scratch'] == schedules['full']


def test_tables_plots_and_metrics_that_could_not_run(tiny_run):
    out, _, results = tiny_run
    with open(out / 'ssr_ablation.md') as f:
        table = f.read()
    for label in ('Bicubic', 'SVKR', 'LR only', 'fusion sft', 'fusion concat', 'from scratch', 'ground-truth maps'):
        assert label in table
    assert '| LR + kernel + depth, SVKR T = 3 (SSR) | 0, 1 |' in table  # the seeds behind each row
    # every point of the perception-distortion grid is a row
    for setting in ('1/1', '2/0.5+r'):
        for label in ('LR + kernel + depth, SVKR T = 3 (SSR)', 'SSR, LR encoder reads Iᵀ'):
            assert f'| {label} | {setting} |' in table
    # NIQE needs two 96-pixel blocks: the toy images are smaller, and the table says so
    assert 'niqe: n/a' in table
    for name in ('deviation.png', 'pd_curve.png'):
        img = cv2.imread(str(out / name))
        assert img is not None and img.shape[0] > 100 and img.shape[1] > 300
    for metric, reason in results['not_run'].items():
        assert metric in ('lpips', 'musiq', 'clipiqa') and reason and f'{metric} ({reason})' in table


def test_condition_use_measures_every_trained_arm_at_the_network(tiny_run):
    out, _, results = tiny_run
    proc = run_python(['scripts/experiments/ssr_condition_use.py', '--tiny', '--threads', '1', '--out', str(out)],
                      timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:]
    with open(out / 'condition_use.json') as f:
        use = json.load(f)
    assert set(use['arms']) == set(results['arms'])
    for arm, entry in use['arms'].items():
        from ssr_app.experiments.ssr_ablation import ARMS
        assert set(entry['prediction_change_pct']) == set(ARMS[arm][1])
        # the objective on training crops and on held-out crops, at every timestep
        for key in ('loss_train', 'loss_held_out'):
            assert list(entry[key]) == ['t=0.1T', 't=0.5T', 't=0.9T'] and all(v > 0 for v in entry[key].values())
        assert entry['loss_train'] != entry['loss_held_out']
    with open(out / 'condition_use.md') as f:
        assert '| LR + kernel + depth, SVKR T = 3 (SSR) | ' in f.read().split('Denoising loss')[1]
    relation = use['depth_blur_relation']
    assert relation['scenes'] >= 1 and -1 <= relation['pooled_r'] <= 1
    assert 'Depth against blur' in open(out / 'condition_use.md').read()


def test_depth_blur_relation_sees_a_sign_that_flips_between_scenes():
    """Two scenes whose blur grows with depth in one and shrinks in the other: pooled r near 0, |r| per scene 1."""
    import torch
    from ssr_app.experiments.ssr_condition_use import depth_blur_relation
    g = torch.Generator().manual_seed(0)
    depth = torch.rand(8, 1, 4, 4, generator=g)
    width = torch.cat([depth[:4], 1 - depth[4:]])
    code = torch.zeros(8, 10, 4, 4)
    code[:, 0] = width[:, 0]
    estimated = depth * 0.5 + 0.2  # an estimate that is a linear function of the truth: r = 1
    rel = depth_blur_relation({'gt_depth': depth, 'gt_code': code, 't0_depth': estimated}, crops_per_scene=4)
    assert rel['estimated_vs_true_r'] == pytest.approx(1.0, abs=1e-5)
    assert rel['estimated_vs_width_r'] == pytest.approx(rel['pooled_r'], abs=1e-5)
    assert rel['scenes'] == 2
    assert rel['scene_abs_r_mean'] == pytest.approx(1.0, abs=1e-5)
    assert rel['scene_r_mean'] == pytest.approx(0.0, abs=1e-5)
    assert abs(rel['pooled_r']) < 0.5


def test_a_focus_plane_outside_the_depth_range_is_refused(capsys):
    from ssr_app.experiments import ssr_ablation as abl
    with pytest.raises(SystemExit):
        abl.main(['--tiny', '--focus-plane', '1.5', '--out', '/nonexistent/never_made'])
    assert '--focus-plane 1.5' in capsys.readouterr().err
