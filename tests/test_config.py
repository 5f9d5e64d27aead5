"""params.yaml validation: every mistake is one line naming the file and the key."""

from __future__ import annotations

import copy

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rib.config import ConfigError, load, validate
from tests.conftest import REPO, run_rib


def error_of(params: dict) -> str:
    with pytest.raises(ConfigError) as info:
        validate(params, source="params.yaml")
    message = str(info.value)
    assert "\n" not in message, message
    assert message.startswith("params.yaml: "), message
    return message


def test_default_and_tiny_params_are_valid(default_params, tiny_params):
    assert validate(default_params) is default_params
    assert validate(tiny_params) is tiny_params


def test_default_grid_is_the_issue_grid(default_params):
    g = default_params["grid"]
    assert g["datasets"] == ["v2", "a", "r", "sketch", "objectnet", "cartoon", "drawing", "c"]
    from rib.methods import METHODS, implementation

    assert {implementation(default_params, m) for m in g["methods"]} == set(METHODS)  # every method
    # both pretraining corpora, on the transformer (LoRA needs attention)
    assert set(g["models"]) == {"mini_vit.narrow", "mini_vit.diverse"}


def test_unknown_top_level_key(default_params):
    default_params["trian"] = {}
    assert error_of(default_params) == "params.yaml: trian: unknown key; did you mean 'train'?"


def test_unknown_nested_key(default_params):
    default_params["train"]["learning_rate"] = 0.1
    msg = error_of(default_params)
    assert msg.startswith("params.yaml: train.learning_rate: unknown key")


def test_unknown_key_in_a_method(default_params):
    default_params["methods"]["lp"]["lrr"] = 0.1
    assert "methods.lp.lrr: unknown key" in error_of(default_params)


def test_a_method_entry_may_override_the_schedule(default_params):
    default_params["methods"]["lp"].update(epochs=20, batch_size=8)
    assert validate(default_params)["methods"]["lp"]["epochs"] == 20
    default_params["methods"]["lp"]["epochs"] = 0
    assert error_of(default_params) == "params.yaml: methods.lp.epochs: expected a value at least 1, got 0"


def test_job_resources_merge_default_and_kind(default_params):
    from rib.config import job_resources

    default_params["resources"] = {"default": {"mem_mb": 1000}, "finetune": {"gpus": 1, "runtime": 600}}
    validate(default_params)
    assert job_resources(default_params, "finetune") == {"gpus": 1, "mem_mb": 1000, "runtime": 600}
    assert job_resources(default_params, "evaluate")["gpus"] == 0
    default_params["resources"]["finetune"]["gpu"] = 1
    assert error_of(default_params).startswith("params.yaml: resources.finetune.gpu: unknown key")
    default_params["resources"] = {"finetuen": {}}
    assert "resources.finetuen: unknown key; did you mean 'finetune'?" in error_of(default_params)


def test_wrong_type(default_params):
    default_params["train"]["lr"] = "fast"
    assert error_of(default_params) == "params.yaml: train.lr: expected a number, got a string 'fast'"


def test_out_of_range(default_params):
    default_params["split"]["heldout_fraction"] = 1.5
    assert error_of(default_params) == "params.yaml: split.heldout_fraction: expected a value less than 1, got 1.5"


def test_missing_key(default_params):
    del default_params["evaluate"]["scoring"]
    assert error_of(default_params) == "params.yaml: evaluate.scoring: missing required key"


def test_enum(default_params):
    default_params["evaluate"]["scoring"] = "top5"
    assert error_of(default_params).startswith("params.yaml: evaluate.scoring: 'top5' is not one of")


def test_unknown_model_suggests_close_name(default_params):
    default_params["grid"]["models"][1] = "mini_resnt.diverse"
    assert error_of(default_params) == ("params.yaml: grid.models[1]: unknown model 'mini_resnt.diverse'; "
                                        "did you mean 'mini_resnet.diverse'?")


