"""`mergevq extract-codes` (mergevq/inference/extract_codes.py, mergevq/cli/extract_codes.py): the
expanded raster sequences and their decoding, the seeded per-image K, 1 vs 2 gloo processes, re-runs,
refusals, flip, unreadable images, the CLI on an exported tiny tokenizer, the launcher script and the
configs under configs/extract/.

A randomly initialised tiny-R tokenizer (32 px, L = 64) on real demo crops; the invariants do not
need trained weights."""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from _distributed import run_ranks
from torch.utils.data import Dataset

from mergevq.cli import main
from mergevq.data.codes import MANIFEST_FILE, CodesDataset, read_manifest
from mergevq.data.demo import DemoImages
from mergevq.errors import ConfigError
from mergevq.inference.extract_codes import (
    check_tokenizer,
    draw_num_keep,
    expanded_sequences,
    extract_codes,
    tokenizer_id,
)
from mergevq.tokenizer.model import MergeVQ, build_config
from taming.data.base import Skipped

ROOT = Path(__file__).resolve().parents[1]
CANDIDATES = (9, 16, 36, 64)


def _tokenizer(seed: int = 0) -> MergeVQ:
    torch.manual_seed(seed)
    return MergeVQ(config=build_config(preset="tiny-R")).eval()


class _Pick(Dataset):
    """A few demo crops spread over the classes; positions in ``unreadable`` behave like files that
    cannot be read (None, or the ``Skipped`` marker of the image-folder data sets)."""

    num_classes = 10

    def __init__(self, demo: DemoImages, count: int, unreadable: tuple[int, ...] = ()) -> None:
        self.demo = demo
        self.indices = np.linspace(0, len(demo) - 1, count).round().astype(int)
        self.unreadable = unreadable

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        if i in self.unreadable:
            return None if i % 2 else Skipped(path=f"bad{i}.jpg", index=i)
        return self.demo[int(self.indices[i])]


@pytest.fixture(scope="module")
def model() -> MergeVQ:
    return _tokenizer(0)


@pytest.fixture(scope="module")
def demo(cache_dir) -> DemoImages:
    return DemoImages(split="validation", resolution=32, cache_dir=str(cache_dir / "demo"))


def _files(root: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in sorted(root.iterdir())}


# --------------------------------------------------------------------------------------------------
# the sequence itself


def test_expanded_sequence_is_indices_at_assign_and_decodes_the_same(model, demo):
    x = torch.stack([demo[i]["image"] for i in (0, 50, 120)])  # (3, 3, 32, 32)
    with torch.no_grad():
        for k in (9, 36):
            encoded = model.encode(x, k)
            seq = expanded_sequences(model, x, k)  # (3, L)
            assert seq.shape == (3, model.num_tokens)
            for b in range(3):
                assert torch.equal(seq[b], encoded.indices[b][encoded.assign[b]])
                assert len(set(seq[b].tolist())) <= k  # merged positions repeat their kept token's index
            via_raster = model.decode_raster(seq)
            via_assign = model.decode(encoded.indices, encoded.assign)
            torch.testing.assert_close(via_raster, via_assign, rtol=1e-5, atol=1e-5)


def test_num_keep_draw_is_seeded_per_image():
    a = draw_num_keep(1000, candidates=CANDIDATES, seed=5)
    assert np.array_equal(a, draw_num_keep(1000, candidates=CANDIDATES, seed=5))
    assert np.array_equal(a[:300], draw_num_keep(300, candidates=CANDIDATES, seed=5))  # independent of N's tail
    assert not np.array_equal(a, draw_num_keep(1000, candidates=CANDIDATES, seed=6))
    values, counts = np.unique(a, return_counts=True)
    assert tuple(values) == CANDIDATES and counts.min() > 200  # uniform over the candidates


# --------------------------------------------------------------------------------------------------
# the pass, one process


