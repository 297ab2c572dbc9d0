"""The preflight (``python -m lib.run --params P --check``): on an NSD-format tree (the micro
world's, linked into tmp_path) with missing pieces it names each one and the command that
fixes it; on the complete tree it passes."""

from __future__ import annotations

import importlib.util
import os
import shutil

import pytest
import yaml

from lib import preflight, run
from lib.config import REPO_ROOT
from lib.nsd.layout import NSDLayout

MICRO = REPO_ROOT / "notebooks" / "params" / "micro.yaml"


@pytest.fixture()
def tree(micro_root, tmp_path, monkeypatch):
    """A complete NSD tree and model folders (file links into the micro world) and its params."""
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))  # no login, empty hub cache

    def link(src, dst):
        os.symlink(os.path.abspath(src), dst)

    shutil.copytree(micro_root / "nsd", tmp_path / "nsd", copy_function=link)
    shutil.copytree(micro_root / "models", tmp_path / "models", copy_function=link)
    params = run.load_params(MICRO)
    params.update(
        notebooks=[n for n in params["notebooks"] if n != "00_toy_world"],
        nsd_root=str(tmp_path / "nsd"), derived_root=str(tmp_path / "derived"),
        toy_root=str(tmp_path), sessions="1-3",
        blip2_model=str(tmp_path / "models" / "blip2-toy-opt"),
        itm_model=str(tmp_path / "models" / "blip2-toy-itm"),
        vision_zoo=str(tmp_path / "models" / "zoo.json"),
        language_zoo=str(tmp_path / "models" / "zoo.json"),
        convergence_models=["vit-s", "opt-s"],
        category_lexicon=str(micro_root / "truth" / "lexicon.json"))
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return tmp_path, params, path


def test_complete_tree_passes(tree, capsys):
    _root, params, path = tree
    report = preflight.run_preflight(params)
    assert report.ok, [str(p) for p in report.problems]
    peaks = report.memory.set_index(["stage", "device"])["peak_bytes"]
    assert peaks[("01 preparation", "host")] > 0 and peaks[("02 convergence", "host")] > 0
    assert any("shapes: n_voxels" in n for n in report.notes)
    if importlib.util.find_spec("lib.decoding.memory") is None:
        assert any("stage 1 and stage 2 memory: not estimated" in n for n in report.notes)
    assert run.main(["--params", str(path), "--check"]) == 0
    out = capsys.readouterr().out
    assert "everything the run needs is there" in out
    # the memory table: one column per field, sizes as integers, GiB right-aligned
    lines = out.splitlines()
    start = lines.index("peak memory per stage (accounting from the shapes, not a measurement):")
    table = lines[start + 1 : start + 2 + len(report.memory)]
    assert table[0].split() == ["stage", "memory", "device", "GiB"]
    assert len({len(line) for line in table}) == 1, table
    assert not any("1.0 " in line for line in table)
    assert "outputs: about " in out and "0.0 GB" not in out


def test_missing_pieces_are_each_named_with_their_fix(tree, capsys):
    root, params, path = tree
    layout = NSDLayout(root / "nsd")
    layout.betas(1, 2).unlink()                                  # a session's betas
    (layout.annotations / "captions_val2017.json").unlink()      # the captions
    layout.roi(2, "floc-faces").unlink()                         # an ROI file
    shutil.rmtree(root / "models" / "blip2-toy-itm")             # a model path
    report = preflight.run_preflight(params)
    text = "\n".join(str(p) for p in report.problems)
    assert len(report.problems) == 4, text
    nsd = root / "nsd"
    assert "subj01: betas of session(s) 2 missing" in text
    assert f"python -m lib.nsd download --subject 1 --sessions 2 --dest {nsd} --no-coco" in text
    assert "captions_val2017.json" in text
    assert f"python -m lib.nsd download --coco-only --dest {nsd}" in text
    assert f"NSD ROI file missing: {layout.roi(2, 'floc-faces')}" in text
    assert f"python -m lib.nsd download --subject 2 --sessions 1-3 --dest {nsd}" in text
    assert "itm_model" in text and "fix itm_model in the parameter file" in text
    # the command line: exit status 1, every problem printed, nothing run
    assert run.main(["--params", str(path), "--check"]) == 1
    out = capsys.readouterr()
    assert "4 problem(s)" in out.out and "error: the preflight found 4 problem(s)" in out.err
    assert run.main(["--params", str(path), "--output-dir", str(root / "book")]) == 1
    assert not (root / "book").exists()  # a normal run stops before the first notebook


