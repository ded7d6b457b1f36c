"""The one-command demo: scene data with exact depth, the depth network, the SVKR stages, the diffusion prior,
SSR on that prior kept frozen, the benchmark table, what each condition contributes, depth accuracy, the prior's
evidence, and inference, on a CPU.

    python scripts/demo.py            # see README (stage times measured on the 2-core machine)
    python scripts/demo.py --quick    # a few minutes: a handful of iterations per stage (CI)

Steps (each one is the README command it stands for, run as a subprocess from the repository root):
1. ``python scripts/prepare_demo_data.py`` (RGB-D scenes with exact depth; skipped when ``datasets/demo`` holds
   them);
2. ``python basicsr/train.py -opt options/train_depth_demo.yml``: a small DPT trained from scratch on scenes,
   written as a ``save_pretrained`` folder (``experiments/train_Depth_demo/depth_model``) that every later
   stage loads as ``MonocularDepth(backend: dpt, model_path: <that folder>)``;
3. ``python basicsr/train.py -opt options/train_{dkenet,nbsr,svkr,prior,ssr}_demo.yml``: the SVKR stages, the
   diffusion prior (an autoencoder, then an unconditional UNet, written in Stable Diffusion's folder layout as
   ``experiments/train_Prior_demo/prior_model``) and SSR with that prior frozen (``pretrained_path``);
4. ``python basicsr/test.py -opt options/test_ssr_demo.yml`` (Bicubic | SVKR | SSR table);
5. ``python scripts/experiments/demo_conditions.py``: DKENet with exact / estimated / flat depth, NBSR with
   ground-truth / estimated / one mean kernel, beside the mean-kernel baseline;
6. ``python scripts/experiments/depth_accuracy.py``: the depth network against the prior on held-out scenes,
   on HR, on bicubic-upsampled LR and on the SVKR's SR output;
7. ``python scripts/experiments/prior_evidence.py``: the prior's noise error on held-out photographs against the
   same UNet untrained and against pixel-shuffled photographs, its autoencoder's reconstruction, a sample grid;
8. ``python scripts/export_model.py`` and ``python scripts/inference_ssr.py`` on a photograph that
   scikit-image ships (not part of the training data).
``--depth prior`` runs every stage with the weight-free depth prior instead of the trained network (the
tables then say so). The numbers of a demo come from toy-size networks and minutes of CPU training.
"""
import argparse
import os
import os.path as osp
import resource
import subprocess
import sys
import time

ROOT = osp.abspath(osp.join(osp.dirname(__file__), osp.pardir))

DEPTH_STAGE = 'options/train_depth_demo.yml'
DEPTH_MODEL = 'experiments/train_Depth_demo/depth_model'
# the stages whose option files load the depth network (network_g:depth_opt / network_svkr:depth_opt)
DEPTH_KEYS = {'options/train_svkr_demo.yml': 'network_g:depth_opt', 'options/test_svkr_demo.yml': 'network_g:depth_opt',
              'options/test_ssr_demo.yml': 'network_svkr:depth_opt'}
STAGES = (  # option file, experiment name (from the file)
    ('options/train_dkenet_demo.yml', 'train_DKENet_x4_demo'),
    ('options/train_nbsr_demo.yml', 'train_NBSR_x4_demo'),
    ('options/train_svkr_demo.yml', 'train_SVKR_x4_demo'),
    ('options/train_prior_demo.yml', 'train_Prior_demo'),
    ('options/train_ssr_demo.yml', 'ssr_demo'),
)
SVKR_STAGE, SSR_STAGE = 'options/train_svkr_demo.yml', 'options/train_ssr_demo.yml'
PRIOR_MODEL = 'experiments/train_Prior_demo/prior_model'  # written by options/train_prior_demo.yml
TEST_OPT = 'options/test_ssr_demo.yml'
TEST_NAME = 'test_SSR_x4_demo'
MODEL_DIR = 'models/ssr_demo_x4'
QUICK_ITERS = 6
QUICK_STEPS = 1  # sampling steps of the SSR test and inference with --quick


