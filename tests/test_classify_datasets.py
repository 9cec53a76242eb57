"""Training-set builders (real, synthetic, mixed, upsampled, SMOTE), SPEC parsing, leakage, augmentation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from echosynth.classify.augment import apply_affine, epoch_params
from echosynth.classify.datasets import (
    SpecError,
    balanced_indices,
    build_training_set,
    check_no_leakage,
    class_weights,
    parse_eval_arg,
    parse_spec,
)
from echosynth.gen.data.image_sets import ImageSet, ManifestRef, load_image_set
from echosynth.gen.data.manifest import (
    VIEWS,
    data_roots,
    read_manifest,
    rebase,
    write_data_roots,
    write_manifest,
)

CLASSES = list(VIEWS)
PER_CLASS_SYNTH = 12


def make_synthetic_manifest(phantom_dir, out_dir, per_class: int = PER_CLASS_SYNTH):
    """Phantom images relabelled as a balanced `synthetic` set (the DDPM's samples stand-in)."""
    m = read_manifest(phantom_dir / "manifest.csv")
    df = m.df.groupby("view").head(per_class)
    df = rebase(df, m.root, out_dir).reset_index(drop=True)
    df["source"] = "synthetic"
    df["patient_id"] = [f"synthetic-{i}" for i in range(len(df))]
    df["split"] = ""
    df["seed"] = range(len(df))
    write_data_roots(out_dir, [m.root])  # its rows point back into the phantom's folder
    return write_manifest(df, out_dir / "synthetic.csv")


@pytest.fixture(scope="module")
def synth_csv(phantom_dir, tmp_path_factory):
    return make_synthetic_manifest(phantom_dir, tmp_path_factory.mktemp("synth"))


def counts_of(path) -> dict[str, int]:
    vc = pd.read_csv(path)["view"].value_counts()
    return {c: int(vc.get(c, 0)) for c in CLASSES}


def test_parse_spec_grammar():
    s = parse_spec("mixed:a/train_1000.csv+s/manifest.csv@0.3")
    assert s.kind == "mixed" and s.arg == "0.3" and [r.path.name for r in s.sources] == ["train_1000.csv", "manifest.csv"]
    assert parse_spec("data/train.csv") == parse_spec("real:data/train.csv")
    s = parse_spec("upsampled:split/manifest.csv#split=train,subset=1000@majority")
    assert s.sources[0] == ManifestRef(s.sources[0].path, "train", "1000") and s.arg == "majority"
    assert parse_spec("smote:x.csv@250").arg == "250" and parse_spec("synthetic:x.csv@8").arg == "8"
    for bad in ("mixed:a.csv@0.3", "mixed:a.csv+b.csv", "mixed:a.csv+b.csv@lots", "real:a.csv@3",
                "upsampled:a.csv@zero", "synthetic:a.csv@majority", "real:a.csv+b.csv", "real:a.csv#fold=2"):
        with pytest.raises(SpecError):
            parse_spec(bad)
    assert parse_eval_arg("shift=data/x.csv") == ("shift", parse_eval_arg("data/x.csv")[1])
    assert parse_eval_arg("data/x.csv")[0] == "x"


def test_real_and_nested_subset(split_dir):
    s = build_training_set(f"real:{split_dir / 'train_60.csv'}", CLASSES, 32)
    assert s.class_counts() == counts_of(split_dir / "train_60.csv")
    assert s.images.dtype == np.uint8 and s.images.shape == (60, 32, 32)
    same = build_training_set(f"{split_dir / 'manifest.csv'}#split=train,subset=60", CLASSES, 32)
    assert same.class_counts() == s.class_counts() and sorted(same.paths) == sorted(s.paths)
    assert build_training_set(f"real:{split_dir / 'train_60.csv'}", CLASSES, 48).images.shape[1:] == (48, 48)


def test_synthetic_per_class(synth_csv):
    s = build_training_set(f"synthetic:{synth_csv}", CLASSES, 32)
    assert s.class_counts() == {c: PER_CLASS_SYNTH for c in CLASSES}
    s = build_training_set(f"synthetic:{synth_csv}@5", CLASSES, 32, seed=1)
    assert s.class_counts() == {c: 5 for c in CLASSES} and set(s.sources) == {"synthetic"}


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.8])
def test_mixed_adds_class_balanced_synthetic_fraction(split_dir, synth_csv, fraction):
    real = counts_of(split_dir / "train_60.csv")
    s = build_training_set(f"mixed:{split_dir / 'train_60.csv'}+{synth_csv}@{fraction}", CLASSES, 32)
    n_syn = round(fraction * 60)
    assert len(s) == 60 + n_syn and (s.sources == "synthetic").sum() == n_syn
    added = {c: s.class_counts()[c] - real[c] for c in CLASSES}
    assert sum(added.values()) == n_syn and max(added.values()) - min(added.values()) <= 1
    assert len(set(np.array(s.paths)[s.sources == "synthetic"])) == n_syn  # drawn without replacement


