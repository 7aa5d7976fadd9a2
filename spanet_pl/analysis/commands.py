"""The five analyses as runs: load models and images, compute, write figures (PNG) and numbers (CSV) via ``Output``.

Each ``run_*`` takes the parsed command line (see ``__main__``) and an ``Output``; the math lives in the modules it
calls, the pictures in ``plots``.
"""
import argparse
import logging
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import UserInputError
from . import graph as graphs
from . import plots
from .cam import class_activation_maps
from .context import context_maps, stage_context, upsample_to
from .data import ImageSet, dataset_images, normalise, path_images, read_pictures
from .filters import radial_profile, spf_masks, srf_filters
from .fourier import diagonal_frequencies, layer_curves, mean_over_seeds, seed_cell
from .layers import stage_sizes
from .loading import LoadedModel, load_models
from .output import Output, safe_name

__all__ = ['run_fourier', 'run_filters', 'run_context', 'run_graph', 'run_cam', 'COMMANDS']

_logger = logging.getLogger(__name__)

_DEFAULT_SIZE = 224


def _device(args) -> torch.device:
    if args.device:
        return torch.device(args.device)
    return torch.device('cuda' if torch.cuda.is_available() else 'cpu')


def _image_set(args, models: List[LoadedModel]) -> ImageSet:
    """``--images`` if given, else ``--data`` (default: the data the first run was trained on, else digits)."""
    if args.images:
        return path_images(args.images).subset(args.num_images)
    source, root = args.data, args.data_root
    if source is None:
        known = next((m.data for m in models if m.data is not None), None)
        source, root = known if known is not None else ('digits', None)
        root = args.data_root or root
    return dataset_images(source, root).subset(args.num_images)


def _img_size(args, models: List[LoadedModel]) -> int:
    """``--img-size``, else the training size of the first run that recorded one, else the variant's (224)."""
    if args.img_size is None:
        known = [m.input_size for m in models if m.input_size]
        args.img_size = known[0] if known else _DEFAULT_SIZE
        print(f'input size {args.img_size}x{args.img_size} ('
              f'{"the training size of " + next(m.label for m in models if m.input_size) if known else "default"}'
              f'; set --img-size to change)')
    return args.img_size


def _pictures(args, models) -> Tuple[torch.Tensor, List[str], ImageSet]:
    images = _image_set(args, models)
    pictures, kept = read_pictures(images.paths, _img_size(args, models))
    print(f'{len(kept)} images from {images.description}, resized to {args.img_size}x{args.img_size}')
    return pictures, kept, images


def run_fourier(args, out: Output) -> None:
    models = load_models(args.model, args.label)
    pictures, _, _ = _pictures(args, models)
    device, results, rows = _device(args), [], []
    for item in models:
        inputs = normalise(pictures, item.mean, item.std).to(device)
        batches = tqdm(inputs.split(args.batch_size), desc=f'fourier {item.label}', unit='batch')
        curves = layer_curves(item.model.to(device), batches)
        results.append((item.label, curves))
        for c in curves:
            for i, (freq, value) in enumerate(zip(diagonal_frequencies(len(c.curve)), c.curve.tolist())):
                rows.append(dict(model=item.label, cell=seed_cell(item.label), layer=c.layer.index, name=c.layer.name, kind=c.layer.kind,
                                 stage=c.layer.stage + 1, block=c.layer.block, depth=c.depth, size=c.size,
                                 freq_index=i, freq_pi=freq, dlogamp=value))
    cells = mean_over_seeds(results)
    for label, curves, spread in cells:
        last = max(range(len(curves)), key=lambda i: (curves[i].layer.kind == 'block', i))
        std = f' ± {spread[last]:.3f}' if spread[last] else ''
        size = curves[last].size
        note = '; a map this small has no frequency but DC: use larger inputs' if size < 3 else ''
        print(f'  {label}: ΔlogAmp at the highest frequency of the last block = {curves[last].high:+.3f}{std} '
              f'({curves[last].layer.name}, {size}x{size}{note})')
    out.figure(plots.fourier_figure([(label, curves) for label, curves, _ in cells]), 'fourier_curves.png')
    out.figure(plots.high_frequency_figure(cells), 'fourier_high_frequency.png')
    out.table(rows, 'fourier.csv', ['model', 'cell', 'layer', 'name', 'kind', 'stage', 'block', 'depth', 'size',
                                    'freq_index', 'freq_pi', 'dlogamp'])


