"""The benchmark's segmentation mode: both recipe heads timed on a nano backbone, its command line."""
import json

import pytest

from spanet_pl.benchmark import main, measure_segmentation_speed


@pytest.mark.slow
def test_segmentation_training_speed_per_head():
    rows = measure_segmentation_speed(variant='spanetv2_nano_pure', size=32, batch=2, warmup=1, iters=1, train=True)
    assert [r['head'] for r in rows] == ['fpn', 'upernet']
    assert all(r['img_s'] > 0 and r['mode'] == 'train' for r in rows)
    assert rows[1]['params'] > rows[0]['params']  # UperNet's 320-channel convs (+ the auxiliary head)
    assert all(r['peak_mem_mb'] is None and r['peak_rss_mb'] > 0 for r in rows)  # CUDA-only peak on the CPU


def test_segmentation_cli(tmp_path, capsys):
    out = tmp_path / 'seg.json'
    main(['seg', '--variant', 'spanet_nano', '--heads', 'upernet', '--size', '32', '--iters', '1', '--json', str(out)])
    printed = capsys.readouterr().out
    assert 'segmentation inference images/s' in printed and 'upernet' in printed and 'load average' in printed
    result = json.loads(out.read_text())
    assert result['command'] == 'seg' and [r['head'] for r in result['results']] == ['upernet']
    with pytest.raises(SystemExit) as exc:
        main(['seg', '--variant', 'spanetv2_s18_pur'])
    assert "did you mean 'spanetv2_s18_pure'" in str(exc.value.code) and '\n' not in str(exc.value.code)
