"""Shared training/validation machinery of the SVKR stage models (DKENetModel, NBSRModel, SVKRModel).

Not registered itself. What it adds to BasicSR's ``BaseModel``:

- EMA with BasicSR's convention (``train.ema_decay``; ``net_g_ema`` saved as ``params_ema``).
- AMP on CUDA only (``train.use_amp``, ``train.amp_dtype: float16 | bfloat16``); the GradScaler state is
  saved in the ``.state`` file and restored on resume. On CPU the option is ignored (logged once).
- Gradient clipping by global norm (``train.grad_clip``, 0 / absent = off).
- Non-finite losses or gradients: the step is skipped and the iteration logged; after
  ``train.max_nonfinite_steps`` (default 100) consecutive skips training stops. Networks with
  non-finite weights are never written to disk.
- One validation routine for all three models: metrics from ``val.metrics`` (image metrics on the SR
  image, ``calculate_kernel_psnr`` on the kernel map), per iterate when the model has iterates, and the
  SR image, the depth map and a kernel-variance heat map saved side by side and logged to TensorBoard.
"""
import os.path as osp
from collections import OrderedDict, defaultdict
from copy import deepcopy

import torch
from torch.nn import functional as F
from tqdm import tqdm

from basicsr.archs import build_network
from basicsr.losses import build_loss
from basicsr.metrics import calculate_metric
from basicsr.models.base_model import BaseModel
from basicsr.utils import get_root_logger, imwrite, tensor2img
from ssr_arch.depth_arch import depth_note, depth_sources
from ssr_utils import kernel_metrics  # noqa: F401  (registers calculate_kernel_psnr)
from ssr_utils.errors import OptionError
from ssr_utils.kernel_metrics import KERNEL_METRICS
from ssr_utils.visualize import add_tb_image, depth_image, kernel_variance, kernel_variance_image

_AMP_DTYPES = {'float16': torch.float16, 'bfloat16': torch.bfloat16}


def all_finite(net):
    return all(bool(torch.isfinite(p).all()) for p in net.state_dict().values() if torch.is_floating_point(p))


