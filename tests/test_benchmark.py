"""The benchmark's measurements on the nano variants (fast on CPU) and its command line."""
import csv

import pytest
import timm
import torch
import torch.nn as nn

from spanet_pl.benchmark import count_flops, main, measure_speed, measure_table
from spanet_pl.timing import interleaved_rounds, paired_ratio_quartiles


@pytest.mark.slow
def test_table_params_and_macs():
    rows = measure_table(['spanet_nano', 'spanetv2_nano_pure'], size=64, progress=False)
    assert [row['variant'] for row in rows] == ['spanet_nano', 'spanetv2_nano_pure']
    for row in rows:
        model = timm.create_model(row['variant'])
        assert row['params'] == sum(p.numel() for p in model.parameters())
        assert row['macs'] > 0
        assert row['fft_flops'] > 0  # both have spectral filters, which FlopCounterMode alone does not see


def test_count_flops_conv_and_fft():
    conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
    assert count_flops(conv, torch.randn(1, 3, 16, 16)) == dict(dense=2 * 8 * 3 * 9 * 16 * 16, fft=0)

    class Rfft(nn.Module):
        def forward(self, x):
            return torch.fft.irfft2(torch.fft.rfft2(x), s=x.shape[-2:])

    # two real 16x16 transforms on 4 channels: 2 * 4 * 2.5 * 256 * log2(256)
    assert count_flops(Rfft(), torch.randn(1, 4, 16, 16)) == dict(dense=0, fft=2 * 4 * 2.5 * 256 * 8)


@pytest.mark.slow
@pytest.mark.parametrize('train', [False, True])
def test_speed_positive_throughput(train):
    rows = measure_speed(['spanet_nano'], sizes=[64], batch=1, device='cpu', warmup=1, iters=1, train=train,
                         progress=False)
    assert len(rows) == 1 and rows[0]['mode'] == ('train' if train else 'inference')
    assert rows[0]['img_s'] > 0 and rows[0]['ratio'] == 1.0 and rows[0]['note'] == 'no --official-v1'


def test_speed_csv_with_a_timm_peer(tmp_path, capsys):
    """Our model and a timm model interleaved, both modes plus batch-1 latency, ratios to the named baseline."""
    path = tmp_path / 'speed.csv'
    main(['speed', '--variants', 'spanetv2_nano_pure', 'test_convnext', '--sizes', '32', '--batch', '2',
          '--warmup', '0', '--iters', '1', '--modes', 'inference', 'train', '--latency', '--baseline', 'test_convnext',
          '--device', 'cpu', '--csv', str(path), '--no-isolate'])
    with open(path) as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0])[:8] == ['model', 'size', 'mode', 'batch', 'img/s', 'ms/iter', 'peak memory MB', 'ratio']
    assert [(r['model'], r['mode'], r['batch']) for r in rows] == [
        (model, mode, batch) for mode, batch in (('inference', '2'), ('train', '2'), ('latency', '1'))
        for model in ('spanetv2_nano_pure', 'test_convnext')]
    for r in rows:
        assert float(r['img/s']) > 0 and float(r['ms/iter']) > 0 and float(r['peak memory MB']) >= 0
        assert r['baseline'] == 'test_convnext' and (r['model'] != 'test_convnext' or float(r['ratio']) == 1.0)
        # one round: its paired ratio is the ratio of the two calls, which is also the ratio of the medians
        assert float(r['ratio q1']) == float(r['ratio q3']) == pytest.approx(float(r['ratio']), rel=1e-3)
    assert 'vs test_convnext' in capsys.readouterr().out.replace('all models in one process', '')


def test_speed_unknown_model_and_baseline_are_one_line_errors():
    with pytest.raises(SystemExit, match="did you mean 'caformer_s18'"):
        main(['speed', '--variants', 'caformer_s81'])
    with pytest.raises(ValueError, match='unknown baseline'):
        measure_speed(['spanet_nano'], sizes=[32], batch=1, warmup=0, iters=1, baseline='nope', progress=False)


def test_unknown_variant_is_one_line_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(['table', '--variants', 'spanet_smal'])
    message = str(exc.value.code)
    assert '\n' not in message and "did you mean 'spanet_small'" in message and 'spanetv2_s18_pure' in message


def test_help(capsys):
    with pytest.raises(SystemExit) as exc:
        main(['speed', '--help'])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert '--official-v1' in out and '--train' in out


def test_paired_ratio_quartiles_known_answers():
    # rounds whose pair ratios are 0.5, 1, 1.5, 2, 2.5: quartiles (inclusive) 1 and 2
    assert paired_ratio_quartiles([1.0] * 5, [2.0, 1.0, 1 / 1.5, 0.5, 0.4]) == pytest.approx((1.0, 2.0))
    # load drifting 4x between rounds, the same 2x ratio in each: no spread, unlike the two models' own times
    assert paired_ratio_quartiles([1.0, 2.0, 3.0, 4.0], [0.5, 1.0, 1.5, 2.0]) == pytest.approx((2.0, 2.0))
    assert paired_ratio_quartiles([3.0], [2.0]) == (1.5, 1.5)


def test_interleaved_rounds_rotate_the_order_and_pair_values_by_round():
    """Round i starts with timer i mod n: over n rounds every timer runs in every position once, and value i of
    every timer still comes from round i."""
    calls = []

    def timer(name):
        def call():
            calls.append(name)
            return float(sum(c == name for c in calls))  # how many times this timer has run, warm-up included
        return call

    times = interleaved_rounds([timer('a'), timer('b'), timer('c')], warmup=1, iters=4)
    assert calls == ['a', 'b', 'c'] + ['a', 'b', 'c', 'b', 'c', 'a', 'c', 'a', 'b', 'a', 'b', 'c']
    assert times == [[2., 3., 4., 5.]] * 3
