"""`mergevq experiment`: the shared command (settings, output folder, report) and the
mergear_vs_causal experiment end to end in its --quick form."""

from __future__ import annotations

import json
import math
import shutil

import pytest

from mergevq.cli import main
from mergevq.errors import ConfigError
from mergevq.experiments import EXPERIMENTS, experiment_module
from mergevq.experiments.common import load_settings
from mergevq.paths import resolve_config


@pytest.mark.parametrize("name", sorted(EXPERIMENTS))
def test_every_experiment_config_loads_full_and_quick(name):
    module = experiment_module(name)
    config = resolve_config(f"experiments/{name}.yaml")
    full = load_settings(module.Settings, config, quick=False, overrides=[])
    quick = load_settings(module.Settings, config, quick=True, overrides=[])
    assert isinstance(full.settings, module.Settings) and isinstance(quick.settings, module.Settings)
    assert quick.overrides, "every experiment needs a --quick form for CI"


def test_unknown_settings_key_is_one_line_naming_the_file(tmp_path):
    module = experiment_module("mergear_vs_causal")
    config = resolve_config("experiments/mergear_vs_causal.yaml")
    with pytest.raises(ConfigError, match="does not exist") as info:
        load_settings(module.Settings, config, quick=False, overrides=["experiment.steps=3"])
    assert "\n" not in str(info.value) and "mergear_vs_causal.yaml" in str(info.value)


def test_unknown_experiment_is_refused(capsys):
    with pytest.raises(SystemExit):
        main(["experiment", "nonsense"])
    assert "invalid choice" in capsys.readouterr().err


def test_tokenizer_inside_out_is_refused(tmp_path, capsys):
    (tmp_path / "tok").mkdir()
    assert main(["experiment", "mergear_vs_causal", "--quick", "--out", str(tmp_path),
                 "--tokenizer", str(tmp_path / "tok")]) != 0
    assert "lies inside --out" in capsys.readouterr().err


def test_foreign_out_folder_is_refused(tmp_path, capsys):
    (tmp_path / "thesis.tex").write_text("mine")
    assert main(["experiment", "mergear_vs_causal", "--quick", "--out", str(tmp_path)]) != 0
    assert (tmp_path / "thesis.tex").read_text() == "mine"


def test_mergear_vs_causal_quick_end_to_end(tmp_path):
    out = tmp_path / "exp"
    assert main(["experiment", "mergear_vs_causal", "--quick", "--out", str(out), "--threads", "1"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert (out / "nll_curves.png").stat().st_size > 1000
    markdown = (out / "report.md").read_text()
    assert "| causal |" in markdown and "![nll_curves](nll_curves.png)" in markdown
    policies = report["numbers"]["policies"]
    assert [p["name"] for p in policies] == ["causal", "mergear w=row", "mergear w=4"]
    assert [p["window"] for p in policies] == [None, 8, 4]
    for p in policies:
        assert math.isfinite(p["heldout_nll"]) and 0 < p["heldout_nll"] < 20  # ln(2^18) = 12.5 at uniform
        assert math.isclose(p["heldout_nll"], sum(p["heldout_nll_sub"]), rel_tol=1e-9)
        for kind in ("heldout_kv", "free", "exact_k"):
            kv = p[kind]
            assert 1 <= kv["entries_mean"] <= kv["entries_max"] <= kv["slots"] and kv["tokens_per_s"] > 0
        assert p["curve_steps"] and len(p["curve_steps"]) == len(p["curve_nll"])
        assert p["exact_k"]["unique_tokens_mean"] <= 36  # exact-K: at most K distinct indices
    # causal holds every entry: the prefix (class, M) + the L - 1 tokens fed back
    assert all(policies[0][kind]["entries_max"] == 2 + 64 - 1 for kind in ("heldout_kv", "free", "exact_k"))
    # the held-out codes hold at most K = 36 distinct indices: MergeAR keeps prefix + unique + window at most
    row = policies[1]["heldout_kv"]
    assert row["unique_tokens_mean"] <= 36 and row["entries_max"] <= 2 + 36 + 8
    assert len(report["claims"]) == 4 and all(isinstance(c["held"], bool) for c in report["claims"])
    # a re-run replaces its own output; --tokenizer reuses a trained tokenizer (kept outside --out)
    checkpoint = shutil.copy(report["numbers"]["tokenizer_checkpoint"], tmp_path / "tokenizer.ckpt")
    assert main(["experiment", "mergear_vs_causal", "--quick", "--out", str(out), "--threads", "1",
                 "--tokenizer", str(checkpoint), "experiment.small_windows=[]"]) == 0
    again = json.loads((out / "report.json").read_text())
    assert len(again["numbers"]["policies"]) == 2 and again["numbers"]["tokenizer_train_seconds"] == 0
    assert not (out / "tokenizer_run").exists()