def test_extraction_matches_the_encoder_image_by_image(model, demo, tmp_path):
    data = _Pick(demo, 9)
    result = extract_codes(model, data, out_dir=tmp_path, k_candidates=CANDIDATES, seed=3, flip=True, batch_size=5)
    m = result.manifest
    assert not result.up_to_date and result.images_encoded == 9
    assert (m.num_tokens, m.grid, m.code_dim, m.sub_token_bits) == (64, (8, 8), 18, (6, 12))
    assert m.tokenizer_id == tokenizer_id(model) and m.num_classes == 10 and m.has_flip and m.num_skipped == 0
    ks = draw_num_keep(9, candidates=CANDIDATES, seed=3)
    assert m.k_counts == {k: int((ks == k).sum()) for k in CANDIDATES}
    ds = CodesDataset(root=str(tmp_path), augment_flip=True)
    assert len(ds) == 18
    with torch.no_grad():
        for i in range(9):
            sample = data[i]
            x = sample["image"][None]
            k = int(ks[i])
            assert int(ds[i]["num_keep"]) == k and int(ds[i]["label"]) == int(sample["class_label"])
            # batch-size independent: the same sequence as encoding this image alone
            assert torch.equal(ds[i]["indices"], expanded_sequences(model, x, k)[0])
            assert torch.equal(ds[9 + i]["indices"], expanded_sequences(model, x.flip(-1), k)[0])
            assert int(ds[9 + i]["num_keep"]) == k
    stored = np.load(tmp_path / f"{m.shards[0].name}.tokens.npy")
    assert stored.dtype == np.int32


def test_rerun_is_a_no_op_and_other_requests_are_refused(model, demo, tmp_path):
    data = _Pick(demo, 6)
    kwargs = {"out_dir": tmp_path, "k_candidates": CANDIDATES, "seed": 0, "flip": False, "batch_size": 4}
    extract_codes(model, data, **kwargs)
    before = _files(tmp_path)
    again = extract_codes(model, data, **kwargs)
    assert again.up_to_date and again.images_encoded == 0
    assert _files(tmp_path) == before  # nothing rewritten (mtimes unchanged)

    with pytest.raises(ConfigError, match="another tokenizer") as err:
        extract_codes(_tokenizer(1), data, **kwargs)
    assert "\n" not in str(err.value) and MANIFEST_FILE in str(err.value)
    with pytest.raises(ConfigError, match="seed is 0 there, 1 here"):
        extract_codes(model, data, **{**kwargs, "seed": 1})
    with pytest.raises(ConfigError, match="has_flip"):
        extract_codes(model, data, **{**kwargs, "flip": True})
    assert _files(tmp_path) == before  # a refusal touches nothing

    forced = extract_codes(model, data, **{**kwargs, "seed": 1}, force=True)
    assert not forced.up_to_date and read_manifest(tmp_path).seed == 1


def test_check_tokenizer(model, demo, tmp_path):
    result = extract_codes(model, _Pick(demo, 2), out_dir=tmp_path, k_candidates=(16,), batch_size=2)
    check_tokenizer(result.manifest, model, source=tmp_path)
    with pytest.raises(ConfigError, match="other weights"):
        check_tokenizer(result.manifest, _tokenizer(1), source=tmp_path)
    other_grid = MergeVQ(config=build_config(preset="tiny-R", changes={"image_size": 16, "num_keep": 4,
                                                                          "k_candidates": (4, 9, 16)}))
    with pytest.raises(ConfigError, match="L=64"):
        check_tokenizer(result.manifest, other_grid, source=tmp_path)


def test_unreadable_images_are_skipped_and_counted(model, demo, tmp_path):
    data = _Pick(demo, 9, unreadable=(2, 5, 6))
    result = extract_codes(model, data, out_dir=tmp_path, k_candidates=CANDIDATES, seed=2, batch_size=4)
    m = result.manifest
    assert m.num_skipped == 3 and m.num_images == 6 and m.dataset_length == 9
    ds = CodesDataset(root=str(tmp_path))
    kept = [i for i in range(9) if i not in (2, 5, 6)]
    assert ds.source_indices().tolist() == kept
    ks = draw_num_keep(9, candidates=CANDIDATES, seed=2)  # K stays the one drawn for the image's index
    assert [int(ds[j]["num_keep"]) for j in range(6)] == [int(ks[i]) for i in kept]


def test_bad_k_candidates(model, demo, tmp_path):
    with pytest.raises(ConfigError, match="num_keep=65"):
        extract_codes(model, _Pick(demo, 2), out_dir=tmp_path, k_candidates=(16, 65))


# --------------------------------------------------------------------------------------------------
# 1 vs 2 gloo processes


