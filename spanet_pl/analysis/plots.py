"""Figures of the analyses (matplotlib, Agg backend): each function takes computed numbers and returns a Figure."""
from typing import Dict, List, Optional, Sequence, Tuple

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib import cm, colors  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import FormatStrFormatter  # noqa: E402

from .filters import Filter, radial_profile  # noqa: E402
from .fourier import LayerCurve, diagonal_frequencies  # noqa: E402

__all__ = ['fourier_figure', 'high_frequency_figure', 'filter_figure', 'radial_figure', 'context_figure',
           'graph_diagonal_figure', 'graph_image_figure', 'cam_figure']

_PI = FormatStrFormatter('%.1fπ')
_STYLES = ('-', '--', ':', '-.')


def _depth_colour(depth: float):
    return cm.plasma_r(depth)


def _title(label: str, width: int = 32) -> str:
    """A panel title that fits its panel: long ``grid/cell/seed`` labels break after their slashes."""
    return label.replace('/', '/\n') if len(label) > width else label


def fourier_figure(results: Sequence[Tuple[str, List[LayerCurve]]]) -> Figure:
    """One panel per model: a ΔlogAmp curve per block, coloured by normalised depth (stem and downsampling skipped)."""
    fig, axes = plt.subplots(1, len(results), figsize=(3.3 * len(results) + 0.9, 3.6), dpi=120, squeeze=False,
                             sharey=True, layout='constrained')
    for ax, (label, curves) in zip(axes[0], results):
        for item in curves:
            if item.layer.kind != 'block':
                continue
            ax.plot(diagonal_frequencies(len(item.curve)), item.curve.numpy(), color=_depth_colour(item.depth), lw=1.2)
        ax.set_xlim(0, 1)
        ax.set_xlabel('Frequency')
        ax.set_title(_title(label), fontsize=8)
        ax.xaxis.set_major_formatter(_PI)
        ax.yaxis.set_major_formatter(FormatStrFormatter('%.1f'))
    axes[0][0].set_ylabel('Δ Log amplitude')
    bar = fig.colorbar(cm.ScalarMappable(norm=colors.Normalize(0, 1), cmap=cm.plasma_r), ax=axes[0].tolist())
    bar.set_label('Normalized depth')
    return fig


def high_frequency_figure(results: Sequence[Tuple]) -> Figure:
    """ΔlogAmp at the highest frequency of every block versus normalised depth, one line per model.

    ``results``: ``(label, curves)`` or ``(label, curves, std per curve)``; a std draws a ± band (seeds of a cell).
    """
    fig, ax = plt.subplots(figsize=(5.2, 3.6), dpi=120)
    for label, curves, *spread in results:
        keep = [i for i, c in enumerate(curves) if c.layer.kind == 'block']
        depth = np.array([curves[i].depth for i in keep])
        high = np.array([curves[i].high for i in keep])
        line, = ax.plot(depth, high, marker='o', ms=3, lw=1.2, label=label)
        if spread and any(spread[0]):
            std = np.array([spread[0][i] for i in keep])
            ax.fill_between(depth, high - std, high + std, color=line.get_color(), alpha=0.2, lw=0)
    ax.set_xlabel('Normalized depth')
    ax.set_ylabel('Δ Log amplitude at the highest frequency')
    ax.set_xlim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _filter_layout(filters: Sequence[Filter]) -> Dict[Tuple[int, int], Filter]:
    """(stage, column) -> the filter shown there: the mean over a stage's blocks per head (or λ)."""
    groups: Dict[Tuple[int, int], List[Filter]] = {}
    for item in filters:
        groups.setdefault((item.stage, item.head), []).append(item)
    out = {}
    for key, items in groups.items():
        spectrum = sum(f.spectrum for f in items) / len(items)
        out[key] = Filter(key[0], -1, key[1], items[0].label, spectrum, items[0].note)
    return out


def filter_figure(filters: Sequence[Filter], title: str) -> Figure:
    """Centred spectra: a row per stage, a column per head (SRF, mean over the stage's blocks) or λ (SPF)."""
    cells = _filter_layout(filters)
    stages = sorted({s for s, _ in cells})
    heads = sorted({h for _, h in cells})
    fig, axes = plt.subplots(len(stages), len(heads), figsize=(1.9 * len(heads) + 0.8, 1.9 * len(stages) + 0.5),
                             dpi=120, squeeze=False, layout='constrained')
    # one colour scale for the whole figure, spanning its values: learned SRFs stay near sigmoid(0) = 0.5 for a
    # long time, and a fixed [0, 1] scale would hide what they learned
    low = min(float(f.spectrum.min()) for f in cells.values())
    high = max(float(f.spectrum.max()) for f in cells.values())
    image = None
    for r, stage in enumerate(stages):
        for c, head in enumerate(heads):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            item = cells.get((stage, head))
            if item is None:
                ax.axis('off')
                continue
            image = ax.imshow(item.spectrum.numpy(), cmap='viridis', vmin=low, vmax=max(high, low + 1e-6),
                              interpolation='nearest')
            if r == 0:
                ax.set_title(item.label, fontsize=8)
            if c == 0:
                size = f'{item.spectrum.shape[0]}×{item.spectrum.shape[1]}'
                ax.set_ylabel(f'stage {stage + 1}\n{size} {item.note}'.strip(), fontsize=8)
    fig.suptitle(title, fontsize=9)
    if image is not None:
        fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.6, label='response')
    return fig


