"""Classification speed for ``python -m spanet_pl.benchmark speed``: images/s, time per iteration and peak memory of
our variants, any timm model and, given a local clone, the official code, every model's iterations interleaved
(``spanet_pl.timing``) so that all see the same machine load."""
import gc
import statistics
import sys
from dataclasses import dataclass
from typing import Callable, List, Literal, Optional, Sequence

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from .errors import check_choice, one_line
from .models import OFFICIAL_VARIANTS, SPANET_VARIANTS, VARIANTS, create_backbone, load_official_checkpoint
from .testing import build_official, official_weights, seeded_input
from .isolation import StepWorker, time_isolated
from .timing import Dtype, interleaved_times, paired_ratio_quartiles, peak_memory_mb

__all__ = ['DEFAULT_SPEED_VARIANTS', 'Dtype', 'create_model', 'make_step', 'check_models', 'measure_speed']

DEFAULT_SPEED_VARIANTS = ('spanet_small', 'spanetv2_s18_pure', 'spanetv2_s18_hybrid')
Compile = Literal['off', 'on', 'both']
Mode = Literal['inference', 'train', 'latency']
OFFICIAL_V1_SIZE = 224  # the official v1 re-assigns its fixed filters in forward, which raises at any other size
SEED = 0


def _family(variant: str) -> str:
    return 'v1' if variant in SPANET_VARIANTS else 'v2'


def make_step(model: Callable, x: torch.Tensor, train: bool, params: List[nn.Parameter], amp: bool,
               num_classes: int = 1000) -> Callable:
    """One timed unit of work: an inference forward, or forward + cross-entropy backward + SGD step."""
    device_type = x.device.type
    if not train:
        def step():
            with torch.no_grad(), torch.autocast(device_type, dtype=torch.bfloat16, enabled=amp):
                model(x)
        return step
    optimizer = torch.optim.SGD([p for p in params if p.requires_grad], lr=1e-4, momentum=0.9)
    target = torch.randint(0, num_classes, (x.shape[0],), device=x.device)

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=amp):
            loss = F.cross_entropy(model(x).float(), target)
        loss.backward()
        optimizer.step()
    return step


def create_model(name: str) -> nn.Module:
    """Our variant ``name`` (``create_backbone``) or timm's model of that name, with its 1000-class head."""
    return create_backbone(name) if name in VARIANTS else timm.create_model(name)


@dataclass(frozen=True)
class SpeedStep:
    """A picklable recipe for one model's timed step, built afresh in a worker process (``isolation``): our variant
    or a timm model ``name``, or with ``official_root`` the official model of that variant (its seeded weights)."""
    name: str
    size: int
    batch: int
    train: bool
    amp: bool = False
    channels_last: bool = False
    compile: bool = False
    compile_mode: Optional[str] = None
    device: str = 'cpu'
    official_root: Optional[str] = None

    def __call__(self) -> Callable:
        if self.official_root is not None:
            model = build_official(_family(self.name), self.name, self.official_root)
            model.load_state_dict(official_weights(model, _family(self.name), SEED))
        else:
            model = create_model(self.name)
        return self.step_for(model)

    def step_for(self, model: nn.Module) -> Callable:
        """The timed step of an already built ``model`` (moved to the device, memory format and mode of the recipe)."""
        dev = torch.device(self.device)
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        model = model.to(dev).to(memory_format=memory_format).train(self.train)
        x = torch.randn(self.batch, 3, self.size, self.size, device=dev).contiguous(memory_format=memory_format)
        run = torch.compile(model, mode=self.compile_mode) if self.compile else model
        return make_step(run, x, self.train, list(model.parameters()), self.amp,
                         getattr(model, 'num_classes', 1000) or 1000)


def check_models(names: Optional[Sequence[str]]) -> List[str]:
    """Our variants and any timm model name (the peers: caformer_s18, convnext_tiny, ...)."""
    names = list(names) if names else list(DEFAULT_SPEED_VARIANTS)
    known = None
    for name in names:
        if name in VARIANTS:
            continue
        known = known or set(timm.list_models())
        if name not in known:
            check_choice(name, tuple(VARIANTS) + tuple(sorted(known)), 'model (ours or timm)')
    return names


