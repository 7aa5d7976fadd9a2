"""SPANetV2: Spectral-Adaptive Modulation Networks (IEEE TPAMI 2026).

Paper: https://arxiv.org/abs/2503.23947 -- numerical reference: DoranLyong/SPANetV2-official
(image_classification/models/spanetv2.py and spanetv2_ver4.py).

A MetaFormer (ConvFormer/CAFormer layout, channels-last inside the stages) whose token mixer, ExSPAM, runs one
depthwise conv per head with growing kernels (3/5/7/9), re-scales the rfft2 half spectrum of that context with a
learnable spectral re-scaling filter (SRF, squashed by a sigmoid), mixes heads with a grouped 1x1 expansion and
uses the result to modulate a query branch. "Hybrid" variants use attention in the last two stages.

Differences from the official code that keep its outputs: all heads share one depthwise conv call (smaller kernels
zero-padded to the largest) and one FFT; the SRF is resized (bicubic, as official) and activated once per input size
and cached in inference; attention uses PyTorch's fused kernel.
"""
from dataclasses import dataclass
from functools import partial
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, Mlp, SelectAdaptivePool2d, calculate_drop_path_rates, to_2tuple, trunc_normal_
from timm.models import build_model_with_cfg, checkpoint_seq, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from timm.models.metaformer import Attention as _TimmAttention
from timm.models.metaformer import LayerNormNoBias, MlpHead, Scale, SquaredReLU, StarReLU

from ..errors import UserInputError
from .spanet import _per_stage
from .spectral import resize_filter, spectral_filter

__all__ = ['ExSPAM', 'Attention', 'MixAttention', 'SPANetV2', 'SPANETV2_VARIANTS', 'TOKEN_MIXERS']

HEAD_LAYOUTS = ('interleave', 'concat')
SRF_ACTIVATIONS = ('sigmoid', 'learnable_sigmoid')


class LearnableSigmoid(nn.Module):
    """sigmoid(alpha * x) with a learnable slope alpha (the SRF activation of the paper's revision)."""

    def __init__(self, alpha: float = 1.0):
        super().__init__()
        self.alpha = nn.Parameter(torch.tensor([float(alpha)]))

    def forward(self, x: Tensor) -> Tensor:
        return torch.sigmoid(self.alpha * x)


