"""DKENetModel: stage 1, kernel estimation trained with L1 on the per-pixel kernel map."""
from collections import OrderedDict
from copy import deepcopy

import torch

from basicsr.archs import build_network
from basicsr.utils.registry import MODEL_REGISTRY
from ssr_data.batch_degradation import maybe_degrade_batch
from ssr_models.ssr_base_model import SSRBaseModel, resize_depth
from ssr_utils.errors import OptionError


@MODEL_REGISTRY.register()
class DKENetModel(SSRBaseModel):
    """Trains a kernel estimator (``network_g``, e.g. ``type: DKENet``) on (lq, depth_lq, kernel) samples.

    Options:
        train.kernel_opt: loss on the LR-resolution kernel map (e.g. ``{type: L1Loss, loss_weight: 1}``).
        depth_from: ``data`` (default; the sample's ``depth_lq``, falling back to the estimator when a
            sample has none) or ``lq`` (always the depth estimator on the LR input, as SVKR's first pass).
        depth_estimator: arch options of that estimator (default ``{type: MonocularDepth}``).
    """

    @classmethod
    def check_options(cls, opt):
        super().check_options(opt)
        depth_from = opt.get('depth_from', 'data')
        if depth_from not in ('data', 'lq'):
            raise OptionError('depth_from', depth_from, 'expected data or lq')

    def setup_model(self):
        self.depth_estimator = None

    def setup_losses(self, train_opt):
        self.cri_kernel = self.build_optional_loss(train_opt, 'kernel_opt')
        if self.cri_kernel is None:
            raise OptionError('train:kernel_opt', None, 'DKENetModel needs a kernel loss (e.g. type: L1Loss)')

    @property
    def _uses_depth(self):
        return getattr(self.get_bare_model(self.net_g), 'use_depth', True)

    def feed_data(self, data):
        data = maybe_degrade_batch(data, self.device)  # degrade_on: model batches are synthesised here
        self.lq = data['lq'].to(self.device)
        self.gt = data['gt'].to(self.device) if 'gt' in data else None
        self.kernel_gt = data['kernel'].to(self.device) if 'kernel' in data else None
        self.depth_lq = None
        if self._uses_depth:
            if self.opt.get('depth_from', 'data') == 'data' and 'depth_lq' in data:
                self.depth_lq = resize_depth(data['depth_lq'].to(self.device), self.lq.shape[-2:])
                self.used_data_depth = True  # the log names the data's depth source (SSRBaseModel.depth_sources)
            else:
                self.depth_lq = self.estimate_depth_lq()

    def estimate_depth_lq(self):
        """Depth of the LR input from ``depth_estimator`` (default ``{type: MonocularDepth}``), for data
        without a ``depth_lq`` entry."""
        if self.depth_estimator is None:
            opt = deepcopy(self.opt.get('depth_estimator') or {'type': 'MonocularDepth'})
            self.depth_estimator = build_network(opt).to(self.device).eval()
            for p in self.depth_estimator.parameters():
                p.requires_grad_(False)
        with torch.no_grad():
            return self.depth_estimator(self.lq.float()).clamp(0, 1)

    def compute_losses(self):
        if self.kernel_gt is None:
            raise KeyError("DKENetModel: the training data has no 'kernel' entry (ground-truth kernel map)")
        self.output = {'kernel': self.net_g(self.lq, self.depth_lq)}
        l_kernel = self.cri_kernel(self.output['kernel'], self.kernel_gt)
        return l_kernel, OrderedDict(l_kernel=l_kernel)

    def run_network(self, net):
        return {'sr': None, 'kernel': net(self.lq, self.depth_lq), 'depth': self.depth_lq}
