"""The one-command demo: data, the four training stages, the benchmark table and inference, on a CPU.

    python scripts/demo.py            # about 15 minutes on 2 CPU cores
    python scripts/demo.py --quick    # a few minutes: a handful of iterations per stage (CI)

Steps (each one is the README command it stands for, run as a subprocess from the repository root):
1. ``python scripts/prepare_demo_data.py`` (skipped when ``datasets/demo`` exists);
2. ``python basicsr/train.py -opt options/train_{dkenet,nbsr,svkr,ssr}_demo.yml``;
3. ``python basicsr/test.py -opt options/test_ssr_demo.yml`` (Bicubic | SVKR | SSR table);
4. ``python scripts/export_model.py -i experiments/ssr_demo --svkr experiments/train_SVKR_x4_demo -o
   models/ssr_demo_x4`` (one self-contained model folder);
5. ``python scripts/inference_ssr.py --model_path models/ssr_demo_x4 -i <demo photo> -o results/demo_inference
   --save-maps`` on a photograph that scikit-image ships (not part of the training data).
The numbers of a demo are a plumbing check of the whole method on toy-size networks, not a result.
"""
import argparse
import os
import os.path as osp
import subprocess
import sys
import time

ROOT = osp.abspath(osp.join(osp.dirname(__file__), osp.pardir))

STAGES = (  # option file, experiment name (from the file)
    ('options/train_dkenet_demo.yml', 'train_DKENet_x4_demo'),
    ('options/train_nbsr_demo.yml', 'train_NBSR_x4_demo'),
    ('options/train_svkr_demo.yml', 'train_SVKR_x4_demo'),
    ('options/train_ssr_demo.yml', 'ssr_demo'),
)
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


