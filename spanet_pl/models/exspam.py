"""The SPANetV2 token mixers: ExSPAM (the paper's mixer) and the attention of the hybrid variants' last stages.

ExSPAM runs one depthwise conv per head with growing kernels (3/5/7/9), re-scales the rfft2 half spectrum of that
context with a learnable spectral re-scaling filter (SRF, squashed by a sigmoid), mixes heads with a grouped 1x1
expansion and uses the result to modulate a query branch. Numerical reference: DoranLyong/SPANetV2-official
(image_classification/models/spanetv2.py and spanetv2_ver4.py); all heads share one depthwise conv call (smaller
kernels zero-padded to the largest) and one FFT, and attention uses PyTorch's fused kernel, with the same outputs;
in CPU training the heads' kernels take their gradients at their own sizes, the large ones as forward convolutions
(depthwise.py).
"""
from typing import Dict, List, Literal, Optional, Sequence, Tuple, Union, get_args

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from timm.layers import to_2tuple
from timm.models.metaformer import Attention as _TimmAttention

from ..errors import UserInputError, check_choice
from .depthwise import DepthwiseConv2d, cpu_training, heads_conv, padded_heads
from .eager import use_fused
from .pointwise import PointwiseLinear, conv1x1, linear, product
from .spectral import resize_filter, spectral_filter

__all__ = ['ExSPAM', 'LearnableSigmoid', 'Attention', 'MixAttention', 'TOKEN_MIXERS', 'HeadLayout', 'SrfAct',
           'TokenMixer', 'head_layout_state']

# The order of HeadLayout is the code ExSPAM stores in checkpoints (its extra state): append, never reorder.
HeadLayout = Literal['interleave', 'concat']
SrfAct = Literal['sigmoid', 'learnable_sigmoid']
TokenMixer = Literal['exspam', 'mixattention', 'attention']
_HEAD_LAYOUTS = get_args(HeadLayout)


