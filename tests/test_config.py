import pytest

from landscape.config import Config, build_config, field_paths, load_config, parse_override
from landscape.errors import UserError
from tests.conftest import ROOT

SHIPPED = sorted((ROOT / "configs").glob("*.yaml"))


def test_configs_are_shipped():
    names = {p.name for p in SHIPPED}
    assert {"vgg_standard.yaml", "vgg_bn.yaml", "vgg_noisy_bn.yaml", "dln.yaml"} <= names


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_config_loads_and_opens_with_its_command(path):
    cfg = load_config(path)
    assert isinstance(cfg, Config)
    first = path.read_text().splitlines()[0]
    assert first.startswith("# landscape "), f"{path.name} must open with the command that uses it"
    if cfg.model.arch == "vgg":  # what a user finds in configs/ shows the product: probed, at a laptop's size
        assert cfg.probes.enabled and cfg.model.vgg.width <= 0.25 and cfg.steps <= 1000


def test_yaml_then_overrides_in_order(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("optim:\n  lr: 0.5\nmodel:\n  norm: batch\n")
    cfg = load_config(f, ["optim.lr=0.25", "model.noise.mean_range=[-1, 1]", "data.augment=true"])
    assert cfg.optim.lr == 0.25 and isinstance(cfg.optim.lr, float)
    assert cfg.model.norm == "batch"
    assert cfg.model.noise.mean_range == (-1.0, 1.0)
    assert cfg.data.augment is True


def test_int_accepted_for_float_but_not_the_reverse():
    assert build_config([{"optim": {"lr": 1}}]).optim.lr == 1.0
    with pytest.raises(UserError, match="expects an integer"):
        build_config([{"steps": 1.5}])


@pytest.mark.parametrize(
    "override, message",
    [
        (
            "optim.lrr=0.1",
            "unknown config key 'optim.lrr'; did you mean 'optim.lr'",
        ),
        ("bogus=1", "keys are valid here: landscape keys lists them"),  # nothing close: where to find them
        ("step=5", "did you mean 'steps'"),
        ("lr=0.1", "did you mean 'optim.lr'"),
        ("steps=many", "'steps' expects an integer"),
        ("data.augment=3", "'data.augment' expects true or false"),
        ("model.norm=group", "'model.norm' must be one of none, batch"),
        ("optim.lr=-1", "'optim.lr' must be positive"),
        ("steps=0", "'steps' must be positive"),
        ("model.vgg.depth=12", "'model.vgg.depth' must be one of 11, 13, 16, 19"),
        ("model.noise.scale_range=[2, 1]", "low <= high"),
        ("model.noise.scale_range=1", "a list of 2 numbers"),
        ("optim", "--set expects key=value"),
        ("name=a/b", "plain, printable directory name"),
    ],
)
def test_bad_overrides_are_one_line_user_errors(override, message):
    with pytest.raises(UserError) as err:
        load_config(None, [override])
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_bad_files(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim: [unclosed\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_config(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("3\n")
    with pytest.raises(UserError, match="mapping"):
        load_config(scalar)


def test_field_paths_cover_the_tree():
    paths = field_paths()
    assert "optim.lr" in paths and "model.noise.scale_std" in paths and "log.train_every" in paths
    assert parse_override("a.b.c=1") == {"a": {"b": {"c": 1}}}


def test_an_exponent_without_a_dot_is_the_number_a_user_means():
    assert load_config(None, ["optim.lr=1e-3"]).optim.lr == 0.001  # YAML alone reads "1e-3" as a string
    assert load_config(None, ["model.noise.mean_range=[-1e-1, 1e-1]"]).model.noise.mean_range == (-0.1, 0.1)


def test_a_config_pickles_and_copies():
    import copy
    import pickle

    cfg = build_config([{"probes": {"enabled": ["sharpness"], "sharpness": {"iters": 7}}}])
    assert pickle.loads(pickle.dumps(cfg)) == cfg and copy.deepcopy(cfg) == cfg
