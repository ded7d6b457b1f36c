"""SVKRModel: stage 3, the whole refinement loop (Algorithm 1) fine-tuned end to end."""
from collections import OrderedDict

from basicsr.utils.registry import MODEL_REGISTRY
from ssr_data.batch_degradation import maybe_degrade_batch
from ssr_models.ssr_base_model import SSRBaseModel
from ssr_utils.errors import OptionError


@MODEL_REGISTRY.register()
class SVKRModel(SSRBaseModel):
    """Trains / validates ``network_g`` (``type: SVKR``) from LR images alone (blind).

    Options:
        train.pixel_opt: loss on the final SR image Iᵀ.
        train.kernel_opt: optional loss on the final kernel map Kᵀ (needs the sample's ``kernel``).
        train.all_iterates (bool, default false): apply both losses to every iterate t = 0..T (averaged)
            instead of the final one only.
        train.gt_kernel_pixel_opt: optional loss on NBSR given the sample's ground-truth kernel map (stage 2's
            loss, needs the sample's ``kernel``). Trained on its own estimates only, NBSR learns to discount
            its kernel input, and SR with true kernels then scores about as with kernels twice too narrow or
            wide (README, SVKR evidence); this term keeps it reading them.
    Validation scores every iterate: ``<metric>_t<t>`` for t = 0..T, and ``<metric>`` for the final
    output; SR image Iᵀ, depth Dᵀ and the variance heat map of Kᵀ are saved and logged.
    """

    def setup_losses(self, train_opt):
        self.cri_pix = self.build_optional_loss(train_opt, 'pixel_opt')
        self.cri_kernel = self.build_optional_loss(train_opt, 'kernel_opt')
        if self.cri_pix is None and self.cri_kernel is None:
            raise OptionError('train:pixel_opt', None, 'SVKRModel needs pixel_opt and/or kernel_opt')
        self.all_iterates = bool(train_opt.get('all_iterates', False))
        self.cri_gt_kernel = self.build_optional_loss(train_opt, 'gt_kernel_pixel_opt')

    def feed_data(self, data):
        data = maybe_degrade_batch(data, self.device)  # degrade_on: model batches are synthesised here
        self.lq = data['lq'].to(self.device)
        self.gt = data['gt'].to(self.device) if 'gt' in data else None
        self.kernel_gt = data['kernel'].to(self.device) if 'kernel' in data else None

    def compute_losses(self):
        if self.cri_gt_kernel is not None and (self.kernel_gt is None or self.gt is None):
            raise KeyError("SVKRModel: train:gt_kernel_pixel_opt is set but the data has no 'kernel' and 'gt' entries")
        out = self.net_g(self.lq, return_all=self.all_iterates,
                         sr_with_kernel=self.kernel_gt if self.cri_gt_kernel is not None else None)
        self.output = out
        srs = out['srs'] if self.all_iterates else [out['sr']]
        kernels = out['kernels'] if self.all_iterates else [out['kernel']]
        l_total, loss_dict = 0, OrderedDict()
        if self.cri_pix is not None:
            if self.gt is None:
                raise KeyError("SVKRModel: the training data has no 'gt' entry")
            l_pix = sum(self.cri_pix(sr, self.gt) for sr in srs) / len(srs)
            l_total = l_total + l_pix
            loss_dict['l_pix'] = l_pix
        if self.cri_kernel is not None:
            if self.kernel_gt is None:
                raise KeyError("SVKRModel: train:kernel_opt is set but the data has no 'kernel' entry")
            l_kernel = sum(self.cri_kernel(k, self.kernel_gt) for k in kernels) / len(kernels)
            l_total = l_total + l_kernel
            loss_dict['l_kernel'] = l_kernel
        if self.cri_gt_kernel is not None:
            l_gt_kernel = self.cri_gt_kernel(out['sr_with_kernel'], self.gt)
            l_total = l_total + l_gt_kernel
            loss_dict['l_pix_gt_kernel'] = l_gt_kernel
        return l_total, loss_dict

    def run_network(self, net):
        return net(self.lq, return_all=True)
