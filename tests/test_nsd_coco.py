"""Category vocabulary of NSD's category ROIs from COCO's category annotations."""

from __future__ import annotations

import json

import pytest

from lib.decoding.roi_captions import load_lexicon
from lib.nsd.__main__ import main
from lib.nsd.coco import coco_categories, coco_lexicon

INSTANCES = {"images": [], "annotations": [], "categories": [
    {"id": 1, "name": "person", "supercategory": "person"},
    {"id": 18, "name": "dog", "supercategory": "animal"}]}
STUFF = {"categories": [{"id": 92, "name": "banner", "supercategory": "textile"},
                        {"id": 106, "name": "sky-other", "supercategory": "sky"},
                        {"id": 124, "name": "grass", "supercategory": "plant"},
                        {"id": 171, "name": "wall-brick", "supercategory": "wall"},
                        {"id": 172, "name": "wall-concrete", "supercategory": "wall"},
                        {"id": 183, "name": "other", "supercategory": "other"}]}


def _write(root, name, obj):
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / "annotations" / name).write_text(json.dumps(obj))


def test_missing_instances_file_names_it_and_the_download_command(tmp_path):
    with pytest.raises(FileNotFoundError, match="instances_val2017.json.*lib.nsd download"):
        coco_lexicon(tmp_path)


def test_lexicon_from_instances_only(tmp_path):
    _write(tmp_path, "instances_train2017.json", INSTANCES)  # train alone is enough
    lex = coco_lexicon(tmp_path)
    assert lex["vocabulary"] == {"faces": ["people", "person"], "bodies": ["people", "person"]}
    assert "COCO-stuff" in lex["missing"]["places"] and "stuff_val2017.json" in lex[
        "missing"]["places"]
    assert "no category" in lex["missing"]["words"]


def test_lexicon_with_coco_stuff_and_the_cli(tmp_path):
    _write(tmp_path, "instances_val2017.json", INSTANCES)
    _write(tmp_path, "stuff_val2017.json", STUFF)
    lex = coco_lexicon(tmp_path)
    # scene layout only: the textile "banner" and the catch-all "other" are left out
    assert lex["vocabulary"]["places"] == ["grass", "grasses", "skies", "sky", "wall", "walls"]
    assert set(lex["missing"]) == {"words"}
    out = tmp_path / "derived" / "category_lexicon.json"
    assert main(["lexicon", "--nsd-root", str(tmp_path), "--out", str(out)]) == 0
    assert load_lexicon(out)["vocabulary"]["faces"] == ("people", "person")


def test_unreadable_annotation_file_is_a_clear_error(tmp_path, capsys):
    _write(tmp_path, "instances_val2017.json", {"images": []})
    with pytest.raises(ValueError, match="categories"):
        coco_categories(tmp_path)
    assert main(["lexicon", "--nsd-root", str(tmp_path), "--out", str(tmp_path / "x.json")]) == 2
    assert "not a COCO annotation file" in capsys.readouterr().err
