import tomllib
from pathlib import Path

import pytest

from crdtool.errors import CrdError
from crdtool.recipe import load_recipe, parse_recipe

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["quickstart", "h2z", "h2z-paper", "s2w", "e2s"])
def test_shipped_recipes_validate(name):
    r = load_recipe(ROOT / "recipes" / f"{name}.toml")
    assert r.name == name
    r.teacher.spec(), r.student.spec()


def test_relative_input_paths_resolve_against_the_recipe_file(tmp_path):
    (tmp_path / "sub").mkdir()
    p = tmp_path / "sub" / "r.toml"
    p.write_text('name = "x"\n[data]\nroot = "../d"\n')
    assert load_recipe(p).data.root == (tmp_path / "d").resolve()


@pytest.mark.parametrize("text,fragment", [
    ('name = "x"\n[data]\nroot = "d"\n[train]\nlrr = 1\n', "unknown key 'train.lrr'"),
    ('name = "x"\n[data]\nroot = "d"\ncrop_size = "big"\n', "bad value for 'data.crop_size'"),
    ('name = "x"\n', "missing required key 'data'"),
    ('name = "x"\n[data]\nroot = "d"\n[loss]\nkd = "magic"\n', "bad value for 'loss.kd'"),
    ('name = "x"\n[data\n', "not valid TOML"),
])
def test_bad_recipes_give_one_line_naming_key_and_file(tmp_path, text, fragment):
    p = tmp_path / "bad.toml"
    p.write_text(text)
    with pytest.raises(CrdError) as e:
        load_recipe(p)
    assert fragment in str(e.value) and str(p) in str(e.value) and "\n" not in str(e.value)


def test_missing_recipe_file(tmp_path):
    with pytest.raises(CrdError, match="recipe not found"):
        load_recipe(tmp_path / "nope.toml")


def test_overrides_and_roundtrip(tmp_path):
    r = load_recipe(ROOT / "recipes" / "quickstart.toml", {"train.max_steps": 7, "student.ngf": 8})
    assert r.train.max_steps == 7 and r.student.ngf == 8
    again = parse_recipe(tomllib.loads(r.to_toml()), "saved")
    assert again.model_dump() == r.model_dump()
