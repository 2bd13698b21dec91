import numpy as np
import pytest
import torch

from lightseg_nas.data import load_split, parse_spec
from lightseg_nas.data.synthetic import synthetic_portrait
from lightseg_nas.data.transforms import augment, get_preprocessing, normalize
from lightseg_nas.errors import UserError
from tests.fixtures import write_dataset


@pytest.mark.parametrize("layout,scale", [("extportraitseg", 255), ("portraitnet", 1)])
def test_both_layouts_load_any_size_grayscale_and_mask_scale(tmp_path, layout, scale):
    root = write_dataset(tmp_path / layout, layout, mask_scale=scale)
    train = load_split(f"eg1800:{root}", "train", 64, val_fraction=0.25, val_seed=3)
    val = load_split(f"eg1800:{root}", "val", 64, val_fraction=0.25, val_seed=3)
    everything = load_split(f"eg1800:{root}", "trainval", 64)
    test = load_split(f"eg1800:{root}", "test", 64)
    assert train.images.shape == (6, 3, 64, 64) and train.images.dtype == torch.uint8
    assert set(train.masks.unique().tolist()) == {0, 1}
    assert len(val) == 2 and not set(train.names) & set(val.names)
    assert sorted(train.names + val.names) == sorted(everything.names)
    assert len(test) == 2 and not set(test.names) & set(everything.names)
    assert "validation 0.25 carved with seed 3" in val.description


def test_validation_carving_is_deterministic_by_seed(tmp_path):
    root = write_dataset(tmp_path / "d", "extportraitseg", count=22)
    picks = [load_split(f"eg1800:{root}", "val", 32, 0.25, seed).names for seed in (0, 0, 1)]
    assert picks[0] == picks[1] and picks[0] != picks[2]


def _break(root, how):
    images, masks = root / "images_data_crop", root / "GT_png"
    if how == "image without mask":
        (masks / "00002_mask.png").unlink()
        return "00002_mask.png: mask missing"
    if how == "mask without image":
        (images / "00003.jpg").unlink()
        return "00003.jpg: image listed in the split is missing"
    if how == "mask size differs":
        from PIL import Image

        Image.new("L", (10, 10)).save(masks / "00001_mask.png")
        return "00001_mask.png: mask is 10x10 but its image is"
    if how == "mask values":
        from PIL import Image

        with Image.open(masks / "00001_mask.png") as m:
            size = m.size
        Image.fromarray(np.full(size[::-1], 7, np.uint8)).save(masks / "00001_mask.png")
        return "00001_mask.png: mask has values other than 0/1/255"
    if how == "unreadable jpeg":
        (images / "00004.jpg").write_bytes(b"\xff\xd8\xff garbage")
        return "00004.jpg: unreadable image"
    if how == "empty split":
        (root / "eg1800_train.txt").write_text("\n")
        return "eg1800_train.txt: the split is empty"
    if how == "missing split list":
        return "eg1800_holdout.txt: no such split list"
    raise AssertionError(how)


BROKEN = ["image without mask", "mask without image", "mask size differs", "mask values", "unreadable jpeg", "empty split", "missing split list"]


@pytest.mark.parametrize("how", BROKEN)
def test_broken_datasets_name_the_file_and_the_problem(tmp_path, how):
    root = write_dataset(tmp_path / "d", "extportraitseg")
    expected = _break(root, how)
    split = "holdout" if how == "missing split list" else "trainval"
    with pytest.raises(UserError) as info:
        load_split(f"eg1800:{root}", split, 32)
    assert expected in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    "spec,expected",
    [("imagenet", "unknown dataset spec"), ("eg1800", "needs a folder"), ("synthetic:count=x", "expected synthetic:count=N")],
)
def test_bad_specs(spec, expected):
    with pytest.raises(UserError, match=expected):
        parse_spec(spec)


def test_missing_folder(tmp_path):
    with pytest.raises(UserError, match="no such dataset folder"):
        load_split(f"eg1800:{tmp_path / 'nope'}", "train", 32)


