"""SPANet: Frequency-balancing Token Mixer using Spectral Pooling Aggregation Modulation (ICCV 2023).

Paper: https://arxiv.org/abs/2308.11568 -- numerical reference: DoranLyong/SPANet-official (image_classification/spanet.py).

SPAM, the token mixer, expands a depthwise (1 x k then k x 1) context, splits its channels into one group per λ,
filters each group with a fixed circular spectral mask (λ for low, 1 - λ for high frequencies), projects every group
back to full width with a 1x1 conv, sums them and uses the sum to modulate the context.

Differences from the official code, none of which changes its outputs at the official input size:
  * masks are derived from the feature-map size on every call (cached per size), never stored on the module,
    so any input size works and the state dict holds parameters only;
  * the masks act on the rfft2 half spectrum, and the per-group 1x1 projections run as one conv.
"""
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, GroupNorm1, Mlp, calculate_drop_path_rates, trunc_normal_
from timm.models import generate_default_cfgs, register_model
from timm.models.metaformer import Scale

from ..errors import UserInputError
from ._common import BackboneBase, GlobalPool, Stage, build_variant, per_stage
from .depthwise import DepthwiseConv2d
from .official import to_ours
from .pointwise import PointwiseConv2d
from .spectral import DEFAULT_LAMBDAS, chunk_sizes, spam_masks, spam_masks_uncached, spectral_filter

__all__ = ['SPAM', 'SPANet', 'SPANET_VARIANTS']

IntOrSeq = Union[int, Sequence[int]]


@torch.jit.unused
def _cached_masks(x: Tensor, radius: float, lambdas: List[float], sizes: List[int]) -> Tensor:
    return spam_masks(x.shape[-2], x.shape[-1], radius, lambdas, sizes, x.device)


def spam_filter(x: Tensor, radius: float, lambdas: List[float], sizes: List[int]) -> Tensor:
    """SPAM's spectral masks at ``x``'s size (NCHW) applied to ``x``: one function, so that torch.fx keeps it as a
    leaf (its masks depend on the traced size), and masks built afresh in TorchScript (no cache there)."""
    if torch.jit.is_scripting():
        masks = spam_masks_uncached(x.shape[-2], x.shape[-1], radius, lambdas, sizes, x.device)
    else:
        masks = _cached_masks(x, radius, lambdas, sizes)
    return spectral_filter(x, masks)


torch.fx.wrap('spam_filter')


