"""The scaling benchmark: the growth fit and the memory prediction on known answers, the spectral share, the skipping of a
configuration predicted over the memory limit, and the command line (table, CSV, plot, one-line errors)."""
import csv

import pytest
import torch
import torch.nn as nn

from spanet_pl import scaling
from spanet_pl.benchmark import main
from spanet_pl.models.spectral import spectral_filter
from spanet_pl.scaling import CSV_COLUMNS, fit_exponent, fit_growth, measure_scaling, predict_memory_mb, spectral_share

CPU = torch.device('cpu')


def test_fit_recovers_a_known_exponent():
    pixels = [224 ** 2, 384 ** 2, 512 ** 2, 1024 ** 2]
    assert fit_exponent(pixels, [3e-6 * p ** 1.23 for p in pixels]) == pytest.approx(1.23, abs=1e-9)
    noisy = [3e-6 * p ** 1.23 * f for p, f in zip(pixels, (1.02, 0.98, 1.01, 0.99))]
    assert fit_exponent(pixels, noisy) == pytest.approx(1.23, abs=0.02)
    with pytest.raises(ValueError, match='two or more pixel counts'):
        fit_exponent([1024, 1024], [1.0, 2.0])


def test_fit_growth_per_model_batch_and_mode():
    def row(model, batch, size, seconds):
        return dict(model=model, mode='inference', batch=batch, size=size, pixels=size ** 2, seconds=seconds)
    rows = [row('a', 1, 32, 1.0), row('a', 1, 64, 8.0), row('a', 1, 128, None),  # skipped: left out of the fit
            row('a', 2, 32, 1.0), row('b', 1, 32, 1.0), row('b', 1, 64, 2.0)]
    fits = {(f['model'], f['batch']): f for f in fit_growth(rows)}
    assert fits['a', 1]['exponent'] == pytest.approx(1.5) and fits['a', 1]['sizes'] == [32, 64]
    assert fits['a', 2]['exponent'] is None  # one measured size
    assert fits['b', 1]['exponent'] == pytest.approx(0.5)


def test_memory_prediction_is_linear_from_the_largest_measured_load():
    assert predict_memory_mb({}, 4096) is None
    assert predict_memory_mb({1024: 10.0, 4096: 30.0}, 16384) == pytest.approx(120.0)


def test_spectral_share_of_a_module_with_ffts_dft_matrices_or_neither():
    conv = nn.Conv2d(8, 8, 3, padding=1)
    weight = torch.rand(8, 32, 17, requires_grad=True)

    class Filtered(nn.Module):
        def forward(self, x):
            return torch.fft.irfft2(torch.fft.rfft2(conv(x)), s=x.shape[-2:])
    x = torch.randn(2, 8, 32, 32)
    with torch.no_grad():
        assert 0 < spectral_share(lambda: Filtered()(x), CPU) < 1
        assert spectral_share(lambda: conv(x), CPU) == 0
    # the CPU's DFT-matrix form of spectral_filter at 32 px, forward and backward
    share = spectral_share(lambda: spectral_filter(conv(x), weight).sum().backward(), CPU)
    assert 0.1 < share < 1