def test_unknown_method(default_params):
    default_params["grid"]["methods"] = ["ft", "lorra"]
    assert error_of(default_params) == ("params.yaml: grid.methods[1]: no methods entry 'lorra'; did you mean 'lora'? "
                                        "(add it under 'methods', {} for the defaults)")
    default_params["methods"]["lorra"] = {}
    assert error_of(default_params).startswith("params.yaml: methods.lorra: unknown method 'lorra'; did you mean 'lora'?")


def test_unknown_dataset(default_params):
    default_params["grid"]["datasets"].append("imagenet-x")
    assert error_of(default_params).startswith("params.yaml: grid.datasets[8]: unknown dataset 'imagenet-x'")


def test_unknown_suite(default_params):
    default_params["suite"] = "rib-maxi"
    assert error_of(default_params).startswith("params.yaml: suite: unknown suite 'rib-maxi'")


def test_empty_grid(default_params):
    default_params["grid"]["methods"] = []
    assert error_of(default_params) == "params.yaml: grid.methods: must not be empty"


def test_a_grid_of_one_dataset_has_nothing_out_of_distribution(default_params):
    default_params["grid"]["datasets"] = ["sketch"]
    default_params["report"]["focus_dataset"] = "sketch"
    assert error_of(default_params).startswith("params.yaml: grid.datasets: at least 2 datasets are needed")


def test_model_not_pretrained_by_configuration(default_params):
    default_params["pretrain"]["corpora"] = ["narrow"]
    assert "grid.models[1]: 'mini_vit.diverse' is not pretrained" in error_of(default_params)


def test_method_in_grid_needs_settings(default_params):
    del default_params["methods"]["lora"]
    assert "grid.methods[3]: no methods entry 'lora'" in error_of(default_params)


def test_focus_dataset_must_be_in_grid(default_params):
    default_params["report"]["focus_dataset"] = "source"
    assert error_of(default_params) == ("params.yaml: report.focus_dataset: 'source' is not a dataset the grid "
                                        "fine-tunes on (grid.datasets, grid.finetune_on)")


