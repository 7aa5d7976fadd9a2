"""python -m spanet_pl hub save: timm's Hugging Face layout, loaded back by timm.create_model('local-dir:...')
with identical logits, for a classification run and for official (or our) checkpoints; --push wired to timm."""
import json

import pytest
import timm
import torch

from spanet_pl.__main__ import main
from spanet_pl.tasks.restore import restore_run
from spanet_pl.testing import synthetic_state_dict

from fake_runs import write_run


def hub_error(capsys, *args) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(['hub', 'save', *args])
    assert exit_info.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_run_round_trip_through_local_dir(tmp_path):
    ckpt = write_run(tmp_path / 'run', backbone_kwargs={'srf_act': 'learnable_sigmoid'})
    out = tmp_path / 'hub'
    main(['hub', 'save', '--ckpt', str(ckpt), '--out', str(out)])
    assert {p.name for p in out.iterdir()} == {'config.json', 'model.safetensors', 'README.md'}
    config = json.loads((out / 'config.json').read_text())
    assert config['architecture'] == 'spanetv2_nano_pure' and config['num_classes'] == 3
    assert config['model_args']['srf_act'] == 'learnable_sigmoid'
    cfg = config['pretrained_cfg']
    assert cfg['input_size'] == [3, 32, 32] and cfg['mean'] == [0.5, 0.5, 0.5] and cfg['classifier'] == 'head.fc2'
    card = (out / 'README.md').read_text()
    assert 'library_name: timm' in card and '0.875' in card and 'backbone: spanetv2_nano_pure' in card
    loaded = timm.create_model(f'local-dir:{out}', pretrained=True).eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(images), restore_run(ckpt).network(images))
    assert timm.data.resolve_model_data_config(loaded)['input_size'] == (3, 32, 32)


def test_checkpoint_in_our_layout_via_official(tmp_path):
    torch.manual_seed(0)
    model = timm.create_model('spanet_nano').eval()
    torch.save(model.state_dict(), tmp_path / 'nano.pth')
    main(['hub', 'save', '--official', str(tmp_path / 'nano.pth'), '--model', 'spanet_nano', '--out',
          str(tmp_path / 'hub')])
    loaded = timm.create_model(f'local-dir:{tmp_path / "hub"}', pretrained=True).eval()
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(images), model(images))
    assert 'license: mit' in (tmp_path / 'hub' / 'README.md').read_text()


@pytest.mark.parametrize('case', ['ver4_s18_hybrid_288', 'v1_small_224'])
def test_official_checkpoint_converts_with_one_command(tmp_path, case):
    """Official checkpoints of both papers reproduce the official logits after the round trip; SPANetV2's ver4
    (concat head layout) travels in model.safetensors."""
    from test_official import REFERENCE, official_state_dict
    torch.save(official_state_dict(case), tmp_path / 'official.pth')
    main(['hub', 'save', '--official', str(tmp_path / 'official.pth'), '--model', REFERENCE[case]['variant'],
          '--out', str(tmp_path / 'hub')])
    loaded = timm.create_model(f'local-dir:{tmp_path / "hub"}', pretrained=True).eval()
    from spanet_pl.testing import seeded_input
    ref = REFERENCE[case]
    with torch.no_grad():
        logits = loaded(seeded_input(2, (ref['size'], ref['size']), ref['seed']))
    torch.testing.assert_close(logits, ref['logits'], atol=1e-4, rtol=0)


def test_push_is_wired_to_timm(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr('timm.models.push_to_hf_hub', lambda model, repo_id, **kwargs: calls.append((repo_id, kwargs)))
    ckpt = write_run(tmp_path / 'run')
    main(['hub', 'save', '--ckpt', str(ckpt), '--out', str(tmp_path / 'hub'), '--push', 'me/spanet-digits'])
    (repo_id, kwargs), = calls
    assert repo_id == 'me/spanet-digits' and kwargs['safe_serialization'] is True
    assert kwargs['model_card']['license'] and kwargs['data_config']['input_size'] == (3, 32, 32)


def test_bad_input_is_one_line(tmp_path, capsys):
    assert 'does not exist' in hub_error(capsys, '--ckpt', str(tmp_path / 'no.ckpt'), '--out', str(tmp_path / 'o'))
    assert 'needs --model' in hub_error(capsys, '--official', 'x.pth', '--out', str(tmp_path / 'o'))
    assert 'does not exist' in hub_error(capsys, '--official', str(tmp_path / 'x.pth'), '--model', 'spanet_nano',
                                         '--out', str(tmp_path / 'o'))
    seg = write_run(tmp_path / 'seg', segmentation=True)
    assert 'takes classification runs' in hub_error(capsys, '--ckpt', str(seg), '--out', str(tmp_path / 'o'))
    torch.save(timm.create_model('spanet_nano').state_dict(), tmp_path / 'nano.pth')
    assert 'does not fit' in hub_error(capsys, '--official', str(tmp_path / 'nano.pth'), '--model',
                                       'spanetv2_nano_pure', '--out', str(tmp_path / 'o'))
