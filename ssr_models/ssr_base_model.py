"""SSRBaseModel: the one training base of the SSR models, written once as BasicSR's ``BaseModel`` writes its own.

Every SSR model derives from it: ``DKENetModel``, ``NBSRModel``, ``SVKRModel`` (the SVKR stages),
``SSRModel`` (the diffusion stage) and ``SSRBenchmarkModel`` (the test tables). Not registered itself.
What it adds to BasicSR's ``BaseModel``:

* ``network_g`` built from the options, moved to the device (DDP / DataParallel as BasicSR does) and
  loaded from ``path: pretrain_network_g`` (``param_key_g``, default ``params``; ``strict_load_g``).
* The optimizer of ``train: optim_g`` by its ``torch.optim`` name (``Adam``, ``AdamW``, ``SGD``...; BasicSR
  1.4.2 knows Adam only) over the trainable parameters.
* ``train: amp: none | fp16 | bf16``: the forward pass and the losses under ``torch.autocast`` on the
  model's device, the CPU included; fp16 with a gradient scaler whose state goes into the ``.state`` file.
* ``train: grad_clip``: the largest global gradient norm (0 / absent = off).
* Non-finite losses or gradients: the step is skipped on every rank together (the decision is all-reduced
  before any backward, so DDP never meets mismatched collectives), the batch-norm statistics the forward
  pass moved are restored, the skip is logged; after ``train: max_nonfinite_steps`` (default 100) skips
  in a row training stops. Networks with non-finite weights are never written.
* ``train: ema_decay`` (0 = off): an exponential moving average of the trainable parameters. Checkpoints
  hold ``params`` and, with EMA, ``params_ema`` (the network's state with the averaged parameters);
  validation and ``test()`` run with the EMA weights swapped in.
* Extra training state (the scaler, the non-finite count, a subclass's ``extra_state()``) saved with the
  optimizers and restored by ``resume_training``.
* One validation loop: metrics from ``val: metrics`` through ``ssr_utils.evaluation.MetricSuite`` (image
  metrics on SR images, kernel PSNR on kernel maps; n/a where the data or the network has no such
  input), images saved beside each other and logged to TensorBoard (``val: tb_images``, default 2: the SR
  and its maps at every validation, the LR input and the ground truth once). The trainable / total
  parameter counts of ``network_g`` are logged when the optimizer is set up (every stage).

Old option keys stop at start-up with the new key's name: ``train: use_amp`` / ``amp_dtype`` ->
``train: amp``, ``train: max_nonfinite`` -> ``train: max_nonfinite_steps``, ``diffusion: amp`` -> ``train:
amp`` (training) or the inference precision (``--fp16`` / ``--bf16``, ``SSRPipeline(dtype=)``).

Hooks for a subclass (each documented where it is defined):

* ``check_options(opt)`` (classmethod): start-up checks; the launcher calls it before any folder is made.
* ``build_network_g()``, ``setup_model()`` (extra networks, after ``network_g`` is loaded),
  ``load_network_g_state(state, source, strict)``, ``network_g_state_for_save(state)``.
* ``setup_losses(train_opt)``, ``feed_data(data)``, ``compute_losses() -> (l_total, losses)``,
  ``before_step(current_iter)``.
* ``run_network(net) -> output dict`` (what ``test()`` stores in ``self.output``), ``scored_outputs(b)``,
  ``ground_truth_kernel()``, ``validation_images(b)``, ``visual_path(...)``, ``validation_start /
  validation_item / validation_end``.
* ``extra_state() -> dict`` and ``load_extra_state(state)``.
"""
import os.path as osp
from collections import OrderedDict, defaultdict
from contextlib import contextmanager
from copy import deepcopy

import torch
from torch.nn import functional as F
from tqdm import tqdm

from basicsr.archs import build_network
from basicsr.losses import build_loss
from basicsr.models.base_model import BaseModel
from basicsr.utils import get_root_logger, imwrite, tensor2img
from basicsr.utils.dist_util import get_dist_info

