"""CoOp's 11 datasets as presets (configs/experiment/coop/*): split files, folders, zero-shot templates, epochs per
shot count; FGVC-Aircraft's own lists; one training step on a stand-in split file and a tiny random CLIP."""
import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf
from PIL import Image

import vpt.tools.cli
import vpt.errors
from vpt.data import build_data
from vpt.engine import train

EXPERIMENTS = Path(__file__).resolve().parents[1] / "configs" / "experiment"
# preset: (folder under $DATA as CoOp's DATASETS.md, split file, image folder, CUSTOM_TEMPLATES of trainers/zsclip.py)
COOP = {
    "imagenet": ("imagenet/images", None, None, "a photo of a {}."),
    "caltech101": ("caltech-101", "split_zhou_Caltech101.json", "101_ObjectCategories", "a photo of a {}."),
    "oxford_pets": ("oxford_pets", "split_zhou_OxfordPets.json", "images", "a photo of a {}, a type of pet."),
    "stanford_cars": ("stanford_cars", "split_zhou_StanfordCars.json", ".", "a photo of a {}."),
    "flowers102": ("oxford_flowers", "split_zhou_OxfordFlowers.json", "jpg", "a photo of a {}, a type of flower."),
    "food101": ("food-101", "split_zhou_Food101.json", "images", "a photo of {}, a type of food."),
    "fgvc_aircraft": ("fgvc_aircraft", "variants.txt", "images", "a photo of a {}, a type of aircraft."),
    "sun397": ("sun397", "split_zhou_SUN397.json", "SUN397", "a photo of a {}."),
    "dtd": ("dtd", "split_zhou_DescribableTextures.json", "images", "{} texture."),
    "eurosat": ("eurosat", "split_zhou_EuroSAT.json", "2750", "a centered satellite photo of {}."),
    "ucf101": ("ucf101", "split_zhou_UCF101.json", "UCF-101-midframes", "a photo of a person doing {}."),
}
IMAGE = {"input_size": (3, 32, 32), "mean": (0.5,) * 3, "std": (0.5,) * 3, "interpolation": "bilinear", "crop_pct": 1.0}


def compose_preset(*overrides):
    vpt.tools.cli.register_resolvers()
    with initialize_config_module("vpt.configs", version_base="1.3"):
        return compose("train", overrides=["output_dir=/tmp/x", *overrides])


PROTOCOLS = {"cross_dataset", "domain_generalization"}  # presets of the transfer protocols (test_clip_protocols.py)


def test_there_is_a_preset_for_each_of_coops_11_datasets():
    presets = {p.stem for p in (EXPERIMENTS / "coop").glob("[!_]*.yaml")}
    assert sorted(presets - PROTOCOLS) == sorted(COOP) and PROTOCOLS <= presets


@pytest.mark.parametrize("preset", sorted(COOP))
def test_preset_carries_coops_files_template_and_recipe(preset):
    folder, split_file, image_dir, template = COOP[preset]
    cfg = compose_preset(f"experiment=coop/{preset}", "paths.data_dir=/data")
    assert cfg.data.root == f"/data/{folder}" and cfg.task.templates == [template]
    assert cfg.data.get("split_file") == split_file and cfg.data.get("image_dir") == image_dir
    assert cfg.data.name == ("imagefolder" if preset == "imagenet" else "zhou_split")
    assert cfg.prompt.method == "coop" and cfg.backbone.name == "open_clip:ViT-B-16"
    assert cfg.optim.base_lr * cfg.trainer.batch_size / 256 == pytest.approx(0.002)
    epochs = {shots: compose_preset(f"experiment=coop/{preset}", f"data.num_shots={shots}").trainer.epochs
              for shots in (1, 2, 4, 8, 16)}
    assert epochs == ({k: 50 for k in epochs} if preset == "imagenet" else {1: 50, 2: 100, 4: 100, 8: 200, 16: 200})
    assert compose_preset(f"experiment=coop/{preset}", "prompt=maple").name == f"coop_{preset}_maple"
    assert dict(cfg.tune) == {"grid": "coop_fewshot", "search": False, "seeds": [1, 2, 3],
                               "final_on_trainval": False}  # vpt-tune: the protocol


