"""The training speed switches reachable from YAML: torch.compile of the backbone, channels_last,
float32_matmul_precision, and bf16-mixed precision with the spectral FFTs in fp32."""
import lightning
import pytest
import timm
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from spanet_pl.tasks import ClassificationModule

from conftest import NANO_VARIANTS
from test_cli_classification import image_tree, run_main, write_config  # noqa: F401  (fixture)


def loader(n: int = 4, size: int = 32) -> DataLoader:
    gen = torch.Generator().manual_seed(0)
    return DataLoader(TensorDataset(torch.randn(n, 3, size, size, generator=gen), torch.arange(n) % 3), batch_size=2)


# aot_eager: TorchDynamo's capture (graph breaks fail the test) and AOT autograd through the custom autograd
# functions, without inductor's C++ code generation (minutes on two shared cores)
@pytest.mark.slow
@pytest.mark.parametrize('name', ['spanet_nano', 'spanetv2_nano_pure'])
def test_compile_channels_last_train_step_and_eval(name):
    torch._dynamo.reset()
    module = ClassificationModule(name, num_classes=3, warmup_epochs=0, compile='default', compile_backend='aot_eager',
                                  channels_last=True, float32_matmul_precision='high')
    eager = timm.create_model(name, num_classes=3)
    eager.load_state_dict(module.backbone.state_dict())
    trainer = lightning.Trainer(accelerator='cpu', max_steps=1, limit_val_batches=1, logger=False,
                                enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    try:
        trainer.fit(module, loader(), loader())
        assert module._backbone_compiled and torch.get_float32_matmul_precision() == 'high'
        assert torch._dynamo.utils.counters['stats']['unique_graphs'] >= 1
        assert not torch._dynamo.utils.counters['graph_break']  # the backbone compiles as whole graphs
        assert module.backbone.stem.conv.weight.is_contiguous(memory_format=torch.channels_last)
        assert set(module.backbone.state_dict()) == set(eager.state_dict())  # in place: no _orig_mod. keys
        trainer.validate(module, loader(), verbose=False)
        eager.load_state_dict(module.backbone.state_dict())
        x = torch.randn(2, 3, 32, 32)
        with torch.no_grad():
            torch.testing.assert_close(module.eval()(x), eager.eval()(x), atol=1e-4, rtol=1e-4)
    finally:
        torch.set_float32_matmul_precision('highest')


def test_switches_from_yaml(tmp_path, image_tree):  # noqa: F811
    config = write_config(tmp_path, image_tree, **{'model.init_args.channels_last': True,
                                                   'model.init_args.float32_matmul_precision': 'highest',
                                                   'trainer.max_epochs': 1, 'trainer.precision': 'bf16-mixed'})
    assert run_main(['fit', '--config', str(config)]) == 0
    assert run_main(['fit', '--config', str(config), '--model.init_args.compile', 'fastest']) != 0


@pytest.mark.parametrize('name', NANO_VARIANTS)
def test_bf16_autocast_close_to_fp32(name):
    model = timm.create_model(name, num_classes=10).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        reference = model(x)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            low = model(x)
    assert low.dtype == torch.bfloat16
    assert torch.isfinite(low).all()
    assert F.cosine_similarity(low.float().flatten(), reference.flatten(), dim=0) > 0.99
    assert (low.float() - reference).abs().max() <= 0.05 * reference.abs().max() + 0.05


@pytest.mark.slow
def test_segmentation_compile_channels_last_step_and_eval():
    """The same switches in SegmentationModule: the pyramid compiles without graph breaks, trains and validates
    channels-last, and predicts what the eager network with the same weights predicts."""
    from spanet_pl.tasks import SegmentationModule
    torch._dynamo.reset()
    gen = torch.Generator().manual_seed(0)
    images, masks = torch.randn(4, 3, 64, 64, generator=gen), torch.randint(0, 3, (4, 64, 64), generator=gen)
    data = DataLoader(TensorDataset(images, masks), batch_size=2)
    kwargs = dict(num_classes=3, head='fpn', head_kwargs={'fpn_channels': 16, 'head_channels': 16}, num_log_images=0)
    module = SegmentationModule('spanetv2_nano_pure', compile='default', compile_backend='aot_eager',
                                channels_last=True, **kwargs)
    eager = SegmentationModule('spanetv2_nano_pure', **kwargs)
    trainer = lightning.Trainer(accelerator='cpu', max_steps=1, limit_val_batches=1, logger=False,
                                enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, data, data)
    assert module._backbone_compiled and not torch._dynamo.utils.counters['graph_break']
    assert set(module.state_dict()) == set(eager.state_dict())  # compiled in place: the checkpoint keys stay
    eager.load_state_dict(module.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(module.eval()(images[:2]), eager.eval()(images[:2]), atol=1e-4, rtol=1e-4)
