"""The quality gate: is a synthetic set usable as evidence? Three checks on a fidelity.json.

- class fidelity: above-chance ratio ≥ min_class_ratio (evaluate/class_fidelity.py);
- FID ≤ max_fid_over_floor × the real-vs-real floor, both at the floor's sample size
  (`fake_at_floor_n` against `floor`, so the small-sample bias is the same on both sides), with the
  echo features when fidelity.json has them (the issue's targets are stated for them), else Inception;
- sector fidelity: outside-sector mean ≤ outside_factor × the real value + outside_margin (0–255 scale).

A set passes when no check fails; a check without its input is "n/a" and said so. A set with no
fidelity result at all, or no check that could run, is "unverified": nothing rests on it as evidence.
Pure Python on JSON: evaluate/fidelity.py writes the verdict into fidelity.json, where the report reads it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from echosynth.gen.core.config import field


@dataclass
class GateConfig:
    """Thresholds a synthetic set must meet before findings may rest on it."""

    min_class_ratio: float = field(0.5, help="class fidelity: least above-chance ratio (acc_syn−1/K)/(bacc_real−1/K)",
                                   min=-1.0, max=1.0)
    max_fid_over_floor: float = field(10.0, help="FID at most this many times the real-vs-real floor", min=1.0)
    fid_features: str = field("auto", choices=("auto", "echo", "inception"),
                              help="features of the FID check (auto: echo if computed, else inception)")
    outside_factor: float = field(3.0, help="sector: outside-sector mean at most this × the real value (+ margin)",
                                  min=1.0)
    outside_margin: float = field(5.0, help="sector: margin on the 0-255 scale (5 = 5/255)", min=0.0, max=255.0)


def _num(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _check(name: str, value: float | None, limit: float | None, text: str, missing: str, at_least: bool = False) -> dict:
    ok = None if value is None or limit is None else bool(value >= limit) if at_least else bool(value <= limit)
    return {"name": name, "value": value, "limit": limit, "ok": ok, "text": text if ok is not None else missing}


def fid_pair(fid_json: dict | None, features: str = "auto") -> tuple[str | None, float | None, float | None, int | None]:
    """(features, fake FID at the floor's n, floor FID, n) from fidelity.json; Nones where absent."""
    metrics = (fid_json or {}).get("metrics") or {}
    order = ["echo", "inception"] if features == "auto" else [features]
    for name in order:
        o = (metrics.get(name) or {}).get("overall") or {}
        if o:
            fake = _num((o.get("fake_at_floor_n") or {}).get("fid"))
            n = o.get("n_floor")
            if fake is None:
                fake, n = _num((o.get("fake") or {}).get("fid")), (o.get("fake") or {}).get("n_fake")
            return name, fake, _num((o.get("floor") or {}).get("fid")), n
    return None, None, None, None


def gate_verdict(fid_json: dict | None, cfg: GateConfig | None = None) -> dict:
    """{"status": pass|fail|unverified, "checks": [{name, value, limit, ok, text}], "failed": [texts]}."""
    cfg = cfg or GateConfig()
    if not fid_json:
        return {"status": "unverified", "checks": [], "failed": [],
                "summary": "no fidelity result: the set was never scored"}
    cf = fid_json.get("class_fidelity") or {}
    ratio = _num(cf.get("ratio"))
    checks = [_check("class fidelity", ratio, cfg.min_class_ratio,
                     f"above-chance ratio {_f(ratio)} (need ≥ {cfg.min_class_ratio:g}; judge accuracy "
                     f"{_f(cf.get('acc_syn'))} on synthetic vs {_f(cf.get('bacc_real'))} balanced on real, "
                     f"chance {_f(cf.get('chance'))})",
                     "class fidelity n/a (" + (("; ".join(cf.get("notes") or []) or "no ratio") if cf else
                                               "no judge result: the fidelity run had no --judge") + ")",
                     at_least=True)]
    name, fake, floor, n = fid_pair(fid_json, cfg.fid_features)
    limit = None if floor is None else cfg.max_fid_over_floor * floor
    checks.append(_check("FID", fake, limit,
                         f"FID {_f(fake, 1)} with {name} features at n={n} (need ≤ {cfg.max_fid_over_floor:g} × "
                         f"real-vs-real floor {_f(floor, 1)} = {_f(limit, 1)})",
                         f"FID check n/a ({'no ' + cfg.fid_features + ' FID' if name is None else 'no real-vs-real floor'})"))
    sf = fid_json.get("sector_fidelity") or {}
    out_fake, out_real = _num(sf.get("outside_mean_fake")), _num(sf.get("outside_mean_real"))
    limit = None if out_real is None else cfg.outside_factor * out_real + cfg.outside_margin
    checks.append(_check("sector fidelity", out_fake, limit,
                         f"outside-sector mean {_f(out_fake, 1)}/255 (need ≤ {cfg.outside_factor:g} × real "
                         f"{_f(out_real, 1)}/255 + {cfg.outside_margin:g}/255 = {_f(limit, 1)}/255)",
                         "sector fidelity n/a (" + ("; ".join(sf.get("notes") or []) or "not computed") + ")"))
    failed = [c["text"] for c in checks if c["ok"] is False]
    ran = [c for c in checks if c["ok"] is not None]
    status = "fail" if failed else "pass" if ran else "unverified"
    summary = ("; ".join(failed) if failed else
               "passes " + ", ".join(c["name"] for c in ran) if ran else "no check could run")
    return {"status": status, "checks": checks, "failed": failed, "summary": summary, "thresholds": asdict(cfg)}


def _f(x: Any, digits: int = 3) -> str:
    v = _num(x)
    return "—" if v is None else f"{v:.{digits}f}"