def test_synthetic_is_deterministic_and_not_trivial():
    a_image, a_mask = synthetic_portrait(7, 96)
    b_image, b_mask = synthetic_portrait(7, 96)
    c_image, _ = synthetic_portrait(8, 96)
    assert np.array_equal(a_image, b_image) and np.array_equal(a_mask, b_mask)
    assert not np.array_equal(a_image, c_image)
    masks = np.stack([synthetic_portrait(s, 64)[1] for s in range(30)])
    fractions = masks.mean((1, 2))
    assert 0.05 < fractions.min() and fractions.max() < 0.9 and fractions.std() > 0.03
    # the background is cluttered, not flat, and no single colour separates the person
    images = np.stack([synthetic_portrait(s, 64)[0] for s in range(30)]).astype(float)
    background_std = np.mean([images[i][masks[i] == 0].std(0).mean() for i in range(30)])
    assert background_std > 20


def test_the_embedded_dataset_is_the_one_committed_results_were_measured_on():
    """The synthetic images are a fixed dataset (the quickstart's committed figures stand on
    it): a faster drawing must draw the same pixels. The digest was taken with the drawing
    that computed every texture over the whole frame."""
    import hashlib

    from lightseg_nas.data.synthetic import synthetic_split

    digest = hashlib.sha256()
    for size in (64, 224):
        for split, count, seed in (("train", 12, 0), ("val", 8, 3)):
            images, masks, _ = synthetic_split(split, count, size, seed)
            digest.update(images.tobytes())
            digest.update(masks.tobytes())
    assert digest.hexdigest()[:32] == "4e6442f7ec3a0ee4191ffc6ee53b6046"


def test_a_drawn_split_is_kept_but_every_caller_gets_its_own_arrays():
    from lightseg_nas.data.synthetic import _drawn_split, synthetic_split

    first = load_split("synthetic:count=8,seed=5", "train", 32)
    hits = _drawn_split.cache_info().hits
    first.images.zero_()
    first.masks.fill_(1)
    images, masks, _ = synthetic_split("train", 8, 32, 5)
    images[:] = 0
    again = load_split("synthetic:count=8,seed=5", "train", 32)
    assert again.images.float().std() > 10 and 0 < again.masks.float().mean() < 1
    assert torch.equal(again.images, load_split("synthetic:count=8,seed=5", "train", 32).images)
    assert _drawn_split.cache_info().hits == hits + 3  # drawn once, then kept


def test_synthetic_splits_are_disjoint_and_labelled():
    train = load_split("synthetic:count=8,seed=1", "train", 32)
    val = load_split("synthetic:count=8,seed=1", "val", 32)
    assert train.synthetic and "synthetic" in train.description
    assert not any(torch.equal(v, t) for v in val.images for t in train.images)


def test_released_preprocessing_is_bgr_mean_std_then_divide_by_255():
    image = torch.tensor([[[[200]], [[100]], [[50]]]], dtype=torch.uint8)  # R, G, B
    x = normalize(image, get_preprocessing("released"))[0, :, 0, 0]
    expected = [(50 - 107.304565) / 63.97182 / 255, (100 - 115.69884) / 65.1337 / 255, (200 - 132.35703) / 68.29726 / 255]
    assert torch.allclose(x, torch.tensor(expected))


def test_augment_keeps_shapes_and_binary_masks_and_is_seeded():
    data = load_split("synthetic:count=4", "train", 64)
    one = augment(data.images, data.masks, torch.Generator().manual_seed(1))
    two = augment(data.images, data.masks, torch.Generator().manual_seed(1))
    assert one[0].shape == (4, 3, 64, 64) and one[1].shape == (4, 64, 64)
    assert set(one[1].unique().tolist()) <= {0, 1}
    assert torch.equal(one[0], two[0]) and torch.equal(one[1], two[1])


def test_a_split_fingerprint_names_the_images_not_where_the_dataset_lies(tmp_path):
    import shutil

    from lightseg_nas.data import split_fingerprint

    here = write_dataset(tmp_path / "here", "extportraitseg", count=12)
    there = tmp_path / "elsewhere" / "copy"
    shutil.copytree(here, there)
    assert split_fingerprint(f"eg1800:{here}") == split_fingerprint(f"eg1800:{there}")
    assert split_fingerprint(f"eg1800:{here}", val_seed=1) != split_fingerprint(f"eg1800:{here}")  # other images validate
    (there / "eg1800_train.txt").write_text("\n".join((here / "eg1800_train.txt").read_text().split()[:-1]) + "\n")
    assert split_fingerprint(f"eg1800:{here}") != split_fingerprint(f"eg1800:{there}")  # one training image fewer
    assert split_fingerprint("synthetic:count=8") != split_fingerprint("synthetic:count=8,seed=1")
