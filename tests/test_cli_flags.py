"""One flag vocabulary (issue #13 item 5): each common flag reaches its config key in every subcommand that
offers it, wins over the user's KEY=VALUE, and --out / --config mean the same thing everywhere."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from mergevq import config as C
from mergevq.cli import parse
from mergevq.cli import demo as demo_cli
from mergevq.cli import evaluate_tokenizer, extract_codes, linear_probe, train
from mergevq.cli.common import FlagKeys, add_common_flags, flag_overrides

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

FLAGS = ["--batch-size", "7", "--num-workers", "3", "--devices", "2", "--accelerator", "cpu",
         "--precision", "bf16-mixed", "--seed", "11"]
VALUES = {"batch_size": 7, "num_workers": 3, "devices": 2, "accelerator": "cpu", "precision": "bf16-mixed",
          "seed": 11}


def _offered(keys: FlagKeys) -> list[str]:
    out = []
    for name, flag in (("batch_size", "--batch-size"), ("num_workers", "--num-workers"), ("devices", "--devices"),
                       ("accelerator", "--accelerator"), ("precision", "--precision"), ("seed", "--seed")):
        if getattr(keys, name) is not None:
            out += [flag, FLAGS[FLAGS.index(flag) + 1]]
    return out


def _expected(keys: FlagKeys) -> dict[str, object]:
    return {getattr(keys, n): v for n, v in VALUES.items() if getattr(keys, n) is not None}


def _applied(overrides: list[str]) -> dict[str, object]:
    """What the overrides set, parsed the way mergevq.config parses them (last one wins)."""
    values = {}
    for text in overrides:
        key, _, raw = text.partition("=")
        if "." in key:
            values[key] = C.from_yaml(f"v: {raw}").v
    return values


def test_flag_overrides_fixed_order_and_types():
    parser = argparse.ArgumentParser()
    keys = FlagKeys(batch_size="a.b", devices="t.d", precision="t.p", seed="r.s")
    add_common_flags(parser, keys=keys)
    args = parser.parse_args(["--seed", "3", "--precision", "32", "--devices", "auto", "--batch-size", "4"])
    assert flag_overrides(args, keys) == ["a.b=4", 't.d="auto"', 't.p="32"', "r.s=3"]
    assert flag_overrides(parser.parse_args([]), keys) == []
    assert "(t.p;" in parser.format_help()  # the help names the key
    with pytest.raises(SystemExit):  # a flag the command does not offer is not accepted
        parser.parse_args(["--num-workers", "2"])


def test_train_flags_reach_their_keys_and_win():
    args = parse(["train", "tokenizer/GR_d64", "data.params.batch_size=99", "--config", "trainer/cpu", *FLAGS,
                  "--out", "R", "run.seed=1"])
    configs, overrides = train.config_request(args)
    assert configs == ["trainer/cpu", "tokenizer/GR_d64"]
    assert _applied(overrides) == {**{"data.params.batch_size": 99, "run.seed": 1}, **_expected(train.FLAG_KEYS)}
    assert overrides[-len(_expected(train.FLAG_KEYS)):] == flag_overrides(args, train.FLAG_KEYS)  # flags last
    assert args.run_dir == "R"
    assert parse(["train", "tokenizer/GR_d64", "--run-dir", "S"]).run_dir == "S"  # the old name stays
    # the keys exist in a training recipe: the composed config takes every flag
    loaded = C.load_with_origins([CONFIGS / "tokenizer/GR_d64.yaml"], overrides)
    assert (loaded.cfg.data.params.batch_size, loaded.cfg.trainer.devices, loaded.cfg.run.seed) == (7, 2, 11)
    assert loaded.cfg.trainer.precision == "bf16-mixed" and loaded.cfg.data.params.num_workers == 3


@pytest.mark.parametrize("command", ["evaluate-tokenizer", "reconstruct"])
def test_evaluation_flags_reach_eval_keys(command):
    keys = evaluate_tokenizer.FLAG_KEYS
    args = parse([command, "TOK", "eval.batch_size=99", "--out", "O", *_offered(keys), "data=folder",
                  "--config", "evaluation/tokenizer"])
    configs, overrides = evaluate_tokenizer.config_request(args)
    assert configs == ["evaluation/tokenizer"] and args.out == "O"
    assert _applied(overrides) == _expected(keys) and "data=folder" in overrides
    loaded = C.load_with_origins([CONFIGS / "evaluation/tokenizer.yaml"], overrides)
    assert (loaded.cfg.eval.batch_size, loaded.cfg.eval.num_workers, loaded.cfg.eval.devices) == (7, 3, 2)
    assert loaded.cfg.data.params.num_workers == 3  # the data module follows eval.num_workers
    with pytest.raises(SystemExit):
        parse([command, "TOK", "--seed", "1"])  # evaluation draws nothing at random: no --seed


def test_evaluation_demo_and_folder_shortcuts():
    args = parse(["evaluate-tokenizer", "TOK", "--demo"])
    assert evaluate_tokenizer.config_request(args) == (["evaluation/tokenizer_demo"], ["data=demo"])
    args = parse(["evaluate-tokenizer", "TOK", "--folder", "/imgs", "--config", "my.yaml", "extra.yaml", "a.b=1"])
    assert evaluate_tokenizer.config_request(args) == (
        ["my.yaml", "extra.yaml"], ["data=folder", "data.params.validation.params.root=/imgs", "a.b=1"])


def test_extract_flags_reach_extract_keys_and_out_is_accepted_both_ways():
    keys = extract_codes.FLAG_KEYS
    args = parse(["extract-codes", "TOK", "extract.seed=5", "--out", "O", *_offered(keys)])
    assert extract_codes.out_dir_and_overrides(args) == ("O", ["extract.seed=5"])
    config, overrides = extract_codes.config_request(args, 64)
    assert config == "extract/base" and overrides[0] == "extract.image_size=64"
    assert _applied(overrides) == {"extract.image_size": 64, **_expected(keys)}
    loaded = C.load_with_origins([CONFIGS / "extract/base.yaml"], overrides)
    assert (loaded.cfg.extract.batch_size, loaded.cfg.extract.seed, loaded.cfg.extract.precision) == (7, 11, "bf16-mixed")
    # the positional OUT_DIR still works; given twice is a one-line error
    args = parse(["extract-codes", "TOK", "OUT", "extract.seed=5", "--demo"])
    assert extract_codes.out_dir_and_overrides(args) == ("OUT", ["extract.seed=5"])
    assert extract_codes.config_request(args, 32)[1] == [
        "extract.image_size=32", *extract_codes.DEMO_OVERRIDES, "extract.seed=5"]
    from mergevq.errors import ConfigError

    with pytest.raises(ConfigError, match="OUT_DIR given twice"):
        extract_codes.out_dir_and_overrides(parse(["extract-codes", "TOK", "OUT", "--out", "O"]))
    with pytest.raises(ConfigError, match="--out OUT_DIR"):
        extract_codes.out_dir_and_overrides(parse(["extract-codes", "TOK"]))
    with pytest.raises(SystemExit):
        parse(["extract-codes", "TOK", "O", "--devices", "2"])  # torchrun decides the processes


def test_probe_flags_reach_probe_keys():
    keys = linear_probe.FLAG_KEYS
    args = parse(["linear-probe", "TOK", "--out", "r.json", *_offered(keys), "--demo", "--num-keep", "9"])
    configs, overrides = linear_probe.config_request(args)
    assert configs == ["probe/demo"] and overrides[0] == "data=demo"
    assert _applied(overrides) == {"probe.num_keep": 9, **_expected(keys)}
    loaded = C.load_with_origins([CONFIGS / "probe/demo.yaml"], overrides)
    assert (loaded.cfg.probe.extract_batch_size, loaded.cfg.probe.seed, loaded.cfg.data.params.num_workers) == (7, 11, 3)
    with pytest.raises(SystemExit):
        parse(["linear-probe", "TOK", "--devices", "2"])  # one process


def test_demo_seed_reaches_both_stages():
    args = parse(["demo", "--out", "D", "--config", "demo/tokenizer", "--seed", "4", "trainer.max_steps=2",
                  "--ar-set", "trainer.max_steps=3"])
    stage1, stage2 = demo_cli.stage_overrides(args)
    assert stage1 == ["trainer.max_steps=2", "run.seed=4"] and stage2 == ["trainer.max_steps=3", "run.seed=4"]
    assert args.out == "D" and args.config == "demo/tokenizer"


@pytest.mark.parametrize("argv", [
    ["train", "tokenizer/GR_d64", "--out", "X"],
    ["export", "RUN", "--out", "X"],
    ["convert-official", "CKPT", "--variant", "R", "--out", "X"],
    ["evaluate-tokenizer", "TOK", "--out", "X"],
    ["reconstruct", "TOK", "--out", "X"],
    ["extract-codes", "TOK", "--out", "X"],
    ["linear-probe", "TOK", "--out", "X"],
    ["demo", "--out", "X"],
])
def test_out_is_accepted_everywhere(argv):
    args = parse(argv)
    assert getattr(args, "run_dir", None) == "X" or args.out == "X"


def test_convert_official_takes_the_authors_config_under_its_own_name():
    args = parse(["convert-official", "CKPT", "--authors-config", "a.yaml", "--out", "X"])
    assert args.authors_config == "a.yaml"
    with pytest.raises(SystemExit):
        parse(["convert-official", "CKPT", "--config", "a.yaml", "--out", "X"])
