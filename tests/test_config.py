import pytest

from vgt.config import ConfigError, VGTConfig, apply_overrides, from_dict, to_dict


def test_dotted_overrides_parse_types_and_keep_the_rest():
    cfg = apply_overrides(VGTConfig(), ["ae.noise_gamma=0.25", "train.ar_pretrain.steps=7",
                                        "ar.head.timeshift=null", "sample.order=raster",
                                        "train.ae_stage1.betas=[0.8, 0.99]"])
    assert cfg.ae.noise_gamma == 0.25
    assert cfg.train.ar_pretrain.steps == 7
    assert cfg.ar.head.timeshift is None
    assert cfg.sample.order == "raster"
    assert cfg.train.ae_stage1.betas == (0.8, 0.99)
    assert cfg.train.ar_pretrain.lr == VGTConfig().train.ar_pretrain.lr


def test_unknown_override_names_nearest_key():
    with pytest.raises(ConfigError, match=r"unknown config key 'ae.noise_gama'.*did you mean 'ae.noise_gamma'"):
        apply_overrides(VGTConfig(), ["ae.noise_gama=0.2"])


def test_wrong_type_and_malformed_override_are_errors():
    with pytest.raises(ConfigError, match="'steps' expects int"):
        apply_overrides(VGTConfig(), ["train.ar_pretrain.steps=abc"])
    with pytest.raises(ConfigError, match="not of the form key=value"):
        apply_overrides(VGTConfig(), ["train.seed"])


def test_dict_round_trip_and_dict_valued_leaves():
    cfg = apply_overrides(VGTConfig(), {"ae.decoder.dc_config.latent_channels": 32})
    assert cfg.ae.decoder.dc_config == {"latent_channels": 32}
    assert from_dict(VGTConfig, to_dict(cfg)) == cfg