def test_a_configuration_predicted_over_the_limit_is_skipped(monkeypatch):
    """With a peak memory of exactly 10 MB per 32x32 image, a 0.05 GB limit runs 32x1, 32x2 and 64x1 (40 MB) but
    skips 64x2 (80 MB predicted) without calling it."""
    calls, make_step = [], scaling.make_step

    def counting_step(model, x, *args):
        step = make_step(model, x, *args)

        def counted():
            calls.append(tuple(x.shape))
            step()
        counted.images = x.shape[0] * x.shape[-1] * x.shape[-2] / 32 ** 2
        return counted
    monkeypatch.setattr(scaling, 'make_step', counting_step)
    monkeypatch.setattr(scaling, 'peak_memory_mb', lambda step, device: (step(), 10.0 * step.images)[1])
    rows = measure_scaling(['spanet_nano'], sizes=[32, 64], batches=[1, 2], modes=['train'], warmup=0, iters=1,
                           max_memory_gb=0.05, progress=False)
    assert [(r['size'], r['batch']) for r in rows] == [(32, 1), (64, 1), (32, 2), (64, 2)]
    assert [r['predicted_memory_mb'] for r in rows] == pytest.approx([10, 40, 20, 80])
    assert all(r['seconds'] > 0 and r['peak_memory_mb'] == 10 * r['batch'] * r['size'] ** 2 / 32 ** 2
               for r in rows[:3])
    assert rows[3]['note'] == 'skipped: predicted 0.0781 GB > limit 0.05 GB'
    assert rows[3]['seconds'] is None and rows[3]['peak_memory_mb'] is None and rows[3]['spectral_share'] is None
    assert (2, 3, 64, 64) not in calls
    assert rows[0]['exponent'] is not None and rows[2]['exponent'] is None  # batch 2: one measured size


def test_cli_table_csv_and_plot(tmp_path, capsys):
    out, png = tmp_path / 'scaling.csv', tmp_path / 'scaling.png'
    main(['scaling', '--variants', 'spanet_nano', 'test_convnext', '--sizes', '64', '32', '--batch', '1', '2',
          '--warmup', '0', '--iters', '1', '--device', 'cpu', '--csv', str(out), '--plot', str(png)])
    printed = capsys.readouterr().out
    assert 'spectral %' in printed and 'predicted MB' in printed and 'time per call ~ pixels^a' in printed
    with open(out) as f:
        reader = csv.reader(f)
        header, lines = next(reader), list(reader)
    assert header == list(CSV_COLUMNS)
    rows = [dict(zip(header, line)) for line in lines]
    assert [(r['model'], r['batch'], r['size']) for r in rows] == [
        (model, batch, size) for model in ('spanet_nano', 'test_convnext') for batch in '12' for size in ('32', '64')]
    for r in rows:
        assert r['mode'] == 'inference' and int(r['pixels']) == int(r['size']) ** 2 and r['note'] == ''
        assert float(r['s/call']) > 0 and float(r['img/s']) > 0 and float(r['peak memory MB']) >= 0
        assert float(r['ms/image']) == pytest.approx(1e3 * float(r['s/call']) / int(r['batch']), rel=1e-3)
        share = float(r['spectral share'])
        assert 0 < share < 1 if r['model'] == 'spanet_nano' else share == 0
    exponents = {(r['model'], r['batch']): r['time exponent a'] for r in rows}
    assert len(exponents) == 4 and all(a != '' for a in exponents.values())
    assert [r['time exponent a'] for r in rows[:2]] == [exponents['spanet_nano', '1']] * 2
    assert png.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


def test_cli_skips_over_a_tiny_memory_limit(capsys):
    main(['scaling', '--variants', 'spanetv2_nano_pure', '--sizes', '32', '--batch', '1', '--modes', 'train',
          '--warmup', '0', '--iters', '1', '--device', 'cpu', '--max-memory-gb', '1e-6'])
    printed = capsys.readouterr().out
    assert 'skipped: predicted' in printed and 'GB > limit 1e-06 GB' in printed and 'memory limit 1e-06 GB' in printed


@pytest.mark.parametrize('argv, message', [
    (['--sizes', '224', '16'], 'image sizes must be >= 32'),
    (['--variants', 'spanet_smal'], "did you mean 'spanet_small'"),
    (['--batch', '0'], 'need batch >= 1'),
    (['--max-memory-gb', '0'], '--max-memory-gb must be positive'),
])
def test_bad_input_is_one_line_error(argv, message):
    with pytest.raises(SystemExit) as exc:
        main(['scaling', *argv])
    assert message in str(exc.value.code) and '\n' not in str(exc.value.code)


def test_help(capsys):
    with pytest.raises(SystemExit) as exc:
        main(['scaling', '--help'])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert '--max-memory-gb' in out and '--plot' in out and 'time exponent a' in out