def measure_speed(
        variants: Optional[Sequence[str]] = None,
        sizes: Sequence[int] = (224,),
        batch: int = 8,
        device: str = 'cpu',
        dtype: Dtype = 'float32',
        warmup: int = 3,
        iters: int = 10,
        official_v1: Optional[str] = None,
        official_v2: Optional[str] = None,
        channels_last: bool = False,
        compile: Compile = 'off',
        compile_mode: Optional[str] = None,
        train: bool = False,
        modes: Optional[Sequence[Mode]] = None,
        latency: bool = False,
        baseline: Optional[str] = None,
        memory: bool = True,
        progress: bool = True,
        isolate: Optional[bool] = None,
) -> List[dict]:
    """Throughput, time per iteration and peak memory of our models, any timm models and, where a clone is given,
    the official ones, all iterations of one (size, mode) interleaved so that every model sees the same load.

    Args:
        variants: our variant names and / or timm model names (default: spanet_small, spanetv2_s18_pure,
            spanetv2_s18_hybrid).
        sizes: square input sizes.
        batch: images per iteration.
        device: 'cpu' or 'cuda'.
        dtype: 'float32', or 'bfloat16' (torch.autocast, as Lightning's bf16-mixed precision runs).
        warmup: untimed iterations per model, size and mode (at least 1 with ``compile``).
        iters: timed iterations; the median is reported.
        official_v1: path of a DoranLyong/SPANet-official clone, or None.
        official_v2: path of a DoranLyong/SPANetV2-official clone, or None.
        channels_last: run models and inputs in channels-last memory format.
        compile: 'off', 'on' (``torch.compile`` every model) or 'both' (each model eager and compiled, side by side).
        compile_mode: ``torch.compile``'s mode (None: its default).
        train: shorthand for ``modes=['train']``.
        modes: 'inference' (forward without grad) and / or 'train' (forward + cross-entropy backward + SGD step).
        latency: also time single images (mode 'latency': inference at batch 1).
        baseline: the model whose img/s the ``ratio`` column divides by (a row's ``model``; default the first).
        memory: measure each step's peak memory (one extra call per model).
        progress: show a tqdm bar (stderr).
        isolate: every model in a worker process of its own, iterations still interleaved (``isolation``): no model
            sees another's heap. Default: on the CPU (where a shared heap skews the comparison), not on CUDA.
    Returns:
        One dict per (model, size, mode): model (our variant, ``<variant> (official)``, a timm name; ``+compile``
        when compiled), size, mode, batch, img_s, ms_iter, peak_memory_mb, ratio (img/s over the baseline's),
        ratio_q1 / ratio_q3 (quartiles over the rounds of each round's back-to-back ratio, ``paired_ratio_quartiles``),
        max_abs_logit_diff (ours vs official, fp32, eval), note.
    """
    check_choice(dtype, Dtype, 'dtype')
    check_choice(compile, Compile, 'compile')
    if iters < 1 or warmup < 0 or batch < 1:
        raise ValueError(f'need iters >= 1, warmup >= 0 and batch >= 1, got {iters}, {warmup}, {batch}')
    modes = list(modes) if modes else ['train' if train else 'inference']
    for mode in modes:
        check_choice(mode, Mode, 'mode')
    if latency and 'latency' not in modes:
        modes.append('latency')
    dev = torch.device(device)
    if dev.type == 'cuda':
        if not torch.cuda.is_available():
            raise ValueError('device cuda given but CUDA is not available')
        torch.backends.cudnn.benchmark = True
    roots = {'v1': official_v1, 'v2': official_v2}
    amp = dtype == 'bfloat16'
    names = check_models(variants)

    # every model built once, up front: (label, module, our variant it mirrors or None, note)
    models, pairs = [], []
    for name in names:
        if name not in VARIANTS:
            models.append(dict(label=name, name=name, module=create_model(name).to(dev), note=None))
            continue
        ours = create_model(name).to(dev)
        models.append(dict(label=name, name=name, module=ours, note=None))
        root = roots[_family(name)]
        if root is None:
            models[-1]['note'] = f'no --official-{_family(name)}'
        elif name not in OFFICIAL_VARIANTS:
            models[-1]['note'] = 'no official counterpart'
        else:
            official = build_official(_family(name), name, root).to(dev)
            models.append(dict(label=f'{name} (official)', name=name, root=str(root), module=official, note=None,
                               family=_family(name), weights=official_weights(official, _family(name), SEED)))
            pairs.append((models[-2], models[-1]))
    if baseline is not None and baseline not in [m['label'] for m in models]:
        check_choice(baseline, [m['label'] for m in models], 'baseline')
    baseline = baseline or models[0]['label']
    compiled = {'off': [False], 'on': [True], 'both': [False, True]}[compile]
    isolate = dev.type == 'cpu' if isolate is None else isolate

    rows, round_times = [], {}
    bar = tqdm(total=len(sizes) * len(modes), desc='speed', disable=not progress, file=sys.stderr)
    for size in sizes:
        # fresh identical weights at every size (a training step changes them), then the equivalence check
        diffs, skip = {}, set()
        for ours, official in pairs:
            if official['family'] == 'v1' and size != OFFICIAL_V1_SIZE:
                skip.add(official['label'])
                continue
            official['module'].load_state_dict(official['weights'])
            load_official_checkpoint(ours['module'], official['module'].state_dict())
            x = seeded_input(2, (size, size), SEED).to(dev)
            with torch.no_grad():
                reference = official['module'].eval()(x)
                diff = (ours['module'].eval()(x) - reference).abs().max().item()
            diffs[ours['label']] = diffs[official['label']] = diff
            if diff > 1e-4 * max(1., reference.abs().max().item()):
                ours['note'] = 'LOGITS DIFFER from the official model'
        for mode in modes:
            bar.set_postfix_str(f'{size} {mode}')
            train_mode, n = mode == 'train', 1 if mode == 'latency' else batch
            entries = []
            for spec in models:
                if spec['label'] in skip:
                    continue
                for with_compile in compiled:
                    label = spec['label'] + ('+compile' if with_compile else '')
                    recipe = SpeedStep(spec['name'], size, n, train_mode, amp, channels_last, with_compile,
                                       compile_mode, str(dev), spec.get('root'))
                    entries.append(dict(label=label, recipe=recipe, module=spec['module'], diff=diffs.get(
                        spec['label']), note=spec['note'], trial='(official)' in label or with_compile))
            results = (_time_isolated if isolate else _time_in_process)(entries, warmup, iters, memory, dev)
            for entry, (times, mem, failure) in zip(entries, results):
                rows.append(_speed_row(entry['label'], size, mode, n, statistics.median(times) if times else None,
                                       mem, entry['diff'], failure or entry['note']))
                round_times[id(rows[-1])] = times
            bar.update()
    bar.close()
    for row in rows:
        reference = next((r for r in rows if r['model'] == baseline and r['size'] == row['size']
                          and r['mode'] == row['mode'] and r['img_s']), None)
        row['baseline'] = baseline
        row['ratio'] = row['img_s'] / reference['img_s'] if reference and row['img_s'] else None
        if row['ratio'] is not None:
            row['ratio_q1'], row['ratio_q3'] = paired_ratio_quartiles(round_times[id(reference)],
                                                                      round_times[id(row)])
    del models, pairs
    gc.collect()
    if dev.type == 'cuda':
        torch.cuda.empty_cache()
    return rows


