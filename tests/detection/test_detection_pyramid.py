import pytest
import torch
from torch.nn import functional as F

from vpt.detection.pyramid import SimpleFeaturePyramid
from vpt.errors import ConfigError


@pytest.mark.parametrize("patch", [8, 16])
def test_levels_have_vitdet_strides_and_shapes(patch):
    pyramid = SimpleFeaturePyramid(in_dim=48, out_channels=16)
    height, width = 8 * patch, 4 * patch  # a 256 x 128 image at patch 16: an 8 x 4 grid of patch tokens
    maps = pyramid(torch.randn(2, 48, height // patch, width // patch))
    strides = pyramid.strides(patch)
    assert strides == [patch / 4, patch / 2, patch, patch * 2, patch * 4]
    assert list(maps) == ["0", "1", "2", "3", "pool"] == pyramid.level_names
    for (name, level), stride in zip(maps.items(), strides):
        assert level.shape == (2, 16, int(height / stride), int(width / stride)), name
    # the top level is the coarsest level subsampled by 2 (torchvision's LastLevelMaxPool)
    assert torch.equal(maps["pool"], maps["3"][..., ::2, ::2])


def test_without_top_block_and_with_fewer_scales():
    pyramid = SimpleFeaturePyramid(48, 8, scales=(2.0, 1.0, 0.5), top_block=False)
    maps = pyramid(torch.randn(1, 48, 4, 6))
    assert [tuple(m.shape[-2:]) for m in maps.values()] == [(8, 12), (4, 6), (2, 3)]
    assert pyramid.strides(16) == [8, 16, 32]
    assert pyramid.out_channels == 8


def test_half_scale_level_is_maxpool_of_the_input_before_its_convolutions():
    pyramid = SimpleFeaturePyramid(4, 4, scales=(0.5,), top_block=False)
    features = torch.randn(1, 4, 6, 6)
    convs = pyramid.levels[0][1]
    assert torch.allclose(pyramid(features)["0"], convs(F.max_pool2d(features, 2)))


def test_bad_scales_and_widths_are_config_errors():
    with pytest.raises(ConfigError, match="not one of ViTDet's"):
        SimpleFeaturePyramid(48, scales=(3.0, 1.0))
    with pytest.raises(ConfigError, match="finest first"):
        SimpleFeaturePyramid(48, scales=(1.0, 2.0))
    with pytest.raises(ConfigError, match="divisible by 4"):
        SimpleFeaturePyramid(50)