def _experiment_name(opt_path):
    with open(osp.join(ROOT, opt_path)) as f:
        for line in f:
            if line.startswith('name:'):
                return line.split(':', 1)[1].split('#')[0].strip()
    raise ValueError(f'{opt_path}: no name: line')


def _has_train_key(opt_path, key):
    with open(osp.join(ROOT, opt_path)) as f:
        return any(line.strip().startswith(f'{key}:') for line in f)


def _children_cpu():
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_step(title, args, log_dir, env, cpu_times=None):
    """Run ``python <args>`` from the root; on failure print the log tail and exit. Returns the wall seconds;
    ``cpu_times[title]`` gets the CPU seconds of the step (all its threads: on a shared machine the wall time
    grows with the load, the CPU time much less)."""
    os.makedirs(log_dir, exist_ok=True)
    slug = ''.join(c if c.isalnum() else '_' for c in title.lower()).strip('_')[:40]
    log_path = osp.join(log_dir, f'{len(os.listdir(log_dir)):02d}_{slug}.log')
    print(f'==> {title}\n    python {" ".join(args)}', flush=True)
    start, cpu0 = time.time(), _children_cpu()
    with open(log_path, 'w') as log:
        proc = subprocess.run([sys.executable] + args, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    took, cpu = time.time() - start, _children_cpu() - cpu0
    if cpu_times is not None:
        cpu_times[title] = cpu
    if proc.returncode != 0:
        with open(log_path) as f:
            tail = f.read()[-3000:]
        print(f'{tail}\n!! step "{title}" failed (exit {proc.returncode}, {took:.0f} s); full log: {log_path}', flush=True)
        sys.exit(proc.returncode or 1)
    print(f'    done in {took:.0f} s, {cpu:.0f} CPU s (log: {log_path})', flush=True)
    return took


def demo_photo(path, quick):
    """A real photograph as the LR input: scikit-image's ``chelsea`` (held out from the demo training
    photographs), area-downscaled to a small LR image."""
    import cv2
    from skimage import data as skdata
    name = 'chelsea'  # held out from the demo training photographs (prepare_demo_data.VAL_PHOTOS)
    rgb = getattr(skdata, name)()
    side = 48 if quick else 96
    h, w = rgb.shape[:2]
    f = side / max(h, w)
    small = cv2.resize(rgb, (max(8, round(w * f)), max(8, round(h * f))), interpolation=cv2.INTER_AREA)
    os.makedirs(osp.dirname(path), exist_ok=True)
    cv2.imwrite(path, cv2.cvtColor(small, cv2.COLOR_RGB2BGR))
    return path


def _depth_force(opt_path, depth):
    """``--force_yml`` entries that swap an option file's depth network for the prior (``--depth prior``)."""
    key = DEPTH_KEYS.get(opt_path)
    if key is None or depth != 'prior':
        return []
    return [f'{key}:backend=prior', f'{key}:model_path=~']


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--quick', action='store_true',
                        help=f'{QUICK_ITERS} iterations per stage, few sampling steps, no periodic validation (CI)')
    parser.add_argument('--reuse', action='store_true',
                        help='skip a training stage whose experiments/<name>/models/net_g_latest.pth exists')
    parser.add_argument('--rebuild-data', action='store_true', help='rebuild datasets/demo even if it exists')
    parser.add_argument('--depth', default='network', choices=('network', 'prior'),
                        help='network (default): train the depth network and use it everywhere; prior: the '
                        'weight-free heuristic instead (no depth stage; every table says so)')
    args = parser.parse_args(argv)

    env = dict(os.environ)
    env.setdefault('OMP_NUM_THREADS', '2')
    env['PYTHONPATH'] = ROOT + (os.pathsep + env['PYTHONPATH'] if env.get('PYTHONPATH') else '')
    log_dir = osp.join(ROOT, 'results', 'demo_logs')
    if osp.isdir(log_dir):
        for f in os.listdir(log_dir):
            os.remove(osp.join(log_dir, f))
    start = time.time()
    times, cpu = {}, {}

    data_root = osp.join(ROOT, 'datasets', 'demo')
    complete = all(osp.exists(osp.join(data_root, p)) for p in ('scenes.json', 'kernel_pca_k21.pth', 'val_x4'))
    if args.rebuild_data or not complete:
        cmd = ['scripts/prepare_demo_data.py'] + (['--overwrite'] if osp.exists(data_root) else [])
        times['data'] = run_step('Data: RGB-D scenes with exact depth (LMDBs), SV validation set, kernel PCA', cmd,
                                 log_dir, env, cpu)
    else:
        print(f'==> Data: {data_root} exists (--rebuild-data to rebuild)', flush=True)

    quick_force = []
    if args.quick:
        quick_force = ['--force_yml', f'train:total_iter={QUICK_ITERS}', 'val:val_freq=1000000',
                       'logger:save_checkpoint_freq=1000000', 'logger:print_freq=2']
    stages = ([(DEPTH_STAGE, None)] if args.depth == 'network' else []) + list(STAGES)
    for opt_path, _ in stages:
        name = _experiment_name(opt_path)
        latest = osp.join(ROOT, 'experiments', name, 'models', 'net_g_latest.pth')
        if args.reuse and osp.isfile(latest):
            print(f'==> Train {name}: reusing {latest}', flush=True)
            continue
        force = list(quick_force)
        for phase_key in ('vae_warmup_iter', 'vae_iter'):  # both phases of a two-phase stage run
            if args.quick and _has_train_key(opt_path, phase_key):
                force.append(f'train:{phase_key}={QUICK_ITERS // 2}')
        if args.quick and _has_train_key(opt_path, 'sample_steps'):  # the prior's validation sample grid
            force += ['val:num_samples=4', 'val:sample_steps=5']
        extra = _depth_force(opt_path, args.depth)
        if extra:
            force = (force or ['--force_yml']) + extra
        times[name] = run_step(f'Train {name}', ['basicsr/train.py', '-opt', opt_path] + force, log_dir, env, cpu)

    test_force = [f'diffusion:val_num_inference_steps={QUICK_STEPS}'] if args.quick else []
    test_force += _depth_force(TEST_OPT, args.depth)
    times['test'] = run_step('Test: Bicubic | SVKR | SSR on the demo SV set', ['basicsr/test.py', '-opt', TEST_OPT]
                             + (['--force_yml'] + test_force if test_force else []), log_dir, env, cpu)

    depth_args = (['--depth-backend', 'prior'] if args.depth == 'prior' else
                  ['--depth-backend', 'dpt', '--depth-model-path', DEPTH_MODEL])
    times['conditions'] = run_step('Conditions: DKENet depth / flat depth, NBSR GT / estimated / mean kernel',
                                   ['scripts/experiments/demo_conditions.py'] + depth_args, log_dir, env, cpu)
    accuracy_table = None
    if args.depth == 'network':
        num = 4 if args.quick else 16
        times['depth accuracy'] = run_step(
            'Depth accuracy: network vs prior on held-out scenes (HR, LR bicubic, SVKR SR)',
            ['scripts/experiments/depth_accuracy.py', '--model-path', DEPTH_MODEL, '--num', str(num), '--size', '128',
             '--svkr-opt', 'options/test_svkr_demo.yml', '--output', 'results/demo_depth_accuracy'], log_dir, env, cpu)
        accuracy_table = osp.join(ROOT, 'results', 'demo_depth_accuracy', 'heldout_scenes_metrics.md')

    evidence_args = ['--samples', '4', '--steps', '5', '--crops', '1'] if args.quick else []
    times['prior evidence'] = run_step(
        'Prior evidence: noise error on held-out photographs (trained / untrained / pixel-shuffled), samples',
        ['scripts/experiments/prior_evidence.py', '--prior', PRIOR_MODEL, '--output', 'results/prior_evidence']
        + evidence_args, log_dir, env, cpu)
    evidence_table = osp.join(ROOT, 'results', 'prior_evidence', 'prior_evidence.md')

    ssr_exp, svkr_exp = (f'experiments/{_experiment_name(stage)}' for stage in (SSR_STAGE, SVKR_STAGE))
    run_step('Export: one model folder (SSR + SVKR)', ['scripts/export_model.py', '-i', ssr_exp, '--svkr', svkr_exp,
                                                       '-o', MODEL_DIR, '--overwrite'], log_dir, env, cpu)

    out_dir = osp.join(ROOT, 'results', 'demo_inference')
    photo = demo_photo(osp.join(ROOT, 'results', 'demo_inputs', 'chelsea_lr.png'), args.quick)
    steps = ['--steps', str(QUICK_STEPS)] if args.quick else []
    times['inference'] = run_step('Inference on a demo photograph',
                                  ['scripts/inference_ssr.py', '--model_path', MODEL_DIR, '-i', photo, '-o', out_dir,
                                   '--save-maps', '-q', '--device', 'cpu'] + steps, log_dir, env, cpu)
    run_step('Inference, SVKR only', ['scripts/inference_ssr.py', '--model_path', MODEL_DIR, '-i', photo, '-o',
                                      osp.join(out_dir, 'svkr_only'), '--svkr-only', '-q', '--device', 'cpu'],
             log_dir, env, cpu)

    table = osp.join(ROOT, 'results', TEST_NAME, 'demo_val_x4_metrics.md')
    conditions = osp.join(ROOT, 'results', 'demo_conditions', 'val_x4_conditions.md')
    print('\n' + '=' * 78)
    print(f'Demo finished in {time.time() - start:.0f} s ({", ".join(f"{k} {v:.0f} s" for k, v in times.items())}); '
          f'CPU seconds of all steps: {sum(cpu.values()):.0f}')
    print(f'  depth:                {"the trained depth network " + DEPTH_MODEL if args.depth == "network" else "the weight-free PRIOR (--depth prior)"}')
    print(f'  input photo (LR):     {photo}')
    print(f'  SSR result:           {osp.join(out_dir, "chelsea_lr.png")}')
    print(f'  SVKR result:          {osp.join(out_dir, "svkr_only", "chelsea_lr.png")}')
    print(f'  depth map:            {osp.join(out_dir, "chelsea_lr_depth.png")}')
    print(f'  kernel-variance map:  {osp.join(out_dir, "chelsea_lr_kernel_var.png")}')
    print(f'  model folder:         {osp.join(ROOT, MODEL_DIR)} (SSRPipeline.from_pretrained)')
    print(f'  metrics table:        {table} (and .csv)')
    print(f'  conditions table:     {conditions} (and .csv)')
    if accuracy_table:
        print(f'  depth accuracy:       {accuracy_table} (and .csv)')
    print(f'  diffusion prior:      {osp.join(ROOT, PRIOR_MODEL)} (Stable Diffusion layout, frozen under SSR)')
    print(f'  prior evidence:       {evidence_table} (and .csv), samples: '
          f'{osp.join(ROOT, "results", "prior_evidence", "samples.png")}')
    print(f'  side-by-side crops:   {osp.join(ROOT, "results", TEST_NAME, "demo_val_x4_crops")}/')
    print(f'  training logs:        experiments/<name>/, tensorboard --logdir tb_logger; step logs: {log_dir}/')
    for path in (table, conditions, accuracy_table, evidence_table):
        if path and osp.isfile(path):
            print('\n' + open(path).read())
    print(f'Run it on your own images:\n  python scripts/inference_ssr.py --model_path {MODEL_DIR} '
          '-i <image or folder> -o <output folder>')
    return 0


if __name__ == '__main__':
    sys.exit(main())
