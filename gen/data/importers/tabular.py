"""Reading the label tables of the datasets, with errors that name the file and the column."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd


def read_table(path: str | Path, required: Sequence[str] = ()) -> pd.DataFrame:
    """Read a CSV as strings (no NaN), checking the required columns exist."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: label file not found")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a readable CSV ({e})") from None
    df.columns = [str(c).strip() for c in df.columns]
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {', '.join(missing)}; found {', '.join(df.columns)}")
    return df


def find_column(df: pd.DataFrame, candidates: Sequence[str], where: str, what: str,
                required: bool = True) -> str | None:
    """The first column whose lower-cased name is in `candidates` (or contains one of them)."""
    lower = {c.lower(): c for c in df.columns}
    for cand in candidates:
        if cand in lower:
            return lower[cand]
    for cand in candidates:
        for low, col in lower.items():
            if cand in low:
                return col
    if required:
        raise ValueError(f"{where}: no {what} column (looked for {', '.join(candidates)}; "
                         f"found {', '.join(df.columns)})")
    return None


def parse_quality(value: str, where: str) -> tuple[float | None, str]:
    """A 0–10 grade as float, or (None, problem) when it is empty, not a number or out of range."""
    s = str(value).strip()
    if not s:
        return None, ""
    try:
        q = float(s)
    except ValueError:
        return None, f"{where}: grade {s!r} is not a number"
    if not 0 <= q <= 10:
        return None, f"{where}: grade {q} is outside 0–10"
    return q, ""
