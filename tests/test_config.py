import dataclasses

import pytest

from dalle.config import DVAEConfig, TrainConfig


@pytest.mark.parametrize("config", [DVAEConfig(), DVAEConfig.tiny(), TrainConfig(), TrainConfig(betas=(0.5, 0.6))])
def test_json_round_trip(config, tmp_path):
    assert type(config).from_json(config.to_json()) == config
    config.save(tmp_path / "c.json")
    assert type(config).load(tmp_path / "c.json") == config


def test_unknown_field_is_named():
    data = dataclasses.asdict(DVAEConfig.tiny()) | {"hiddn": 3}
    with pytest.raises(ValueError, match="hiddn"):
        DVAEConfig.from_dict(data)


@pytest.mark.parametrize("kwargs", [{"downsample": 6}, {"image_size": 60, "downsample": 8}, {"hidden": 6}])
def test_invalid_dvae_config(kwargs):
    with pytest.raises(ValueError):
        DVAEConfig(**kwargs)


def test_invalid_train_config():
    with pytest.raises(ValueError, match="schedule"):
        TrainConfig(schedule="exp")


def test_grid():
    c = DVAEConfig.paper()
    assert (c.grid_size, c.num_groups) == (32, 4)
    assert DVAEConfig(image_size=64, downsample=4).grid_size == 16
