"""Config groups (issue #13 item 2): ``data=NAME`` / ``trainer=NAME`` choose a file of configs/GROUP/ for
every task, replacing the recipe's own in place, whatever their position among the overrides."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from mergevq import config as C
from mergevq.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
DATASETS = {
    "imagenet": ("taming.data.imagenet.ImageNetTrain", "taming.data.imagenet.ImageNetValidation"),
    "folder": ("taming.data.folder.ImageFolder", "taming.data.folder.ImageFolder"),
    "demo": ("mergevq.data.demo.DemoImages", "mergevq.data.demo.DemoImages"),
}


def _images(root: Path) -> None:
    """ImageNet layout and image folders at once: root/{train,val}/<class>/*.JPEG."""
    for split, classes in (("train", ("n01", "n02")), ("val", ("n01",))):
        for name in classes:
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(2):
                Image.new("RGB", (12, 10), (60 * i, 90, 30)).save(folder / f"img{i}.JPEG", format="JPEG")


def _roots(data: str, tmp_path: Path, *, train: bool, validation: bool) -> list[str]:
    """The overrides that point a data set at the tiny images (the demo needs none, only small counts)."""
    if data == "demo":
        return ["demo_data.train_per_photo=2", "demo_data.val_per_photo=1"]
    suffix = {"imagenet": ("", ""), "folder": ("/train", "/val")}[data]
    out = []
    if train:
        out.append(f"data.params.train.params.root={tmp_path}{suffix[0]}")
    if validation:
        out.append(f"data.params.validation.params.root={tmp_path}{suffix[1]}")
    return out


@pytest.fixture
def images(tmp_path, monkeypatch):
    monkeypatch.setenv("MERGEVQ_CACHE", str(tmp_path / "cache"))  # the demo crops' cache
    _images(tmp_path)
    return tmp_path


def _check_eval_transforms(params, size: int) -> None:
    assert params["size"] == size
    assert params["views"] is False and params["random_crop"] is False and params["flip"] is False


@pytest.mark.parametrize("data", sorted(DATASETS))
def test_extract_swaps_data(data, images):
    # the group choice first, the root after it, and the other way round: position does not matter
    roots = _roots(data, images, train=True, validation=False)
    for overrides in ([f"data={data}", *roots, "extract.image_size=16"], [*roots, "extract.image_size=16", f"data={data}"]):
        loaded = C.load_with_origins(CONFIGS / "extract/base.yaml", overrides)
        assert Path(loaded.files[0]) == (CONFIGS / "data" / f"{data}.yaml").resolve()
        node = loaded.select("data.params.train")
        assert node.target == DATASETS[data][0]
        _check_eval_transforms(dict(node.params), 16)
        assert loaded.cfg.data.params.validation is None
        dataset = loaded.instantiate("data.params.train")
        assert type(dataset).__module__ + "." + type(dataset).__name__ == DATASETS[data][0]
        assert dataset[0]["image"].shape[-1] == 16


@pytest.mark.parametrize("data", sorted(DATASETS))
def test_evaluation_swaps_data(data, images):
    overrides = [*_roots(data, images, train=False, validation=True), "eval.resolution=16", f"data={data}"]
    loaded = C.load_with_origins(CONFIGS / "evaluation/tokenizer.yaml", overrides)
    node = loaded.select("data.params.validation")
    assert node.target == DATASETS[data][1]
    _check_eval_transforms(dict(node.params), 16)
    assert loaded.cfg.data.params.train is None
    assert loaded.cfg.data.params.num_workers == loaded.cfg.eval.num_workers
    dataset = loaded.instantiate("data.params.validation")
    assert dataset[0]["image"].shape[-2:] == (16, 16)


def test_evaluation_demo_variant_keeps_its_settings(images):
    """--demo = --config evaluation/tokenizer_demo data=demo: the tiny tokenizers' sweep on the CPU."""
    loaded = C.load_with_origins(CONFIGS / "evaluation/tokenizer_demo.yaml", ["data=demo", "eval.resolution=16"])
    assert loaded.cfg.eval.num_keep == [64, 49, 36, 25, 16]
    assert loaded.cfg.eval.accelerator == "cpu"
    assert loaded.select("data.params.validation").target == DATASETS["demo"][1]


@pytest.mark.parametrize("data", sorted(DATASETS))
def test_probe_swaps_data(data, images):
    overrides = [f"data={data}", *_roots(data, images, train=True, validation=True), "probe.image_size=16"]
    loaded = C.load_with_origins(CONFIGS / "probe/linear.yaml", overrides)
    for key, target in zip(("train", "validation"), DATASETS[data]):
        node = loaded.select(f"data.params.{key}")
        assert node.target == target
        _check_eval_transforms(dict(node.params), 16)
    datamodule = loaded.instantiate("data")
    assert datamodule.train_dataset[0]["image"].shape[-2:] == (16, 16)
    assert int(datamodule.val_dataset[0]["class_label"]) >= 0  # labelled for every data set


@pytest.mark.parametrize("data", sorted(DATASETS))
def test_train_tokenizer_swaps_data(data, images):
    overrides = [f"data={data}", *_roots(data, images, train=True, validation=True), "data.params.num_workers=0"]
    loaded = C.load_with_origins(CONFIGS / "tokenizer/GR_d64.yaml", overrides)
    assert [loaded.select(f"data.params.{k}").target for k in ("train", "validation")] == list(DATASETS[data])
    assert str(loaded.cfg.data.params.seed) == str(loaded.cfg.run.seed)  # the recipe's own data keys still apply
    files = [Path(f) for f in loaded.files]
    assert (CONFIGS / "data" / f"{data}.yaml").resolve() in files
    assert len({f.parent.name for f in files if f.parent.name == "data"}) == 1  # the recipe's imagenet.yaml is gone
    if data != "imagenet":
        assert (CONFIGS / "data/imagenet.yaml").resolve() not in files
    loaded.instantiate("data")


def test_trainer_group_replaces_every_entry_and_keeps_the_groups_own_defaults():
    # ar/GR_XL names two trainer files (base.yaml's gpu8_bf16 and its own gpu8_bf16_fsdp): both replaced
    loaded = C.load_with_origins(CONFIGS / "ar/GR_XL.yaml", ["trainer=cpu"])
    names = [Path(f).relative_to(CONFIGS.resolve()).as_posix() for f in loaded.files]
    assert "trainer/cpu.yaml" in names and not any(n.startswith("trainer/gpu8") for n in names)
    assert loaded.cfg.trainer.accelerator == "cpu"
    # npu8_bf16.yaml composes gpu8_bf16.yaml itself: a file of the group keeps its own entries
    loaded = C.load_with_origins(CONFIGS / "tokenizer/GR_d64.yaml", ["trainer=npu8_bf16"])
    names = [Path(f).relative_to(CONFIGS.resolve()).as_posix() for f in loaded.files]
    assert names.index("trainer/gpu8_bf16.yaml") < names.index("trainer/npu8_bf16.yaml")
    assert loaded.cfg.trainer.accelerator == "npu"


def test_group_choice_without_a_defaults_entry_is_merged_before_the_files_own_keys():
    # demo/mergear.yaml composes only ../trainer/cpu.yaml; data=demo would mix an image data set into its
    # codes data node: refused in one line that names the file setting the other target
    with pytest.raises(ConfigError) as err:
        C.load_with_origins(CONFIGS / "demo/mergear.yaml", ["data=demo", "demo_codes.root=/x"])
    message = str(err.value)
    assert "\n" not in message and "data=demo" in message and "demo/mergear.yaml" in message
    assert "mergevq.data.codes.CodesDataModule" in message


def test_mergear_takes_codes_not_an_image_data_set():
    with pytest.raises(ConfigError, match=r"ar/base.yaml.*does not take its 'data' from the 'data' group"):
        C.load_with_origins(CONFIGS / "ar/GR_L.yaml", ["data=folder"])


def test_appended_group_file_sits_between_defaults_and_own_keys(tmp_path):
    root = tmp_path / "configs"
    (root / "extras").mkdir(parents=True)
    (root / "task").mkdir()
    (root / "extras" / "loud.yaml").write_text("a: from_group\nb: from_group\n")
    (root / "task" / "base.yaml").write_text("a: from_base\nb: from_base\nc: from_base\n")
    (root / "task" / "main.yaml").write_text("defaults: [base.yaml]\nb: from_main\n")
    loaded = C.load_with_origins(root / "task" / "main.yaml", ["extras=loud"])
    assert (loaded.cfg.a, loaded.cfg.b, loaded.cfg.c) == ("from_group", "from_main", "from_base")
    assert [Path(f).name for f in loaded.files] == ["base.yaml", "loud.yaml", "main.yaml"]


def test_unknown_group_name_lists_the_available_ones():
    with pytest.raises(ConfigError) as err:
        C.load_with_origins(CONFIGS / "extract/base.yaml", ["data=imagenett"])
    message = str(err.value)
    assert "\n" not in message and "data=imagenett" in message
    assert "available: demo, folder, imagenet" in message


def test_group_choice_may_be_a_yaml_path(tmp_path, images):
    own = tmp_path / "my_data.yaml"
    own.write_text((CONFIGS / "data/folder.yaml").read_text().replace("data/my_images/train", str(images / "train"))
                   .replace("data/my_images/val", str(images / "val")))
    loaded = C.load_with_origins(CONFIGS / "evaluation/tokenizer.yaml", [f"data={own}", "eval.resolution=16"])
    assert str(own.resolve()) in loaded.files
    assert loaded.select("data.params.validation.params.root") == str(images / "val")


def test_dotted_and_added_keys_are_ordinary_overrides():
    loaded = C.load_with_origins(CONFIGS / "extract/base.yaml", ["data.params.batch_size=3", "+extra=1"])
    assert loaded.cfg.data.params.batch_size == 3 and loaded.cfg.extra == 1


def test_demo_images_refuse_what_the_crops_cannot_do(images):
    for key in ("random_crop",):
        with pytest.raises(ConfigError) as err:
            C.load_with_origins(CONFIGS / "extract/base.yaml", ["data=demo", f"data.params.train.params.{key}=true",
                                                                 "demo_data.train_per_photo=2"]).instantiate(
                "data.params.train")
        assert "\n" not in str(err.value) and f"{key}=true" in str(err.value) and "data/demo.yaml" in str(err.value)