def test_gated_and_hub_models(tree, monkeypatch):
    root, params, _ = tree
    cache = root / "hub"
    snapshot = cache / "models--org--tiny" / "snapshots" / "abc123"
    shutil.copytree(root / "models" / "vision" / "vit-s", snapshot)
    (cache / "models--org--tiny" / "refs").mkdir()
    (cache / "models--org--tiny" / "refs" / "main").write_text("abc123")
    params["vision_zoo"] = [
        {"name": "cached", "path": "org/tiny", "family": "ViT"},
        {"name": "llama", "path": "meta-llama/Llama-2-7b-hf", "family": "LLaMA", "gated": True},
        {"name": "absent", "path": "org/not-here", "family": "ViT"}]
    params["convergence_models"] = None
    params["language_zoo"] = []
    report = preflight.run_preflight(params, cache_dir=cache)
    text = "\n".join(str(p) for p in report.problems)
    assert [p.section for p in report.problems] == ["models"], text
    assert "org/not-here is not in the Hugging Face hub cache" in text
    assert "`hf download org/not-here`" in text
    assert any("llama" in n and "hf auth login" in n for n in report.notes)  # skipped by 02
    assert "cached" not in text
    monkeypatch.setenv("HF_TOKEN", "hf_test")  # with a login, the gated model must be fetched
    report = preflight.run_preflight(params, cache_dir=cache)
    assert any("Llama-2-7b-hf" in p.fix and "auth login" in p.fix for p in report.problems)


def test_memory_beyond_the_machine_is_a_problem():
    import pandas as pd

    peaks = pd.DataFrame([{"stage": "02 convergence", "memory_size": "", "device": "gpu",
                           "peak_bytes": 30 * 2**30},
                          {"stage": "04 stage 2", "memory_size": 7, "device": "host",
                           "peak_bytes": 2 * 2**30}])
    problems, _ = preflight.compare_memory(peaks, {"gpu_total": 24 * 2**30,
                                                   "host_total": 64 * 2**30}, cuda=True)
    assert len(problems) == 1 and "30.0 GiB of gpu memory" in problems[0].message
    _, notes = preflight.compare_memory(peaks, {"gpu_total": None, "host_total": 64 * 2**30},
                                        cuda=True)
    assert any("no CUDA GPU" in n for n in notes)


def test_toy_world_to_be_built_is_not_missing(tmp_path):
    params = run.load_params(MICRO)
    params.update(toy_root=str(tmp_path / "toy"), nsd_root=str(tmp_path / "toy" / "nsd"),
                  blip2_model=str(tmp_path / "toy" / "models" / "blip2-toy-opt"),
                  itm_model=str(tmp_path / "toy" / "models" / "blip2-toy-itm"),
                  vision_zoo=[], language_zoo=[], derived_root=str(tmp_path / "derived"))
    report = preflight.run_preflight(params)  # the run builds all of it first (00 is planned)
    assert report.ok, [str(p) for p in report.problems]
    params["notebooks"] = [n for n in params["notebooks"] if n != "00_toy_world"]
    report = preflight.run_preflight(params)
    assert any("nsd_root" in p.message for p in report.problems)


def test_peak_table_takes_the_largest_model_and_sums_other_stages():
    from lib.resources import peak_table

    gib = 2**30
    rows = [{"stage": "02 convergence", "memory_size": None, "component": f"{m}: {c}",
             "device": "gpu", "bytes": b * gib}
            for m, c, b in [("small", "weights", 1), ("small", "ridge kernel", 2),
                            ("big", "weights", 10), ("big", "ridge kernel", 2)]]
    rows += [{"stage": "04 stage 2", "memory_size": k, "component": c, "device": "gpu",
              "bytes": b * gib} for k, c, b in [(1, "map", 3), (1, "optimiser: state", 6),
                                               (7, "map", 20)]]
    table = peak_table(rows)
    # memory sizes stay whole trial counts (they print as "7", not "7.0")
    assert sorted(str(k) for k in table["memory_size"]) == ["", "1", "7"]
    peaks = table.set_index(["stage", "memory_size"])["peak_bytes"] / gib
    assert peaks[("02 convergence", "")] == 12  # the big model, not the sum of both
    assert peaks[("04 stage 2", 1)] == 9 and peaks[("04 stage 2", 7)] == 20


CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 23
model\t\t: 49
model name\t: AMD EPYC 7B12
stepping\t: 0
cache size\t: 512 KB
flags\t\t: fpu sse2 avx avx2 fma

processor\t: 1
vendor_id\t: GenuineIntel
model name\t: another CPU
flags\t\t: avx512f amx_tile
"""


def test_cpu_info_reads_the_first_processor_and_its_vector_extensions():
    from lib.resources import cpu_info

    info = cpu_info(CPUINFO)
    assert info == {"vendor": "AuthenticAMD", "model_name": "AMD EPYC 7B12", "family": "23",
                    "model": "49", "stepping": "0", "cache": "512 KB", "isa": ["avx2"]}
    bare = cpu_info("")  # no /proc/cpuinfo: platform's name, nothing invented
    assert bare["family"] == bare["model"] == bare["cache"] == "" and bare["isa"] == []