class KernelSRBaseModel(BaseModel):
    """Base of the SVKR stage models; subclasses implement ``feed_data``, ``compute_losses`` and
    ``run_network`` (which returns the output dict used by validation)."""

    def __init__(self, opt):
        super().__init__(opt)
        self.net_g = build_network(deepcopy(opt['network_g']))
        self.net_g = self.model_to_device(self.net_g)
        self.print_network(self.net_g)
        load_path = self.opt['path'].get('pretrain_network_g')
        if load_path is not None:
            param_key = self.opt['path'].get('param_key_g', 'params')
            self.load_network(self.net_g, load_path, self.opt['path'].get('strict_load_g', True), param_key)
        self._depth_net = None
        self.output = None
        if self.is_train:
            self.init_training_settings()

    # ------------------------------------------------------------------------------------------ training
    def init_training_settings(self):
        logger = get_root_logger()
        self.net_g.train()
        train_opt = self.opt['train']
        self.ema_decay = train_opt.get('ema_decay', 0) or 0
        if self.ema_decay > 0:
            logger.info(f'Use Exponential Moving Average with decay: {self.ema_decay}')
            self.net_g_ema = build_network(deepcopy(self.opt['network_g'])).to(self.device)
            load_path = self.opt['path'].get('pretrain_network_g')
            if load_path is not None:
                self.load_network(self.net_g_ema, load_path, self.opt['path'].get('strict_load_g', True), 'params_ema')
            else:
                self.model_ema(0)
            self.net_g_ema.eval()
            for p in self.net_g_ema.parameters():
                p.requires_grad_(False)

        self.setup_losses(train_opt)

        grad_clip = train_opt.get('grad_clip', 0) or 0
        if not isinstance(grad_clip, (int, float)) or grad_clip < 0:
            raise OptionError('train:grad_clip', grad_clip, 'expected a max gradient norm >= 0 (0 = off)')
        self.grad_clip = float(grad_clip)
        amp_dtype = train_opt.get('amp_dtype', 'float16')
        if amp_dtype not in _AMP_DTYPES:
            raise OptionError('train:amp_dtype', amp_dtype, f'expected one of {", ".join(_AMP_DTYPES)}')
        self.amp_dtype = _AMP_DTYPES[amp_dtype]
        self.use_amp = bool(train_opt.get('use_amp', False)) and self.device.type == 'cuda'
        if train_opt.get('use_amp', False) and not self.use_amp:
            logger.info('train:use_amp is set but the model runs on CPU: AMP is off.')
        self.scaler = torch.amp.GradScaler('cuda', enabled=self.use_amp and self.amp_dtype == torch.float16)
        self.max_nonfinite_steps = int(train_opt.get('max_nonfinite_steps', 100))
        self.nonfinite_streak = 0
        self.nonfinite_total = 0

        self.setup_optimizers()
        self.setup_schedulers()

    def setup_losses(self, train_opt):
        raise NotImplementedError

    def build_optional_loss(self, train_opt, key):
        if train_opt.get(key):
            return build_loss(deepcopy(train_opt[key])).to(self.device)
        return None

    def setup_optimizers(self):
        train_opt = self.opt['train']
        logger = get_root_logger()
        params = []
        for name, p in self.net_g.named_parameters():
            if p.requires_grad:
                params.append(p)
            else:
                logger.info(f'Params {name} are frozen (not optimized).')
        if not params:
            raise OptionError('network_g', self.opt['network_g'].get('type'), 'no trainable parameters')
        optim_opt = deepcopy(train_opt['optim_g'])
        optim_type = optim_opt.pop('type')
        self.optimizer_g = self.get_optimizer(optim_type, params, **optim_opt)
        self.optimizers.append(self.optimizer_g)
        self.trainable_params = params

    def get_optimizer(self, optim_type, params, lr, **kwargs):
        """Any ``torch.optim`` optimizer by name (BasicSR 1.4.2 knows only Adam)."""
        optim_cls = getattr(torch.optim, optim_type, None)
        if not (isinstance(optim_cls, type) and issubclass(optim_cls, torch.optim.Optimizer)):
            raise OptionError('train:optim_g:type', optim_type, 'not an optimizer in torch.optim')
        return optim_cls(params, lr, **kwargs)

    def compute_losses(self):
        """Forward pass and losses: returns ``(l_total, loss_dict)``."""
        raise NotImplementedError

    def _any_rank(self, flag):
        flag = torch.tensor(float(flag), device=self.device)
        if self.opt.get('dist', False):
            torch.distributed.all_reduce(flag)  # every rank must skip together or DDP hangs
        return bool(flag.item() > 0)

    def _skip_step(self, current_iter, what):
        self.nonfinite_streak += 1
        self.nonfinite_total += 1
        self.optimizer_g.zero_grad(set_to_none=True)
        get_root_logger().warning(f'Iter {current_iter}: non-finite {what}; optimizer step skipped '
                                  f'({self.nonfinite_total} skipped in total, {self.nonfinite_streak} in a row).')
        if self.nonfinite_streak >= self.max_nonfinite_steps:
            raise RuntimeError(f'Training stopped at iter {current_iter}: {self.nonfinite_streak} consecutive '
                               'non-finite steps (train:max_nonfinite_steps). Lower the learning rate or check '
                               'the data.')

    def optimize_parameters(self, current_iter):
        self.optimizer_g.zero_grad(set_to_none=True)
        with torch.autocast(device_type=self.device.type, dtype=self.amp_dtype, enabled=self.use_amp):
            l_total, loss_dict = self.compute_losses()
        if self._any_rank(not torch.isfinite(l_total.detach()).all()):
            self._skip_step(current_iter, f'loss ({float(l_total.detach()):.4g})')
            self.log_dict = OrderedDict(nonfinite_skips=float(self.nonfinite_total))
            return
        self.scaler.scale(l_total).backward()
        if self.scaler.is_enabled():
            # the scaler itself skips steps with inf/NaN gradients and lowers its scale
            if self.grad_clip > 0:
                self.scaler.unscale_(self.optimizer_g)
                torch.nn.utils.clip_grad_norm_(self.trainable_params, self.grad_clip)
            self.scaler.step(self.optimizer_g)
            self.scaler.update()
        else:
            max_norm = self.grad_clip if self.grad_clip > 0 else float('inf')
            grad_norm = torch.nn.utils.clip_grad_norm_(self.trainable_params, max_norm)
            if self._any_rank(not torch.isfinite(grad_norm)):
                self._skip_step(current_iter, 'gradient norm')
                self.log_dict = OrderedDict(nonfinite_skips=float(self.nonfinite_total))
                return
            self.optimizer_g.step()
        self.nonfinite_streak = 0
        self.log_dict = self.reduce_loss_dict(loss_dict)
        if self.ema_decay > 0:
            self.model_ema(decay=self.ema_decay)

    # --------------------------------------------------------------------------------- checkpoints
    def save(self, epoch, current_iter):
        nets, keys = [self.net_g], ['params']
        if hasattr(self, 'net_g_ema'):
            nets.append(self.net_g_ema)
            keys.append('params_ema')
        bad = [key for net, key in zip(nets, keys) if not all_finite(self.get_bare_model(net))]
        if bad:
            get_root_logger().error(f'Iter {current_iter}: non-finite weights in {bad}; checkpoint NOT '
                                    'saved (the previous one stays the latest).')
            return
        self.save_network(nets if len(nets) > 1 else nets[0], 'net_g', current_iter,
                          param_key=keys if len(keys) > 1 else keys[0])
        self.save_training_state(epoch, current_iter)

    def extra_training_state(self):
        state = {'nonfinite_total': self.nonfinite_total}
        if self.scaler.is_enabled():
            state['amp_scaler'] = self.scaler.state_dict()
        return state

    def resume_training(self, resume_state):
        super().resume_training(resume_state)
        self.nonfinite_total = int(resume_state.get('nonfinite_total', 0))
        if self.scaler.is_enabled() and 'amp_scaler' in resume_state:
            self.scaler.load_state_dict(resume_state['amp_scaler'])

    # ----------------------------------------------------------------------------------- inference
    def eval_network(self):
        return self.net_g_ema if hasattr(self, 'net_g_ema') else self.get_bare_model(self.net_g)

    def run_network(self, net):
        """Inference on the fed batch: dict with ``sr``, ``kernel``, ``depth`` (any may be None) and
        optionally ``srs`` / ``kernels`` (iterates)."""
        raise NotImplementedError

    def test(self):
        net = self.eval_network()
        was_training = net.training
        net.eval()
        with torch.no_grad():
            self.output = self.run_network(net)
        if was_training:
            net.train()

    def estimate_depth_lq(self):
        """Depth of the LR input from ``depth_estimator`` (default ``{type: MonocularDepth}``), for data
        without a ``depth_lq`` entry."""
        if self._depth_net is None:
            opt = deepcopy(self.opt.get('depth_estimator') or {'type': 'MonocularDepth'})
            self._depth_net = build_network(opt).to(self.device).eval()
            for p in self._depth_net.parameters():
                p.requires_grad_(False)
        with torch.no_grad():
            return self._depth_net(self.lq.float()).clamp(0, 1)

    def depth_sources(self, dataset=None):
        """Where this model's depth maps came from (for log lines): the ``MonocularDepth.source`` of every
        depth estimator in the evaluation network or run by :meth:`estimate_depth_lq`, and the
        ``depth_source`` of ``dataset`` when the model read the data's depth maps (``self.used_data_depth``)."""
        sources = depth_sources(self.eval_network(), self._depth_net)
        if getattr(self, 'used_data_depth', False) and dataset is not None:
            sources.append(getattr(dataset, 'depth_source', None) or 'the data set\'s depth maps')
        return sources

    def get_current_visuals(self):
        out = OrderedDict(lq=self.lq.detach().cpu())
        if self.output is not None and self.output.get('sr') is not None:
            out['result'] = self.output['sr'].detach().cpu()
        if getattr(self, 'gt', None) is not None:
            out['gt'] = self.gt.detach().cpu()
        return out

    # ---------------------------------------------------------------------------------- validation
    def dist_validation(self, dataloader, current_iter, tb_logger, save_img):
        if self.opt['rank'] == 0:
            self.nondist_validation(dataloader, current_iter, tb_logger, save_img)

    def _visual_path(self, dataset_name, img_name, current_iter, suffix):
        if self.opt['is_train']:
            return osp.join(self.opt['path']['visualization'], img_name, f'{img_name}_{current_iter}{suffix}.png')
        tag = self.opt['val'].get('suffix') or self.opt['name']
        return osp.join(self.opt['path']['visualization'], dataset_name, f'{img_name}_{tag}{suffix}.png')

    def _iterates(self, out):
        """(name suffix, sr, kernel) per scored output: the final one ('') and, if any, each t ('_t<t>')."""
        entries = [('', out.get('sr'), out.get('kernel'))]
        srs, kernels = out.get('srs'), out.get('kernels')
        if kernels:
            for t, kernel in enumerate(kernels):
                sr = srs[t] if srs and t < len(srs) else None
                entries.append((f'_t{t}', sr, kernel))
        return entries

    def _save_visuals(self, out, kernel_gt, dataset_name, img_name, current_iter, tb_logger, log_tb):
        sr = out.get('sr')
        hr_size = tuple(sr.shape[-2:]) if sr is not None else None
        images = {}
        if sr is not None:
            images[''] = tensor2img(sr.detach().cpu())
        if out.get('depth') is not None:
            images['_depth'] = depth_image(out['depth'], size=hr_size)
        if out.get('kernel') is not None:
            # estimate and ground truth on one colour scale, so the two heat maps compare
            vmax = float(kernel_variance(out['kernel'][:1].float()).max())
            if kernel_gt is not None:
                vmax = max(vmax, float(kernel_variance(kernel_gt[:1].float()).max()))
                images['_kvar_gt'] = kernel_variance_image(kernel_gt, vmax=vmax, size=hr_size)
            images['_kvar'] = kernel_variance_image(out['kernel'], vmax=vmax, size=hr_size)
        for suffix, img in images.items():
            imwrite(img, self._visual_path(dataset_name, img_name, current_iter, suffix))
            if log_tb:
                add_tb_image(tb_logger, f'val/{dataset_name}/{img_name}/{suffix.lstrip("_") or "sr"}', img,
                             current_iter)

    def nondist_validation(self, dataloader, current_iter, tb_logger, save_img):
        logger = get_root_logger()
        dataset_name = dataloader.dataset.opt['name']
        metrics_opt = self.opt['val'].get('metrics') or {}
        num_tb = int(self.opt['val'].get('tb_images', 2))
        sums, counts, missing = defaultdict(float), defaultdict(int), set()
        pbar = tqdm(total=len(dataloader), unit='image') if self.opt['val'].get('pbar', False) else None
        for idx, val_data in enumerate(dataloader):
            img_name = osp.splitext(osp.basename(val_data['lq_path'][0]))[0]
            self.feed_data(val_data)
            self.test()
            out = self.output
            gt = getattr(self, 'gt', None)
            gt_img = tensor2img(gt.detach().cpu()) if gt is not None else None
            kernel_gt = getattr(self, 'kernel_gt', None)
            for suffix, sr, kernel in self._iterates(out):
                sr_img = tensor2img(sr.detach().cpu()) if sr is not None else None
                for name, mopt in metrics_opt.items():
                    if mopt['type'] in KERNEL_METRICS:
                        if kernel is None or kernel_gt is None:
                            missing.add(name)
                            continue
                        value = calculate_metric({'kernel': kernel, 'kernel2': kernel_gt}, mopt)
                    else:
                        if sr_img is None or gt_img is None:
                            missing.add(name)
                            continue
                        value = calculate_metric({'img': sr_img, 'img2': gt_img}, mopt)
                    sums[name + suffix] += value
                    counts[name + suffix] += 1
            if save_img:
                self._save_visuals(out, kernel_gt, dataset_name, img_name, current_iter, tb_logger, idx < num_tb)
            self.output = None
            if pbar is not None:
                pbar.update(1)
                pbar.set_description(f'Test {img_name}')
        if pbar is not None:
            pbar.close()
        if missing:
            logger.warning(f'Validation {dataset_name}: metrics {sorted(missing)} skipped where the data has no '
                           'ground truth (gt image / kernel) or the network gives no such output.')
        results = {key: sums[key] / counts[key] for key in sums}
        self.metric_results = {name: results[name] for name in metrics_opt if name in results}
        if self.metric_results:
            self._initialize_best_metric_results(dataset_name)
            for name, value in self.metric_results.items():
                self._update_best_metric_result(dataset_name, name, value, current_iter)
        self.all_metric_results = results
        self._log_results(current_iter, dataset_name, results, tb_logger,
                          depth_note(self.depth_sources(dataloader.dataset)))

    def _log_results(self, current_iter, dataset_name, results, tb_logger, note=''):
        """The validation log line; ``note`` (where the depth came from, loud for the prior) joins its header."""
        log_str = f'Validation {dataset_name}' + (f' [{note}]' if note else '') + '\n'
        for key in sorted(results):
            log_str += f'\t # {key}: {results[key]:.4f}'
            best = getattr(self, 'best_metric_results', {}).get(dataset_name, {}).get(key)
            if best is not None:
                log_str += f'\tBest: {best["val"]:.4f} @ {best["iter"]} iter'
            log_str += '\n'
        get_root_logger().info(log_str)
        if tb_logger is not None and isinstance(current_iter, int):
            for key, value in results.items():
                tb_logger.add_scalar(f'metrics/{dataset_name}/{key}', value, current_iter)


def resize_depth(depth, size):
    if depth is None or tuple(depth.shape[-2:]) == tuple(size):
        return depth
    return F.interpolate(depth, size=tuple(size), mode='bilinear', align_corners=False)
