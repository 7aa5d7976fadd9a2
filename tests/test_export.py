"""python -m spanet_pl export: ONNX (checked in onnxruntime), torch.export with a dynamic batch, TorchScript; for
variants, classification runs and segmentation runs; one-line errors for bad input."""
import pytest
import torch

from spanet_pl.__main__ import main
from spanet_pl.export import build_network, check_export, export_model
from spanet_pl.tasks.restore import restore_run

from fake_runs import write_run


def cli_error(capsys, *args) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(['export', *args])
    assert exit_info.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


@pytest.mark.parametrize('name', ['spanet_nano', 'spanetv2_nano_hybrid'])
def test_exported_program_dynamic_batch(tmp_path, name):
    torch.manual_seed(0)
    network, _ = build_network(model=name, num_classes=5)
    out = tmp_path / 'model.pt2'
    export_model(network, 'exported-program', out, img_size=(64, 64), dynamic_batch=True)
    program = torch.export.load(str(out)).module()
    for batch in (1, 3):
        images = torch.randn(batch, 3, 64, 64)
        with torch.no_grad():
            torch.testing.assert_close(program(images), network(images), atol=1e-5, rtol=1e-5)


@pytest.mark.slow  # 20 s: the dynamo ONNX exporter
def test_onnx_nano_in_onnxruntime(tmp_path):
    network, _ = build_network(model='spanetv2_nano_hybrid')
    out = tmp_path / 'model.onnx'
    export_model(network, 'onnx', out, img_size=(64, 64), dynamic_batch=True)
    assert check_export(network, 'onnx', out, torch.randn(3, 3, 64, 64)) <= 1e-4


def test_torchscript_classification_run(tmp_path, capsys):
    ckpt = write_run(tmp_path / 'run', backbone_kwargs={'spectral_filter': True})
    out = tmp_path / 'model.pt'
    main(['export', '--ckpt', str(ckpt), '--format', 'torchscript', '--out', str(out), '--img-size', '64', '64'])
    assert 'max |exported - eager|' in capsys.readouterr().out
    network = restore_run(ckpt).network
    images = torch.randn(2, 3, 48, 80)  # scripted: any size
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.load(str(out))(images), network(images), atol=1e-5, rtol=1e-5)


def test_segmentation_run_exports_backbone_and_head(tmp_path):
    ckpt = write_run(tmp_path / 'seg', segmentation=True)
    run = restore_run(ckpt)
    assert run.kind == 'segmentation'
    out = tmp_path / 'seg.pt2'
    main(['export', '--ckpt', str(ckpt), '--format', 'exported-program', '--out', str(out), '--img-size', '64', '96',
          '--dynamic-batch', '--no-check'])
    images = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        logits = torch.export.load(str(out)).module()(images)
        torch.testing.assert_close(logits, run.task(images), atol=1e-5, rtol=1e-5)
    assert logits.shape == (2, 4, 64, 96)
    traced = tmp_path / 'seg.pt'
    main(['export', '--ckpt', str(ckpt), '--format', 'torchscript', '--out', str(traced), '--img-size', '64', '96'])
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.load(str(traced))(images), logits, atol=1e-5, rtol=1e-5)


def test_bad_input_is_one_line(tmp_path, capsys):
    assert 'does not exist' in cli_error(capsys, '--ckpt', str(tmp_path / 'no.ckpt'), '--format', 'onnx',
                                         '--out', str(tmp_path / 'x.onnx'))
    assert "invalid choice: 'tflite'" in cli_error(capsys, '--model', 'spanet_nano', '--format', 'tflite',
                                                   '--out', str(tmp_path / 'x'))
    assert 'did you mean' in cli_error(capsys, '--model', 'spanet_nan', '--format', 'onnx', '--out', 'x.onnx')
    assert '--official needs --model' in cli_error(capsys, '--ckpt', 'a.ckpt', '--official', 'b.pth',
                                                   '--format', 'onnx', '--out', 'x.onnx')
    plain = tmp_path / 'plain.ckpt'
    torch.save({'state_dict': {}}, plain)
    assert 'not a checkpoint of a spanet_pl' in cli_error(capsys, '--ckpt', str(plain), '--format', 'onnx',
                                                          '--out', 'x.onnx')


@pytest.mark.slow
@pytest.mark.parametrize('name, onnx_dft', [('spanet_small', 'matmul'), ('spanetv2_s18_pure', 'matmul'),
                                            ('spanetv2_s18_hybrid', 'matmul'), ('spanetv2_s18_pure', 'dft')])
def test_onnx_matches_pytorch_in_onnxruntime(tmp_path, name, onnx_dft):
    """The papers' models at 224 with a dynamic batch, the spectral filters as DFT-matrix products (the default) or
    as ONNX DFT nodes, in onnxruntime."""
    import onnx
    torch.manual_seed(0)
    network, _ = build_network(model=name)
    out = tmp_path / f'{name}.onnx'
    export_model(network, 'onnx', out, dynamic_batch=True, onnx_dft=onnx_dft)
    assert ('DFT' in {node.op_type for node in onnx.load(str(out)).graph.node}) == (onnx_dft == 'dft')
    for batch in (1, 2):
        assert check_export(network, 'onnx', out, torch.randn(batch, 3, 224, 224)) <= 1e-4
