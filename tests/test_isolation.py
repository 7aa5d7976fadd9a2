"""Timing with one worker process per model (spanet_pl.isolation): real spawned workers building real models."""
import pytest

from spanet_pl.benchmark import measure_speed
from spanet_pl.isolation import StepWorker, time_isolated
from spanet_pl.speed_benchmark import SpeedStep


def test_isolated_speed_rows_for_ours_and_a_timm_peer():
    rows = measure_speed(['spanet_nano', 'test_convnext'], sizes=[32], batch=2, device='cpu', warmup=0, iters=2,
                         modes=['train'], baseline='test_convnext', isolate=True, progress=False)
    assert [r['model'] for r in rows] == ['spanet_nano', 'test_convnext']
    for r in rows:
        assert r['img_s'] > 0 and r['ms_iter'] > 0 and r['peak_memory_mb'] >= 0
    assert rows[1]['ratio'] == 1.0 and rows[0]['ratio'] == pytest.approx(rows[0]['img_s'] / rows[1]['img_s'])
    assert rows[1]['ratio_q1'] == rows[1]['ratio_q3'] == 1.0 and 0 < rows[0]['ratio_q1'] <= rows[0]['ratio_q3']
    assert rows[0]['note'] == 'no --official-v1' and rows[1]['note'] is None


def test_a_worker_that_cannot_build_reports_one_line_and_the_others_still_run(tmp_path):
    broken = StepWorker(SpeedStep('spanetv2_nano_pure', 32, 1, False, official_root=str(tmp_path / 'missing')))
    good = StepWorker(SpeedStep('test_convnext', 32, 1, False))
    try:
        (none_sec, none_mem), (sec, mem) = time_isolated([broken, good], warmup=0, iters=3, memory=False)
    finally:
        broken.close()
        good.close()
    assert none_sec is None and none_mem is None and len(sec) == 3 and min(sec) > 0 and mem is None
    assert broken.error and '\n' not in broken.error and good.error is None
