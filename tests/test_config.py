"""Recipes, overrides and the config round trip."""

import pytest
import yaml

from tinytransfer.config import ConfigError, RunConfig, apply_overrides, from_dict, list_recipes, load_recipe, to_dict


def test_paper_recipe_is_table_1():
    cfg = from_dict(load_recipe("vgg16-paper"))
    assert cfg.model.backbone == "vgg16" and cfg.model.head == "paper" and cfg.model.input_size == 64
    assert cfg.data.augment == "keras"
    got = [(p.train, p.epochs, p.lr_min, p.lr_max, p.step_size, p.batch_size, p.optimizer, p.lr_policy)
           for p in cfg.phases]
    assert got == [
        ("head", 25, 1e-4, 6e-4, 1404, 64, "adam-keras", "triangular"),
        ("all", 15, 1e-5, 6e-5, 1200, 64, "adam-keras", "triangular"),
        ("all", 15, 1e-6, 6e-6, 1200, 64, "adam-keras", "triangular"),
    ]
    assert sum(p.epochs for p in cfg.phases) == 55
    assert cfg.data.val_mode == "holdout" and cfg.data.holdout_per_class == 50
    # the report's system: Keras's weights fed rescale-only RGB, Keras's head settings, Keras's per-fit() stopping
    m = cfg.model
    assert (m.weights, m.pretrained, cfg.data.normalize) == ("keras", True, "rescale")
    assert (m.head_init, m.bn_momentum, m.bn_eps, m.bn_variance) == ("keras", 0.01, 1e-3, "biased")
    assert all(p.patience_scope == "phase" for p in cfg.phases)


def test_improved_recipe_differs_from_the_paper_only_in_weights_input_and_precision():
    paper = to_dict(from_dict(load_recipe("vgg16-paper")))
    improved = to_dict(from_dict(load_recipe("vgg16-improved")))
    assert improved["model"].pop("weights") == "" and paper["model"].pop("weights") == "keras"
    assert improved["data"].pop("normalize") == "backbone" and paper["data"].pop("normalize") == "rescale"
    assert improved.pop("name") == "vgg16-improved" and paper.pop("name") == "vgg16-paper"
    assert improved.pop("amp") == "auto" and paper.pop("amp") == "off"  # the report trained fp32; improved: bf16
    assert improved == paper


def test_new_fields_default_to_the_old_behaviour():
    cfg = RunConfig()
    assert cfg.phases[0].optimizer == "adam" and cfg.phases[0].patience_scope == "run"
    assert (cfg.model.head_init, cfg.model.bn_momentum, cfg.model.bn_eps, cfg.model.bn_variance) == \
        ("keras", 0.01, 1e-3, "unbiased")
    with pytest.raises(ConfigError, match="patience_scope"):
        from_dict({"phases": [{"patience_scope": "epoch"}]})
    with pytest.raises(ConfigError, match="bn_variance"):
        from_dict({"model": {"bn_variance": "sample"}})


def test_shipped_recipes_all_load():
    names = list_recipes()
    assert {"vgg16-paper", "demo"} <= set(names)
    for n in names:
        from_dict(load_recipe(n))


def test_round_trip_through_dict_and_yaml():
    cfg = from_dict(load_recipe("vgg16-paper"))
    again = from_dict(yaml.safe_load(yaml.safe_dump(to_dict(cfg))))
    assert again == cfg
    assert isinstance(again, RunConfig) and isinstance(again.phases, tuple)


def test_overrides_set_fields_with_types():
    raw = apply_overrides(load_recipe("vgg16-paper"),
                          ["model.backbone=efficientnet_lite0", "phases.0.epochs=3", "phases.*.batch_size=32",
                           "data.skip_bad_images=true", "phases.1.lr_max=1e-3", "seed=7"])
    cfg = from_dict(raw)
    assert cfg.model.backbone == "efficientnet_lite0"
    assert cfg.phases[0].epochs == 3 and cfg.phases[1].epochs == 15
    assert [p.batch_size for p in cfg.phases] == [32, 32, 32]
    assert cfg.data.skip_bad_images is True and cfg.phases[1].lr_max == 1e-3 and cfg.seed == 7


@pytest.mark.parametrize("override,needle", [
    ("phases.0.epochs=many", "phases.0.epochs: expected an integer"),
    ("model.colour=red", "unknown key 'colour'"),
    ("phases.9.epochs=1", "no phase '9'"),
    ("data.augment=mixup", "data.augment"),
    ("seed", "expected key=value"),
    ("model.pretrained=maybe", "expected true or false"),
])
def test_bad_overrides_are_one_line_errors(override, needle):
    with pytest.raises(ConfigError) as e:
        apply_overrides(load_recipe("vgg16-paper"), [override])
    assert needle in str(e.value)
    assert "\n" not in str(e.value)


def test_unknown_recipe_key_lists_valid_ones():
    with pytest.raises(ConfigError, match="valid keys: .*backbone"):
        from_dict({"model": {"backbnoe": "vgg16"}})
    with pytest.raises(ConfigError, match="shipped recipes: .*vgg16-paper"):
        load_recipe("no-such-recipe")


def test_yaml_values_are_never_code(tmp_path):
    p = tmp_path / "evil.yaml"
    p.write_text("name: !!python/object/apply:os.system ['echo hacked']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_recipe(str(p))
    raw = apply_overrides({}, ["data.root=__import__('os').system('x')"])
    assert raw["data"]["root"] == "__import__('os').system('x')"


def test_a_folder_named_like_a_recipe_does_not_shadow_it(tmp_path, monkeypatch):
    (tmp_path / "demo").mkdir()
    monkeypatch.chdir(tmp_path)
    assert from_dict(load_recipe("demo")).model.backbone == "efficientnet_lite0"
    (tmp_path / "mine.yaml").write_text("name: mine\nseed: 4\n")
    assert from_dict(load_recipe("mine.yaml")).seed == 4


@pytest.mark.filterwarnings("ignore:CUDA is not available")  # a CUDA autocast object built on a CPU machine
def test_the_report_recipe_trains_in_float32_and_the_others_keep_bf16_on_cuda():
    import contextlib

    import torch

    from tinytransfer.config import from_dict, load_recipe
    from tinytransfer.training.steps import autocast

    cuda = torch.device("cuda")  # a device object only: nothing runs on it
    paper = from_dict(load_recipe("vgg16-paper"))
    assert paper.amp == "off" and isinstance(autocast(cuda, paper.amp), contextlib.nullcontext)
    from pathlib import Path

    assert "TF32" in (Path(__file__).resolve().parents[1] / "src/tinytransfer/recipes/vgg16-paper.yaml").read_text()
    for name in ("vgg16-improved", "demo"):
        cfg = from_dict(load_recipe(name))
        assert cfg.amp == "auto" and isinstance(autocast(cuda, cfg.amp), torch.autocast), name