def run_filters(args, out: Output) -> None:
    models = load_models(args.model, args.label)
    results, spectra, profiles = [], [], []
    for item in tqdm(models, desc='filters', unit='model'):
        probe = torch.zeros(1, 3, _img_size(args, models), args.img_size)
        filters, kind = spf_masks(item.model, probe), 'spf'
        if not filters:
            filters, kind = srf_filters(item.model, probe), 'srf'
        if not filters:
            print(f'  {item.label}: no spectral filter (spectral_filter=false, or attention only); skipped')
            continue
        results.append((item.label, filters))
        title = f'{item.label}: ' + ('SPAM masks (SPF)' if kind == 'spf' else 'learned SRF after the activation, '
                                     'mean over each stage\'s blocks') + f', at {args.img_size}² input'
        out.figure(plots.filter_figure(filters, title), f'filters_{safe_name(item.label)}.png')
        for f in filters:
            freq, mean = radial_profile(f.spectrum)
            profiles.extend(dict(model=item.label, kind=kind, stage=f.stage + 1, block=f.block, head=f.head,
                                 label=f.label, radius=r, freq_pi=fr, response=v)
                            for r, (fr, v) in enumerate(zip(freq, mean)))
            height, width = f.spectrum.shape
            values = f.spectrum.tolist()
            spectra.extend(dict(model=item.label, kind=kind, stage=f.stage + 1, block=f.block, head=f.head,
                                fy=y - height // 2, fx=x - width // 2, response=values[y][x])
                           for y in range(height) for x in range(width))
    if not results:
        raise UserInputError('none of the models has a spectral filter to show')
    out.figure(plots.radial_figure(results), 'filters_radial.png')
    out.table(profiles, 'filters_radial.csv',
              ['model', 'kind', 'stage', 'block', 'head', 'label', 'radius', 'freq_pi', 'response'])
    out.table(spectra, 'filters_spectra.csv', ['model', 'kind', 'stage', 'block', 'head', 'fy', 'fx', 'response'])


def run_context(args, out: Output) -> None:
    models = load_models(args.model, args.label)
    pictures, kept, _ = _pictures(args, models)
    device, rows = _device(args), []
    for item in models:
        model = item.model.to(device)
        per_image: List[Dict[int, torch.Tensor]] = []
        for picture in tqdm(pictures, desc=f'context {item.label}', unit='image'):
            inputs = normalise(picture[None], item.mean, item.std).to(device)
            per_image.append(stage_context(context_maps(model, inputs)))
        stages = per_image[0].keys()
        native = {s: torch.cat([maps[s] for maps in per_image]) for s in stages}
        for s, maps in native.items():
            for i, image_map in enumerate(maps):
                rows.extend(dict(model=item.label, image=kept[i], stage=s + 1, y=y, x=x, value=v)
                            for y, line in enumerate(image_map.tolist()) for x, v in enumerate(line))
        shown = {s: upsample_to(maps, args.img_size).numpy() for s, maps in native.items()}
        names = [path.rsplit('/', 1)[-1] for path in kept]
        title = f'{item.label}: mean |modulating context| over channels (mean over each stage\'s blocks)'
        out.figure(plots.context_figure(pictures.numpy(), shown, title, names), f'context_{safe_name(item.label)}.png',
                   palette=True)
    out.table(rows, 'context.csv', ['model', 'image', 'stage', 'y', 'x', 'value'])


def run_graph(args, out: Output) -> None:
    periodic = args.boundary == 'periodic'
    kernels = [int(k) for k in args.kernels] + [graphs.FULL]
    dense = not periodic or args.size <= 48
    responses, curves, rows = {}, {}, []
    for k in tqdm(kernels, desc='graph responses', unit='graph'):
        responses.update(graphs.mixer_responses(args.size, [k], periodic=periodic, dense=dense))
    if periodic and dense:  # the dense Φᴴ S Φ against the torus closed form
        worst = max(float((responses[f'k={k}'] - graphs.closed_form_response(args.size, k)).abs().max())
                    for k in kernels if k != graphs.FULL)
        print(f'  dense Φᴴ S Φ vs closed form d_k(ω_u) d_k(ω_v): max |Δ| = {worst:.2e}')
    omega = graphs.frequencies(args.size, periodic) / np.pi
    for name, response in responses.items():
        curves[name] = graphs.diagonal(response, periodic)
        rows.extend(dict(graph=name, u=u, v=v, omega_u_pi=float(omega[u]), omega_v_pi=float(omega[v]),
                         response=float(response[u, v]))
                    for u in range(args.size) for v in range(args.size))
    boundary = 'torus' if periodic else 'open grid'
    title = f'{args.size}×{args.size} tokens, {boundary}: D⁻¹A in the grid Laplacian basis'
    out.figure(plots.graph_diagonal_figure(curves, title), 'graph_diagonal.png')
    if periodic:
        images = {n: torch.fft.fftshift(r).numpy() for n, r in responses.items()}
        extent = (-1.0, (args.size - 1 - args.size // 2) / (args.size / 2))
    else:
        images, extent = {n: r.numpy() for n, r in responses.items()}, (0.0, (args.size - 1) / args.size)
    out.figure(plots.graph_image_figure(images, extent), 'graph_response.png')
    out.table(rows, 'graph_response.csv', ['graph', 'u', 'v', 'omega_u_pi', 'omega_v_pi', 'response'])
    out.table([dict(graph=n, freq_pi=f, response=v) for n, (fs, vs) in curves.items() for f, v in zip(fs, vs)],
              'graph_diagonal.csv', ['graph', 'freq_pi', 'response'])
    for name, (freq, values) in curves.items():
        print(f'  {name:>6}: h(0,0) = {values[0]:.3f}, h at the highest diagonal frequency '
              f'({freq[-1]:.2f}π) = {values[-1]:+.4f}')


def _class_name(names: Optional[List[str]], index: int) -> str:
    return names[index] if names is not None and index < len(names) else str(index)


def run_cam(args, out: Output) -> None:
    models = load_models(args.model, args.label)
    not_classifiers = [m.label for m in models if not m.classifier]
    if not_classifiers:
        raise UserInputError(f'cam needs classification models; {", ".join(not_classifiers)} has no classifier '
                             f'(a segmentation run, or a checkpoint without head)')
    pictures, kept, images = _pictures(args, models)
    side = stage_sizes(models[0].model, normalise(pictures[:1], models[0].mean, models[0].std))[-1]
    if min(side) < 2:
        print(f'  note: at {args.img_size}x{args.img_size} the last stage\'s maps are {side[0]}x{side[1]}, so every CAM '
              f'is flat; use a model trained on larger images (and --img-size)')
    from pytorch_grad_cam.utils.image import show_cam_on_image
    device, overlays, titles, rows = _device(args), {}, {}, []
    for item in models:
        model = item.model.to(device)
        overlays[item.label], titles[item.label] = [], []
        for i in tqdm(range(len(pictures)), desc=f'{args.method} {item.label}', unit='image'):
            inputs = normalise(pictures[i:i + 1], item.mean, item.std).to(device)
            result = class_activation_maps(model, inputs, args.method, batch_size=args.cam_batch_size)
            cam, cls, prob = result.cams[0], int(result.classes[0]), float(result.probs[0])
            overlay = show_cam_on_image(pictures[i].numpy(), cam, use_rgb=True)
            name = _class_name(images.class_names, cls)
            overlays[item.label].append(overlay)
            titles[item.label].append(f'top-1 {name} ({prob:.2f})')
            out.image(overlay, f'cam_{safe_name(item.label)}_{i:02d}.png')
            peak_y, peak_x = np.unravel_index(int(cam.argmax()), cam.shape)
            rows.append(dict(model=item.label, image=kept[i], top1=cls, top1_name=name, prob=prob,
                             peak_y=int(peak_y), peak_x=int(peak_x), mean_cam=float(cam.mean())))
    out.figure(plots.cam_figure(pictures.numpy(), overlays, titles), 'cam.png', palette=True)
    out.table(rows, 'cam.csv', ['model', 'image', 'top1', 'top1_name', 'prob', 'peak_y', 'peak_x', 'mean_cam'])


COMMANDS = {'fourier': run_fourier, 'filters': run_filters, 'context': run_context, 'graph': run_graph,
            'cam': run_cam}


def run(args: argparse.Namespace) -> list:
    """Run ``args.command`` and return the written paths (nothing is written if it fails)."""
    if getattr(args, 'seed', None) is not None:
        torch.manual_seed(args.seed)
    with Output(args.out) as out:
        COMMANDS[args.command](args, out)
        return out.commit()