class SPAM(nn.Module):
    """Spectral Pooling Aggregation Modulation, the SPANet token mixer (NCHW in and out).

    Args:
        dim: channels.
        kernel_size: k of the depthwise 1 x k and k x 1 context convs.
        radius: radius of the low-pass circle, in frequency bins around DC.
        lambdas: one low-pass weight per channel group; the channels are split the way ``torch.chunk`` splits them.
        spectral_filter: ablation switch; False skips the masks and feeds the context straight to the projections.
    """

    def __init__(
            self,
            dim: int,
            kernel_size: int = 7,
            radius: float = 2,
            lambdas: Sequence[float] = DEFAULT_LAMBDAS,
            spectral_filter: bool = True,
    ):
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise UserInputError(f'SPAM kernel_size must be a positive odd integer, got {kernel_size}')
        if radius <= 0:
            raise UserInputError(f'SPAM radius must be positive, got {radius}')
        self.radius = float(radius)
        self.lambdas = tuple(float(v) for v in lambdas)
        self.group_sizes = chunk_sizes(dim, len(self.lambdas))
        self.use_filter = spectral_filter
        self._lambda_list, self._size_list = list(self.lambdas), list(self.group_sizes)  # TorchScript: lists

        self.proj_in = PointwiseConv2d(dim, dim)
        self.conv = nn.Sequential(DepthwiseConv2d(dim, (1, kernel_size)), DepthwiseConv2d(dim, (kernel_size, 1)))
        self.pws = nn.ModuleList([nn.Conv2d(size, dim, 1) for size in self.group_sizes])
        self.proj_out = PointwiseConv2d(dim, dim)

    @torch.jit.unused
    def masks(self, height: int, width: int, device=None) -> Tensor:
        """The per-channel half-spectrum masks used at an (height, width) feature map."""
        return spam_masks(height, width, self.radius, self.lambdas, self.group_sizes, device)

    def modulation(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        """The depthwise context and the aggregated spectral context that modulates it (both NCHW); ``forward``
        returns ``proj_out`` of their product. Analyses call this to see the context without storing it."""
        x = self.conv(self.proj_in(x))
        ctx = x
        if self.use_filter:
            ctx = spam_filter(x, self.radius, self._lambda_list, self._size_list)
        # Summing a 1x1 conv per channel group equals one 1x1 conv over all groups with the weights side by side.
        weights: List[Tensor] = []
        biases: List[Tensor] = []
        for pw in self.pws:
            weights.append(pw.weight)
            bias = pw.bias
            if bias is not None:  # always (TorchScript types it Optional)
                biases.append(bias)
        return x, F.conv2d(ctx, torch.cat(weights, dim=1), torch.stack(biases).sum(0))

    def forward(self, x: Tensor) -> Tensor:
        x, ctx = self.modulation(x)
        return self.proj_out(x * ctx)


class SPANetBlock(nn.Module):
    """norm -> SPAM -> residual, norm -> MLP -> residual; residual branches optionally re-scaled (res-scale)."""

    def __init__(
            self,
            dim: int,
            mlp_ratio: float = 4.,
            kernel_size: int = 7,
            radius: float = 2,
            lambdas: Sequence[float] = DEFAULT_LAMBDAS,
            spectral_filter: bool = True,
            act_layer=nn.GELU,
            norm_layer=GroupNorm1,
            proj_drop: float = 0.,
            drop_path: float = 0.,
            res_scale_init_value: Optional[float] = None,
    ):
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.token_mixer = SPAM(dim, kernel_size, radius, lambdas, spectral_filter)
        self.norm2 = norm_layer(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = Mlp(dim, hidden, act_layer=act_layer, drop=proj_drop, use_conv=True)
        self.mlp.fc1, self.mlp.fc2 = PointwiseConv2d(dim, hidden), PointwiseConv2d(hidden, dim)  # same layers, faster
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        self.res_scale1 = Scale(dim, res_scale_init_value) if res_scale_init_value is not None else nn.Identity()
        self.res_scale2 = Scale(dim, res_scale_init_value) if res_scale_init_value is not None else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        x = self.res_scale1(x) + self.drop_path(self.token_mixer(self.norm1(x)))
        x = self.res_scale2(x) + self.drop_path(self.mlp(self.norm2(x)))
        return x


class Stem(nn.Sequential):
    """7x7 stride-4 conv whose output is an NCHW map in channels-last memory: every later conv, norm and FFT then
    runs on channels-last memory, where the depthwise convs' backward pass on the CPU is several times faster."""

    def __init__(self, in_chs: int, out_chs: int):
        super().__init__()
        self.conv = nn.Conv2d(in_chs, out_chs, 7, stride=4, padding=2)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x).contiguous(memory_format=torch.channels_last)


class SPANetStage(Stage):
    def __init__(self, in_chs: int, out_chs: int, depth: int, downsample: bool, dp_rates: List[float], **block_kwargs):
        super().__init__()
        self.downsample = nn.Identity()
        if downsample:
            self.downsample = nn.Sequential()
            self.downsample.add_module('conv', nn.Conv2d(in_chs, out_chs, 3, stride=2, padding=1))
        self.blocks = nn.Sequential(*[SPANetBlock(out_chs, drop_path=dp_rates[i], **block_kwargs) for i in range(depth)])


class SPANet(BackboneBase):
    """SPANet backbone + classifier (a PoolFormer-style MetaFormer whose token mixer is SPAM).

    Args:
        depths: blocks per stage.
        dims: channels per stage.
        in_chans: input image channels.
        num_classes: classifier outputs; 0 gives pooled features.
        global_pool: 'avg', 'max', 'avgmax' or '' (no pooling: the normalised last map, with num_classes=0).
        mlp_ratio: MLP expansion.
        kernel_size: SPAM context kernel size, one for all stages or one per stage.
        radii: SPAM low-pass radius (frequency bins) per stage; official (2, 2, 1, 1).
        lambdas: SPAM λ list (one channel group each); official: the three values of torch.arange(0.7, 0.9, 0.1).
        spectral_filter: ablation switch for the spectral masks.
        res_scale_init_values: per stage, None or the init value of the residual re-scaling.
        drop_rate: dropout before the classifier.
        proj_drop_rate: dropout inside the MLPs.
        drop_path_rate: stochastic depth, rising linearly over all blocks.
    """

    def __init__(
            self,
            depths: Sequence[int] = (4, 4, 12, 4),
            dims: Sequence[int] = (64, 128, 320, 512),
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: GlobalPool = 'avg',
            mlp_ratio: float = 4.,
            kernel_size: IntOrSeq = 7,
            radii: Sequence[float] = (2, 2, 1, 1),
            lambdas: Sequence[float] = DEFAULT_LAMBDAS,
            spectral_filter: bool = True,
            res_scale_init_values: Sequence[Optional[float]] = (None, None, 1.0, 1.0),
            drop_rate: float = 0.,
            proj_drop_rate: float = 0.,
            drop_path_rate: float = 0.,
    ):
        super().__init__()
        num_stages = len(depths)
        if len(dims) != num_stages:
            raise UserInputError(f'depths {list(depths)} and dims {list(dims)} must have the same length')
        kernel_sizes = per_stage(kernel_size, num_stages, 'kernel_size')
        radii = per_stage(radii, num_stages, 'radii')
        res_scales = per_stage(res_scale_init_values, num_stages, 'res_scale_init_values')
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.num_features = self.head_hidden_size = dims[-1]
        self.drop_rate = drop_rate
        self.grad_checkpointing = False

        self.stem = Stem(in_chans, dims[0])

        # Rises linearly over all blocks (split per stage), as in the official code.
        dp_rates = calculate_drop_path_rates(drop_path_rate, list(depths), stagewise=True)
        stages = []
        self.feature_info = []
        for i in range(num_stages):
            stages.append(SPANetStage(
                dims[i - 1] if i else dims[0], dims[i], depths[i], downsample=i > 0, dp_rates=dp_rates[i],
                mlp_ratio=mlp_ratio, kernel_size=kernel_sizes[i], radius=radii[i], lambdas=lambdas,
                spectral_filter=spectral_filter, proj_drop=proj_drop_rate, res_scale_init_value=res_scales[i],
            ))
            self.feature_info.append(dict(num_chs=dims[i], reduction=2 ** (i + 2), module=f'stages.{i}'))
        self.stages = nn.Sequential(*stages)

        self.norm = GroupNorm1(dims[-1])
        self.head_drop = nn.Dropout(drop_rate)
        self.reset_classifier(num_classes, global_pool)
        self.apply(self._init_weights)

    def _init_weights(self, m: nn.Module):
        # As the official code: trunc-normal linear layers and MLP 1x1 convs, PyTorch defaults elsewhere.
        if isinstance(m, (nn.Linear, Mlp)):
            for layer in (m.fc1, m.fc2) if isinstance(m, Mlp) else (m,):
                trunc_normal_(layer.weight, std=.02)
                nn.init.zeros_(layer.bias)

    def _make_head(self, num_classes: int) -> nn.Module:
        return nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def _feature_map(self, x: Tensor, final: bool) -> Tensor:
        # The official head normalises the whole last feature map before pooling.
        return self.norm(x) if final else x


@dataclass(frozen=True)
class SPANetVariant:
    depths: Tuple[int, ...]
    dims: Tuple[int, ...]
    crop_pct: float = 0.9
    official: bool = True


SPANET_VARIANTS = {
    'spanet_small': SPANetVariant((4, 4, 12, 4), (64, 128, 320, 512)),
    'spanet_medium': SPANetVariant((6, 6, 18, 6), (64, 128, 320, 512)),
    'spanet_mediumX': SPANetVariant((8, 8, 24, 8), (64, 128, 320, 512)),
    'spanet_base': SPANetVariant((6, 6, 18, 6), (96, 192, 384, 768), crop_pct=0.95),
    'spanet_baseX': SPANetVariant((8, 8, 24, 8), (96, 192, 384, 768), crop_pct=0.95),
    # This project's addition, for tests and CPU quick starts: one block per stage but two in stage 3.
    'spanet_nano': SPANetVariant((1, 1, 2, 1), (24, 48, 96, 192), official=False),
}


def checkpoint_filter_fn(state_dict: dict, model: SPANet) -> dict:
    """timm's pretrained hook: an official SPANet checkpoint is converted to our keys, ours passes through."""
    return to_ours(state_dict, 'v1', type(model).__name__)[0]


def _create_spanet(variant: str, pretrained: bool = False, **kwargs) -> SPANet:
    cfg = SPANET_VARIANTS[variant]
    return build_variant(SPANet, variant, pretrained, checkpoint_filter_fn, dict(depths=cfg.depths, dims=cfg.dims),
                         **kwargs)


def _cfg(**kwargs) -> dict:
    return {
        'url': '', 'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': (7, 7),
        'crop_pct': 0.9, 'interpolation': 'bicubic', 'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'stem.conv', 'classifier': 'head', 'paper_ids': 'arXiv:2308.11568',
        'paper_name': 'SPANet: Frequency-balancing Token Mixer using Spectral Pooling Aggregation Modulation',
        'origin_url': 'https://github.com/DoranLyong/SPANet-official', 'license': 'mit',  # the official README's
        **kwargs,
    }


default_cfgs = generate_default_cfgs({name: _cfg(crop_pct=cfg.crop_pct) for name, cfg in SPANET_VARIANTS.items()})


@register_model
def spanet_small(pretrained=False, **kwargs) -> SPANet:
    return _create_spanet('spanet_small', pretrained, **kwargs)


@register_model
def spanet_medium(pretrained=False, **kwargs) -> SPANet:
    return _create_spanet('spanet_medium', pretrained, **kwargs)


@register_model
def spanet_mediumX(pretrained=False, **kwargs) -> SPANet:
    return _create_spanet('spanet_mediumX', pretrained, **kwargs)


@register_model
def spanet_base(pretrained=False, **kwargs) -> SPANet:
    return _create_spanet('spanet_base', pretrained, **kwargs)


@register_model
def spanet_baseX(pretrained=False, **kwargs) -> SPANet:
    return _create_spanet('spanet_baseX', pretrained, **kwargs)


@register_model
def spanet_nano(pretrained=False, **kwargs) -> SPANet:
    return _create_spanet('spanet_nano', pretrained, **kwargs)
