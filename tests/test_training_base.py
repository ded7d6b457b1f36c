"""SSRBaseModel, the one training base: mixed precision on the CPU, the renamed option keys, and non-finite
steps skipped on every DDP rank together (two gloo processes)."""
import copy
import json
import os.path as osp
import textwrap

import pytest
import torch

import ssr_arch  # noqa: F401  (registers)
import ssr_models  # noqa: F401
from basicsr.models import build_model
from conftest import run_python
from ssr_utils.errors import OptionError
from test_svkr_models import SCALE, TINY_SR, _TinySet, _batches, _opt


def _nbsr_opt(tmp_path, **train):
    return _opt(tmp_path, 'NBSRModel', dict(TINY_SR, scale=SCALE), dict({'pixel_opt': {'type': 'L1Loss'}}, **train),
                {})


@pytest.mark.parametrize('section, key, value, new', [
    ('train', 'use_amp', True, 'train:amp'),
    ('train', 'amp_dtype', 'bfloat16', 'train:amp'),
    ('train', 'max_nonfinite', 20, 'train:max_nonfinite_steps'),
    ('diffusion', 'amp', 'bf16', 'train:amp'),
])
def test_old_keys_stop_naming_the_new_one(tmp_path, section, key, value, new):
    opt = _nbsr_opt(tmp_path)
    opt.setdefault(section, {})[key] = value
    with pytest.raises(OptionError) as err:
        build_model(opt)
    assert err.value.key == f'{section}:{key}' and new in err.value.problem
    # the launcher's start-up check says the same before any folder is made
    from ssr_utils.option_check import check_options
    with pytest.raises(OptionError, match=f'{section}:{key}'):
        check_options(opt)


def test_bad_amp_value(tmp_path):
    with pytest.raises(OptionError, match='train:amp'):
        build_model(_nbsr_opt(tmp_path, amp='fp8'))


def _dtypes_of_a_forward(model, batch):
    seen = []
    hook = model.bare_g.conv_first.register_forward_hook(lambda m, a, out: seen.append(out.dtype))
    model.feed_data(batch)
    model.optimize_parameters(1)
    hook.remove()
    return seen


def test_bf16_autocast_trains_on_cpu(tmp_path):
    torch.manual_seed(0)
    model = build_model(_nbsr_opt(tmp_path, amp='bf16'))
    assert model.amp_dtype is torch.bfloat16 and model.scaler is None  # bf16 needs no loss scaling
    before = [p.detach().clone() for p in model.net_g.parameters()]
    assert _dtypes_of_a_forward(model, _batches(_TinySet(2))[0]) == [torch.bfloat16]
    assert torch.isfinite(model.last_loss) and model.nonfinite_total == 0
    assert all(p.dtype == torch.float32 for p in model.net_g.parameters())  # the weights stay float32
    assert any(not torch.equal(p.detach(), b) for p, b in zip(model.net_g.parameters(), before))
    # and without amp the same forward runs in float32
    assert _dtypes_of_a_forward(build_model(_nbsr_opt(tmp_path)), _batches(_TinySet(2))[0]) == [torch.float32]


def test_fp16_with_a_grad_scaler_on_cpu_saves_and_resumes_it(tmp_path):
    torch.manual_seed(0)
    opt = _nbsr_opt(tmp_path, amp='fp16')
    model = build_model(copy.deepcopy(opt))
    assert isinstance(model.scaler, torch.amp.GradScaler) and model.scaler.is_enabled()
    batch = _batches(_TinySet(2))[0]
    assert _dtypes_of_a_forward(model, batch) == [torch.float16]
    # a scale that overflows the fp16 gradients: the scaler skips the step itself and lowers its scale
    model.scaler.update(new_scale=2.0**40)
    before = {k: v.clone() for k, v in model.net_g.state_dict().items()}
    model.feed_data(batch)
    model.optimize_parameters(2)
    assert model.scaler.get_scale() < 2.0**40
    assert all(torch.equal(v, before[k]) for k, v in model.net_g.state_dict().items())
    model.feed_data(batch)
    model.optimize_parameters(3)
    model.save(0, 3)
    state = torch.load(osp.join(opt['path']['training_states'], '3.state'), map_location='cpu', weights_only=False)
    assert state['grad_scaler']['scale'] == model.scaler.get_scale()
    opt['path']['pretrain_network_g'] = osp.join(opt['path']['models'], 'net_g_3.pth')
    resumed = build_model(opt)
    resumed.resume_training(state)
    assert resumed.scaler.get_scale() == model.scaler.get_scale()


