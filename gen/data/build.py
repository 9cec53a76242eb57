"""Writing datasets to disk: the phantom dataset, patient splits with nested subsets, summaries."""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from echosynth.gen.core.io import (
    fingerprint,
    png_bytes,
    read_json,
    sha1_bytes,
    write_bytes,
    write_json,
)
from echosynth.gen.data import phantom
from echosynth.gen.data.manifest import (
    Manifest,
    ManifestError,
    data_roots,
    read_manifest,
    rebase,
    sort_views,
    write_data_roots,
    write_manifest,
)
from echosynth.gen.data.splits import assign_splits, subset_column, subset_ranks

# ----------------------------------------------------------------------------------------------
# Summaries


def summary_table(df: pd.DataFrame) -> pd.DataFrame:
    """Counts per view (rows) × source/split (columns), with totals."""
    cols = ["source", "split"] if (df["split"] != "").any() else ["source"]
    table = df.pivot_table(index="view", columns=cols, values="path", aggfunc="count", fill_value=0)
    table = table.reindex(sort_views(table.index))
    table["total"] = table.sum(axis=1)
    table.loc["total"] = table.sum(axis=0)
    return table.astype(int)


def summary_dict(df: pd.DataFrame) -> dict:
    """JSON-friendly counts: per view × source × split, per view, per source, per split."""
    counts = df.groupby(["view", "source", "split"]).size()
    return {
        "n_images": int(len(df)),
        "n_patients": int(df["patient_id"].nunique()),
        "by_view_source_split": [
            {"view": v, "source": s, "split": sp, "count": int(n)} for (v, s, sp), n in counts.items()
        ],
        "by_view": {k: int(v) for k, v in df["view"].value_counts().items()},
        "by_source": {k: int(v) for k, v in df["source"].value_counts().items()},
        "by_split": {k: int(v) for k, v in df["split"].value_counts().items()},
    }


def print_summary(df: pd.DataFrame, title: str) -> None:
    """Print the view × source × split table."""
    with pd.option_context("display.width", 200, "display.max_columns", 50):
        print(f"{title}: {len(df)} images, {df['patient_id'].nunique()} patients")
        print(summary_table(df).to_string())


# ----------------------------------------------------------------------------------------------
# Phantom dataset


def _die_with_parent(parent: int) -> None:
    """Pool initializer: the worker is killed when the process that started it dies (Linux's
    PR_SET_PDEATHSIG), so a `prepare.py` killed with -9 leaves no rendering workers behind."""
    import ctypes
    import signal

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: the workers exit when they next find the call queue broken
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def _render_chunk(args: tuple) -> list[str]:
    """Render and write one chunk of phantom items (in a worker process); return their sha1s."""
    items, seed, size, out = args
    sha1s = []
    for item in items:
        path = Path(out) / _phantom_relpath(item)
        if path.is_file():  # resumed run: deterministic output, reuse it
            sha1s.append(sha1_bytes(path.read_bytes()))
            continue
        data = png_bytes(phantom.render(item, seed, size))
        write_bytes(path, data)
        sha1s.append(sha1_bytes(data))
    return sha1s


def _phantom_relpath(item) -> str:
    return f"images/{item.source}/{item.view}/{item.index:06d}.png"


