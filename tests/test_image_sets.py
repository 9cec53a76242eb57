"""gen/data/image_sets.py: one loader for manifests and sample directories, the pixels each old path gave, clear errors."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from echosynth.gen.core.io import save_png
from echosynth.gen.data.dataset import ManifestDataset
from echosynth.gen.data.image_sets import (
    ImageSet,
    ManifestRef,
    load_image_set,
    resize_images,
    write_sample_dir,
)
from echosynth.gen.data.manifest import (
    VIEWS,
    ManifestError,
    load_gray,
    read_manifest,
    write_manifest,
)

CLASSES = list(VIEWS)


def _pil_decode(files, size):
    """Each file through Pillow directly: grey, then bicubic to size×size when it differs."""
    out = []
    for f in files:
        with Image.open(f) as im:
            im = im.convert("L")
            if size is not None and im.size != (size, size):
                im = im.resize((size, size), Image.BICUBIC)
            out.append(np.asarray(im, dtype=np.uint8))
    return np.stack(out)


@pytest.mark.parametrize("size", [None, 32, 24, 40])
@pytest.mark.parametrize("filters", ["", "#split=train", "#split=train,subset=60"])
def test_pixels_match_both_old_decode_paths(split_dir, size, filters):
    ref = f"{split_dir / 'manifest.csv'}{filters}"
    s = load_image_set(ref, CLASSES, size, workers=2)
    m = read_manifest(split_dir / "manifest.csv")
    kw = dict(p.split("=") for p in filters[1:].split(",") if p)
    m = m.filter(split=kw.get("split"), subset=kw.get("subset"))
    files = [m.root / p for p in m.df["path"]]
    assert len(s) == len(m) > 0 and s.images.dtype == np.uint8
    np.testing.assert_array_equal(s.images, _pil_decode(files, size))
    np.testing.assert_array_equal(s.images, np.stack([load_gray(f, size) for f in files]))  # evaluate's old path
    if size is not None:  # classify's old path (ManifestDataset.uint8) always had a size
        ds = ManifestDataset(m, size=size, classes=CLASSES)
        np.testing.assert_array_equal(s.images, np.stack([ds.uint8(i) for i in range(len(ds))]))
        np.testing.assert_array_equal(s.labels, ds.labels)
    assert list(s.views) == list(m.df["view"]) and list(s.paths) == [str(f) for f in files]
    assert list(s.patient_ids) == list(m.df["patient_id"]) and list(s.sources) == list(m.df["source"])
    np.testing.assert_array_equal(s.quality, m.df["quality"].to_numpy(dtype=float))
    assert s.origin == str(split_dir / "manifest.csv") + filters


def test_a_manifest_ref_and_its_string_load_the_same(split_dir):
    ref = ManifestRef(split_dir / "manifest.csv", "train", "60")
    a, b = load_image_set(ref, CLASSES, 32), load_image_set(f"{ref.path}#split=train,subset=60", CLASSES, 32)
    assert ManifestRef.parse(f"{ref.path}#split=train,subset=60") == ref
    np.testing.assert_array_equal(a.images, b.images)
    assert a.origin == b.origin and a.fingerprint() == b.fingerprint()


def test_class_list_semantics(split_dir):
    fixed = load_image_set(split_dir / "test.csv", ["PSAX", "A4C", "A2C", "PLAX", "SC"], 32)
    assert fixed.classes == ["PSAX", "A4C", "A2C", "PLAX", "SC"] and fixed.class_counts()["SC"] == 0
    assert [fixed.classes[c] for c in fixed.present_classes()] == ["PSAX", "A4C", "A2C", "PLAX"]
    df = pd.read_csv(split_dir / "test.csv")
    assert list(fixed.views) == list(df["view"])
    assert list(fixed.labels) == [fixed.classes.index(v) for v in df["view"]]
    present = load_image_set(split_dir / "test.csv")
    assert present.classes == CLASSES  # the views present, in canonical order
    for v in CLASSES:
        np.testing.assert_array_equal(present.of_view(v), np.flatnonzero(df["view"] == v))
    assert len(present.of_view("SC")) == 0
    with pytest.raises(ManifestError, match=r"test\.csv: views \['PLAX', 'PSAX'\] are not among the classes "
                                            r"\['A2C', 'A4C'\] \(e\.g\. rows \[\d+"):
        load_image_set(split_dir / "test.csv", ["A2C", "A4C"], 32)


def test_take_concat_describe_and_fingerprint(split_dir):
    s = load_image_set(split_dir / "val.csv", CLASSES, 32, name="val")
    assert s.name == "val" and load_image_set(split_dir / "val.csv").name == "val"
    h = hashlib.sha1(str(s.images.shape).encode())
    h.update(s.images.tobytes())
    assert s.fingerprint() == h.hexdigest()
    idx = np.array([3, 3, 0])
    t = s.take(idx, "t")
    assert t.classes == s.classes and list(t.paths) == [s.paths[i] for i in idx] and np.array_equal(t.images, s.images[idx])
    both = ImageSet.concat("both", [s, t])
    assert len(both) == len(s) + 3 and list(both.views) == list(s.views) + list(t.views)
    assert both.class_counts() == {c: s.class_counts()[c] + t.class_counts()[c] for c in CLASSES}
    d = s.describe()
    assert d["n"] == len(s) and d["image_size"] == 32 and d["path"] == str(split_dir / "val.csv")
    assert d["per_class"] == pd.read_csv(split_dir / "val.csv")["view"].value_counts().sort_index().to_dict()
    before = s.fingerprint()
    s.images = 255 - s.images  # replaced pixels are another feature-cache key
    assert s.fingerprint() != before
    other = ImageSet.from_views("o", s.images[:2], ["SC", "A2C"])
    assert other.classes == ["A2C", "SC"] and list(other.sources) == ["synthetic"] * 2
    with pytest.raises(ValueError, match="same classes"):
        ImageSet.concat("bad", [s, other])


def test_sample_directory_forms(split_dir, tmp_path):
    test = load_image_set(split_dir / "test.csv")
    no_plax = test.take(np.flatnonzero(test.views != "PLAX"))
    out = write_sample_dir(tmp_path / "samples", no_plax)
    with np.load(out / "samples.npz") as z:
        assert list(z["classes"]) == ["A2C", "A4C", "PSAX"]  # the views present
        np.testing.assert_array_equal(z["images"], no_plax.images)
    for form in (out, out / "samples.npz", out / "manifest.csv", f"{out}#split="):
        s = load_image_set(form)
        np.testing.assert_array_equal(s.images, no_plax.images)
        assert list(s.views) == list(no_plax.views) and s.classes == ["A2C", "A4C", "PSAX"]
        assert s.name == "samples"
    npz = load_image_set(out, CLASSES, 40)
    assert npz.classes == CLASSES and npz.class_counts()["PLAX"] == 0 and npz.origin == str(out / "samples.npz")
    assert list(npz.paths[:2]) == [f"{out / 'samples.npz'}:0", f"{out / 'samples.npz'}:1"]
    np.testing.assert_array_equal(npz.seeds, np.full(len(npz), -1))
    # the npz images resized in memory equal the PNGs decoded at that size
    np.testing.assert_array_equal(npz.images, load_image_set(out / "manifest.csv", size=40).images)
    np.testing.assert_array_equal(npz.images, resize_images(no_plax.images, 40))
    np.testing.assert_array_equal(npz.images, _pil_decode([out / p for p in read_manifest(out / "manifest.csv").df["path"]], 40))


def test_clear_errors(split_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.csv: manifest not found; expected a manifest CSV"):
        load_image_set(tmp_path / "nope.csv")
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(FileNotFoundError, match="holds neither samples.npz nor manifest.csv"):
        load_image_set(tmp_path / "empty_dir")
    with pytest.raises(ManifestError, match=r"the image set is empty \(no rows for split='val' subset=None\)"):
        load_image_set(f"{split_dir / 'train.csv'}#split=val", CLASSES, 32)
    with pytest.raises(ValueError, match="bad manifest filter"):
        load_image_set(f"{split_dir / 'train.csv'}#view=A2C")
    np.savez(tmp_path / "s.npz", images=np.zeros((2, 8, 8), np.uint8), labels=np.zeros(2, int), classes=np.array(["A2C"]))
    with pytest.raises(ValueError, match="filters apply to manifests"):
        load_image_set(f"{tmp_path / 's.npz'}#split=val")
    np.savez(tmp_path / "nolabels.npz", images=np.zeros((2, 8, 8), np.uint8))
    with pytest.raises(ValueError, match=r"nolabels\.npz: missing array\(s\) labels, classes"):
        load_image_set(tmp_path / "nolabels.npz")
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match=r"bad\.npz: not a readable \.npz"):
        load_image_set(tmp_path / "bad.npz")
    with pytest.raises(ManifestError, match=r"s\.npz: views \['A2C'\] are not among the classes \['PLAX'\] \(e\.g\. images \[0, 1\]"):
        load_image_set(tmp_path / "s.npz", ["PLAX"])


def test_unreadable_and_odd_sized_images_are_named_by_row(tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    for i, side in enumerate((16, 16, 20)):
        save_png(tmp_path / f"im{i}.png", rng.integers(0, 256, (side, side), dtype=np.uint8))
        rows.append({"path": f"im{i}.png", "view": "A4C", "source": "x", "patient_id": f"p{i}", "split": "",
                     "frame": "", "quality": "", "sha1": ""})
    csv = write_manifest(pd.DataFrame(rows), tmp_path / "m.csv")
    with pytest.raises(ManifestError, match=r"m\.csv: images differ in size.*\(20, 20\) on row 4\); pass --size N"):
        load_image_set(csv)
    assert load_image_set(csv, size=16).images.shape == (3, 16, 16)
    (tmp_path / "im1.png").write_bytes(b"garbage")
    with pytest.raises(ManifestError, match=r"m\.csv: row 3: cannot read image .*im1\.png"):
        load_image_set(csv, size=16)
    from test_manifest import bomb_png

    bomb_png(tmp_path / "im0.png")
    with pytest.raises(ManifestError, match=r"m\.csv: row 2: .*im0\.png: refused as a possible decompression bomb"):
        load_image_set(csv, size=16)


def test_the_image_set_layer_imports_no_torch():
    code = "import sys, echosynth.gen.data.image_sets\nassert 'torch' not in sys.modules, sorted(m for m in sys.modules if 'torch' in m)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