def test_ssr_model_trains_and_samples_in_bf16_on_cpu(tmp_path, pca_path):
    from test_ssr_model import _batch, _opt as ssr_opt
    model = build_model(copy.deepcopy(ssr_opt(tmp_path, pca_path, amp='bf16')))
    assert model.pipeline.dtype is torch.bfloat16  # validation samples in the training precision
    seen = []
    hook = model.bare_g.unet.conv_in.register_forward_hook(lambda m, a, out: seen.append(out.dtype))
    model.feed_data(_batch())
    model.optimize_parameters(1)
    assert seen == [torch.bfloat16] and torch.isfinite(model.last_loss)
    data = _batch(batch=1)
    out = model.sr(data['lq'], depth=data['depth_lq'], kernel=data['kernel'])['sr']
    hook.remove()
    assert seen[-1] == torch.bfloat16 and out.dtype == torch.float32 and torch.isfinite(out).all()


DDP_WORKER = textwrap.dedent('''
    import json, os, sys
    import torch
    import torch.distributed as dist
    import torch.multiprocessing as mp

    def worker(rank, root, pca_path, out_dir):
        sys.path.insert(0, os.path.join(root, 'tests'))
        from ssr_utils import compat
        compat.apply()
        import ssr_arch, ssr_models  # noqa: F401
        from basicsr.models import build_model
        from test_ssr_model import _batch, _opt
        import pathlib
        dist.init_process_group('gloo', init_method='file://' + os.path.join(out_dir, 'rendezvous'), rank=rank,
                                world_size=2)
        tmp = pathlib.Path(out_dir) / f'rank{rank}'
        tmp.mkdir()
        opt = _opt(tmp, pca_path, max_nonfinite_steps=5)
        opt['network_g']['freeze_vae'] = True  # DDP trains no VAE
        opt.update(dist=True, rank=rank, world_size=2)
        model = build_model(opt)
        for it in range(1, 5):
            data = _batch(seed=10 * it + rank)
            if it == 2 and rank == 1:  # one rank alone meets a non-finite loss
                data['gt'][0, 0, 0, 0] = float('nan')
            model.feed_data(data)
            model.optimize_parameters(it)
        weights = sum(float(p.double().sum()) for p in model.bare_g.parameters() if p.requires_grad)
        with open(os.path.join(out_dir, f'rank{rank}.json'), 'w') as f:
            json.dump(dict(skipped=model.nonfinite_total, streak=model.nonfinite_streak, weights=weights), f)
        dist.barrier()
        dist.destroy_process_group()

    if __name__ == '__main__':
        mp.spawn(worker, args=tuple(sys.argv[1:4]), nprocs=2, join=True)
''')


def test_ddp_ranks_skip_a_non_finite_step_together(tmp_path, pca_path):
    from conftest import ROOT
    script = tmp_path / 'ddp_worker.py'
    script.write_text(DDP_WORKER)
    proc = run_python([str(script), ROOT, pca_path, str(tmp_path)], timeout=400)
    assert proc.returncode == 0, proc.stdout[-4000:]
    ranks = [json.loads((tmp_path / f'rank{r}.json').read_text()) for r in range(2)]
    # both ranks skipped iteration 2 (only rank 1 saw the NaN), went on, and hold the same weights
    assert [r['skipped'] for r in ranks] == [1, 1] and [r['streak'] for r in ranks] == [0, 0]
    assert ranks[0]['weights'] == ranks[1]['weights']