def _time_in_process(entries: List[dict], warmup: int, iters: int, memory: bool, dev: torch.device) -> List[tuple]:
    """(seconds of every round, peak MB, failure note) per entry, every model in this process, iterations
    interleaved."""
    steps, results = [], []
    for entry in entries:
        step = entry['recipe'].step_for(entry['module'])
        failure = None
        if entry['trial']:
            try:  # the official code may not support every setting (bf16 FFTs, compile, ...)
                step()
            except Exception as e:  # noqa: BLE001  (report, don't abort the benchmark)
                failure = f'failed: {one_line(e)}'
        steps.append(None if failure else step)
        results.append(failure)
    seconds = iter(interleaved_times([s for s in steps if s is not None], warmup, iters, dev))
    return [(None, None, failure) if step is None else
            (next(seconds), peak_memory_mb(step, dev) if memory else None, None)
            for step, failure in zip(steps, results)]


def _time_isolated(entries: List[dict], warmup: int, iters: int, memory: bool, dev: torch.device) -> List[tuple]:
    """(seconds of every round, peak MB, failure note) per entry, every model in a worker process of its own."""
    workers = [StepWorker(entry['recipe'], str(dev)) for entry in entries]
    try:
        timed = time_isolated(workers, warmup, iters, memory)
    finally:
        for worker in workers:
            worker.close()
    return [(sec, mem, None if w.error is None else f'failed: {w.error}') for w, (sec, mem) in zip(workers, timed)]


def _speed_row(model, size, mode, batch, seconds, memory, diff, note) -> dict:
    return dict(model=model, size=size, mode=mode, batch=batch, img_s=batch / seconds if seconds else None,
                ms_iter=seconds * 1e3 if seconds else None, peak_memory_mb=memory, ratio=None, ratio_q1=None,
                ratio_q3=None, max_abs_logit_diff=diff, note=note)