def run_step(title, args, log_dir, env):
    """Run ``python <args>`` from the root; on failure print the log tail and exit."""
    os.makedirs(log_dir, exist_ok=True)
    slug = ''.join(c if c.isalnum() else '_' for c in title.lower()).strip('_')[:40]
    log_path = osp.join(log_dir, f'{len(os.listdir(log_dir)):02d}_{slug}.log')
    print(f'==> {title}\n    python {" ".join(args)}', flush=True)
    start = time.time()
    with open(log_path, 'w') as log:
        proc = subprocess.run([sys.executable] + args, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    took = time.time() - start
    if proc.returncode != 0:
        with open(log_path) as f:
            tail = f.read()[-3000:]
        print(f'{tail}\n!! step "{title}" failed (exit {proc.returncode}, {took:.0f} s); full log: {log_path}', flush=True)
        sys.exit(proc.returncode or 1)
    print(f'    done in {took:.0f} s (log: {log_path})', flush=True)
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


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--quick', action='store_true',
                        help=f'{QUICK_ITERS} iterations per stage, few sampling steps, no periodic validation (CI)')
    parser.add_argument('--reuse', action='store_true',
                        help='skip a training stage whose experiments/<name>/models/net_g_latest.pth exists')
    parser.add_argument('--rebuild-data', action='store_true', help='rebuild datasets/demo even if it exists')
    args = parser.parse_args(argv)

    env = dict(os.environ)
    env.setdefault('OMP_NUM_THREADS', '2')
    env['PYTHONPATH'] = ROOT + (os.pathsep + env['PYTHONPATH'] if env.get('PYTHONPATH') else '')
    log_dir = osp.join(ROOT, 'results', 'demo_logs')
    if osp.isdir(log_dir):
        for f in os.listdir(log_dir):
            os.remove(osp.join(log_dir, f))
    start = time.time()
    times = {}

    data_root = osp.join(ROOT, 'datasets', 'demo')
    if args.rebuild_data or not osp.isdir(data_root) or not osp.isfile(osp.join(data_root, 'kernel_pca_k21.pth')):
        cmd = ['scripts/prepare_demo_data.py'] + (['--overwrite'] if osp.exists(data_root) else [])
        times['data'] = run_step('Data: demo LMDBs, SV validation set, kernel PCA', cmd, log_dir, env)
    else:
        print(f'==> Data: {data_root} exists (--rebuild-data to rebuild)', flush=True)

    quick_force = []
    if args.quick:
        quick_force = ['--force_yml', f'train:total_iter={QUICK_ITERS}', 'val:val_freq=1000000',
                       'logger:save_checkpoint_freq=1000000', 'logger:print_freq=2']
    for opt_path, _ in STAGES:
        name = _experiment_name(opt_path)
        latest = osp.join(ROOT, 'experiments', name, 'models', 'net_g_latest.pth')
        if args.reuse and osp.isfile(latest):
            print(f'==> Train {name}: reusing {latest}', flush=True)
            continue
        force = list(quick_force)
        if args.quick and _has_train_key(opt_path, 'vae_warmup_iter'):
            force.append(f'train:vae_warmup_iter={QUICK_ITERS // 2}')  # both phases of the SSR stage run
        times[name] = run_step(f'Train {name}', ['basicsr/train.py', '-opt', opt_path] + force, log_dir, env)

    test_force = ['--force_yml', f'diffusion:val_num_inference_steps={QUICK_STEPS}'] if args.quick else []
    times['test'] = run_step('Test: Bicubic | SVKR | SSR on the demo SV set', ['basicsr/test.py', '-opt', TEST_OPT]
                             + test_force, log_dir, env)

    ssr_exp, svkr_exp = (f'experiments/{_experiment_name(STAGES[i][0])}' for i in (3, 2))
    run_step('Export: one model folder (SSR + SVKR)', ['scripts/export_model.py', '-i', ssr_exp, '--svkr', svkr_exp,
                                                       '-o', MODEL_DIR, '--overwrite'], log_dir, env)

    out_dir = osp.join(ROOT, 'results', 'demo_inference')
    photo = demo_photo(osp.join(ROOT, 'results', 'demo_inputs', 'chelsea_lr.png'), args.quick)
    steps = ['--steps', str(QUICK_STEPS)] if args.quick else []
    times['inference'] = run_step('Inference on a demo photograph',
                                  ['scripts/inference_ssr.py', '--model_path', MODEL_DIR, '-i', photo, '-o', out_dir,
                                   '--save-maps', '-q', '--device', 'cpu'] + steps, log_dir, env)
    run_step('Inference, SVKR only', ['scripts/inference_ssr.py', '--model_path', MODEL_DIR, '-i', photo, '-o',
                                      osp.join(out_dir, 'svkr_only'), '--svkr-only', '-q', '--device', 'cpu'],
             log_dir, env)

    table = osp.join(ROOT, 'results', TEST_NAME, 'demo_val_x4_metrics.md')
    print('\n' + '=' * 78)
    print(f'Demo finished in {time.time() - start:.0f} s ({", ".join(f"{k} {v:.0f} s" for k, v in times.items())})')
    print(f'  input photo (LR):     {photo}')
    print(f'  SSR result:           {osp.join(out_dir, "chelsea_lr.png")}')
    print(f'  SVKR result:          {osp.join(out_dir, "svkr_only", "chelsea_lr.png")}')
    print(f'  depth map:            {osp.join(out_dir, "chelsea_lr_depth.png")}')
    print(f'  kernel-variance map:  {osp.join(out_dir, "chelsea_lr_kernel_var.png")}')
    print(f'  model folder:         {osp.join(ROOT, MODEL_DIR)} (SSRPipeline.from_pretrained)')
    print(f'  metrics table:        {table} (and .csv)')
    print(f'  side-by-side crops:   {osp.join(ROOT, "results", TEST_NAME, "demo_val_x4_crops")}/')
    print(f'  training logs:        experiments/<name>/, tensorboard --logdir tb_logger; step logs: {log_dir}/')
    if osp.isfile(table):
        print('\n' + open(table).read())
    print(f'Run it on your own images:\n  python scripts/inference_ssr.py --model_path {MODEL_DIR} '
          '-i <image or folder> -o <output folder>')
    return 0


if __name__ == '__main__':
    sys.exit(main())