def filter_like(weight: Tensor, x: Tensor) -> Tensor:
    """A (C, h, w) half-spectrum filter resized to channels-last ``x`` (B, H, W, C): (C, H, W//2+1). A torch.fx leaf
    (the size is read from the traced input), as is ``spectral_filter`` here."""
    return resize_filter(weight, x.shape[1], x.shape[2] // 2 + 1)


torch.fx.wrap('filter_like')
torch.fx.wrap('spectral_filter')


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

        self.query = nn.Sequential(PointwiseLinear(dim, dim, bias=bias), act_layer())
        self.ctx = PointwiseLinear(dim, dim, bias=bias)
        self.local_convs = nn.ModuleList([DepthwiseConv2d(head_dim, k) for k in kernel_sizes])
        if spectral_filter:
            self.filter = nn.Parameter(torch.randn(dim, height, width // 2 + 1) * 0.02)
            self.srf_act = nn.Sigmoid() if srf_act == 'sigmoid' else LearnableSigmoid()
        else:
            self.register_parameter('filter', None)
            self.srf_act = None
        self.proj = ContextProjection(
            nn.Conv2d(dim, dim * expand_ratio, 1, groups=head_dim, bias=bias),
            nn.GroupNorm(1, dim * expand_ratio),
            act_layer(),
            nn.Conv2d(dim * expand_ratio, dim, 1, bias=bias),
        )
        self.proj_out = PointwiseLinear(dim, dim, bias=proj_bias)
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

    def _to_layout(self, t: Tensor) -> Tensor:
        """Per-channel tensor (head-major along dim 0) in the channel order of ``head_layout``: interleaved, channel
        (head i, group g) moves from i * G + g to g * heads + i (a reshape, not an index, so backward is a copy)."""
        if self.head_layout != 'interleave':
            return t
        return t.unflatten(0, [self.num_heads, -1]).transpose(0, 1).flatten(0, 1)

    def _srf_channels_last(self, height: int, width: int) -> Optional[Tensor]:
        srf = self.srf(height, width)
        return None if srf is None else self._to_layout(srf).permute(1, 2, 0)

    def _srf_like(self, x: Tensor) -> Optional[Tensor]:
        """The activated SRF, (C, H, W//2+1) in the channel order of ``head_layout``, at the size of channels-last
        ``x`` (the size read inside an FX leaf)."""
        if self.filter is None:
            return None
        return self._to_layout(self.srf_act(filter_like(self.filter, x)))

    def _derived(self, height: int, width: int):
        """Weights of the inference path, in the channel order of ``head_layout``: every head's depthwise kernel
        zero-padded to the largest one so all heads run as a single conv (fewest passes when nothing is saved for
        backward), the context projection, and the SRF as (H, W//2+1, C)."""
        dw_weight, dw_bias = padded_heads([conv.weight for conv in self.local_convs],
                                          [conv.bias for conv in self.local_convs], self.head_layout == 'interleave')
        return (dw_weight, dw_bias, *self._ctx_in_layout(), self._srf_channels_last(height, width))

    def _ctx_in_layout(self) -> Tuple[Tensor, Optional[Tensor]]:
        """The context layer's weight and bias with their output channels in the channel order of ``head_layout``."""
        bias = self._to_layout(self.ctx.bias) if self.ctx.bias is not None else None
        return self._to_layout(self.ctx.weight), bias

    @torch.jit.unused
    def _derived_cached(self, height: int, width: int) -> Tuple[Tensor, Tensor, Tensor, Optional[Tensor],
                                                                  Optional[Tensor]]:
        if torch.is_grad_enabled() or torch.compiler.is_compiling():
            return self._derived(height, width)
        key = (height, width, self.head_layout, tuple((p.data_ptr(), p._version) for p in self.parameters()))
        if self._cache.get('key') != key:
            self._cache = {'key': key, 'value': self._derived(height, width)}
        return self._cache['value']

    def _context(self, x: Tensor) -> Tensor:
        """The depthwise, spectrally re-scaled context (B, H, W, C) in the channel order of ``head_layout``."""
        if torch.jit.is_scripting():
            return self._context_per_head(x)
        return self._context_eager(x)

    def _context_per_head(self, x: Tensor) -> Tensor:
        # one conv per head at its own kernel size (TorchScript, FX, GPU, autocast, frozen kernels): with autograd's
        # kernels the depthwise weight gradient costs ~k^2 per channel, so zero-padding 3/5/7 to 9 would double it.
        # The heads' outputs are stacked straight into channels-last memory in the order of head_layout (one copy),
        # which the spectral filter and the projection read as they are.
        ctx = self.ctx(x).permute(0, 3, 1, 2)
        parts = ctx.chunk(self.num_heads, 1)
        heads: List[Tensor] = []
        for i, conv in enumerate(self.local_convs):
            heads.append(conv(parts[i]).permute(0, 2, 3, 1))
        ctx = torch.stack(heads, -1).flatten(-2) if self.head_layout == 'interleave' else torch.cat(heads, -1)
        srf = self._srf_like(x)
        if srf is not None:
            ctx = spectral_filter(ctx, srf.permute(1, 2, 0), channels_last=True)
        return ctx

    @torch.jit.unused
    def _context_eager(self, x: Tensor) -> Tensor:
        if not use_fused():  # FX tracing (no cache of traced values)
            return self._context_per_head(x)
        if torch.is_grad_enabled():
            if cpu_training(x, [conv.weight for conv in self.local_convs]):
                return self._context_training(x)
            return self._context_per_head(x)
        _, height, width, channels = x.shape
        dw_weight, dw_bias, ctx_weight, ctx_bias, srf = self._derived_cached(height, width)
        ctx = product(x, ctx_weight, ctx_bias).permute(0, 3, 1, 2)
        ctx = F.conv2d(ctx, dw_weight, dw_bias, padding=dw_weight.shape[-1] // 2, groups=channels)
        ctx = ctx.permute(0, 2, 3, 1)
        if srf is not None:
            ctx = spectral_filter(ctx, srf, channels_last=True)
        return ctx

    @torch.jit.unused
    def _context_training(self, x: Tensor) -> Tensor:
        # the context computed in the channel order of head_layout (the context layer's weight rows permuted), so
        # the heads' convolutions run as one call on it (heads_conv) and nothing is copied into that order afterwards
        ctx = linear(x, *self._ctx_in_layout()).permute(0, 3, 1, 2)
        ctx = heads_conv(ctx, self.local_convs, self.head_layout == 'interleave').permute(0, 2, 3, 1)
        srf = self._srf_like(x)
        return ctx if srf is None else spectral_filter(ctx, srf.permute(1, 2, 0), channels_last=True)

    def forward(self, x: Tensor) -> Tensor:
        # channels-last throughout: the convs see NCHW views of channels-last memory, so no element-wise op mixes
        # memory layouts (which runs several times slower than on matching strides)
        q = self.query(x)
        ctx = self.proj(self._context(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return self.proj_drop(self.proj_out(q * ctx))


class ContextProjection(nn.Sequential):
    """ExSPAM's head-mixing projection: grouped 1x1 conv, GroupNorm(1), activation, 1x1 conv (NCHW in and out, the
    module analyses hook). The last 1x1 conv runs as a matmul over channels-last memory, so its output is
    channels-last whatever path the grouped conv took."""

    def forward(self, x: Tensor) -> Tensor:
        x = self[2](self[1](self[0](x)))  # expand, norm, act (indexed: TorchScript cannot unpack a module)
        reduce = self[3]
        if torch.jit.is_scripting():
            return F.linear(x.permute(0, 2, 3, 1), reduce.weight.flatten(1), reduce.bias).permute(0, 3, 1, 2)
        return conv1x1(x, reduce.weight, reduce.bias)


def _keep_head_layout_if_absent(module: ExSPAM, state_dict, prefix: str, *args) -> None:
    # state dicts written before head_layout was state, or by hand: keep the constructor's value instead of failing
    state_dict.setdefault(prefix + '_extra_state', module.get_extra_state())


class Attention(_TimmAttention):
    """Multi-head self-attention (timm's MetaFormer attention) on channels-last maps (B, H, W, C)."""

    def __init__(self, dim: int, head_dim: int = 32, attn_drop: float = 0., proj_drop: float = 0.):
        if dim % head_dim:
            raise UserInputError(f'{type(self).__name__} needs dim ({dim}) divisible by head_dim ({head_dim})')
        super().__init__(dim, head_dim=head_dim, attn_drop=attn_drop, proj_drop=proj_drop)
        # the same layers, their products as oneDNN 1x1 convolutions where that is faster (pointwise.py)
        self.qkv = PointwiseLinear(dim, self.attention_dim * 3, bias=False)
        self.proj = PointwiseLinear(self.attention_dim, dim, bias=False)

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
        self.local_conv = DepthwiseConv2d(dim, kernel_size, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        B, H, W, C = x.shape
        out, v = self._attend(x.reshape(B, H * W, C))
        local = self.local_conv(v.reshape(B, H, W, C).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return self.proj_drop(self.proj(out.reshape(B, H, W, C) + local))


TOKEN_MIXERS = {'exspam': ExSPAM, 'mixattention': MixAttention, 'attention': Attention}