def _rank_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    from mergevq.distributed import DistContext

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        root = Path(out_dir)
        demo = DemoImages(split="validation", resolution=32, cache_dir=str(root / "cache"))
        extract_codes(MergeVQ.from_pretrained(root / "tokenizer"), _Pick(demo, 7), out_dir=root / "two",
                      k_candidates=CANDIDATES, seed=7, flip=True, batch_size=3,
                      dist=DistContext(rank=rank, world_size=world, local_rank=rank))
        dist.barrier()  # all ranks done before any tears the group down (gloo aborts a rank whose peer left)
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
def test_two_processes_write_what_one_writes(model, tmp_path):
    model.save_pretrained(tmp_path / "tokenizer")
    demo = DemoImages(split="validation", resolution=32, cache_dir=str(tmp_path / "cache"))
    one = extract_codes(MergeVQ.from_pretrained(tmp_path / "tokenizer"), _Pick(demo, 7), out_dir=tmp_path / "one",
                        k_candidates=CANDIDATES, seed=7, flip=True, batch_size=5).manifest
    run_ranks(_rank_worker, world=2, tmp_path=tmp_path, timeout_s=90, what="2-process extract-codes")
    two = read_manifest(tmp_path / "two")
    assert [s.count for s in two.shards] == [4, 3] and len(one.shards) == 1
    assert two.k_counts == one.k_counts and two.tokenizer_id == one.tokenizer_id
    a, b = CodesDataset(root=str(tmp_path / "one"), augment_flip=True), CodesDataset(root=str(tmp_path / "two"),
                                                                                      augment_flip=True)
    assert len(a) == len(b) == 14
    for i in range(14):
        for key in ("indices", "label", "num_keep"):
            assert torch.equal(a[i][key], b[i][key]), (i, key)
    assert not [p for p in (tmp_path / "two").iterdir() if p.name.endswith(".tmp")]


# --------------------------------------------------------------------------------------------------
# CLI, script, configs


