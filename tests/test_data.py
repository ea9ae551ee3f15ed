import tarfile
import zipfile

import numpy as np
import pytest
from PIL import Image

from fairprune.config import CELEBA_ATTRIBUTES, DataParams
from fairprune.data import load_prepared, prepare
from fairprune.data import celeba, manifest, utkface
from fairprune.data.raw import SPLITS
from fairprune.errors import DataError, ParamsError


def jpeg(path, size=(40, 40), seed=0):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(path, "JPEG")


@pytest.fixture
def utk_tar(tmp_path):
    folder = tmp_path / "UTKFace"
    folder.mkdir()
    i = 0
    for race in range(5):
        for gender in (0, 1):
            for age in (5, 25, 45, 70):
                for k in range(3):
                    jpeg(folder / f"{age}_{gender}_{race}_2017010{k}{i:04d}.jpg.chip.jpg", seed=i)
                    i += 1
    for bad in ("39_1_20170116174525125.jpg.chip.jpg", "61_1_20170109150557335.jpg.chip.jpg",
                "53__0_20170116184028385.jpg.chip.jpg", "55_0_0_20170116232725357jpg.chip.jpg",
                "24_0_1_20170116220224657 .jpg.chip.jpg"):
        jpeg(folder / bad)
    archive = tmp_path / "UTKFace.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="UTKFace")
    return archive, folder


def test_utkface_name_parser():
    assert utkface.parse_name("UTKFace/26_1_2_20170116.jpg.chip.jpg") == (26, 1, 2)
    assert utkface.parse_name("39_1_20170116174525125.jpg.chip.jpg") is None
    assert utkface.parse_name("53__0_2017.jpg.chip.jpg") is None
    assert utkface.parse_name("26_1_7_2017.jpg.chip.jpg") is None
    assert utkface.parse_name("24_0_1_20170116220224657 .jpg.chip.jpg") is None
    assert utkface.parse_name("55_0_0_20170116232725357jpg.chip.jpg") is None
    assert utkface.parse_name("26_1_2_20170116.jpg") == (26, 1, 2)


@pytest.mark.parametrize("which", ["tar", "folder"])
def test_utkface_loader_counts_malformed_and_bins_ages(utk_tar, which):
    path = utk_tar[0] if which == "tar" else utk_tar[1]
    raw = utkface.load(path, target="gender", group="age", size=16, age_bins=[20, 40, 60])
    images = raw.images.decode()
    assert images.shape == (120, 16, 16, 3) and images.dtype == np.uint8
    assert raw.info["skipped_malformed"] == 5
    assert raw.group_names == ["0-19", "20-39", "40-59", "60+"]
    assert np.bincount(raw.groups).tolist() == [30, 30, 30, 30]
    assert raw.target_names == ["male", "female"]


def test_utkface_prepare_stratified_and_cached(utk_tar, tmp_path):
    params = DataParams(dataset="utkface", root=str(utk_tar[0]), target="gender", group="race", image_size=16,
                        val_fraction=0.25, test_fraction=0.25)
    data = prepare(params)
    assert data.images.shape[1:] == (3, 16, 16)
    stats = data.stats()
    # 12 images per race x gender stratum: 3 val, 3 test, 6 train
    for split, expected in (("train", 6), ("val", 3), ("test", 3)):
        assert all(c == expected for g in stats["counts"][split].values() for c in g.values())
    data.save(tmp_path / "prepared.pt")
    again = load_prepared(tmp_path / "prepared.pt")
    assert torch_equal(again.images, data.images) and again.group_names == data.group_names


def torch_equal(a, b):
    return bool((a == b).all())


def test_imbalance_keeps_fraction_of_training_samples():
    base = prepare(DataParams())
    skewed = prepare(DataParams(imbalance={"groups": ["3"], "fraction": 0.2}))
    n = lambda d, g: int(((d.groups == g) & (d.split == SPLITS.index("train"))).sum())  # noqa: E731
    assert n(skewed, 3) == round(n(base, 3) * 0.2)
    assert n(skewed, 4) == n(base, 4)
    assert int((skewed.split == SPLITS.index("test")).sum()) == int((base.split == SPLITS.index("test")).sum())
    with pytest.raises(ParamsError) as info:
        prepare(DataParams(imbalance={"groups": ["eleven"], "fraction": 0.2}))
    assert info.value.key == "data.imbalance.groups.0"


