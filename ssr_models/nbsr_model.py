"""NBSRModel: stage 2, non-blind SR trained with L1 on the image, conditioned on ground-truth kernels."""
from collections import OrderedDict
from copy import deepcopy

from basicsr.archs import build_network
from basicsr.utils import get_root_logger
from basicsr.utils.registry import MODEL_REGISTRY
from ssr_data.batch_degradation import maybe_degrade_batch
from ssr_data.degradations import kernel_distribution_options
from ssr_models.ssr_base_model import SSRBaseModel, resize_depth
from ssr_utils.errors import OptionError


@MODEL_REGISTRY.register()
class NBSRModel(SSRBaseModel):
    """Trains ``network_g`` (``type: NBSR``) on (lq, kernel, gt) samples.

    Options:
        train.pixel_opt: image loss (e.g. ``{type: L1Loss}``).
        train.perceptual_opt: optional BasicSR perceptual loss.
    Validation and testing need the ground-truth ``kernel`` of each sample (the network is non-blind).
    An NBSR's ``kernel_distribution`` (what its fallback PCA and ``code_scale`` are drawn from) defaults to
    the kernel keys of ``datasets:train``: the kernels it is trained on.
    """

    def build_network_g(self):
        net_opt = deepcopy(self.opt['network_g'])
        train_set = (self.opt.get('datasets') or {}).get('train')
        if net_opt.get('type') == 'NBSR' and net_opt.get('kernel_distribution') is None and train_set:
            net_opt['kernel_distribution'] = kernel_distribution_options(train_set, 'datasets:train')
            get_root_logger().info('NBSR: kernel_distribution from datasets:train: '
                                   f'{net_opt["kernel_distribution"] or "(the default for the scale)"}')
        return build_network(net_opt)

    def setup_losses(self, train_opt):
        self.cri_pix = self.build_optional_loss(train_opt, 'pixel_opt')
        self.cri_perceptual = self.build_optional_loss(train_opt, 'perceptual_opt')
        if self.cri_pix is None and self.cri_perceptual is None:
            raise OptionError('train:pixel_opt', None, 'NBSRModel needs pixel_opt and/or perceptual_opt')

    def feed_data(self, data):
        data = maybe_degrade_batch(data, self.device)  # degrade_on: model batches are synthesised here
        if 'kernel' not in data:
            raise KeyError("NBSRModel: the data has no 'kernel' entry; the non-blind network needs the "
                           'ground-truth kernel map of every sample (use SVKRModel for blind SR)')
        self.lq = data['lq'].to(self.device)
        self.gt = data['gt'].to(self.device) if 'gt' in data else None
        self.kernel_gt = data['kernel'].to(self.device)
        self.depth_lq = resize_depth(data['depth_lq'].to(self.device), self.lq.shape[-2:]) if 'depth_lq' in data \
            else None

    def compute_losses(self):
        sr = self.net_g(self.lq, self.kernel_gt)
        self.output = {'sr': sr}
        l_total, loss_dict = 0, OrderedDict()
        if self.cri_pix is not None:
            l_pix = self.cri_pix(sr, self.gt)
            l_total = l_total + l_pix
            loss_dict['l_pix'] = l_pix
        if self.cri_perceptual is not None:
            l_percep, l_style = self.cri_perceptual(sr, self.gt)
            for key, value in (('l_percep', l_percep), ('l_style', l_style)):
                if value is not None:
                    l_total = l_total + value
                    loss_dict[key] = value
        return l_total, loss_dict

    def run_network(self, net):
        return {'sr': net(self.lq, self.kernel_gt), 'kernel': self.kernel_gt, 'depth': self.depth_lq}
