"""Manifest validation (every error case), round trip, dataset and run directories."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from echosynth.gen.core.io import read_json, sha1_file, write_text
from echosynth.gen.core.rundir import init_run_dir, next_run_dir, start_run
from echosynth.gen.data.dataset import ManifestDataset, to_uint8
from echosynth.gen.data.manifest import ManifestError, read_manifest, write_manifest


def _make(tmp_path, n=6, overrides=None) -> pd.DataFrame:
    (tmp_path / "img").mkdir(parents=True, exist_ok=True)
    rows = []
    rng = np.random.default_rng(0)
    for i in range(n):
        p = tmp_path / "img" / f"{i}.png"
        Image.fromarray(rng.integers(0, 255, (20, 24), dtype=np.uint8)).save(p)
        rows.append({"path": f"img/{i}.png", "view": ["A2C", "A4C", "PLAX"][i % 3], "source": "tmed2",
                     "patient_id": f"p{i // 2}", "split": "train", "frame": "", "quality": 5.5,
                     "sha1": sha1_file(p)})
    df = pd.DataFrame(rows).astype({"quality": object})
    for (row, col), value in (overrides or {}).items():
        df.loc[row, col] = value
    return df


def _write(tmp_path, df):
    path = tmp_path / "manifest.csv"
    df.to_csv(path, index=False)
    return path


def test_valid_manifest_round_trip(tmp_path):
    df = _make(tmp_path).assign(meta_extra="x")
    m = read_manifest(_write(tmp_path, df), decode_images=True, check_sha1=True)
    assert len(m) == 6 and m.classes() == ["A2C", "A4C", "PLAX"]
    write_manifest(m.df, tmp_path / "again.csv")
    again = read_manifest(tmp_path / "again.csv")
    assert list(again.df.columns)[:8] == ["path", "view", "source", "patient_id", "split", "frame", "quality", "sha1"]
    assert (again.df["meta_extra"] == "x").all()


@pytest.mark.parametrize("overrides, pattern", [
    ({(2, "view"): "A5C"}, r"row 4 \(img/2.png\): unknown view 'A5C'"),
    ({(1, "split"): "training"}, r"row 3 \(img/1.png\): unknown split 'training'"),
    ({(0, "quality"): 11}, r"row 2 \(img/0.png\): quality '?11"),
    ({(0, "quality"): "good"}, r"row 2 \(img/0.png\): quality 'good'"),
    ({(3, "path"): "img/2.png"}, r"row 5 \(img/2.png\): duplicate path \(first on row 4\)"),
    ({(1, "split"): "val"}, r"patient 'p0' spans splits \['train', 'val'\]"),
    ({(5, "path"): "img/missing.png"}, r"row 7 \(img/missing.png\): file not found"),
])
def test_each_validation_error_names_row_and_file(tmp_path, overrides, pattern):
    path = _write(tmp_path, _make(tmp_path, overrides=overrides))
    with pytest.raises(ManifestError, match=pattern):
        read_manifest(path)


def test_missing_column(tmp_path):
    path = _write(tmp_path, _make(tmp_path).drop(columns=["patient_id"]))
    with pytest.raises(ManifestError, match="missing column.*patient_id"):
        read_manifest(path)


def test_unreadable_image_and_sha1_mismatch(tmp_path):
    df = _make(tmp_path)
    write_text(tmp_path / "img" / "4.png", "not a png")
    path = _write(tmp_path, df)
    read_manifest(path)  # existence alone passes
    with pytest.raises(ManifestError, match=r"row 6 \(img/4.png\): unreadable image"):
        read_manifest(path, decode_images=True)
    with pytest.raises(ManifestError, match=r"row 6 \(img/4.png\): sha1 mismatch"):
        read_manifest(path, check_sha1=True)


def test_all_errors_reported_together(tmp_path):
    path = _write(tmp_path, _make(tmp_path, overrides={(0, "view"): "X", (5, "quality"): 12}))
    with pytest.raises(ManifestError, match="2 problem") as e:
        read_manifest(path)
    assert "row 2" in str(e.value) and "row 7" in str(e.value)


def test_dataset_shapes_ranges_and_workers(tmp_path):
    path = _write(tmp_path, _make(tmp_path))
    ds = ManifestDataset(path, size=16, classes=["A2C", "A4C", "PLAX", "PSAX"])
    x, y = ds[2]
    assert x.shape == (1, 16, 16) and x.dtype == torch.float32
    assert -1.0 <= x.min() and x.max() <= 1.0 and y == 2
    loader = torch.utils.data.DataLoader(ds, batch_size=3, num_workers=2)
    xs = torch.cat([b[0] for b in loader])
    pre = ManifestDataset(path, size=16, classes=["A2C", "A4C", "PLAX", "PSAX"], preload=True)
    assert torch.equal(xs, torch.stack([pre[i][0] for i in range(len(pre))]))
    assert np.array_equal(to_uint8(xs), np.stack([pre.uint8(i) for i in range(len(pre))]))
    assert ds.class_counts() == {"A2C": 2, "A4C": 2, "PLAX": 2, "PSAX": 0}


def test_dataset_rejects_views_outside_classes_and_empty_split(tmp_path):
    path = _write(tmp_path, _make(tmp_path))
    with pytest.raises(ManifestError, match=r"views \['PLAX'\] are not among the classes"):
        ManifestDataset(path, size=8, classes=["A2C", "A4C"])
    with pytest.raises(ManifestError, match="no rows for split='test'"):
        ManifestDataset(path, size=8, split="test")


def test_run_dirs_numbered_with_config_first(tmp_path):
    a = start_run(tmp_path, "gen", "tiny phantom/32px", {"lr": 1}, seed=3, inputs={"data": tmp_path / "nope"})
    b = next_run_dir(tmp_path, "classify")
    assert a.name == "00000-gen-tiny-phantom-32px" and b.name == "00001-classify"
    assert read_json(a / "config.json") == {"lr": 1}
    prov = read_json(a / "provenance.json")
    assert prov["seed"] == 3 and prov["world_size"] == 1 and "torch" in prov["packages"] and prov["hostname"]
    assert prov["inputs"]["data"]["sha1"] is None  # missing input recorded, not crashed on
    assert (a / "config.json").stat().st_mtime_ns <= (a / "provenance.json").stat().st_mtime_ns


def test_init_run_dir_refuses_and_overwrites(tmp_path):
    run = init_run_dir(tmp_path / "r", {"a": 1})
    (run / "out.txt").write_text("data")
    with pytest.raises(FileExistsError, match="--overwrite"):
        init_run_dir(run, {"a": 1})
    assert (run / "out.txt").exists()
    init_run_dir(run, {"a": 2}, overwrite=True)
    assert not (run / "out.txt").exists() and read_json(run / "config.json") == {"a": 2}


def test_parse_manifest_ref():
    from pathlib import Path

    from echosynth.gen.data.manifest import parse_manifest_ref

    assert parse_manifest_ref("d/m.csv") == (Path("d/m.csv"), {})
    assert parse_manifest_ref("d/m.csv#split=train,subset=1000") == (Path("d/m.csv"), {"split": "train", "subset": "1000"})
    with pytest.raises(ValueError, match="bad manifest filter 'view=A2C'"):
        parse_manifest_ref("m.csv#view=A2C")
    with pytest.raises(ValueError, match="empty manifest path"):
        parse_manifest_ref("#split=train")


# ----------------------------------------------------------------------------------------------
# Hostile input: paths leaving the data set, changed files, empty manifests, decompression bombs


@pytest.mark.parametrize("bad", ["../outside.png", "img/../../outside.png", "/tmp/outside.png"])
def test_paths_leaving_the_manifest_folder_are_refused_by_line(tmp_path, bad):
    data = tmp_path / "data"
    df = _make(data)
    df.loc[3, "path"] = bad
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "outside.png")
    path = _write(data, df)
    with pytest.raises(ManifestError, match=r"row 5 \(.*outside.png\): path leaves the manifest's directory") as e:
        read_manifest(path)
    assert "--allow_outside_paths" in str(e.value) and "data_roots.json" in str(e.value)
    if not bad.startswith("/"):  # the explicit opt-in accepts it
        m = read_manifest(path, allow_outside=True)
        assert m.abspath(3).resolve() == (tmp_path / "outside.png").resolve()


def test_data_roots_file_allows_a_declared_folder_only(tmp_path):
    from echosynth.gen.data.manifest import data_roots, write_data_roots

    other = tmp_path / "other"
    other.mkdir()
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(other / "x.png")
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "secret.png")
    data = tmp_path / "data"
    df = _make(data)
    df.loc[0, "path"] = "../other/x.png"
    path = _write(data, df)
    write_data_roots(data, [other])
    roots, allowed = data_roots(data)
    assert [r.resolve() for r in roots] == [other.resolve()] and not allowed
    assert read_manifest(path).abspath(0).is_file()
    df.loc[1, "path"] = "../secret.png"  # not under the declared root
    _write(data, df)
    with pytest.raises(ManifestError, match=r"row 3 \(../secret.png\): path leaves"):
        read_manifest(path)
    write_text(data / "data_roots.json", '{"allow_outside": true}')
    assert len(read_manifest(path)) == 6
    write_text(data / "data_roots.json", '{"allow_outside": "yes"}')
    with pytest.raises(ManifestError, match="data_roots.json: not a valid"):
        read_manifest(path)


def test_zero_byte_and_header_only_manifests(tmp_path):
    (tmp_path / "m.csv").write_bytes(b"")
    with pytest.raises(ManifestError, match=r"m.csv: the manifest is empty \(0 bytes\)"):
        read_manifest(tmp_path / "m.csv")
    (tmp_path / "m.csv").write_bytes(b"\n\n")
    with pytest.raises(ManifestError, match=r"m.csv: not a readable CSV"):
        read_manifest(tmp_path / "m.csv")


def test_verify_sha1_names_the_csv_line_after_filtering(tmp_path):
    df = _make(tmp_path)
    df.loc[[0, 1], "split"] = "val"  # patient p0 → val, so filter(split=train) drops lines 2-3
    path = _write(tmp_path, df)
    Image.fromarray(np.full((20, 24), 7, np.uint8)).save(tmp_path / "img" / "4.png")  # changed after writing
    m = read_manifest(path).filter(split="train")
    assert m.line(0) == 4
    with pytest.raises(ManifestError, match=r"manifest.csv: line 6 \(img/4.png\): sha1 mismatch") as e:
        m.verify_sha1()
    assert "1 file(s) fail verification" in str(e.value)
    read_manifest(path).filter(split="val").verify_sha1()  # untouched rows pass
    with pytest.raises(ManifestError, match="line 6"):
        ManifestDataset(path, size=8, split="train", verify=True)
    assert len(ManifestDataset(path, size=8, split="train")) == 4  # verification is opt-in there


def bomb_png(path, side: int = 20000) -> None:
    """A real PNG header claiming side×side pixels with a tiny body: Pillow refuses it at open."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    body = zlib.compress(b"\0" * (side + 1) * 4)  # 4 rows; decoding stops long before a full image
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b""))


@pytest.mark.parametrize("side", [20000, 10000])  # over 2× Pillow's limit (error) and over 1× (warning)
def test_decompression_bomb_is_refused_by_name(tmp_path, side):
    from echosynth.gen.data.manifest import ImageError, load_gray

    bomb_png(tmp_path / "bomb.png", side)
    with pytest.raises(ImageError, match=r"bomb.png: refused as a possible decompression bomb"):
        load_gray(tmp_path / "bomb.png")
    df = _make(tmp_path)
    bomb_png(tmp_path / "img" / "2.png", side)
    path = _write(tmp_path, df)
    ds = ManifestDataset(path, size=8)
    with pytest.raises(ManifestError, match=r"img/2.png: refused as a possible decompression bomb"):
        ds[2]
    with pytest.raises(ManifestError, match=r"row 4 \(img/2.png\): unreadable image .*decompression bomb"):
        read_manifest(path, decode_images=True)