from ssr_arch.depth_arch import depth_note, depth_sources
from ssr_utils.amp import amp_dtype, autocast, grad_scaler
from ssr_utils.atomic_file import atomic_torch_save
from ssr_utils.checkpoint import read_state_dict
from ssr_utils.errors import OptionError
from ssr_utils.evaluation import MetricSuite
from ssr_utils.option_check import check_renamed_keys, check_scales
from ssr_utils.visualize import add_tb_image, depth_image, kernel_variance, kernel_variance_image


def parameter_counts(net):
    """``(trainable, total)`` numbers of parameters of ``net`` (shared parameters counted once)."""
    params = {id(p): p for p in net.parameters()}.values()
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def all_finite(state):
    """Whether every floating tensor of a state dict is finite."""
    return all(bool(torch.isfinite(v).all()) for v in state.values() if torch.is_floating_point(v))


def resize_depth(depth, size):
    if depth is None or tuple(depth.shape[-2:]) == tuple(size):
        return depth
    return F.interpolate(depth, size=tuple(size), mode='bilinear', align_corners=False)


class SSRBaseModel(BaseModel):
    """See the module docstring. A subclass implements at least ``feed_data``, ``compute_losses`` (training)
    and ``run_network`` (validation / test)."""

    print_network_g = True  # BasicSR's full network printout (off for networks with a Stable Diffusion inside)

    def __init__(self, opt):
        self.check_options(opt)
        super().__init__(opt)
        train_opt = opt.get('train') or {}
        self.amp_dtype = amp_dtype(train_opt.get('amp', 'none')) if self.is_train else None
        self.net_g = self.model_to_device(self.build_network_g())
        if self.print_network_g:
            self.print_network(self.net_g)
        self.ema = None
        self._ema_swapped = False
        self.output = None
        self.log_dict = OrderedDict()
        self._metric_suites = {}
        self._tb_references = set()  # (dataset, image) whose LR / GT are in TensorBoard already
        self.load_network_g()
        self.setup_model()
        if self.is_train:
            self.init_training_settings()

    # ------------------------------------------------------------------------------ options
    @classmethod
    def check_options(cls, opt):
        """Start-up checks of the option dict (raise ``OptionError``). The launcher calls this before BasicSR
        makes any folder, and ``__init__`` calls it again. Subclasses extend it (call ``super()``)."""
        check_renamed_keys(opt)
        train_opt = opt.get('train') or {}
        amp_dtype(train_opt.get('amp', 'none'))
        grad_clip = train_opt.get('grad_clip', 0) or 0
        if isinstance(grad_clip, bool) or not isinstance(grad_clip, (int, float)) or grad_clip < 0:
            raise OptionError('train:grad_clip', grad_clip, 'expected a max gradient norm >= 0 (0 = off)')
        ema = train_opt.get('ema_decay', 0) or 0
        if isinstance(ema, bool) or not isinstance(ema, (int, float)) or not 0 <= ema < 1:
            raise OptionError('train:ema_decay', ema, 'expected a number in [0, 1) (0 = no EMA)')
        steps = train_opt.get('max_nonfinite_steps', 100)
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise OptionError('train:max_nonfinite_steps', steps, 'expected an integer >= 1')
        check_scales(opt)

    # ------------------------------------------------------------------------------ networks
    @property
    def bare_g(self):
        return self.get_bare_model(self.net_g)

    def build_network_g(self):
        """``network_g`` (before it is moved to the device)."""
        return build_network(deepcopy(self.opt['network_g']))

    def setup_model(self):
        """Extra networks and settings, after ``network_g`` is built and loaded (before the training settings)."""

    def load_network_g(self):
        path_opt = self.opt['path']
        path = path_opt.get('pretrain_network_g')
        self._pretrained_ema = None
        if path is None:
            return
        state, key = read_state_dict(path, path_opt.get('param_key_g', 'params'))
        self.load_network_g_state(state, f'{path} [{key}]', path_opt.get('strict_load_g', True))
        if self.is_train and (self.opt.get('train') or {}).get('ema_decay', 0):
            ema_state, ema_key = read_state_dict(path, 'params_ema')
            self._pretrained_ema = ema_state if ema_key == 'params_ema' else None
        get_root_logger().info(f'{type(self).__name__}: network_g loaded from {path} [{key}]')

    def load_network_g_state(self, state, source, strict=True):
        """Load a state dict into the bare ``network_g`` (``source`` names it in errors)."""
        try:
            self.bare_g.load_state_dict(state, strict=strict)
        except RuntimeError as err:
            raise RuntimeError(f'{source} does not fit network_g ({type(self.bare_g).__name__}): {err}') from None

    def network_g_state_for_save(self, state):
        """What of ``state`` (the bare network's) goes into checkpoints (default: all of it)."""
        return state

    # ------------------------------------------------------------------------------ training settings
    def init_training_settings(self):
        train_opt = self.opt['train']
        self.net_g.train()
        self.grad_clip = float(train_opt.get('grad_clip', 0) or 0)
        self.max_nonfinite_steps = int(train_opt.get('max_nonfinite_steps', 100))
        self.nonfinite_streak = 0
        self.nonfinite_total = 0
        self.last_loss = None
        self.scaler = grad_scaler(self.device, self.amp_dtype)
        self.ema_decay = float(train_opt.get('ema_decay', 0) or 0)
        if self.ema_decay > 0:
            self.init_ema(self._pretrained_ema)
        self._pretrained_ema = None
        self.setup_losses(train_opt)
        self.setup_optimizers()
        self.setup_schedulers()

    def setup_losses(self, train_opt):
        """Build the losses of ``train_opt`` (e.g. with ``build_optional_loss``)."""

    def build_optional_loss(self, train_opt, key):
        """BasicSR loss of ``train_opt[key]`` on the device, or None when the key is absent / empty."""
        if train_opt.get(key):
            return build_loss(deepcopy(train_opt[key])).to(self.device)
        return None

    def setup_optimizers(self):
        logger = get_root_logger()
        params = []
        for name, p in self.net_g.named_parameters():
            if p.requires_grad:
                params.append(p)
            elif self.print_network_g:
                logger.info(f'Params {name} are frozen (not optimized).')
        if not params:
            raise OptionError('network_g', self.opt['network_g'].get('type'), 'no trainable parameters')
        n_train, n_total = parameter_counts(self.net_g)
        logger.info(f'{type(self.bare_g).__name__}: {n_train:,} of {n_total:,} parameters trainable '
                    f'({100.0 * n_train / max(n_total, 1):.2f}%)')
        optim_opt = deepcopy(self.opt['train']['optim_g'])
        optim_type = optim_opt.pop('type')
        self.optimizer_g = self.get_optimizer(optim_type, params, **optim_opt)
        self.optimizers.append(self.optimizer_g)

    def get_optimizer(self, optim_type, params, lr, **kwargs):
        """Any ``torch.optim`` optimizer by its class name."""
        optim_cls = getattr(torch.optim, optim_type, None)
        if not (isinstance(optim_cls, type) and issubclass(optim_cls, torch.optim.Optimizer)):
            raise OptionError('train:optim_g:type', optim_type, 'not an optimizer in torch.optim')
        return optim_cls(params, lr, **kwargs)

    def autocast(self):
        """The ``train: amp`` autocast context on the model's device (a no-op for ``none``)."""
        return autocast(self.device, self.amp_dtype)

    # ------------------------------------------------------------------------------ EMA
    def init_ema(self, pretrained=None):
        """The average starts from ``pretrained`` (a checkpoint's ``params_ema``) where it has a parameter."""
        pretrained = pretrained or {}
        self.ema = {
            k: (pretrained[k].to(self.device).clone() if k in pretrained else p.detach().clone())
            for k, p in self.bare_g.named_parameters() if p.requires_grad
        }
        get_root_logger().info(f'Use Exponential Moving Average with decay: {self.ema_decay}')

    @torch.no_grad()
    def update_ema(self):
        params = dict(self.bare_g.named_parameters())
        shadow = list(self.ema.values())
        torch._foreach_mul_(shadow, self.ema_decay)
        torch._foreach_add_(shadow, [params[k].detach() for k in self.ema], alpha=1 - self.ema_decay)

    def drop_from_ema(self, prefix):
        """Parameters that stop training (e.g. a VAE frozen after its warm-up) leave the average: the EMA
        weights then use the parameters themselves."""
        if self.ema is not None:
            for k in [k for k in self.ema if k.startswith(prefix)]:
                del self.ema[k]

    @contextmanager
    def ema_weights(self):
        """The EMA weights swapped into the bare network for the block (a no-op without EMA, or nested)."""
        if self.ema is None or self._ema_swapped:
            yield
            return
        params = dict(self.bare_g.named_parameters())
        backup = {k: params[k].detach().clone() for k in self.ema}
        with torch.no_grad():
            for k, v in self.ema.items():
                params[k].copy_(v)
        self._ema_swapped = True
        try:
            yield
        finally:
            self._ema_swapped = False
            with torch.no_grad():
                for k, v in backup.items():
                    params[k].copy_(v)

    def network_g_state(self, use_ema=False):
        """The bare network's checkpoint state on the CPU (``use_ema``: with the averaged parameters)."""
        state = dict(self.bare_g.state_dict())
        if use_ema and self.ema is not None:
            state.update(self.ema)
        return {k: v.detach().cpu() for k, v in self.network_g_state_for_save(state).items()}

    # ------------------------------------------------------------------------------ one training step
    def feed_data(self, data):
        """Move one batch (a dataset sample dict, docs/interfaces.md §5) to the device as attributes."""
        raise NotImplementedError

    def compute_losses(self):
        """Forward pass and losses on the fed batch: ``(l_total, OrderedDict of detached or live losses)``.
        Runs under the ``train: amp`` autocast."""
        raise NotImplementedError

    def before_step(self, current_iter):
        """Called at the start of every ``optimize_parameters`` (e.g. training phases)."""

    def any_rank(self, flag):
        """``flag`` of any rank, the same answer on every rank (one all-reduce under DDP)."""
        value = torch.tensor(float(bool(flag)), device=self.device)
        if self.opt.get('dist', False):
            torch.distributed.all_reduce(value)
        return bool(value.item() > 0)

    def _norm_buffers(self):
        """The running statistics a forward pass in training mode updates (batch norms)."""
        return {f'{name}.{b}': t for name, m in self.bare_g.named_modules()
                if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for b, t in m.named_buffers(recurse=False)}

    def skip_step(self, current_iter, what, buffers=None):
        """Forget this step (gradients, and the batch-norm statistics it moved), count and log it."""
        self.optimizer_g.zero_grad(set_to_none=True)
        if buffers:
            live = self._norm_buffers()
            with torch.no_grad():
                for k, v in buffers.items():
                    live[k].copy_(v)
        self.nonfinite_streak += 1
        self.nonfinite_total += 1
        get_root_logger().warning(f'At iter {current_iter}: non-finite {what}; optimizer step skipped on every rank '
                                  f'({self.nonfinite_total} skipped in total, {self.nonfinite_streak} in a row).')
        self.log_dict = OrderedDict(nonfinite_skips=float(self.nonfinite_total))
        if self.nonfinite_streak >= self.max_nonfinite_steps:
            raise RuntimeError(f'Training stopped at iter {current_iter}: {self.nonfinite_streak} consecutive '
                               'non-finite steps (train:max_nonfinite_steps). Lower the learning rate or check '
                               'the data.')

    def optimize_parameters(self, current_iter):
        self.before_step(current_iter)
        self.optimizer_g.zero_grad(set_to_none=True)
        buffers = {k: v.detach().clone() for k, v in self._norm_buffers().items()}
        with self.autocast():
            l_total, loss_dict = self.compute_losses()
        self.last_loss = l_total.detach().float()
        if self.any_rank(not torch.isfinite(self.last_loss).all()):
            details = ', '.join(f'{k} {float(torch.as_tensor(v).detach()):.4g}' for k, v in loss_dict.items())
            self.skip_step(current_iter, f'loss ({details})', buffers)
            return
        params = [p for p in self.net_g.parameters() if p.requires_grad]
        if self.scaler is not None:
            self.scaler.scale(l_total).backward()
            self.scaler.unscale_(self.optimizer_g)
            torch.nn.utils.clip_grad_norm_(params, self.grad_clip if self.grad_clip > 0 else float('inf'))
            # the scaler skips a step with inf / NaN gradients itself and lowers its scale; the gradients are
            # all-reduced under DDP, so every rank sees the same and skips together
            self.scaler.step(self.optimizer_g)
            self.scaler.update()
        else:
            l_total.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(params, self.grad_clip if self.grad_clip > 0 else float('inf'))
            if self.any_rank(not torch.isfinite(grad_norm)):
                self.skip_step(current_iter, 'gradient norm', buffers)
                return
            self.optimizer_g.step()
        self.nonfinite_streak = 0
        if self.ema is not None:
            self.update_ema()
        self.log_dict = self.reduce_loss_dict(OrderedDict((k, v.detach().float()) for k, v in loss_dict.items()))

    # ------------------------------------------------------------------------------ checkpoints
    def save(self, epoch, current_iter):
        if get_dist_info()[0] != 0:  # rank 0 writes; the ranks hold the same weights
            return
        state = self.network_g_state(False)
        ema_state = self.network_g_state(True) if self.ema is not None else None
        bad = [key for key, s in (('params', state), ('params_ema', ema_state)) if s is not None and not all_finite(s)]
        if bad:
            get_root_logger().error(f'Iter {current_iter}: non-finite weights in {bad}; checkpoint NOT saved (the '
                                    'previous one stays the latest).')
            return
        label = 'latest' if current_iter == -1 else current_iter
        ckpt = {'params': state}
        if ema_state is not None:
            ckpt['params_ema'] = ema_state
        atomic_torch_save(ckpt, osp.join(self.opt['path']['models'], f'net_g_{label}.pth'))
        self.save_training_state(epoch, current_iter)

    def extra_state(self):
        """A subclass's own training state (tensors, generator states...), saved in the ``.state`` file."""
        return {}

    def load_extra_state(self, state):
        """Restore what ``extra_state`` returned."""

    def extra_training_state(self):
        # called by the training-state writer (ssr_utils.compat) besides the optimizers and schedulers
        state = {'nonfinite_total': self.nonfinite_total, 'model_state': self.extra_state()}
        if self.scaler is not None:
            state['grad_scaler'] = self.scaler.state_dict()
        return state

    def resume_training(self, resume_state):
        super().resume_training(resume_state)
        self.nonfinite_total = int(resume_state.get('nonfinite_total', 0))
        if self.scaler is not None and resume_state.get('grad_scaler') is not None:
            self.scaler.load_state_dict(resume_state['grad_scaler'])
        self.load_extra_state(resume_state.get('model_state') or {})

    # ------------------------------------------------------------------------------ test
    def run_network(self, net):
        """Inference on the fed batch with the bare network in eval mode, no gradients, EMA weights in: a dict
        with any of ``sr`` (B×3×H×W), ``kernel`` (B×k²×h×w), ``depth`` (B×1×h×w) and the iterates ``srs`` /
        ``kernels`` (lists)."""
        raise NotImplementedError

    def test(self):
        net = self.bare_g
        was_training = net.training
        net.eval()
        try:
            with torch.no_grad(), self.ema_weights():
                self.output = self.run_network(net)
        finally:
            net.train(was_training)

    def get_current_visuals(self):
        out = OrderedDict(lq=self.lq.detach().cpu())
        if self.output is not None and self.output.get('sr') is not None:
            out['result'] = self.output['sr'].detach().cpu()
        if getattr(self, 'gt', None) is not None:
            out['gt'] = self.gt.detach().cpu()
        return out

    # ------------------------------------------------------------------------------ validation
    def dist_validation(self, dataloader, current_iter, tb_logger, save_img):
        if self.opt['rank'] == 0:
            self.nondist_validation(dataloader, current_iter, tb_logger, save_img)

    def metric_suite(self, dataset_name):
        """The ``val: metrics`` of this model (built once per dataset: unavailable metrics are reported once)."""
        if dataset_name not in self._metric_suites:
            self._metric_suites[dataset_name] = MetricSuite(self.opt['val'].get('metrics'), device=self.device)
        return self._metric_suites[dataset_name]

    def scored_outputs(self, b):
        """``[(suffix, sr B=1 tensor | None, kernel map B=1 | None), ...]`` scored for item ``b`` of the batch:
        the final output (suffix '') and, when the output has iterates, each t (``_t<t>``). Each metric is
        reported as ``<metric><suffix>``; the ones without a suffix are the model's main results."""
        out = self.output
        entries = [('', out.get('sr'), out.get('kernel'))]
        srs, kernels = out.get('srs'), out.get('kernels')
        if kernels:
            for t, kernel in enumerate(kernels):
                sr = srs[t] if srs and t < len(srs) else None
                entries.append((f'_t{t}', sr, kernel))
        return [(s, None if sr is None else sr[b:b + 1], None if k is None else k[b:b + 1]) for s, sr, k in entries]

    def ground_truth_kernel(self):
        """The fed batch's ground-truth kernel maps (B×k²×h×w) that kernel metrics compare with, or None."""
        return getattr(self, 'kernel_gt', None)

    def validation_images(self, b):
        """``OrderedDict(suffix -> H×W×3 uint8 BGR)`` saved and logged for item ``b``: the SR image (''), the
        depth map (``_depth``) and the kernel-variance heat maps of the estimate (``_kvar``) and of the ground
        truth (``_kvar_gt``, on the same colour scale), all at the SR image's size."""
        out = self.output
        sr = out.get('sr')
        size = tuple(sr.shape[-2:]) if sr is not None else None
        images = OrderedDict()
        if sr is not None:
            images[''] = tensor2img(sr[b:b + 1].detach().float().cpu(), rgb2bgr=True, min_max=(0, 1))
        if out.get('depth') is not None:
            images['_depth'] = depth_image(out['depth'][b:b + 1], size=size)
        kernel_gt = self.ground_truth_kernel()
        if out.get('kernel') is not None:
            kernel = out['kernel'][b:b + 1].float()
            vmax = float(kernel_variance(kernel).max())
            if kernel_gt is not None:
                kgt = kernel_gt[b:b + 1].float()
                vmax = max(vmax, float(kernel_variance(kgt).max()))
                images['_kvar_gt'] = kernel_variance_image(kgt, vmax=vmax, size=size)
            images['_kvar'] = kernel_variance_image(kernel, vmax=vmax, size=size)
        return images

    def visual_path(self, dataset_name, img_name, current_iter, suffix):
        """Training: ``visualization/<image>/<image>_<iter><suffix>.png``; testing:
        ``visualization/<dataset>/<image>_<val.suffix or name><suffix>.png``."""
        if self.opt['is_train']:
            return osp.join(self.opt['path']['visualization'], img_name, f'{img_name}_{current_iter}{suffix}.png')
        tag = self.opt['val'].get('suffix') or self.opt['name']
        return osp.join(self.opt['path']['visualization'], dataset_name, f'{img_name}_{tag}{suffix}.png')

    def validation_start(self, dataset_name, suite):
        """Called before the first batch of a validation run."""

    def validation_item(self, dataset_name, img_name, b, scores, images):
        """Called for every validated image: ``scores`` = suffix -> metric -> value or None, ``images`` = the
        ``validation_images`` (made when something uses them: saving, TensorBoard or ``wants_images``)."""

    def validation_end(self, dataset_name, suite, results):
        """Called after the last batch with every averaged result (``<metric><suffix>`` -> mean)."""

    wants_images = False  # a subclass whose validation_item uses the images sets this

    def nondist_validation(self, dataloader, current_iter, tb_logger, save_img):
        dataset_name = dataloader.dataset.opt['name']
        suite = self.metric_suite(dataset_name)
        num_tb = int(self.opt['val'].get('tb_images', 2))
        sums, counts, scored = defaultdict(float), defaultdict(int), set()
        self.validation_dataset = dataloader.dataset
        self.validation_start(dataset_name, suite)
        count = 0
        for val_data in tqdm(dataloader, desc=f'Validating {dataset_name}', unit='batch',
                             disable=not self.opt['val'].get('pbar', True)):
            self.feed_data(val_data)
            self.test()
            gt = getattr(self, 'gt', None)
            kernel_gt = self.ground_truth_kernel()
            for b, path in enumerate(val_data['lq_path']):
                img_name = osp.splitext(osp.basename(path))[0]
                gt_img = tensor2img(gt[b:b + 1].detach().float().cpu(), rgb2bgr=True, min_max=(0, 1)) \
                    if gt is not None else None
                kgt = kernel_gt[b:b + 1] if kernel_gt is not None else None
                scores = OrderedDict()
                for suffix, sr, kernel in self.scored_outputs(b):
                    sr_img = tensor2img(sr.detach().float().cpu(), rgb2bgr=True, min_max=(0, 1)) \
                        if sr is not None else None
                    ref = gt_img
                    if ref is not None and sr_img is not None and ref.shape != sr_img.shape:
                        ref = ref[:sr_img.shape[0], :sr_img.shape[1]]
                    scores[suffix] = suite.score(sr_img, ref, kernel, kgt)
                    for name, value in scores[suffix].items():
                        if value is None:
                            continue
                        scored.add(name)
                        sums[name + suffix] += value
                        counts[name + suffix] += 1
                log_tb = tb_logger is not None and count < num_tb
                if log_tb:
                    self.log_tb_references(tb_logger, dataset_name, img_name, b, gt_img, current_iter)
                images = self.validation_images(b) if (save_img or log_tb or self.wants_images) else {}
                for suffix, img in images.items():
                    if save_img:
                        imwrite(img, self.visual_path(dataset_name, img_name, current_iter, suffix))
                    if log_tb:
                        add_tb_image(tb_logger, f'val/{dataset_name}/{img_name}/{suffix.lstrip("_") or "sr"}', img,
                                     current_iter)
                self.validation_item(dataset_name, img_name, b, scores, images)
                count += 1
            self.output = None
        missing = set(suite.names) - scored - set(suite.unavailable)
        if missing:
            get_root_logger().warning(f'Validation {dataset_name}: metrics {sorted(missing)} had nothing to score '
                                      '(the data has no ground truth for them or the network no such output).')
        results = {key: sums[key] / counts[key] for key in sums}
        self.all_metric_results = results
        self.metric_results = {name: results[name] for name in suite.names if name in results}
        if self.metric_results:
            self._initialize_best_metric_results(dataset_name)
            for name, value in self.metric_results.items():
                self._update_best_metric_result(dataset_name, name, value, current_iter)
        self.log_validation_results(current_iter, dataset_name, results, tb_logger,
                                    depth_note(self.depth_sources(dataloader.dataset)))
        self.validation_end(dataset_name, suite, results)

    def log_tb_references(self, tb_logger, dataset_name, img_name, b, gt_img, current_iter):
        """The LR input (``val/<set>/<image>/lr``) and the ground truth (``.../gt``) of item ``b`` beside its SR in
        TensorBoard; logged at the first validation only, as they do not change."""
        if (dataset_name, img_name) in self._tb_references or not isinstance(current_iter, int):
            return
        self._tb_references.add((dataset_name, img_name))
        tag = f'val/{dataset_name}/{img_name}'
        lq = getattr(self, 'lq', None)
        if lq is not None:
            add_tb_image(tb_logger, f'{tag}/lr', tensor2img(lq[b:b + 1].detach().float().cpu(), rgb2bgr=True,
                                                            min_max=(0, 1)), current_iter)
        if gt_img is not None:
            add_tb_image(tb_logger, f'{tag}/gt', gt_img, current_iter)

    def depth_sources(self, dataset=None):
        """Where this model's depth maps came from, for log lines and tables (``depth_arch.depth_sources``
        labels): every ``MonocularDepth`` inside ``network_g`` or run by the model on its own
        (``self.depth_estimator``), and ``dataset.depth_source`` when the model read the data's depth maps
        (``self.used_data_depth``)."""
        sources = depth_sources(self.bare_g, getattr(self, 'depth_estimator', None))
        if getattr(self, 'used_data_depth', False) and dataset is not None:
            label = getattr(dataset, 'depth_source', None) or "the data set's depth maps"
            if label not in sources:
                sources.append(label)
        return sources

    def log_validation_results(self, current_iter, dataset_name, results, tb_logger, note=''):
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