def _aircraft(root: Path):
    (root / "images").mkdir(parents=True)
    variants = ["707-320", "A320", "Cessna 172"]
    (root / "variants.txt").write_text("\n".join(variants) + "\n")
    for split, count in (("train", 6), ("val", 3), ("test", 3)):
        lines = []
        for i in range(count):
            image = f"{split}{i:03d}"
            Image.new("RGB", (8, 8), (i % 3 * 80, 0, 0)).save(root / "images" / f"{image}.jpg")
            lines.append(f"{image} {variants[i % 3]}")
        (root / f"images_variant_{split}.txt").write_text("\n".join(lines) + "\n")


def test_fgvc_aircraft_reads_the_variant_lists_as_coop(tmp_path):
    _aircraft(tmp_path)
    data = build_data({"name": "zhou_split", "root": str(tmp_path), "split_file": "variants.txt"}, IMAGE)
    assert data.class_names == ["707-320", "A320", "Cessna 172"]  # variants.txt order, names with spaces kept
    assert (len(data.train), len(data.val), len(data.test)) == (6, 3, 3)
    base = build_data({"name": "zhou_split", "root": str(tmp_path), "split_file": "variants.txt",
                       "subsample_classes": "new"}, IMAGE)
    assert base.class_names == ["Cessna 172"]
    (tmp_path / "images_variant_val.txt").write_text("val000 Boeing 747\n")
    with pytest.raises(vpt.errors.ConfigError, match="Boeing 747"):
        build_data({"name": "zhou_split", "root": str(tmp_path), "split_file": "variants.txt"}, IMAGE)


def test_a_preset_trains_a_step_on_a_stand_in_split(tmp_path):
    root = tmp_path / "oxford_pets"
    (root / "images").mkdir(parents=True)
    rows = {}
    for split, count in (("train", 6), ("val", 3), ("test", 3)):
        rows[split] = []
        for i in range(count):
            Image.new("RGB", (8, 8), (i % 3 * 80, 0, 0)).save(root / "images" / f"{split}_{i}.png")
            rows[split].append([f"{split}_{i}.png", i % 3, ["abyssinian", "pug", "beagle"][i % 3]])
    (root / "split_zhou_OxfordPets.json").write_text(json.dumps(rows))
    tiny = compose_preset("experiment=coop_quickstart").backbone  # the tiny random-init open_clip CLIP
    cfg = compose_preset("experiment=coop/oxford_pets", f"paths.data_dir={tmp_path}", f"output_dir={tmp_path}/run",
                         "data.num_shots=1", "trainer.epochs=1", "trainer.limit_train_batches=1",
                         "trainer.limit_eval_batches=1", "trainer.batch_size=2", "trainer.eval_batch_size=4",
                         "trainer.cpu_threads=1", "trainer.progress_bar=false", "logger=none", "prompt.n_ctx=2")
    OmegaConf.set_struct(cfg, False)
    cfg.backbone = tiny
    results = train(cfg)
    assert results["status"] == "completed" and results["method"] == "coop"
    assert json.loads((tmp_path / "run" / "results.json").read_text())["status"] == "completed"


def test_imagenet_names_its_wnid_folders_from_coops_classnames_file(tmp_path):
    images = tmp_path / "imagenet" / "images"
    for split in ("train", "val"):
        for wnid in ("n01440764", "n01443537"):
            (images / split / wnid).mkdir(parents=True)
            Image.new("RGB", (8, 8)).save(images / split / wnid / "a.png")
    (tmp_path / "imagenet" / "classnames.txt").write_text("n01440764 tench\nn01443537 goldfish\nn01484850 great white shark\n")
    spec = {"name": "imagefolder", "root": str(images), "class_names_file": "classnames.txt"}
    assert build_data(spec, IMAGE).class_names == ["tench", "goldfish"]  # found beside images/, as CoOp keeps it
    (tmp_path / "imagenet" / "classnames.txt").write_text("n01440764 tench\n")
    with pytest.raises(vpt.errors.ConfigError, match="missing: n01443537"):
        build_data(spec, IMAGE)
    assert compose_preset("experiment=coop/imagenet").data.class_names_file == "classnames.txt"
