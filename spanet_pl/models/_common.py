"""What the SPANet and SPANetV2 model files share: per-stage arguments, the stage loop, timm's model API and builder."""
from typing import Callable, List, Literal, Optional, Union

import torch
import torch.nn as nn
from torch import Tensor

from timm.layers import SelectAdaptivePool2d
from timm.models import build_model_with_cfg, checkpoint_seq
from timm.models._features import FeatureHookNet, feature_take_indices
from timm.models._features_fx import FeatureGraphNet

from ..errors import UserInputError, check_choice

__all__ = ['GlobalPool', 'per_stage', 'Stage', 'BackboneBase', 'build_variant']

GlobalPool = Literal['avg', 'max', 'avgmax', '']


def per_stage(value, num_stages: int, name: str) -> list:
    """``value`` repeated per stage, or checked to hold one value per stage."""
    if not isinstance(value, (list, tuple)):
        return [value] * num_stages
    if len(value) != num_stages:
        raise UserInputError(f'{name} needs one value per stage ({num_stages}), got {list(value)}')
    return list(value)


class Stage(nn.Module):
    """``downsample`` then ``blocks`` (a Sequential), optionally with gradient checkpointing over the blocks."""

    def __init__(self):
        super().__init__()
        self.grad_checkpointing = False

    def forward(self, x: Tensor) -> Tensor:
        x = self.downsample(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.blocks, x)
        return self.blocks(x)


class BackboneBase(nn.Module):
    """timm's model API over ``stem`` -> ``stages`` -> ``norm`` -> ``head`` (the parts both families share).

    A family defines ``_make_head(num_classes)``, ``_feature_map(x, final)`` (a stage output as an NCHW map,
    ``final`` when it is the last stage's output that ``forward_head`` receives) and ``_head_norm(x)`` (what the head
    normalises after pooling, per channel of an NCHW map). The head is timm's: ``global_pool`` (keeping dims),
    ``_head_norm``, flatten when pooled, dropout, classifier; ``global_pool=''`` with ``num_classes=0`` returns the
    unpooled map. (No class annotations of submodules here: TorchScript would take them as interface types.)
    """

    in_chans: int
    num_features: int

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False):
        return dict(stem=r'^stem', blocks=r'^stages\.(\d+)' if coarse else r'^stages\.(\d+)\.blocks\.(\d+)')

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True):
        self.grad_checkpointing = enable
        for stage in self.stages:
            stage.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None):
        if global_pool is not None:
            check_choice(global_pool, GlobalPool, 'global_pool')
            # dims kept: SPANetV2's head norm acts per channel of the pooled (or unpooled) map
            self.global_pool = SelectAdaptivePool2d(pool_type=global_pool)
            self.flatten = nn.Flatten(1) if global_pool else nn.Identity()
        if num_classes > 0 and self.global_pool.is_identity():
            raise UserInputError(f"global_pool='' returns the unpooled feature map, so it needs num_classes=0 "
                                 f"(got {num_classes})")
        self.num_classes = num_classes
        self.head = self._make_head(num_classes)

    def _head_norm(self, x: Tensor) -> Tensor:
        return x

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Pooled (and, for SPANetV2, normalised) features with ``pre_logits``, else class logits; with
        ``global_pool=''`` the (normalised) NCHW map."""
        x = self.head_drop(self.flatten(self._head_norm(self.global_pool(x))))
        return x if pre_logits else self.head(x)

    @torch.jit.unused  # never called in TorchScript (is_scripting guards it)
    def _check_input(self, x: Tensor) -> None:
        if torch.fx._symbolic_trace.is_fx_symbolic_tracing():  # shapes are proxies there
            return
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
        """Stage outputs as NCHW maps; ``norm`` applies the final norm to the last stage's, where the family has one
        on feature maps (SPANet; SPANetV2's acts on pooled features)."""
        if output_fmt != 'NCHW':
            raise ValueError(f'output_fmt must be NCHW, got {output_fmt}')
        self._check_input(x)
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        stages = self.stages[:max_index + 1] if stop_early else self.stages
        intermediates = []
        x = self.stem(x)
        last = len(self.stages) - 1
        for i, stage in enumerate(stages):
            x = stage(x)
            if i in take_indices:
                intermediates.append(self._feature_map(x, final=norm and i == last))
        if intermediates_only:
            return intermediates
        return self._feature_map(x, final=len(stages) == len(self.stages)), intermediates

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
        """The last stage's output as ``forward_head`` takes it (NCHW)."""
        if not torch.jit.is_scripting():
            self._check_input(x)
        # gradient checkpointing runs inside each stage, over its blocks (a second level here would recompute twice)
        x = self.stages(self.stem(x))
        return self._feature_map(x, final=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


def _nchw(features):
    if isinstance(features, dict):
        return {k: v.permute(0, 3, 1, 2) for k, v in features.items()}
    return [f.permute(0, 3, 1, 2) for f in features]


class NCHWHookNet(FeatureHookNet):
    """timm's hook feature wrapper for stages with channels-last outputs (SPANetV2): NCHW maps, as the getter's."""

    def forward(self, x):
        return _nchw(super().forward(x))


class NCHWGraphNet(FeatureGraphNet):
    """timm's FX feature wrapper for stages with channels-last outputs (SPANetV2): NCHW maps, as the getter's."""

    def forward(self, x):
        return _nchw(super().forward(x))


def build_variant(model_cls: type, variant: str, pretrained: bool, filter_fn: Callable, defaults: dict,
                  out_indices: Optional[tuple] = None, **kwargs) -> nn.Module:
    """timm's ``build_model_with_cfg`` with a variant table's settings as defaults and a ``getter`` feature wrapper
    (``feature_cls='hook'`` / ``'fx'`` give NCHW maps too where the stages run channels-last: ``stage_fmt``)."""
    for key, value in defaults.items():
        kwargs.setdefault(key, value)
    feature_cls = kwargs.get('feature_cls')
    if getattr(model_cls, 'stage_fmt', 'NCHW') == 'NHWC' and isinstance(feature_cls, str):
        kwargs['feature_cls'] = (NCHWHookNet if 'hook' in feature_cls.lower() else
                                 NCHWGraphNet if feature_cls.lower() == 'fx' else feature_cls)
    if out_indices is None:
        out_indices = tuple(range(len(kwargs['depths'])))
    return build_model_with_cfg(
        model_cls, variant, pretrained,
        pretrained_filter_fn=filter_fn,
        feature_cfg=dict(feature_cls='getter', out_indices=out_indices),
        **kwargs,
    )