def test_cli_end_to_end_on_exported_tokenizer(model, tmp_path, private_cache, capsys):
    tok = model.save_pretrained(tmp_path / "tok")
    out = tmp_path / "codes"
    # argparse: the KEY=VALUE overrides follow OUT_DIR, the options come after them
    args = ["extract-codes", str(tok), str(out), "demo_data.train_per_photo=2", "demo_data.val_per_photo=1",
            "extract.batch_size=8", "extract.k_candidates=[16,64]", "--demo"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "20 images (+ flipped)" in printed and "images skipped (unreadable or over the pixel limit): 0" in printed
    # every composed config file, absolute, in composition order (--demo = data=demo)
    configs = ROOT / "configs"
    assert [line for line in printed.splitlines() if line.startswith("config: ")] == [
        f"config: {(configs / 'data/demo.yaml').resolve()}", f"config: {(configs / 'extract/base.yaml').resolve()}"]
    ds = CodesDataset(root=str(out), augment_flip=True)
    m = ds.manifest
    assert len(ds) == 40 and m.num_classes == 10 and m.k_candidates == (16, 64)
    assert m.tokenizer_id == tokenizer_id(MergeVQ.from_pretrained(tok))
    assert m.dataset_description["target"] == "mergevq.data.demo.DemoImages"
    assert sorted({int(ds[i]["label"]) for i in range(20)}) == list(range(10))

    before = _files(out)
    assert main(args) == 0
    assert "nothing to do" in capsys.readouterr().out and _files(out) == before

    other = _tokenizer(1).save_pretrained(tmp_path / "other")
    assert main(["extract-codes", str(other), *args[2:]]) == 2
    err = capsys.readouterr().err.strip()
    assert "another tokenizer" in err and len(err.splitlines()) == 1


def test_cli_folder_skips_unreadable_images(model, tmp_path, capsys):
    from _data_images import write_bad_images, write_good_images

    write_good_images(str(tmp_path / "images" / "cats"))
    write_good_images(str(tmp_path / "images" / "dogs"))
    write_bad_images(str(tmp_path / "images" / "dogs"))
    tok = model.save_pretrained(tmp_path / "tok")
    assert main(["extract-codes", str(tok), str(tmp_path / "codes"), "extract.flip=false", "extract.num_workers=0",
                 "extract.accelerator=cpu", "--folder", str(tmp_path / "images")]) == 0
    assert "images skipped (unreadable or over the pixel limit): 2" in capsys.readouterr().out
    m = read_manifest(tmp_path / "codes")
    assert m.num_images == 14 and m.num_skipped == 2 and m.num_classes == 2 and not m.has_flip
    assert set(m.k_candidates) == set(model.config.k_candidates)  # null = the tokenizer's candidates


def test_cli_bad_settings_are_one_line_errors(model, tmp_path, capsys):
    tok = model.save_pretrained(tmp_path / "tok")
    assert main(["extract-codes", str(tok), str(tmp_path / "c"), "extract.sed=1", "--demo"]) == 2
    assert "extract.sed" in capsys.readouterr().err
    assert main(["extract-codes", str(tmp_path / "none"), str(tmp_path / "c"), "--demo"]) == 2
    assert "tokenizer not found" in capsys.readouterr().err


def test_cli_output_folder_rules(model, tmp_path, private_cache, capsys):
    """A non-empty OUT_DIR that is not a codes folder (or a file) is refused before any work and left
    untouched; an interrupted extraction and a codes folder written before folders were claimed
    (no marker) resume; --force is --overwrite's old name."""
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep")
    (tmp_path / "file").write_text("keep")
    for target, message in ((foreign, "holds no earlier output of mergevq extract-codes"),
                            (tmp_path / "file", "expected a folder, but it is a file")):
        before = _files(foreign)
        # the tokenizer does not even exist: the refusal comes first
        assert main(["extract-codes", str(tmp_path / "no-tokenizer"), str(target), "--demo", "--overwrite"]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
        assert _files(foreign) == before and (tmp_path / "file").read_text() == "keep"

    tok = model.save_pretrained(tmp_path / "tok")
    out = tmp_path / "codes"
    args = ["extract-codes", str(tok), str(out), "demo_data.train_per_photo=1", "demo_data.val_per_photo=1",
            "extract.flip=false", "extract.batch_size=16", "extract.k_candidates=[16]", "--demo"]
    assert main(args) == 0
    capsys.readouterr()
    (out / MANIFEST_FILE).unlink()  # killed after its shard, before the manifest
    (out / ".mergevq-output.json").unlink()  # and written by a version that did not claim folders
    assert main([*args, "--force"]) == 0
    assert "rank 0: 0 images" in capsys.readouterr().out  # the shard was reused, nothing encoded again
    assert read_manifest(out).num_images == 10 and (out / ".mergevq-output.json").is_file()


def test_launcher_script_forwards_arguments():
    script = ROOT / "scripts" / "train_autoregressive" / "extract_codes.sh"
    assert os.access(script, os.X_OK)
    env = {k: v for k, v in os.environ.items() if k not in ("NNODES", "DEVICES_PER_NODE", "MERGEVQ_PYTHON")}
    run = subprocess.run(["bash", str(script), "tok dir", "out", "extract.seed=1", "--force"],
                         env={**env, "MERGEVQ_DRY_RUN": "1", "DEVICES_PER_NODE": "4"},
                         capture_output=True, text=True, timeout=30, check=False)
    assert run.returncode == 0, run.stderr
    argv = shlex.split(run.stdout)
    assert argv[:3] == ["python", "-m", "torch.distributed.run"]
    assert "--standalone" in argv and "--nproc_per_node=4" in argv
    tail = argv[argv.index("-m", 2) + 1:]
    assert tail == ["mergevq", "extract-codes", "tok dir", "out", "extract.seed=1", "--force"]
    run = subprocess.run(["bash", str(script), "t", "o"],
                         env={**env, "MERGEVQ_DRY_RUN": "1", "DEVICES_PER_NODE": "2", "NNODES": "2",
                              "NODE_RANK": "1", "MASTER_ADDR": "h", "MASTER_PORT": "29500"},
                         capture_output=True, text=True, timeout=30, check=False)
    argv = shlex.split(run.stdout)
    assert {"--nnodes=2", "--node_rank=1", "--master_addr=h", "--master_port=29500"} <= set(argv)


def _imagenet_layout(root: Path) -> None:
    from _data_images import write_jpeg

    for i, wnid in enumerate(("n00000001", "n00000002")):
        write_jpeg(str(root / "train" / wnid / f"img{i}.JPEG"), seed=i)


@pytest.mark.parametrize("name", ["demo", "folder", "imagenet"])
def test_extract_configs_compose(name, tmp_path, private_cache):
    """The one task config with each data set of the group (tests/test_config_groups.py checks the rest)."""
    from omegaconf import OmegaConf

    from mergevq import config as C
    from mergevq.cli.extract_codes import ExtractSettings

    _imagenet_layout(tmp_path)
    overrides = {"imagenet": [f"data.params.train.params.root={tmp_path}"],
                 "folder": [f"data.params.train.params.root={tmp_path}/train"],
                 "demo": ["demo_data.train_per_photo=2", "demo_data.val_per_photo=1"]}.get(name, [])
    loaded = C.load_with_origins(ROOT / "configs" / "extract" / "base.yaml",
                                 [f"data={name}", "extract.image_size=32", *overrides])
    settings = ExtractSettings.from_node(OmegaConf.to_container(loaded.select("extract"), resolve=True), source=name)
    assert settings.k_candidates is None and settings.seed == 0
    assert loaded.select("data.params.validation") is None  # extraction reads only the train node
    dataset = loaded.instantiate("data.params.train")
    sample = next(s for s in (dataset[i] for i in range(len(dataset))) if s)
    assert tuple(sample["image"].shape) == (3, 32, 32)
