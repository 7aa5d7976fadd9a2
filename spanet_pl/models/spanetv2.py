"""SPANetV2: Spectral-Adaptive Modulation Networks (IEEE TPAMI 2026).

Paper: https://arxiv.org/abs/2503.23947 -- numerical reference: DoranLyong/SPANetV2-official
(image_classification/models/spanetv2.py and spanetv2_ver4.py).

A MetaFormer (ConvFormer/CAFormer layout, channels-last inside the stages) whose token mixer, ExSPAM, runs one
depthwise conv per head with growing kernels (3/5/7/9), re-scales the rfft2 half spectrum of that context with a
learnable spectral re-scaling filter (SRF, squashed by a sigmoid), mixes heads with a grouped 1x1 expansion and
uses the result to modulate a query branch. "Hybrid" variants use attention in the last two stages.

The token mixers live in ``exspam.py``. Differences from the official code that keep its outputs: all heads share
one depthwise conv call (smaller kernels zero-padded to the largest) and one FFT; the SRF is resized (bicubic, as
official) and activated once per input size and cached in inference; attention uses PyTorch's fused kernel.
"""
from dataclasses import dataclass
from functools import partial
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from torch import Tensor

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, SelectAdaptivePool2d, calculate_drop_path_rates, to_2tuple, trunc_normal_
from timm.models import generate_default_cfgs, register_model
from timm.models.metaformer import LayerNormNoBias, MlpHead, Scale, SquaredReLU

from ..errors import UserInputError, check_choice
from ._common import BackboneBase, GlobalPool, Stage, build_variant, per_stage
from .fused import StarMlp, scale_add
from .exspam import (TOKEN_MIXERS, Attention, ExSPAM, HeadLayout, LearnableSigmoid, MixAttention, SrfAct,
                     TokenMixer, head_layout_state)
from .official import HEAD_LAYOUT_OF, to_ours

__all__ = ['ExSPAM', 'Attention', 'MixAttention', 'SPANetV2', 'SPANETV2_VARIANTS', 'TOKEN_MIXERS', 'HeadLayout',
           'SrfAct', 'TokenMixer']


class SPANetV2Block(nn.Module):
    """MetaFormer block on channels-last maps: norm -> mixer -> residual, norm -> StarReLU MLP -> residual."""

    def __init__(
            self,
            dim: int,
            token_mixer,
            mlp_ratio: float = 4.,
            norm_layer=partial(LayerNormNoBias, eps=1e-6),
            proj_drop: float = 0.,
            drop_path: float = 0.,
            layer_scale_init_value: Optional[float] = None,
            res_scale_init_value: Optional[float] = None,
    ):
        super().__init__()
        scale = partial(Scale, dim=dim, use_nchw=False)
        self.norm1 = norm_layer(dim)
        self.token_mixer = token_mixer(dim)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        self.layer_scale1 = scale(init_value=layer_scale_init_value) if layer_scale_init_value else nn.Identity()
        self.res_scale1 = scale(init_value=res_scale_init_value) if res_scale_init_value else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = StarMlp(dim, int(mlp_ratio * dim), drop=proj_drop)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        self.layer_scale2 = scale(init_value=layer_scale_init_value) if layer_scale_init_value else nn.Identity()
        self.res_scale2 = scale(init_value=res_scale_init_value) if res_scale_init_value else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        if torch.jit.is_scripting():  # TorchScript takes no module arguments: the plain residuals
            x = self.res_scale1(x) + self.layer_scale1(self.drop_path1(self.token_mixer(self.norm1(x))))
            return self.res_scale2(x) + self.layer_scale2(self.drop_path2(self.mlp(self.norm2(x))))
        return self._forward_eager(x)

    @torch.jit.unused
    def _forward_eager(self, x: Tensor) -> Tensor:
        x = self._residual(self.res_scale1, x, self.layer_scale1(self.drop_path1(self.token_mixer(self.norm1(x)))))
        x = self._residual(self.res_scale2, x, self.layer_scale2(self.drop_path2(self.mlp(self.norm2(x)))))
        return x

    @staticmethod
    def _residual(res_scale: nn.Module, x: Tensor, branch: Tensor) -> Tensor:
        # res_scale(x) + branch; a res-scale as one fused multiply-add
        if isinstance(res_scale, Scale):
            return scale_add(x, res_scale.scale, branch)
        return res_scale(x) + branch