def build_phantom(out: str | os.PathLike, n: int, size: int = 112, seed: int = 0,
                  workers: int = 0, overwrite: bool = False, progress: bool = True) -> Manifest:
    """Render n phantom frames to OUT/images and write OUT/manifest.csv and OUT/summary.json.

    Resumable: an interrupted run (no manifest yet, same settings in OUT/.prepare.json) keeps
    the images already written; the manifest is written last and atomically.
    """
    out = Path(out)
    settings = {"kind": "phantom", "n": n, "size": size, "seed": seed}
    claim_output(out, ".prepare.json", settings, overwrite, "a phantom dataset")
    items = phantom.plan(n, seed=seed)
    workers = workers or min(os.cpu_count() or 1, 8)
    chunk = max(1, min(256, len(items) // (workers * 4) or 1))
    chunks = [items[i:i + chunk] for i in range(0, len(items), chunk)]
    jobs = [(c, seed, size, str(out)) for c in chunks]
    sha1s: list[str] = []
    bar = tqdm(total=len(items), desc="phantom", unit="img", disable=not progress)
    if workers == 1:
        results = map(_render_chunk, jobs)
    else:
        pool = ProcessPoolExecutor(max_workers=workers, initializer=_die_with_parent, initargs=(os.getpid(),))
        results = pool.map(_render_chunk, jobs)
    for res in results:
        sha1s.extend(res)
        bar.update(len(res))
    bar.close()
    if workers != 1:
        pool.shutdown()
    df = pd.DataFrame({
        "path": [_phantom_relpath(it) for it in items],
        "view": [it.view for it in items],
        "source": [it.source for it in items],
        "patient_id": [f"{it.source}-{it.patient_id}" for it in items],
        "split": "",
        "frame": [it.frame if it.frame is not None else pd.NA for it in items],
        "quality": [round(float(it.quality), 3) for it in items],
        "sha1": sha1s,
    })
    write_manifest(df, out / "manifest.csv")
    write_json(out / "summary.json", {"settings": settings, **summary_dict(df)})
    (out / ".prepare.json").unlink(missing_ok=True)
    return read_manifest(out / "manifest.csv", check_files=False)


def claim_output(out: Path, marker: str, settings: dict, overwrite: bool, what: str) -> None:
    """Create OUT for a resumable build whose settings OUT/MARKER records.

    A non-empty OUT is wiped with `overwrite`, resumed when its marker holds equal settings (the
    half-written files of the killed run removed), and refused otherwise, naming the settings
    that differ. `what` names the build in the messages ("an import").
    """
    path = out / marker
    if out.exists() and any(out.iterdir()):
        if overwrite:
            shutil.rmtree(out)
        elif path.is_file():
            old = read_json(path)
            if old != settings:
                diff = [f"{k}: {old.get(k)!r} -> {settings.get(k)!r}" for k in sorted(set(old) | set(settings))
                        if old.get(k) != settings.get(k)]
                raise FileExistsError(f"{out} holds {what} made with other settings ({'; '.join(diff)}); "
                                      "pass --overwrite to redo it or choose another --out")
            for tmp in out.rglob(".*.tmp"):  # half-written files of the killed run (echosynth.gen.core.io.atomic_path)
                tmp.unlink(missing_ok=True)
            return  # interrupted earlier with the same settings: resume
        else:
            raise FileExistsError(f"{out} already exists and is not {what} output; pass --overwrite to replace it")
    out.mkdir(parents=True, exist_ok=True)
    write_json(path, settings)


# ----------------------------------------------------------------------------------------------
# Splits


def build_splits(manifest: str | os.PathLike, out: str | os.PathLike, subsets: Sequence[int],
                 seed: int = 0, fractions: Sequence[float] = (0.8, 0.1, 0.1),
                 holdout_sources: Sequence[str] = ("camus", "unity"), overwrite: bool = False,
                 allow_outside: bool = False) -> dict:
    """Write patient-level split manifests and nested training subsets into OUT.

    Outputs: manifest.csv (every row, with `split` and `subset`), train.csv, val.csv, test.csv,
    shift.csv (holdout sources), train_<N>.csv for each nested subset, splits.json (last),
    data_roots.json (the input data set's folder, which the rows point into). Every image's
    SHA-1 is checked first. Resumable like the phantom: an interrupted run is redone by the
    same command (OUT/.prepare.json holds its settings).
    """
    if any(int(s) < 1 for s in subsets):
        raise ValueError(f"subsets must be positive image counts, got {list(subsets)}")
    out = Path(out)
    src = Path(manifest).resolve()
    if src.parent == out.resolve() or out.resolve() in src.parents:
        raise ValueError(f"--out {out} must not hold the input manifest {manifest}")
    m = read_manifest(manifest, check_sha1=True, allow_outside=allow_outside)
    settings = {"kind": "split", "manifest": str(src), "manifest_sha1": fingerprint(src), "subsets": sorted(map(int, subsets)),
                "seed": seed, "fractions": list(fractions), "holdout_sources": list(holdout_sources)}
    if (out / "manifest.csv").exists() and not overwrite and not (out / ".prepare.json").is_file():
        raise FileExistsError(f"{out / 'manifest.csv'} already exists; pass --overwrite to replace it")
    claim_output(out, ".prepare.json", settings, overwrite, "a split")
    roots, allowed = data_roots(m.root)
    write_data_roots(out, [m.root, *roots], allow_outside=allow_outside or allowed)
    df = rebase(m.df, m.root, out)
    df["split"] = assign_splits(df, seed=seed, fractions=fractions, holdout_sources=holdout_sources)
    train = df[df["split"] == "train"]
    if train.empty:
        raise ManifestError(f"{manifest}: no training rows after holding out sources {list(holdout_sources)}")
    sizes = sorted({int(s) for s in subsets if int(s) < len(train)} | {len(train)})
    dropped = sorted(int(s) for s in subsets if int(s) > len(train))
    ranks = subset_ranks(train, seed=seed)
    df["subset"] = pd.Series(pd.NA, index=df.index, dtype="Int64")
    df.loc[train.index, "subset"] = subset_column(ranks, sizes).astype("Int64")
    written = {"manifest": write_manifest(df, out / "manifest.csv")}
    for name in ("train", "val", "test", "shift"):
        part = df[df["split"] == name]
        if len(part):
            written[name] = write_manifest(part, out / f"{name}.csv")
    for size in sizes[:-1]:
        written[f"train_{size}"] = write_manifest(df[df["subset"] <= size], out / f"train_{size}.csv")
    info = {
        "seed": seed, "fractions": list(fractions), "holdout_sources": list(holdout_sources),
        "subsets": sizes, "dropped_subsets": dropped,
        "files": {k: str(Path(v).name) for k, v in written.items()},
        "subset_counts": {
            str(s): {k: int(v) for k, v in df[df["subset"] <= s]["view"].value_counts().items()} for s in sizes
        },
        **summary_dict(df),
    }
    write_json(out / "splits.json", info)
    (out / ".prepare.json").unlink(missing_ok=True)
    return info