def test_digits_default_has_every_group_in_every_split():
    data = prepare(DataParams())
    assert data.input_shape == (1, 8, 8) and data.num_classes == 10
    for s in range(3):
        assert len(np.unique(data.groups[data.split == s].numpy())) == 10


@pytest.fixture
def celeba_root(tmp_path):
    root = tmp_path / "celeba"
    root.mkdir()
    rng = np.random.default_rng(0)
    names = [f"{i:06d}.jpg" for i in range(1, 61)]
    present = names[:40]  # the annotation files list more images than the archive holds
    with zipfile.ZipFile(root / "img_align_celeba.zip", "w") as zf:
        for i, name in enumerate(present):
            jpeg(tmp_path / name, size=(218, 178), seed=i)
            zf.write(tmp_path / name, f"img_align_celeba/{name}")
    values = rng.choice([-1, 1], size=(len(names), len(CELEBA_ATTRIBUTES)))
    male, blond = CELEBA_ATTRIBUTES.index("Male"), CELEBA_ATTRIBUTES.index("Blond_Hair")
    values[:, male] = np.where(np.arange(len(names)) % 2 == 0, 1, -1)
    values[:, blond] = np.where(np.arange(len(names)) % 4 < 2, 1, -1)
    lines = [str(len(names)), " ".join(CELEBA_ATTRIBUTES)]
    lines += [name + " " + " ".join(f"{v:2d}" for v in row) for name, row in zip(names, values)]
    (root / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")
    partition = [f"{name} {0 if i % 10 < 6 else (1 if i % 10 < 8 else 2)}" for i, name in enumerate(names)]
    (root / "list_eval_partition.txt").write_text("\n".join(partition) + "\n")
    return root, values


def test_celeba_uses_only_present_images_and_official_partition(celeba_root):
    root, values = celeba_root
    raw = celeba.load(root, target="Blond_Hair", group="Male", size=12)
    assert raw.images.decode().shape == (40, 12, 12, 3)
    assert raw.group_names == ["Female", "Male"] and raw.target_names == ["not_Blond_Hair", "Blond_Hair"]
    male = CELEBA_ATTRIBUTES.index("Male")
    assert raw.groups.tolist() == (values[:40, male] == 1).astype(int).tolist()
    assert np.bincount(raw.split).tolist() == [24, 8, 8]
    assert raw.info["images_used"] == 40 and raw.info["annotated_total"] == 60


def test_celeba_folder_layout_and_missing_attribute(celeba_root, tmp_path):
    root, _ = celeba_root
    with zipfile.ZipFile(root / "img_align_celeba.zip") as zf:
        zf.extractall(root)
    (root / "img_align_celeba.zip").unlink()
    data = prepare(DataParams(dataset="celeba", root=str(root), target="Blond_Hair", group="Male", image_size=12))
    assert data.stats()["n_per_split"] == {"train": 24, "val": 8, "test": 8}
    with pytest.raises(DataError, match="not in"):
        celeba.read_attributes(root / "list_attr_celeba.txt", ["Hair_Colour"])


def write_manifest(tmp_path, with_split):
    (tmp_path / "imgs").mkdir()
    rows = ["path,target,group" + (",split" if with_split else "")]
    for i in range(40):
        jpeg(tmp_path / "imgs" / f"{i}.jpg", size=(20, 30), seed=i)
        split = ["train", "train", "train", "val", "test"][(i // 4) % 5]
        rows.append(f"imgs/{i}.jpg,{'cat' if i % 2 else 'dog'},{'a' if (i // 2) % 2 else 'b'}"
                    + (f",{split}" if with_split else ""))
    (tmp_path / "data.csv").write_text("\n".join(rows) + "\n")
    return tmp_path / "data.csv"


@pytest.mark.parametrize("with_split", [True, False])
def test_manifest_loader(tmp_path, with_split):
    csv_path = write_manifest(tmp_path, with_split)
    data = prepare(DataParams(dataset="manifest", root=str(csv_path), image_size=10, val_fraction=0.2,
                              test_fraction=0.2))
    assert data.target_names == ["cat", "dog"] and data.group_names == ["a", "b"]
    assert data.images.shape == (40, 3, 10, 10)
    assert data.stats()["n_per_split"] == {"train": 24, "val": 8, "test": 8}


def test_manifest_errors_name_the_problem(tmp_path):
    csv_path = write_manifest(tmp_path, with_split=False)
    csv_path.write_text(csv_path.read_text().replace("imgs/3.jpg", "imgs/missing.jpg"))
    with pytest.raises(DataError, match="missing.jpg"):
        manifest.load(csv_path, 8)
    csv_path.write_text("file,label\nx.jpg,1\n")
    with pytest.raises(DataError, match="path,target,group"):
        manifest.load(csv_path, 8)


def test_group_missing_from_a_split_is_a_params_error(tmp_path):
    csv_path = write_manifest(tmp_path, with_split=True)
    rows = csv_path.read_text().splitlines()
    rows.append("imgs/0.jpg,cat,c,train")  # group 'c' exists only in train
    csv_path.write_text("\n".join(rows) + "\n")
    with pytest.raises(ParamsError) as info:
        prepare(DataParams(dataset="manifest", root=str(csv_path), image_size=8))
    err = info.value
    assert err.key == "data.group" and "['c']" in str(err) and "'val'" in str(err)


def test_intersectional_groups_from_utkface_race_and_gender(utk_tar):
    raw = utkface.load(utk_tar[0], target="race", group=["race", "gender"], size=8, age_bins=[20, 40, 60])
    assert raw.group_names[:3] == ["White/male", "White/female", "Black/male"] and len(raw.group_names) == 10
    assert np.bincount(raw.groups).tolist() == [12] * 10
    names = [(utkface.RACES[r], utkface.GENDERS[g]) for r, g in
             (utkface.parse_name(n)[2:0:-1] for n in sorted(p.name for p in utk_tar[1].glob("*.jpg"))
              if utkface.parse_name(n))]
    assert sorted("/".join(n) for n in names) == sorted(raw.group_names[g] for g in raw.groups)


def test_intersectional_groups_from_celeba_attributes(celeba_root):
    root, values = celeba_root
    raw = celeba.load(root, target="Blond_Hair", group=["Male", "Young"], size=8)
    male, young = CELEBA_ATTRIBUTES.index("Male"), CELEBA_ATTRIBUTES.index("Young")
    expected = [f"{'Male' if m == 1 else 'Female'}/{'Young' if y == 1 else 'not_Young'}"
                for m, y in values[:40, [male, young]]]
    assert [raw.group_names[g] for g in raw.groups] == expected


def test_intersectional_groups_from_several_manifest_columns(tmp_path):
    csv_path = write_manifest(tmp_path, with_split=True)
    rows = csv_path.read_text().splitlines()
    rows = ["path,target,site,sex,split"] + [
        ",".join(r.split(",")[:2] + [r.split(",")[2], "f" if i % 2 else "m", r.split(",")[3]])
        for i, r in enumerate(rows[1:])]
    csv_path.write_text("\n".join(rows) + "\n")
    raw = manifest.load(csv_path, 8, group=["site", "sex"])
    assert raw.group_names == ["a/f", "a/m", "b/f", "b/m"] and np.bincount(raw.groups).tolist() == [10] * 4
    with pytest.raises(DataError, match="lacks column.*'group'.*path,target,group"):
        manifest.load(csv_path, 8)


def test_group_list_is_validated():
    assert DataParams(dataset="utkface", root="x", target="race", group=["race", "gender"]).group == ["race", "gender"]
    with pytest.raises(ValueError, match="data.group.*distinct"):
        DataParams(dataset="utkface", root="x", group=["race", "race"])
    with pytest.raises(ValueError, match="data.group.*skin.*race, gender, age"):
        DataParams(dataset="utkface", root="x", group=["race", "skin"])


def test_manifest_from_a_spreadsheet_export(tmp_path):
    """A byte-order mark is accepted; ';' separators, blank and space-padded labels are refused with
    what was found and the CSV line."""
    csv_path = write_manifest(tmp_path, with_split=False)
    text = csv_path.read_text()
    csv_path.write_text("\ufeff" + text, encoding="utf-8")
    assert manifest.load(csv_path, 8).group_names == ["a", "b"]
    csv_path.write_text(text.replace(",", ";"))
    with pytest.raises(DataError, match="separated by ';'.*comma"):
        manifest.load(csv_path, 8)
    lines = text.splitlines()
    csv_path.write_text("\n".join(lines[:3] + [lines[3].replace(",cat,", ", cat,").replace(",dog,", ", dog,")] + lines[4:]))
    with pytest.raises(DataError, match=r"data.csv:4: the target label ' (cat|dog)' has leading or trailing spaces"):
        manifest.load(csv_path, 8)
    csv_path.write_text("\n".join(lines[:5] + [lines[5].rsplit(",", 1)[0] + ","] + lines[6:]))
    with pytest.raises(DataError, match="data.csv:6: the group cell is blank"):
        manifest.load(csv_path, 8)


def test_max_samples_below_the_number_of_strata_says_so(caplog):
    import logging

    with caplog.at_level(logging.WARNING):
        data = prepare(DataParams(max_samples=10))
    assert sum(data.stats()["n_per_split"].values()) > 10 and "keeps at least one" in caplog.text


def test_a_16_bit_png_keeps_its_grey_levels(tmp_path):
    """16-bit PNGs decoded to all white (Pillow's convert clips at 255)."""
    from fairprune.data.images import decode

    path = tmp_path / "deep.png"
    ramp = np.linspace(0, 65535, 16 * 16).reshape(16, 16).astype(np.uint16)
    Image.fromarray(ramp).save(path)
    assert Image.open(path).mode.startswith("I")
    decoded = decode(str(path), 16, channels=1, center_crop=False)[..., 0]
    np.testing.assert_array_equal(decoded, np.round(ramp / 257).astype(np.uint8))
    assert decode(str(path), 16, channels=3).mean() == pytest.approx(127.5, abs=1)


def test_exif_orientation_is_applied_before_the_centre_crop(tmp_path):
    """Phone photos arrive rotated: a JPEG stored sideways with EXIF orientation 6 must decode as it
    is shown, like the same picture saved upright."""
    from PIL import ImageOps

    from fairprune.data.images import decode

    stored = np.zeros((40, 20, 3), dtype=np.uint8)  # tall as stored: left half white
    stored[:, :10] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    sideways = tmp_path / "phone.jpg"
    Image.fromarray(stored).save(sideways, exif=exif, quality=95)
    upright = tmp_path / "upright.png"
    ImageOps.exif_transpose(Image.open(sideways)).save(upright)
    assert Image.open(upright).size == (40, 20)
    got, want = decode(str(sideways), 8, channels=1), decode(str(upright), 8, channels=1)
    assert want[:3].mean() > 200 and want[-3:].mean() < 50  # upright: the white half is on top
    assert got[:3].mean() > 200 and got[-3:].mean() < 50  # stored sideways: the white half was on the left
    assert np.abs(got.astype(int) - want.astype(int)).mean() <= 6  # JPEG (draft-scale decoding) noise only


def test_subsampling_and_imbalance_pick_their_images_before_any_is_decoded(tmp_path, monkeypatch):
    """data.max_samples and data.imbalance choose from the labels; only the kept images are decoded,
    and a file that cannot be decoded is named with its CSV line when its turn comes."""
    csv_path = write_manifest(tmp_path, with_split=True)
    decoded = []
    real_decode = manifest.decode
    monkeypatch.setattr(manifest, "decode", lambda path, size: decoded.append(path) or real_decode(path, size))
    params = DataParams(dataset="manifest", root=str(csv_path), image_size=8, max_samples=20,
                        imbalance={"groups": ["a"], "fraction": 0.5})
    data = prepare(params)
    assert len(decoded) == len(data.targets) < 20  # imbalance removed some of max_samples' 20
    assert torch_equal(data.images, prepare(params).images)  # the same images, in the same order
    (tmp_path / "imgs" / "0.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match=r"data.csv:2: cannot decode 'imgs/0.jpg'"):
        prepare(DataParams(dataset="manifest", root=str(csv_path), image_size=8, imbalance={"groups": [], "fraction": 1.0}))


def test_utkface_decodes_only_the_kept_images_in_the_archives_order(utk_tar):
    path, _ = utk_tar
    raw = utkface.load(path, target="gender", group="age", size=8, age_bins=[20, 40, 60])
    every = raw.images.decode()
    keep = np.arange(len(raw.targets)) % 3 == 1
    assert np.array_equal(raw.images[keep].decode(), every[keep])