def radial_figure(results: Sequence[Tuple[str, Sequence[Filter]]]) -> Figure:
    """Radial profiles: a panel per stage, a colour per head (or λ), a line style per model; the legend below."""
    stages = sorted({f.stage for _, filters in results for f in filters})
    fig, axes = plt.subplots(1, max(len(stages), 1), figsize=(3.2 * max(len(stages), 1), 3.6), dpi=120,
                             squeeze=False, sharey=True, layout='constrained')
    for m, (label, filters) in enumerate(results):
        for (stage, head), item in sorted(_filter_layout(filters).items()):
            ax = axes[0][stages.index(stage)]
            freq, mean = radial_profile(item.spectrum)
            ax.plot(freq, mean, color=f'C{head}', ls=_STYLES[m % len(_STYLES)], lw=1.2,
                    label=f'{label}: {item.label}' if len(results) > 1 else item.label)
    for i, stage in enumerate(stages):
        axes[0][i].set_title(f'stage {stage + 1}', fontsize=9)
        axes[0][i].set_xlabel('Frequency radius')
        axes[0][i].xaxis.set_major_formatter(_PI)
        axes[0][i].grid(alpha=0.3)
    axes[0][0].set_ylabel('mean response')
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc='outside lower center', ncol=min(len(labels), 4), fontsize=7)
    return fig


def context_figure(pictures: np.ndarray, stage_maps: Dict[int, np.ndarray], title: str,
                   names: Optional[Sequence[str]] = None) -> Figure:
    """A row per image: the image, then each stage's context map (scaled to [0, 1]) over it."""
    rows, cols = len(pictures), 1 + len(stage_maps)
    fig, axes = plt.subplots(rows, cols, figsize=(1.9 * cols, 1.9 * rows + 0.4), dpi=120, squeeze=False)
    for r, picture in enumerate(pictures):
        axes[r][0].imshow(picture)
        if names is not None:
            axes[r][0].set_ylabel(names[r], fontsize=6)
        for c, (stage, maps) in enumerate(stage_maps.items(), start=1):
            axes[r][c].imshow(picture)
            axes[r][c].imshow(maps[r], cmap='jet', alpha=0.5, vmin=0, vmax=1)
            if r == 0:
                axes[r][c].set_title(f'stage {stage + 1}', fontsize=8)
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0][0].set_title('input', fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def graph_diagonal_figure(curves: Dict[str, Tuple[List[float], List[float]]], title: str) -> Figure:
    """|h| along the diagonal u = v, one curve per window size and one for the complete graph (attention)."""
    fig, ax = plt.subplots(figsize=(4.6, 3.4), dpi=120)
    for i, (name, (freq, values)) in enumerate(curves.items()):
        full = name == 'full'
        ax.plot(freq, np.abs(values), color='k' if full else cm.viridis(i / max(len(curves) - 1, 1)),
                ls='--' if full else '-', lw=1.4, label='attention (complete graph)' if full else name)
    ax.set_xlim(0, 1)
    ax.set_xlabel('Frequency (diagonal u = v)')
    ax.set_ylabel('|h(u, u)|')
    ax.xaxis.set_major_formatter(_PI)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def graph_image_figure(images: Dict[str, np.ndarray], extent: Tuple[float, float]) -> Figure:
    """|h(u, v)| as a picture per window size (DC at the centre on the torus, at the corner on the open grid)."""
    fig, axes = plt.subplots(1, len(images), figsize=(2.1 * len(images) + 0.8, 2.4), dpi=120, squeeze=False,
                             layout='constrained')
    shown = None
    for ax, (name, image) in zip(axes[0], images.items()):
        shown = ax.imshow(np.abs(image), cmap='magma', vmin=0, vmax=1, origin='lower',
                          extent=(extent[0], extent[1], extent[0], extent[1]))
        ax.set_title('attention' if name == 'full' else name, fontsize=8)
        ax.xaxis.set_major_formatter(_PI)
        ax.yaxis.set_major_formatter(_PI)
        ax.tick_params(labelsize=6)
    fig.colorbar(shown, ax=axes[0].tolist(), shrink=0.8, label='|h(u, v)|')
    return fig


def cam_figure(pictures: np.ndarray, overlays: Dict[str, List[np.ndarray]], titles: Dict[str, List[str]]) -> Figure:
    """A row per image: the image, then each model's CAM overlay titled with its top-1 class."""
    rows, cols = len(pictures), 1 + len(overlays)
    fig, axes = plt.subplots(rows, cols, figsize=(2.0 * cols, 2.0 * rows + 0.3), dpi=120, squeeze=False)
    for r, picture in enumerate(pictures):
        axes[r][0].imshow(picture)
        for c, label in enumerate(overlays, start=1):
            axes[r][c].imshow(overlays[label][r])
            axes[r][c].set_title(f'{_title(label, 24)}\n{titles[label][r]}' if r == 0 else titles[label][r], fontsize=7)
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0][0].set_title('input', fontsize=7)
    fig.tight_layout()
    return fig