class ExSPAM(nn.Module):
    """Expanded Spectral Pooling Aggregation Modulation, the SPANetV2 token mixer (channels-last in and out).

    Args:
        dim: channels.
        kernel_sizes: one odd depthwise kernel size per head; its length (the number of heads) must divide ``dim``.
        filter_size: (H, W) of the feature map the SRF is stored for; other sizes resize it bicubically.
        expand_ratio: expansion of the grouped 1x1 head-mixing projection.
        srf_act: 'sigmoid' (official) or 'learnable_sigmoid' (sigmoid with a learnable slope).
        spectral_filter: ablation switch; False drops the SRF (and its FFT) and keeps everything else.
        head_layout: channel order fed to the grouped projection: 'interleave' (models/spanetv2.py: group g sees
            channel g of every head) or 'concat' (spanetv2_ver4.py: heads side by side). Same parameters, different
            function; ``load_official_checkpoint`` sets it to match the checkpoint.
        act_layer: activation of the query and projection branches.
        bias: bias of the query, context and projection layers.
        proj_drop: dropout after the output projection.
    """

    def __init__(
            self,
            dim: int,
            kernel_sizes: Sequence[int] = (3, 5, 7, 9),
            filter_size: Union[int, Tuple[int, int]] = 14,
            expand_ratio: int = 2,
            srf_act: str = 'sigmoid',
            spectral_filter: bool = True,
            head_layout: str = 'interleave',
            act_layer=nn.GELU,
            bias: bool = False,
            proj_drop: float = 0.,
            proj_bias: bool = False,
    ):
        super().__init__()
        kernel_sizes = tuple(int(k) for k in kernel_sizes)
        num_heads = len(kernel_sizes)
        if num_heads == 0 or dim % num_heads:
            raise UserInputError(
                f'ExSPAM kernel_sizes {list(kernel_sizes)} gives {num_heads} heads, which must divide dim {dim}')
        if any(k < 1 or k % 2 == 0 for k in kernel_sizes):
            raise UserInputError(f'ExSPAM kernel_sizes must be positive odd integers, got {list(kernel_sizes)}')
        if srf_act not in SRF_ACTIVATIONS:
            raise UserInputError(f'ExSPAM srf_act must be one of {SRF_ACTIVATIONS}, got {srf_act!r}')
        if head_layout not in HEAD_LAYOUTS:
            raise UserInputError(f'ExSPAM head_layout must be one of {HEAD_LAYOUTS}, got {head_layout!r}')
        head_dim = dim // num_heads
        height, width = to_2tuple(filter_size)
        self.dim = dim
        self.num_heads = num_heads
        self.kernel_sizes = kernel_sizes
        self.head_layout = head_layout

        self.query = nn.Sequential(nn.Linear(dim, dim, bias=bias), act_layer())
        self.ctx = nn.Linear(dim, dim, bias=bias)
        self.local_convs = nn.ModuleList([nn.Conv2d(head_dim, head_dim, k, padding=k // 2, groups=head_dim)
                                          for k in kernel_sizes])
        if spectral_filter:
            self.filter = nn.Parameter(torch.randn(dim, height, width // 2 + 1) * 0.02)
            self.srf_act = nn.Sigmoid() if srf_act == 'sigmoid' else LearnableSigmoid()
        else:
            self.register_parameter('filter', None)
            self.srf_act = None
        self.proj = nn.Sequential(
            nn.Conv2d(dim, dim * expand_ratio, 1, groups=head_dim, bias=bias),
            nn.GroupNorm(1, dim * expand_ratio),
            act_layer(),
            nn.Conv2d(dim * expand_ratio, dim, 1, bias=bias),
        )
        self.proj_out = nn.Linear(dim, dim, bias=proj_bias)
        self.proj_drop = nn.Dropout(proj_drop)
        self._cache: Dict = {}  # derived weights for inference only, keyed on input size and parameter versions

    def srf(self, height: int, width: int) -> Optional[Tensor]:
        """The activated spectral re-scaling filter for an (height, width) map, head-major, (C, H, W//2+1)."""
        if self.filter is None:
            return None
        return self.srf_act(resize_filter(self.filter, height, width // 2 + 1))

    def _derived(self, height: int, width: int):
        """Weights the forward pass uses, in the channel order of ``head_layout``.

        Every head's depthwise kernel is zero-padded to the largest one so all heads run as a single conv.
        """
        k_max = max(self.kernel_sizes)
        dw_weight = torch.cat([F.pad(conv.weight, [(k_max - conv.kernel_size[0]) // 2] * 4)
                               for conv in self.local_convs])
        dw_bias = torch.cat([conv.bias for conv in self.local_convs])
        ctx_weight, ctx_bias, srf = self.ctx.weight, self.ctx.bias, self.srf(height, width)
        if self.head_layout == 'interleave':
            # channel (group g, head i) moves from head-major position i * G + g to g * heads + i
            order = torch.arange(self.dim, device=dw_weight.device).view(self.num_heads, -1).t().reshape(-1)
            dw_weight, dw_bias, ctx_weight = dw_weight[order], dw_bias[order], ctx_weight[order]
            ctx_bias = ctx_bias[order] if ctx_bias is not None else None
            srf = srf[order] if srf is not None else None
        return dw_weight, dw_bias, ctx_weight, ctx_bias, srf

    def _derived_cached(self, height: int, width: int):
        if torch.is_grad_enabled() or torch.compiler.is_compiling():
            return self._derived(height, width)
        key = (height, width, self.head_layout, tuple((p.data_ptr(), p._version) for p in self.parameters()))
        if self._cache.get('key') != key:
            self._cache = {'key': key, 'value': self._derived(height, width)}
        return self._cache['value']

    def forward(self, x: Tensor) -> Tensor:
        _, height, width, channels = x.shape
        dw_weight, dw_bias, ctx_weight, ctx_bias, srf = self._derived_cached(height, width)
        q = self.query(x)
        ctx = F.linear(x, ctx_weight, ctx_bias).permute(0, 3, 1, 2)
        ctx = F.conv2d(ctx, dw_weight, dw_bias, padding=dw_weight.shape[-1] // 2, groups=channels)
        if srf is not None:
            ctx = spectral_filter(ctx, srf)
        ctx = self.proj(ctx).permute(0, 2, 3, 1)
        return self.proj_drop(self.proj_out(q * ctx))


class Attention(_TimmAttention):
    """Multi-head self-attention (timm's MetaFormer attention) on channels-last maps (B, H, W, C)."""

    def __init__(self, dim: int, head_dim: int = 32, attn_drop: float = 0., proj_drop: float = 0.):
        if dim % head_dim:
            raise UserInputError(f'{type(self).__name__} needs dim ({dim}) divisible by head_dim ({head_dim})')
        super().__init__(dim, head_dim=head_dim, attn_drop=attn_drop, proj_drop=proj_drop)

    def _attend(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        """Attention output and values, both (B, N, C) with heads side by side."""
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        if self.fused_attn:
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop.p if self.training else 0.)
        else:
            attn = self.attn_drop(((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1))
            out = attn @ v
        return out.transpose(1, 2).reshape(B, N, C), v.transpose(1, 2).reshape(B, N, C)

    def forward(self, x: Tensor) -> Tensor:
        B, H, W, C = x.shape
        out, _ = self._attend(x.reshape(B, H * W, C))
        return self.proj_drop(self.proj(out)).reshape(B, H, W, C)


class MixAttention(Attention):
    """Attention plus a 7x7 depthwise conv over its values, added before the output projection."""

    def __init__(self, dim: int, head_dim: int = 32, attn_drop: float = 0., proj_drop: float = 0.,
                 kernel_size: int = 7):
        super().__init__(dim, head_dim=head_dim, attn_drop=attn_drop, proj_drop=proj_drop)
        self.local_conv = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        B, H, W, C = x.shape
        out, v = self._attend(x.reshape(B, H * W, C))
        local = self.local_conv(v.reshape(B, H, W, C).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return self.proj_drop(self.proj(out.reshape(B, H, W, C) + local))


TOKEN_MIXERS = {'exspam': ExSPAM, 'mixattention': MixAttention, 'attention': Attention}


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
        self.mlp = Mlp(dim, int(mlp_ratio * dim), act_layer=StarReLU, bias=False, drop=proj_drop)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        self.layer_scale2 = scale(init_value=layer_scale_init_value) if layer_scale_init_value else nn.Identity()
        self.res_scale2 = scale(init_value=res_scale_init_value) if res_scale_init_value else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        x = self.res_scale1(x) + self.layer_scale1(self.drop_path1(self.token_mixer(self.norm1(x))))
        x = self.res_scale2(x) + self.layer_scale2(self.drop_path2(self.mlp(self.norm2(x))))
        return x


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


class SPANetV2Stage(nn.Module):
    def __init__(self, in_chs: int, out_chs: int, depth: int, token_mixer, dp_rates: List[float], **block_kwargs):
        super().__init__()
        self.grad_checkpointing = False
        self.downsample = Downsample(in_chs, out_chs) if in_chs != out_chs else nn.Identity()
        self.blocks = nn.Sequential(*[
            SPANetV2Block(out_chs, token_mixer, drop_path=dp_rates[i], **block_kwargs) for i in range(depth)])

    def forward(self, x: Tensor) -> Tensor:
        x = self.downsample(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.blocks, x)
        return self.blocks(x)


class SPANetV2(nn.Module):
    """SPANetV2 backbone + MLP classifier.

    Args:
        depths: blocks per stage.
        dims: channels per stage.
        token_mixers: per stage, one of 'exspam', 'mixattention', 'attention' (hybrid: exspam, exspam,
            mixattention, attention).
        in_chans: input image channels.
        num_classes: classifier outputs; 0 gives pooled, normalised features.
        global_pool: timm pool type before the final norm.
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

    def __init__(
            self,
            depths: Sequence[int] = (3, 3, 9, 3),
            dims: Sequence[int] = (64, 128, 320, 512),
            token_mixers: Union[str, Sequence[str]] = 'exspam',
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = 'avg',
            img_size: Union[int, Tuple[int, int]] = 224,
            kernel_sizes: Sequence[int] = (3, 5, 7, 9),
            srf_act: str = 'sigmoid',
            spectral_filter: bool = True,
            head_layout: str = 'interleave',
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
        token_mixers = _per_stage(token_mixers, num_stages, 'token_mixers')
        for name in token_mixers:
            if name not in TOKEN_MIXERS:
                raise UserInputError(f'unknown token mixer {name!r}; choose from {sorted(TOKEN_MIXERS)}')
        layer_scales = _per_stage(layer_scale_init_values, num_stages, 'layer_scale_init_values')
        res_scales = _per_stage(res_scale_init_values, num_stages, 'res_scale_init_values')
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

        self.global_pool = SelectAdaptivePool2d(pool_type=global_pool, flatten=True)
        self.norm = nn.LayerNorm(dims[-1], eps=1e-6)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = self._make_head(num_classes)
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
    def group_matcher(self, coarse: bool = False):
        return dict(stem=r'^stem', blocks=r'^stages\.(\d+)' if coarse else r'^stages\.(\d+)\.blocks\.(\d+)')

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True):
        self.grad_checkpointing = enable
        for stage in self.stages:
            stage.grad_checkpointing = enable

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        """Spectral filters are not decayed (timm's optimizer factory already skips 1-d norms, biases, scales)."""
        return {name for name, _ in self.named_parameters() if name.endswith('.filter')}

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None):
        self.num_classes = num_classes
        if global_pool is not None:
            self.global_pool = SelectAdaptivePool2d(pool_type=global_pool, flatten=True)
        self.head = self._make_head(num_classes)

    def _check_input(self, x: Tensor):
        if x.ndim != 4 or x.shape[1] != self.in_chans:
            raise UserInputError(
                f'{type(self).__name__} expects images shaped (B, {self.in_chans}, H, W) (in_chans={self.in_chans}), '
                f'got {tuple(x.shape)}')

    def forward_intermediates(
            self,
            x: Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ):
        """Stage outputs as NCHW maps (the final norm acts on pooled features, so ``norm`` has no effect)."""
        if output_fmt != 'NCHW':
            raise ValueError(f'output_fmt must be NCHW, got {output_fmt}')
        self._check_input(x)
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        stages = self.stages[:max_index + 1] if stop_early else self.stages
        intermediates = []
        x = self.stem(x)
        for i, stage in enumerate(stages):
            x = stage(x)
            if i in take_indices:
                intermediates.append(x.permute(0, 3, 1, 2))
        if intermediates_only:
            return intermediates
        return x.permute(0, 3, 1, 2), intermediates

    def prune_intermediate_layers(self, indices: Union[int, List[int]] = 1, prune_norm: bool = False,
                                  prune_head: bool = True):
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        self.stages = self.stages[:max_index + 1]
        if prune_norm or max_index < len(self.feature_info) - 1:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, '')
        return take_indices

    def forward_features(self, x: Tensor) -> Tensor:
        """Last stage output, NCHW."""
        self._check_input(x)
        x = self.stem(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.stages, x)
        else:
            x = self.stages(x)
        return x.permute(0, 3, 1, 2)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.head_drop(self.norm(self.global_pool(x)))
        return x if pre_logits else self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


@dataclass(frozen=True)
class SPANetV2Variant:
    depths: Tuple[int, ...]
    dims: Tuple[int, ...]
    token_mixers: Tuple[str, ...]
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
    """timm's pretrained hook: official SPANetV2 checkpoints (either layout) are converted, ours pass through."""
    from .official import convert_official_state_dict
    return convert_official_state_dict(state_dict, model)


def _create_spanetv2(variant: str, pretrained: bool = False, **kwargs) -> SPANetV2:
    cfg = SPANETV2_VARIANTS[variant]
    kwargs.setdefault('depths', cfg.depths)
    kwargs.setdefault('dims', cfg.dims)
    kwargs.setdefault('token_mixers', cfg.token_mixers)
    out_indices = kwargs.pop('out_indices', tuple(range(len(kwargs['depths']))))
    return build_model_with_cfg(
        SPANetV2, variant, pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(feature_cls='getter', out_indices=out_indices),
        **kwargs,
    )


def _cfg(**kwargs) -> dict:
    return {
        'url': '', 'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': (7, 7),
        'crop_pct': 1.0, 'interpolation': 'bicubic', 'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'stem.conv', 'classifier': 'head.fc2', 'paper_ids': 'arXiv:2503.23947', **kwargs,
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
