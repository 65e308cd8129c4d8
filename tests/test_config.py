"""Config schema: defaults, YAML files, overrides and their errors."""

from pathlib import Path

import pytest

from recon.config import Config, config_from_dict, config_to_dict, load_config
from recon.errors import InputError

CONFIGS = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))


def test_defaults_follow_monosdf_hash_grid():
    cfg = Config()
    assert cfg.encoding.n_levels == 16 and cfg.encoding.n_features_per_level == 2
    assert cfg.encoding.log2_hashmap_size == 19
    assert cfg.encoding.per_level_scale == pytest.approx(1.3819, abs=1e-4)


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_config_file_loads(path):
    assert isinstance(load_config(path), Config)


def test_configs_folder_is_not_empty():
    assert CONFIGS


def test_overrides_are_typed():
    cfg = load_config(None, ["train.iters=7", "render.eps=0.05", "mesh.largest_component=true", "geometry.arm=densegrid"])
    assert cfg.train.iters == 7 and cfg.render.eps == 0.05
    assert cfg.mesh.largest_component is True and cfg.geometry.arm == "densegrid"


def test_round_trip_through_dict():
    cfg = load_config(None, ["geometry.hidden_dim=32"])
    assert config_from_dict(config_to_dict(cfg)) == cfg


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.itres=5", "unknown config key train.itres"),
        ("trian.iters=5", "unknown config section"),
        ("train.iters=abc", "expects int"),
        ("geometry.arm=octree", "must be one of"),
        ("iters=5", "section.key=value"),
    ],
)
def test_bad_overrides_name_the_problem(override, message):
    with pytest.raises(InputError, match=message):
        load_config(None, [override])


def test_bad_yaml_file_names_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  iters: 5\n  nonsense: 1\n")
    with pytest.raises(InputError, match="bad.yaml.*unknown config key train.nonsense"):
        load_config(path)
    with pytest.raises(InputError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")


@pytest.mark.parametrize(
    "old, new",
    [("encoding.type=mlp", "geometry.arm"), ("field.hidden_dim=32", "geometry.hidden_dim"),
     ("field.color_hidden_dim=32", "color.hidden_dim"), ("encoding.sdf_resolution=12", "geometry.sdf_grid_resolution"),
     ("train.c2f_start_levels=2", "encoding.c2f_start_levels"), ("data.background=black", "data.rgba_background")],
)
def test_renamed_keys_are_refused_with_their_new_name(old, new):
    with pytest.raises(InputError, match=f"renamed to {new}"):
        load_config(None, [old])


def test_a_saved_config_of_an_earlier_version_is_translated():
    saved = {"encoding": {"type": "mlp", "mlp_hidden_dim": 48}, "field": {"hidden_dim": 32, "appearance_dim": 4}}
    cfg = config_from_dict(saved, migrate=True)
    assert cfg.geometry.arm == "mlp" and cfg.geometry.mlp_arm_hidden_dim == 48
    assert cfg.geometry.hidden_dim == 32 and cfg.color.appearance_dim == 4
