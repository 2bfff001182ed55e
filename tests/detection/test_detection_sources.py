"""Penn-Fudan and Pascal VOC readers, on tiny fake copies of the authors' layouts."""
import pytest
import torch
from PIL import Image

from vpt.detection.io import png_bytes
from vpt.detection.pennfudan import PennFudan, parse_annotation, split_names
from vpt.detection.voc import VOCDetection
from vpt.errors import ConfigError

NAMES = [f"FudanPed{i:05d}" for i in range(1, 75)] + [f"PennPed{i:05d}" for i in range(1, 97)]  # the authors' 170

NOTE = """# Compatible with PASCAL Annotation Version 1.00
Image filename : "PennFudanPed/PNGImages/{name}.png"
Image size (X x Y x C) : 12 x 10 x 3
Database : "The Penn-Fudan-Pedestrian Database"
Objects with ground truth : 2 {{ "PASpersonWalking" "PASpersonWalking" }}
# Top left pixel co-ordinates : (1, 1)
# Details for pedestrian 1 ("PASpersonWalking")
Original label for object 1 "PASpersonWalking" : "PennFudanPed"
Bounding box for object 1 "PASpersonWalking" (Xmin, Ymin) - (Xmax, Ymax) : (2, 3) - (6, 8)
Pixel mask for object 1 "PASpersonWalking" : "PennFudanPed/PedMasks/{name}_mask.png"

# Details for pedestrian 2 ("PASpersonWalking")
Original label for object 2 "PASpersonWalking" : "PennFudanPed"
Bounding box for object 2 "PASpersonWalking" (Xmin, Ymin) - (Xmax, Ymax) : (7, 1) - (12, 10)
Pixel mask for object 2 "PASpersonWalking" : "PennFudanPed/PedMasks/{name}_mask.png"
"""


@pytest.fixture(scope="module")
def pennfudan_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("PennFudanPed")
    for folder in ("PNGImages", "PedMasks", "Annotation"):
        (root / folder).mkdir()
    image = png_bytes(torch.zeros(3, 10, 12, dtype=torch.uint8))
    for name in NAMES:
        (root / "PNGImages" / f"{name}.png").write_bytes(image)
        (root / "Annotation" / f"{name}.txt").write_text(NOTE.format(name=name))
    return root


def test_annotation_boxes_become_zero_based_pixel_edges(tmp_path):
    note = tmp_path / "FudanPed00001.txt"
    note.write_text(NOTE.format(name="FudanPed00001"))
    # pixels 2..6 counted from 1 are columns 1..5 counted from 0: the box spans [1, 6)
    assert parse_annotation(note) == (12, 10, [[1.0, 2.0, 6.0, 8.0], [6.0, 0.0, 12.0, 10.0]])
    note.write_text("# nothing here\n")
    with pytest.raises(ConfigError, match="no 'Image size' line"):
        parse_annotation(note)


def test_fixed_split_is_120_train_50_test_and_reproducible(pennfudan_root):
    train, test = PennFudan(pennfudan_root, "train"), PennFudan(pennfudan_root, "test")
    assert (len(train), len(test)) == (120, 50)
    train_names, test_names = {r.file_name for r in train.records}, {r.file_name for r in test.records}
    assert not train_names & test_names and len(train_names | test_names) == 170
    # pinned: the sorted names permuted by numpy default_rng(0); a change here would move images between splits
    assert [r.file_name for r in test.records][:5] == [
        "FudanPed00068.png", "FudanPed00066.png", "PennPed00051.png", "PennPed00044.png", "FudanPed00025.png"]
    assert split_names([f"{n}.png" for n in NAMES], "test")[:1] == ["FudanPed00068.png"]
    image, target = test[0]
    assert image.shape == (3, 10, 12)
    assert target["boxes"].tolist() == [[1, 2, 6, 8], [6, 0, 12, 10]] and target["labels"].tolist() == [1, 1]
    assert target["image_id"] == sorted(NAMES).index("FudanPed00068") + 1
    assert test.category_ids == {1: 1} and test.class_names == ["person"]


def test_pennfudan_layout_errors(tmp_path, pennfudan_root):
    with pytest.raises(ConfigError, match="no PNGImages/ and Annotation/.*data.root"):
        PennFudan(tmp_path)
    with pytest.raises(ConfigError, match="split 'val'"):
        PennFudan(pennfudan_root, "val")
    (tmp_path / "PNGImages").mkdir()
    (tmp_path / "Annotation").mkdir()
    (tmp_path / "PNGImages" / "PennPed00001.png").write_bytes(png_bytes(torch.zeros(3, 4, 4, dtype=torch.uint8)))
    with pytest.raises(ConfigError, match="PennPed00001.txt is missing"):
        PennFudan(tmp_path, "train")


VOC_XML = """<annotation><filename>{name}.jpg</filename>
<size><width>20</width><height>16</height><depth>3</depth></size>
<object><name>dog</name><difficult>0</difficult>
  <bndbox><xmin>2</xmin><ymin>3</ymin><xmax>10</xmax><ymax>12</ymax></bndbox></object>
<object><name>person</name><difficult>1</difficult>
  <bndbox><xmin>11</xmin><ymin>1</ymin><xmax>20</xmax><ymax>16</ymax></bndbox></object>
</annotation>"""


def test_voc_reads_torchvision_layout(tmp_path):
    base = tmp_path / "VOCdevkit" / "VOC2012"
    for folder in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (base / folder).mkdir(parents=True)
    for name in ("2012_000001", "2012_000002"):
        Image.new("RGB", (20, 16)).save(base / "JPEGImages" / f"{name}.jpg")
        (base / "Annotations" / f"{name}.xml").write_text(VOC_XML.format(name=name))
    (base / "ImageSets" / "Main" / "train.txt").write_text("2012_000001\n2012_000002\n")
    data = VOCDetection(tmp_path, "2012", "train")
    image, target = data[1]
    assert image.shape == (3, 16, 20) and target["image_id"] == 2
    assert target["boxes"].tolist() == [[1, 2, 10, 12]] and target["labels"].tolist() == [12]  # difficult left out
    annotations = data.to_coco()["annotations"]
    assert [(a["category_id"], a["iscrowd"], a["bbox"]) for a in annotations[:2]] == [
        (12, 0, [1.0, 2.0, 9.0, 10.0]), (15, 1, [10.0, 0.0, 10.0, 16.0])]
    assert len(data.class_names) == 20 and data.category_ids[15] == 15


def test_voc_missing_root_names_the_fix(tmp_path):
    with pytest.raises(ConfigError, match=r"data.root=.*data.download=true"):
        VOCDetection(tmp_path / "nowhere")