class Stem(nn.Module):
    """7x7 stride-4 conv, then a bias-free LayerNorm; NCHW image in, channels-last map out."""

    def __init__(self, in_chs: int, out_chs: int):
        super().__init__()
        self.conv = nn.Conv2d(in_chs, out_chs, 7, stride=4, padding=2)
        self.norm = LayerNormNoBias(out_chs, eps=1e-6)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.conv(x).permute(0, 2, 3, 1))


class Downsample(nn.Module):
    """Bias-free LayerNorm, then a 3x3 stride-2 conv; channels-last in and out."""

    def __init__(self, in_chs: int, out_chs: int):
        super().__init__()
        self.norm = LayerNormNoBias(in_chs, eps=1e-6)
        self.conv = nn.Conv2d(in_chs, out_chs, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(self.norm(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class SPANetV2Stage(Stage):
    def __init__(self, in_chs: int, out_chs: int, depth: int, token_mixer, dp_rates: List[float], **block_kwargs):
        super().__init__()
        self.downsample = Downsample(in_chs, out_chs) if in_chs != out_chs else nn.Identity()
        self.blocks = nn.Sequential(*[
            SPANetV2Block(out_chs, token_mixer, drop_path=dp_rates[i], **block_kwargs) for i in range(depth)])


class SPANetV2(BackboneBase):
    """SPANetV2 backbone + MLP classifier.

    Args:
        depths: blocks per stage.
        dims: channels per stage.
        token_mixers: per stage, one of 'exspam', 'mixattention', 'attention' (hybrid: exspam, exspam,
            mixattention, attention).
        in_chans: input image channels.
        num_classes: classifier outputs; 0 gives pooled, normalised features.
        global_pool: 'avg', 'max', 'avgmax' or '' (no pooling: the normalised last map, with num_classes=0).
        img_size: training input size; sets the stored SRF resolution (input // 4, // 8, ... per stage).
        kernel_sizes: ExSPAM depthwise kernel per head (its length is the head count).
        srf_act: ExSPAM SRF activation, 'sigmoid' or 'learnable_sigmoid'.
        spectral_filter: ablation switch for the SRF.
        head_layout: ExSPAM head channel order, 'interleave' (models/spanetv2.py) or 'concat' (spanetv2_ver4.py).
        expand_ratio: ExSPAM head-mixing expansion.
        attn_head_dim: channels per attention head in attention stages.
        mlp_ratio: MLP expansion.
        layer_scale_init_values: per stage (or one for all), None or LayerScale's init value.
        res_scale_init_values: per stage (or one for all), None or the residual re-scaling init value.
        head_dropout: dropout inside the MLP classifier.
        drop_rate: dropout on pooled features before the classifier.
        proj_drop_rate: dropout after token mixers and inside MLPs.
        drop_path_rate: stochastic depth, rising linearly over all blocks.
    """

    stage_fmt = 'NHWC'  # stage outputs (hooked by timm's hook / fx feature wrappers) are channels-last

    def __init__(
            self,
            depths: Sequence[int] = (3, 3, 9, 3),
            dims: Sequence[int] = (64, 128, 320, 512),
            token_mixers: Union[TokenMixer, Sequence[TokenMixer]] = 'exspam',
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: GlobalPool = 'avg',
            img_size: Union[int, Tuple[int, int]] = 224,
            kernel_sizes: Sequence[int] = (3, 5, 7, 9),
            srf_act: SrfAct = 'sigmoid',
            spectral_filter: bool = True,
            head_layout: HeadLayout = 'interleave',
            expand_ratio: int = 2,
            attn_head_dim: int = 32,
            mlp_ratio: float = 4.,
            layer_scale_init_values: Union[Optional[float], Sequence[Optional[float]]] = None,
            res_scale_init_values: Union[Optional[float], Sequence[Optional[float]]] = (None, None, 1.0, 1.0),
            head_dropout: float = 0.,
            drop_rate: float = 0.,
            proj_drop_rate: float = 0.,
            drop_path_rate: float = 0.,
    ):
        super().__init__()
        num_stages = len(depths)
        if len(dims) != num_stages:
            raise UserInputError(f'depths {list(depths)} and dims {list(dims)} must have the same length')
        token_mixers = [check_choice(name, TokenMixer, 'token mixer')
                        for name in per_stage(token_mixers, num_stages, 'token_mixers')]
        layer_scales = per_stage(layer_scale_init_values, num_stages, 'layer_scale_init_values')
        res_scales = per_stage(res_scale_init_values, num_stages, 'res_scale_init_values')
        img_h, img_w = to_2tuple(img_size)
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.num_features = self.head_hidden_size = dims[-1]
        self.head_dropout = head_dropout
        self.grad_checkpointing = False

        self.stem = Stem(in_chans, dims[0])
        dp_rates = calculate_drop_path_rates(drop_path_rate, list(depths), stagewise=True)
        stages = []
        self.feature_info = []
        for i in range(num_stages):
            reduction = 2 ** (i + 2)
            if token_mixers[i] == 'exspam':
                mixer = partial(
                    ExSPAM, kernel_sizes=kernel_sizes, filter_size=(img_h // reduction, img_w // reduction),
                    expand_ratio=expand_ratio, srf_act=srf_act, spectral_filter=spectral_filter,
                    head_layout=head_layout, proj_drop=proj_drop_rate)
            else:
                mixer = partial(TOKEN_MIXERS[token_mixers[i]], head_dim=attn_head_dim, proj_drop=proj_drop_rate)
            stages.append(SPANetV2Stage(
                dims[i - 1] if i else dims[0], dims[i], depths[i], mixer, dp_rates[i], mlp_ratio=mlp_ratio,
                proj_drop=proj_drop_rate, layer_scale_init_value=layer_scales[i],
                res_scale_init_value=res_scales[i]))
            self.feature_info.append(dict(num_chs=dims[i], reduction=reduction, module=f'stages.{i}'))
        self.stages = nn.Sequential(*stages)

        self.norm = nn.LayerNorm(dims[-1], eps=1e-6)
        self.head_drop = nn.Dropout(drop_rate)
        self.reset_classifier(num_classes, global_pool)
        self.apply(self._init_weights)

    def _make_head(self, num_classes: int) -> nn.Module:
        if num_classes <= 0:
            return nn.Identity()
        return MlpHead(self.num_features, num_classes, act_layer=SquaredReLU, norm_layer=nn.LayerNorm,
                       drop_rate=self.head_dropout)

    @staticmethod
    def _init_weights(m: nn.Module):
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            trunc_normal_(m.weight, std=.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        """Spectral filters are not decayed (timm's optimizer factory already skips 1-d norms, biases, scales)."""
        return {name for name, _ in self.named_parameters() if name.endswith('.filter')}

    @staticmethod
    def _feature_map(x: Tensor, final: bool) -> Tensor:
        return x.permute(0, 3, 1, 2)  # channels-last inside the stages; the final norm acts on pooled features

    def _head_norm(self, x: Tensor) -> Tensor:
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)  # per channel of a pooled or unpooled map


@dataclass(frozen=True)
class SPANetV2Variant:
    depths: Tuple[int, ...]
    dims: Tuple[int, ...]
    token_mixers: Tuple[TokenMixer, ...]
    official: bool = True


_PURE = ('exspam',) * 4
_HYBRID = ('exspam', 'exspam', 'mixattention', 'attention')
_SIZES = {
    's18': ((3, 3, 9, 3), (64, 128, 320, 512)),
    's36': ((3, 12, 18, 3), (64, 128, 320, 512)),
    'm36': ((3, 12, 18, 3), (96, 192, 384, 576)),
    'b36': ((3, 12, 18, 3), (128, 256, 512, 768)),
}
SPANETV2_VARIANTS = {
    f'spanetv2_{size}_{kind}': SPANetV2Variant(depths, dims, mixers)
    for size, (depths, dims) in _SIZES.items() for kind, mixers in (('pure', _PURE), ('hybrid', _HYBRID))
}
# This project's additions, for tests and CPU quick starts.
SPANETV2_VARIANTS['spanetv2_nano_pure'] = SPANetV2Variant((1, 1, 2, 1), (32, 64, 128, 256), _PURE, official=False)
SPANETV2_VARIANTS['spanetv2_nano_hybrid'] = SPANetV2Variant((1, 1, 2, 1), (32, 64, 128, 256), _HYBRID, official=False)


def checkpoint_filter_fn(state_dict: dict, model: SPANetV2) -> dict:
    """timm's pretrained hook: an official SPANetV2 checkpoint (either layout) is converted to our keys, with the
    ExSPAM channel order of its layout as every ExSPAM's ``head_layout`` state; ours passes through."""
    keep_slope = any(isinstance(m, LearnableSigmoid) for m in model.modules())
    state, layout = to_ours(state_dict, 'v2', type(model).__name__, keep_srf_slope=keep_slope)
    if layout in HEAD_LAYOUT_OF:
        mixers = {k.split('.local_convs.')[0] for k in state if '.token_mixer.local_convs.' in k}
        state.update({f'{prefix}._extra_state': head_layout_state(HEAD_LAYOUT_OF[layout]) for prefix in mixers})
    return state


def _create_spanetv2(variant: str, pretrained: bool = False, **kwargs) -> SPANetV2:
    cfg = SPANETV2_VARIANTS[variant]
    return build_variant(SPANetV2, variant, pretrained, checkpoint_filter_fn,
                         dict(depths=cfg.depths, dims=cfg.dims, token_mixers=cfg.token_mixers), **kwargs)


def _cfg(**kwargs) -> dict:
    return {
        'url': '', 'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': (7, 7),
        'crop_pct': 1.0, 'interpolation': 'bicubic', 'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'stem.conv', 'classifier': 'head.fc2', 'paper_ids': 'arXiv:2503.23947',
        'paper_name': 'SPANetV2: Spectral-Adaptive Modulation Networks',
        'origin_url': 'https://github.com/DoranLyong/SPANetV2-official', 'license': 'unknown',  # the repo states none
        **kwargs,
    }


default_cfgs = generate_default_cfgs({name: _cfg() for name in SPANETV2_VARIANTS})


@register_model
def spanetv2_s18_pure(pretrained=False, **kwargs) -> SPANetV2:
    return _create_spanetv2('spanetv2_s18_pure', pretrained, **kwargs)

@register_model
def spanetv2_s18_hybrid(pretrained=False, **kwargs) -> SPANetV2:
    return _create_spanetv2('spanetv2_s18_hybrid', pretrained, **kwargs)

@register_model
def spanetv2_s36_pure(pretrained=False, **kwargs) -> SPANetV2:
    return _create_spanetv2('spanetv2_s36_pure', pretrained, **kwargs)

@register_model
def spanetv2_s36_hybrid(pretrained=False, **kwargs) -> SPANetV2:
    return _create_spanetv2('spanetv2_s36_hybrid', pretrained, **kwargs)

@register_model
def spanetv2_m36_pure(pretrained=False, **kwargs) -> SPANetV2:
    return _create_spanetv2('spanetv2_m36_pure', pretrained, **kwargs)

@register_model
def spanetv2_m36_hybrid(pretrained=False, **kwargs) -> SPANetV2:
    return _create_spanetv2('spanetv2_m36_hybrid', pretrained, **kwargs)

@register_model
def spanetv2_b36_pure(pretrained=False, **kwargs) -> SPANetV2:
    return _create_spanetv2('spanetv2_b36_pure', pretrained, **kwargs)

@register_model
def spanetv2_b36_hybrid(pretrained=False, **kwargs) -> SPANetV2:
    return _create_spanetv2('spanetv2_b36_hybrid', pretrained, **kwargs)

@register_model
def spanetv2_nano_pure(pretrained=False, **kwargs) -> SPANetV2:
    return _create_spanetv2('spanetv2_nano_pure', pretrained, **kwargs)

@register_model
def spanetv2_nano_hybrid(pretrained=False, **kwargs) -> SPANetV2:
    return _create_spanetv2('spanetv2_nano_hybrid', pretrained, **kwargs)
