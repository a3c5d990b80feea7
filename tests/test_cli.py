"""The command line: every DESIGN §8 subcommand is listed and has help."""

import subprocess
import sys

import pytest

from mergevq.cli import build_parser, main

SUBCOMMANDS = ["train", "export", "convert-official", "evaluate-tokenizer", "reconstruct", "extract-codes", "sample",
               "evaluate-generation", "linear-probe", "prepare-weights", "demo"]


def test_help_lists_every_subcommand(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for name in SUBCOMMANDS:
        assert name in out


def test_each_subcommand_has_help():
    parser = build_parser()
    for name in SUBCOMMANDS:
        with pytest.raises(SystemExit) as exit_info:
            parser.parse_args([name, "--help"])
        assert exit_info.value.code == 0


def test_python_dash_m_is_the_same_command():
    out = subprocess.run([sys.executable, "-m", "mergevq", "--help"], check=False, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0
    assert "prepare-weights" in out.stdout


def test_unknown_subcommand_fails_cleanly(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["trian"])
    assert exit_info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_configs_root_is_the_checkout_in_a_source_tree(monkeypatch, tmp_path):
    from mergevq.paths import configs_root, resolve_config

    monkeypatch.delenv("MERGEVQ_CONFIGS", raising=False)
    assert (configs_root() / "data" / "demo.yaml").is_file()
    assert resolve_config("data/demo") == configs_root() / "data" / "demo.yaml"
    assert resolve_config("data/demo").is_absolute()
    # MERGEVQ_CONFIGS is searched first when it exists (tests/test_config_paths.py: the whole order)
    monkeypatch.setenv("MERGEVQ_CONFIGS", str(tmp_path))
    assert configs_root() == tmp_path.resolve()


def test_overrides_may_follow_options():
    from mergevq.cli import parse

    args = parse(["train", "demo/mergear", "a.b=1", "--run-dir", "R", "trainer.max_steps=5"])
    assert args.items == ["demo/mergear", "a.b=1", "trainer.max_steps=5"] and args.run_dir == "R"
    args = parse(["evaluate-tokenizer", "TOK", "x=1", "--demo", "eval.batch_size=4"])
    assert args.tokenizer == "TOK" and args.items == ["x=1", "eval.batch_size=4"] and args.demo


@pytest.mark.parametrize("argv", [["train", "demo/mergear", "--bogus", "x=1"], ["export", "RUN", "extra"]])
def test_unknown_arguments_are_still_errors(argv, capsys):
    from mergevq.cli import parse

    with pytest.raises(SystemExit) as exit_info:
        parse(argv)
    assert exit_info.value.code == 2 and "unrecognized arguments" in capsys.readouterr().err