def test_mixed_needs_enough_synthetic(split_dir, synth_csv):
    with pytest.raises(ValueError, match="needs .* but has only"):
        build_training_set(f"mixed:{split_dir / 'train_120.csv'}+{synth_csv}@1.0", CLASSES, 32)


def test_upsampled_to_majority_and_to_n(split_dir):
    real = counts_of(split_dir / "train_60.csv")
    s = build_training_set(f"upsampled:{split_dir / 'train_60.csv'}", CLASSES, 32)
    assert s.class_counts() == {c: max(real.values()) for c in CLASSES}
    assert set(s.paths) == set(build_training_set(str(split_dir / "train_60.csv"), CLASSES, 32).paths)  # only repeats
    s = build_training_set(f"upsampled:{split_dir / 'train_60.csv'}@25", CLASSES, 32)
    assert s.class_counts() == {c: max(25, real[c]) for c in CLASSES}  # never drops images


def test_smote_balances_with_new_images(split_dir):
    real = counts_of(split_dir / "train_60.csv")
    s = build_training_set(f"smote:{split_dir / 'train_60.csv'}", CLASSES, 32)
    top = max(real.values())
    assert s.class_counts() == {c: top for c in CLASSES}
    new = s.sources == "smote"
    assert new.sum() == 4 * top - 60 and s.images.dtype == np.uint8
    # SMOTE images interpolate two same-class images: inside the class's pixel range, and new.
    orig = s.images[~new].reshape((~new).sum(), -1).astype(int)
    for i in np.flatnonzero(new)[:10]:
        cls = s.labels[i]
        same = orig[s.labels[~new] == cls]
        x = s.images[i].reshape(-1).astype(int)
        assert (x >= same.min(0) - 1).all() and (x <= same.max(0) + 1).all()
    assert np.isnan(s.quality[new]).all()


def test_empty_class_is_a_clear_error(split_dir, tmp_path):
    df = pd.read_csv(split_dir / "train.csv", dtype=str, keep_default_na=False)
    df = rebase(df[df["view"] != "PSAX"], split_dir, tmp_path)
    write_data_roots(tmp_path, [split_dir, *data_roots(split_dir)[0]])  # the split points into the phantom
    write_manifest(df, tmp_path / "no_psax.csv")
    with pytest.raises(ValueError, match=r"no images of class\(es\) \['PSAX'\].*allow_empty_classes"):
        build_training_set(str(tmp_path / "no_psax.csv"), CLASSES, 32)
    s = build_training_set(str(tmp_path / "no_psax.csv"), CLASSES, 32, allow_empty_classes=True)
    assert s.class_counts()["PSAX"] == 0 and s.classes == CLASSES  # labels keep the fixed class list


def test_no_patient_leakage(split_dir, synth_csv):
    train = build_training_set(f"mixed:{split_dir / 'train.csv'}+{synth_csv}@0.1", CLASSES, 32)
    evals = {n: load_image_set(split_dir / f"{n}.csv", CLASSES, 32) for n in ("val", "test", "shift")}
    for ev in evals.values():
        assert not set(train.patient_ids[train.sources != "synthetic"]) & set(ev.patient_ids)
    check_no_leakage(train, evals)  # synthetic rows are exempt
    leaky = ImageSet.concat("leaky", [train, evals["val"].take(np.arange(3))])
    with pytest.raises(ValueError, match="patient leakage.*'val'"):
        check_no_leakage(leaky, evals)


def test_class_weights_and_balanced_sampler():
    labels = np.array([0] * 80 + [1] * 15 + [2] * 5)
    w = class_weights(labels, 4)
    assert w[3] == 0 and np.allclose(w[:3] * np.bincount(labels, minlength=4)[:3], 100 / 3)
    idx = balanced_indices(labels, 30000, np.random.default_rng(0))
    share = np.bincount(labels[idx], minlength=3) / 30000
    assert np.allclose(share, 1 / 3, atol=0.02)


def test_augmentation_identity_determinism_and_no_flip():
    x = torch.linspace(-1, 1, 32).repeat(32, 1).reshape(1, 1, 32, 32)  # left-right ramp
    ident = torch.tensor([[0.0, 0.0, 0.0, 1.0]])
    assert torch.allclose(apply_affine(x, ident), x, atol=1e-5)
    shifted = apply_affine(x, torch.tensor([[0.0, 0.5, 0.0, 1.0]]))  # a quarter of the width
    assert torch.allclose(shifted[..., 8:], x[..., :-8], atol=1e-4) and (shifted[..., :4] == -1).all()
    p = epoch_params(0, 3, 500, rotate_deg=10, shift=0.1, zoom=0.08)
    assert torch.equal(p, epoch_params(0, 3, 500, 10, 0.1, 0.08)) and not torch.equal(p, epoch_params(0, 4, 500, 10, 0.1, 0.08))
    assert p[:, 0].abs().max() <= np.radians(10) and p[:, 1:3].abs().max() <= 0.2 and (p[:, 3] - 1).abs().max() <= 0.08
    out = apply_affine(x.repeat(500, 1, 1, 1), p)
    # No flips: the ramp still increases left to right in every augmented image.
    assert (out[:, 0, 16, 20] > out[:, 0, 16, 12]).all()
