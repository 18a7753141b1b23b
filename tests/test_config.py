"""Config validation: values that would fail late, or destroy data, are refused up front."""

from __future__ import annotations

import pytest

from hntseg.config import resolve_config
from hntseg.errors import InputError


@pytest.mark.parametrize(
    "data, message",
    [
        ({"train": {"folds": []}}, "train.folds"),
        ({"predict": {"folds": []}}, "predict.folds"),
        ({"gradmap": {"gain": float("inf")}}, "gradmap.gain"),
        ({"gradmap": {"sigma": 0.0}}, "gradmap.sigma: expected a number > 0"),
        ({"gradmap": {"sigma": float("nan")}}, "gradmap.sigma"),
        ({"gradmap": {"sigma": 200}}, "gradmap.sigma: expected a number > 0 and <= 100"),
        ({"synth": {"enabled": True, "size": [100000, 100000, 1000]}}, "synth.size"),
        ({"synth": {"enabled": True, "spacing": [1e-300, 1, 1]}}, "synth.size / synth.spacing"),
    ],
)
def test_bad_values_name_the_key(tmp_path, data, message):
    with pytest.raises(InputError, match=message):
        resolve_config({"work": str(tmp_path / "w"), "synth": {"enabled": True}, **data})


def test_synth_into_a_real_cohort_is_refused(tmp_path):
    real = tmp_path / "real"
    (real / "1").mkdir(parents=True)
    data = {"work": str(tmp_path / "w"), "cohort": str(real), "synth": {"enabled": True}}
    with pytest.raises(InputError, match="not a synthetic cohort"):
        resolve_config(data)
    data["cohort"] = str(tmp_path / "fresh")
    assert resolve_config(data)["cohort"] == str(tmp_path / "fresh")


@pytest.mark.parametrize("key", ["cohort"])
def test_predict_folders_must_exist_before_the_run(tmp_path, key):
    """Found at config time, not at the predict stage after hours of training."""
    data = {"work": str(tmp_path / "w"), "synth": {"enabled": True}}
    with pytest.raises(InputError, match=f"folder not found .*predict.{key}"):
        resolve_config({**data, "predict": {key: str(tmp_path / "typo")}})
    (tmp_path / "there").mkdir()
    assert resolve_config({**data, "predict": {key: str(tmp_path / "there")}})


def test_a_key_given_twice_is_refused(tmp_path):
    """YAML keeps the last of two equal keys without a word."""
    from hntseg.config import load_config

    path = tmp_path / "c.yaml"
    path.write_text("cohort: c\nseed: 1\nseed: 2\n")
    with pytest.raises(
        InputError, match=r"c.yaml: not valid YAML \(key 'seed' given twice at line 3"
    ):
        load_config(path)


def test_merge_keys_and_overrides_still_load():
    """YAML merge keys (<<: *anchor), overridden by the mapping's own keys, are not repeats."""
    import yaml

    from hntseg.config import _unique_key_loader

    text = "base: &b {x: 1, y: 2}\nother:\n  <<: *b\n  x: 3\n"
    data = yaml.load(text, Loader=_unique_key_loader())
    assert data["other"] == {"x": 3, "y": 2}
    # a merged anchor that itself merges and overrides (yaml rewrites it in place)
    text = "c: &c {x: 1}\na:\n  deep: &b\n    <<: *c\n    x: 3\nu:\n  <<: *b\n  y: 1\n"
    assert yaml.load(text, Loader=_unique_key_loader()) == yaml.safe_load(text)
    with pytest.raises(yaml.YAMLError, match="key 'b' given twice"):
        yaml.load("a: {b: 1, b: 2}\n", Loader=_unique_key_loader())
    with pytest.raises(yaml.YAMLError, match="unhashable"):
        yaml.load("? [a, b]\n: 1\n", Loader=_unique_key_loader())