def test_load_reports_yaml_syntax_and_missing_file(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("suite: rib-mini\ngrid: [unclosed\n")
    with pytest.raises(ConfigError, match=r"params.yaml: not valid YAML at line \d+"):
        load(bad)
    with pytest.raises(ConfigError, match="missing.yaml: file not found"):
        load(tmp_path / "missing.yaml")


def test_cli_prints_one_line_error_and_exits_2(tmp_path, default_params):
    default_params["runtime"]["threads"] = 0
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(default_params))
    proc = run_rib("validate", cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("rib: error: params.yaml: runtime.threads: expected a value at least 1, got 0")


def test_schema_file_is_the_one_the_package_reads():
    from rib.config import SCHEMA_PATH

    assert SCHEMA_PATH.read_text() == (REPO / "workflow" / "schemas" / "params.schema.yaml").read_text()


# Property-based: any single corruption of a valid configuration is either still valid or gives one
# line that names a key path that exists in the corrupted configuration (or the top level).
LEAVES = [("seed",), ("train", "lr"), ("train", "epochs"), ("train", "precision"), ("split", "heldout_fraction"),
          ("evaluate", "batch_size"), ("runtime", "preload"), ("synthetic", "num_classes"), ("grid", "models"),
          ("pretrain", "epochs", "narrow"), ("report", "focus_method")]
VALUES = st.one_of(st.none(), st.booleans(), st.integers(-5, 50), st.floats(-2, 2, allow_nan=False),
                   st.text(max_size=6), st.lists(st.text(max_size=4), max_size=2))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(leaf=st.sampled_from(LEAVES), value=VALUES)
def test_any_bad_value_gives_one_line_naming_its_key(default_params, leaf, value):
    params = copy.deepcopy(default_params)
    node = params
    for part in leaf[:-1]:
        node = node[part]
    node[leaf[-1]] = value
    try:
        validate(params, source="params.yaml")
    except ConfigError as err:
        message = str(err)
        assert "\n" not in message
        assert message.startswith("params.yaml: ")
        named = message.split(": ")[1]
        assert named.split(".")[0].split("[")[0] in set(params) | {"(top level)"}, message


def test_finetune_on_restricts_the_fine_tuning_side_only(tiny_params):
    """grid.finetune_on: fine-tune on part of D; every checkpoint is still evaluated on all of it."""
    from rib import grid

    tiny_params["grid"]["finetune_on"] = ["c"]
    tiny_params["report"]["focus_dataset"] = "c"
    validate(tiny_params)
    assert grid.finetune_datasets(tiny_params) == ["c"]
    assert {d for _, _, d in grid.finetune_jobs(tiny_params)} == {"c"}
    assert {c.eval_dataset for c in grid.cells(tiny_params)} == {"source", "sketch", "c"}
    assert {c.finetune_dataset for c in grid.cells(tiny_params)} == {None, "c"}
    assert [d for _, d in grid.distance_jobs(tiny_params)] == ["c"]
    bad = copy.deepcopy(tiny_params)
    bad["grid"]["finetune_on"] = ["r"]
    assert "grid.finetune_on[0]: 'r' is not in grid.datasets" in error_of(bad)
    bad = copy.deepcopy(tiny_params)
    bad["report"]["focus_dataset"] = "sketch"
    assert "report.focus_dataset: 'sketch' is not a dataset the grid fine-tunes on" in error_of(bad)


def test_data_classes_is_a_pilot_run_on_part_of_the_label_space():
    from rib.data.suites import get_suite

    params = load(REPO / "configs" / "imagenet-rib.yaml")
    full = get_suite(params)
    a_wnids = [c.wnids[0] for c in full.dataset("a").classes]
    params["data"]["classes"] = [a_wnids[0], full.label_space[0]]  # one in ImageNet-A, one not
    validate(params)
    suite = get_suite(params)
    assert suite.label_space == full.label_space  # the heads keep all 1000 classes
    assert [c.wnids for c in suite.dataset("imagenet").classes] == sorted([(a_wnids[0],), (full.label_space[0],)])
    assert [c.wnids[0] for c in suite.dataset("a").classes] == [a_wnids[0]]
    assert [c.folder for c in suite.dataset("v2").classes] == sorted([str(full.label_space.index(a_wnids[0])), "0"])
    params["data"]["classes"] = [full.label_space[0]]  # not an ImageNet-A class: A would be empty
    assert "data.classes: dataset 'a' has none of these classes" in error_of(params)
    params["data"]["classes"] = ["n00000000"]
    assert "data.classes[0]: 'n00000000' is not in the label space of suite 'imagenet-rib'" in error_of(params)


def test_data_classes_reads_a_full_dataset_folder(tmp_path):
    """On a full dataset (all class folders present), a pilot run indexes only its classes."""
    from rib.data.layouts import index
    from rib.data.suites import get_suite

    params = load(REPO / "configs" / "imagenet-rib.yaml")
    params["data"]["classes"] = ["n01440764"]
    spec = get_suite(params).dataset("sketch")
    for wnid in ("n01440764", "n01443537"):
        (tmp_path / wnid).mkdir()
        (tmp_path / wnid / "x.JPEG").write_bytes(b"")
    found = index(spec, tmp_path, get_suite(params).label_space)
    assert [r.path for r in found.records] == ["n01440764/x.JPEG"]


def test_a_test_that_cannot_run_skips_here_and_fails_under_ci(monkeypatch):
    from tests.conftest import skip_or_fail

    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no SLURM"):
        skip_or_fail("no SLURM")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="no SLURM \\(CI=true: this test must run in CI, not skip\\)"):
        skip_or_fail("no SLURM")
