"""scripts/benchmarks/gpu_suite.sh runs every GPU measurement; ``--device cpu --tiny`` runs the same code paths
on tiny configs. Here: the shell entry point end to end on the CPU, and the table it prints and writes."""
import os
import os.path as osp
import subprocess
import sys

from conftest import subprocess_env

ROOT = osp.abspath(osp.join(osp.dirname(__file__), osp.pardir))
SECTIONS = ('sampling', 'overhead', 'tiled memory', 'training', 'degradation')


def test_a_partial_table_names_the_sections_it_did_not_reach():
    from ssr_app.benchmarks import gpu_suite
    suite = gpu_suite.Suite(gpu_suite.torch.device('cpu'), tiny=True)
    suite.add('sampling', 'SSR', 'tiny', '1.00 s/image')
    partial = gpu_suite.table(suite, 'CPU', 1.0, [], pending=['training', 'degradation'])
    assert "PARTIAL: the run stopped before the sections training, degradation." in partial
    assert "| sampling | SSR | tiny | 1.00 s/image |" in partial
    assert 'PARTIAL' not in gpu_suite.table(suite, 'CPU', 1.0, [])


def test_accelerators_synthesise_a_batch_in_a_few_operator_calls():
    # the launch count of the GPU synthesis (kernels + blur) for the stage-1 batch, counted on meta tensors
    from ssr_app.benchmarks import bench_batch_degradation
    counts = bench_batch_degradation.count_accelerator_ops(16, 192, 4)
    assert counts['synthesis'] < 100 and counts['blur'] < 20 and counts['blur loop'] > 40 * counts['blur'], counts


def test_the_sampling_benchmark_times_every_loop_at_every_place_in_a_round():
    # a fixed order favoured whichever loop ran at the same place every round (docs/diffusion.md)
    from ssr_app.benchmarks.bench_ssr_sampling import rotated
    loops = ['bare', 'ssr', 'conditions', 'apart']
    orders = [rotated(loops, r) for r in range(8)]
    assert all(sorted(order) == sorted(loops) for order in orders)
    for place in range(len(loops)):
        assert sorted(order[place] for order in orders) == sorted(loops * 2)


def test_gpu_suite_tiny_on_cpu_prints_and_writes_the_table(tmp_path):
    out = tmp_path / 'suite.md'
    env = subprocess_env(OMP_NUM_THREADS='1', PATH=osp.dirname(sys.executable) + os.pathsep + os.environ.get('PATH', ''))
    proc = subprocess.run(['bash', osp.join(ROOT, 'scripts', 'benchmarks', 'gpu_suite.sh'), '--device', 'cpu', '--tiny',
                           '--out', str(out)], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:]
    text = out.read_text()
    assert text in proc.stdout  # the same table is printed
    assert text.startswith('# GPU suite: CPU')
    rows = [line.split(' | ') for line in text.splitlines() if line.startswith('| ') and '---' not in line][1:]
    assert not any('FAILED' in r[1] for r in rows), text
    assert {r[0].lstrip('| ') for r in rows} == set(SECTIONS)
    measured = ' '.join(r[1] for r in rows)
    for needle in ('fp16', 'bf16', 'few-step', 'SSR sampling (with SVKR) / bare UNet', 'AMF layers one by one',
                   'SSR once per image: SVKR / VAE encode',
                   'DKENet with depth branch', 'operator calls',
                   'SVKR', 'SSR 32² LR input', 'DKENetModel', 'NBSRModel', 'SVKRModel', 'SSRModel',
                   'degrade_on: model', 'batch synthesis', 'batch synthesis alone, by stage'):
        assert needle in measured, f'{needle!r} missing from the table:\n{text}'
    # every training row ran both AMP precisions and reports a finite loss
    for model in ('DKENetModel', 'NBSRModel', 'SVKRModel', 'SSRModel'):
        amps = sorted(r[1].split('amp ')[1] for r in rows if r[1].startswith(model))
        assert amps == ['bf16', 'fp16']
    for r in rows:
        if r[0].lstrip('| ') == 'training':
            assert 'nan' not in r[4] and 'inf' not in r[4]
        value = r[3].split()[0].rstrip('×%')
        assert float(value) > 0, r
