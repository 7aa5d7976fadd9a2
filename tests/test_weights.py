"""``spanet_pl.models.load_backbone_weights``: every source the project has, into plain models and pyramids.

(Official logits: test_official.py; segmentation's ``pretrained``: test_segmentation.py.)
"""
from pathlib import Path

import pytest
import torch

from spanet_pl.errors import UserInputError
from spanet_pl.models import ExSPAM, convert_official_state_dict, create_backbone, load_backbone_weights
from spanet_pl.tasks import ClassificationModule, SegmentationModule
from spanet_pl.testing import synthetic_state_dict

REFERENCE = torch.load(Path(__file__).parent / 'fixtures' / 'official_reference.pt')


def layouts(model):
    return {m.head_layout for m in model.modules() if isinstance(m, ExSPAM)}


def equal_tensors(model, expected, skip=()):
    state = getattr(model, 'model', model).state_dict()
    return [k for k, v in state.items() if not k.startswith(skip) and not torch.equal(v, expected[k])]


@pytest.mark.slow
@pytest.mark.parametrize('features_only', [False, True])
def test_official_ver4_file_sets_the_concat_order(tmp_path, features_only):
    ref = REFERENCE['ver4_s18_hybrid_288']
    torch.save({'model': synthetic_state_dict(ref['shapes'], ref['seed'])}, tmp_path / 'ver4.pth')
    model = create_backbone('spanetv2_s18_hybrid', features_only=features_only)
    assert load_backbone_weights(model, tmp_path / 'ver4.pth') is model
    assert layouts(model) == {'concat'}
    expected = convert_official_state_dict(tmp_path / 'ver4.pth', getattr(model, 'model', model))
    assert equal_tensors(model, expected) == []


def test_segmentation_checkpoint_into_a_classifier(tmp_path):
    """A pyramid has no final norm and no classifier: the classifier model keeps its own, the rest loads."""
    seg = SegmentationModule('spanetv2_nano_pure', num_classes=3, head='fcn', num_log_images=0,
                             backbone_kwargs={'head_layout': 'concat'})
    torch.save({'state_dict': seg.state_dict(), 'epoch': 1}, tmp_path / 'seg.ckpt')
    model = create_backbone('spanetv2_nano_pure', num_classes=7)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    load_backbone_weights(model, str(tmp_path / 'seg.ckpt'))
    source = seg.backbone.model.state_dict()
    assert equal_tensors(model, source, skip=('head.', 'norm.')) == [] and layouts(model) == {'concat'}
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items() if k.startswith(('head.', 'norm.')))


@pytest.mark.parametrize('num_classes', [10, 4])
def test_classification_checkpoint_into_a_classifier(tmp_path, num_classes):
    """Same classifier size: everything loads; another size: the classifier stays the model's own."""
    source = ClassificationModule('spanet_nano', num_classes=10)
    torch.save({'state_dict': source.state_dict()}, tmp_path / 'cls.ckpt')
    module = ClassificationModule('spanet_nano', num_classes=num_classes, pretrained=str(tmp_path / 'cls.ckpt'))
    expected = source.backbone.state_dict()
    assert equal_tensors(module.backbone, expected, skip=('head.',)) == []
    assert torch.equal(module.backbone.head.weight, expected['head.weight']) == (num_classes == 10)
    assert module.backbone.head.out_features == num_classes


def test_bad_sources(tmp_path):
    torch.save([1, 2, 3], tmp_path / 'list.pth')
    with pytest.raises(UserInputError, match=r"pretrained checkpoint '.*list\.pth': a checkpoint must hold a state "
                                             r"dict, got list"):
        load_backbone_weights(create_backbone('spanet_nano'), tmp_path / 'list.pth')
    with pytest.raises(UserInputError, match='holds no tensors'):
        load_backbone_weights(create_backbone('spanet_nano'), {'state_dict': {'epoch': 3}})
    with pytest.raises(TypeError, match='expected a SPANet or SPANetV2, got Linear'):
        load_backbone_weights(torch.nn.Linear(2, 2), {'weight': torch.zeros(2, 2)})
