"""The CUDA path (skipped without a GPU): same logits as on the CPU, weights loaded from a CPU checkpoint, a bf16
training step of both tasks."""
import pytest
import torch

from spanet_pl.models import create_backbone, load_backbone_weights
from spanet_pl.tasks import SegmentationModule

from conftest import NANO_VARIANTS

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize('name', NANO_VARIANTS)
def test_cuda_logits_match_cpu(name):
    model = create_backbone(name, num_classes=10).eval()
    x = torch.randn(2, 3, 96, 128)
    flags = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # fp32 as on the CPU
    try:
        with torch.no_grad():
            expected = model(x)
            got = model.cuda()(x.cuda()).cpu()
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_cpu_checkpoint_into_a_cuda_pyramid_and_a_bf16_step(tmp_path):
    source = create_backbone('spanetv2_nano_hybrid', head_layout='concat')
    torch.save({'state_dict': {f'backbone.{k}': v for k, v in source.state_dict().items()}}, tmp_path / 'run.ckpt')
    module = SegmentationModule('spanetv2_nano_hybrid', num_classes=3, head='fcn', num_log_images=0).cuda()
    load_backbone_weights(module.backbone, tmp_path / 'run.ckpt')
    assert {m.head_layout for m in module.modules() if hasattr(m, 'head_layout')} == {'concat'}
    images, masks = torch.randn(2, 3, 64, 64, device='cuda'), torch.randint(0, 3, (2, 64, 64), device='cuda')
    with torch.autocast('cuda', dtype=torch.bfloat16):
        loss = module._loss(module(images), masks)
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None for p in module.parameters())
