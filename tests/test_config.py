import dataclasses

import pytest

from dalle.config import TrainConfig, VAEConfig
from dalle.errors import DalleError


@pytest.mark.parametrize("config", [VAEConfig(), VAEConfig.tiny(), TrainConfig(), TrainConfig(betas=(0.5, 0.6))])
def test_json_round_trip(config, tmp_path):
    assert type(config).from_json(config.to_json()) == config
    config.save(tmp_path / "c.json")
    assert type(config).load(tmp_path / "c.json") == config


def test_unknown_field_is_named():
    data = dataclasses.asdict(VAEConfig.tiny()) | {"hiddn": 3}
    with pytest.raises(ValueError, match="hiddn"):
        VAEConfig.from_dict(data)


@pytest.mark.parametrize("kwargs", [{"downsample": 6}, {"image_size": 60, "downsample": 8}, {"hidden": 6}])
def test_invalid_vae_config(kwargs):
    with pytest.raises(ValueError):
        VAEConfig(**kwargs)


def test_invalid_train_config():
    with pytest.raises(ValueError, match="schedule"):
        TrainConfig(schedule="exp")


def test_grid():
    c = VAEConfig.paper()
    assert (c.grid_size, c.num_groups) == (32, 4)
    assert VAEConfig(image_size=64, downsample=4).grid_size == 16


def test_presets_are_named_and_overridable():
    from dalle.config import CLIPConfig, PriorConfig, VAEConfig

    assert VAEConfig.preset("paper") == VAEConfig.paper()
    assert PriorConfig.preset("small", dropout=0.1).dim == 256
    assert PriorConfig.preset("base").grid_size == 32
    assert set(CLIPConfig.presets()) == {"tiny", "small", "base"}
    with pytest.raises(DalleError, match="no PriorConfig preset 'huge'; choose from tiny, small, base, paper"):
        PriorConfig.preset("huge")


def test_run_configs_round_trip_and_route_settings_by_field(tmp_path):
    from dalle.config import VAE_TRAINING
    from dalle.train import VAERun

    run = VAERun.create(data=tmp_path / "d", out=tmp_path / "o", preset="tiny", steps=300,
                         likelihood="gaussian", max_crop=0.1)
    assert run.train == dataclasses.replace(VAE_TRAINING, steps=300)
    assert (run.model.likelihood, run.model.tau_steps, run.model.kl_warmup_steps) == ("gaussian", 300, 150)
    assert run.max_crop == 0.1 and run.data == str(tmp_path / "d")
    assert VAERun.from_json(run.to_json()) == run
    path = run.record()
    assert VAERun.load(path) == run == VAERun.load(tmp_path / "o")
    # A recorded run given a new length keeps settings it was given, follows the rest.
    longer = VAERun.create(config=path, steps=600, tau_steps=50)
    assert (longer.model.tau_steps, longer.model.kl_warmup_steps, longer.model.likelihood) == (50, 300, "gaussian")
    with pytest.raises(DalleError, match="VAERun has no setting 'depth'"):
        VAERun.create(data="d", out="o", depth=3)
