"""The SPANetV2 token mixers: ExSPAM (the paper's mixer) and the attention of the hybrid variants' last stages.

ExSPAM runs one depthwise conv per head with growing kernels (3/5/7/9), re-scales the rfft2 half spectrum of that
context with a learnable spectral re-scaling filter (SRF, squashed by a sigmoid), mixes heads with a grouped 1x1
expansion and uses the result to modulate a query branch. Numerical reference: DoranLyong/SPANetV2-official
(image_classification/models/spanetv2.py and spanetv2_ver4.py); all heads share one depthwise conv call (smaller
kernels zero-padded to the largest) and one FFT, and attention uses PyTorch's fused kernel, with the same outputs.
"""
from typing import Dict, Literal, Optional, Sequence, Tuple, Union, get_args

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from timm.layers import to_2tuple
from timm.models.metaformer import Attention as _TimmAttention

from ..errors import UserInputError, check_choice
from .spectral import resize_filter, spectral_filter

__all__ = ['ExSPAM', 'LearnableSigmoid', 'Attention', 'MixAttention', 'TOKEN_MIXERS', 'HeadLayout', 'SrfAct',
           'TokenMixer', 'head_layout_state']

# The order of HeadLayout is the code ExSPAM stores in checkpoints (its extra state): append, never reorder.
HeadLayout = Literal['interleave', 'concat']
SrfAct = Literal['sigmoid', 'learnable_sigmoid']
TokenMixer = Literal['exspam', 'mixattention', 'attention']
_HEAD_LAYOUTS = get_args(HeadLayout)


def head_layout_state(head_layout: HeadLayout) -> Tensor:
    """ExSPAM's extra state: ``head_layout`` as a 0-d int tensor (its index in ``HeadLayout``), so that state
    dicts hold tensors only (EMA copies, safetensors)."""
    return torch.tensor(_HEAD_LAYOUTS.index(head_layout))


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
            function: it travels in the state dict (the module's extra state), official checkpoints set it by layout,
            and a state dict without it leaves the value given here.
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
            srf_act: SrfAct = 'sigmoid',
            spectral_filter: bool = True,
            head_layout: HeadLayout = 'interleave',
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
        check_choice(srf_act, SrfAct, 'ExSPAM srf_act')
        check_choice(head_layout, HeadLayout, 'ExSPAM head_layout')
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
        self.register_load_state_dict_pre_hook(_keep_head_layout_if_absent)

    def get_extra_state(self) -> Tensor:
        return head_layout_state(self.head_layout)

    def set_extra_state(self, state) -> None:
        code = int(state)
        if not 0 <= code < len(_HEAD_LAYOUTS):
            raise UserInputError(f'ExSPAM head_layout code {code} in the state dict is not one of 0..'
                                 f'{len(_HEAD_LAYOUTS) - 1} ({", ".join(_HEAD_LAYOUTS)})')
        self.head_layout = _HEAD_LAYOUTS[code]

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


def _keep_head_layout_if_absent(module: ExSPAM, state_dict, prefix: str, *args) -> None:
    # state dicts written before head_layout was state, or by hand: keep the constructor's value instead of failing
    state_dict.setdefault(prefix + '_extra_state', module.get_extra_state())


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
