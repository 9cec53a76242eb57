"""Build the study's explicit stage graph from a StudyConfig.

Every experiment of the thesis (§4.3, §5) becomes a few `Stage`s; each stage runs a repo CLI
and writes `STUDY/runs/<stage name>/`. The list is in dependency order. Stage `meta` carries
what the report needs to place a run in a table (subset size, architecture, fraction, …).
"""

from __future__ import annotations

import copy
from dataclasses import asdict
from pathlib import Path
from typing import Any

from echosynth.classify.settings import ClassifierTrainConfig
from echosynth.gen.core.config import apply_overrides
from echosynth.gen.core.io import read_json
from echosynth.gen.prepare import PrepareConfig
from echosynth.pipelines.config import StudyConfig
from echosynth.pipelines.stages import Stage, accelerate_cmd, python_cmd

ABLATION_VARIANTS = {  # name -> gen/train.py settings (thesis Table 5.2)
    "learned-linear": {"diffusion.learn_sigma": True, "diffusion.schedule": "linear"},
    "learned-cosine": {"diffusion.learn_sigma": True, "diffusion.schedule": "cosine"},
    "fixed-linear": {"diffusion.learn_sigma": False, "diffusion.schedule": "linear"},
    "fixed-cosine": {"diffusion.learn_sigma": False, "diffusion.schedule": "cosine"},
}


def stage_config(section: Any, keys: dict[str, Any]) -> Any:
    """A copy of a study section's config with the (dotted) keys the study sets for one stage."""
    return apply_overrides(copy.deepcopy(section), keys, "the study")


class GraphBuilder:
    """Accumulates stages for one study directory."""

    def __init__(self, cfg: StudyConfig, study_dir: Path):
        self.cfg = cfg
        self.dir = Path(study_dir)
        self.runs = self.dir / "runs"
        self.stages: list[Stage] = []
        self.split_dir = Path(cfg.dataset.split_dir).resolve() if cfg.dataset.split_dir else self.dir / "data" / "split"
        self.split_stage: list[str] = []
        self.assumed_split = False  # a subset's file name was assumed: the split did not exist yet

    def add(self, name: str, command: list[str], *, inputs=(), outputs=(), deps=(), experiment: str = "",
            meta: dict | None = None, resume_args: list[str] | None = None, run_dir: Path | None = None,
            threads: int = 0, processes: int = 1) -> Stage:
        """Append a stage (run dir STUDY/runs/<name> unless given) of `processes` processes with `threads`
        (0 = the study's) OpenMP threads each."""
        threads = threads or self.cfg.threads
        env = {v: str(threads) for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")} if threads else {}
        # A stage on more cores than the others (threads × processes) takes as many job slots.
        slots = max(1, (threads or 1) * processes // max(self.cfg.threads, 1))
        s = Stage(name=name, command=command, run_dir=run_dir or self.runs / name, inputs=[Path(p) for p in inputs],
                  outputs=[Path(p) for p in outputs], deps=list(deps), experiment=experiment,
                  meta=meta or {}, resume_args=resume_args, env=env,
                  slots=slots)
        self.stages.append(s)
        return s

    def add_cli(self, name: str, script: str, cfg: Any, section: str, *, launch: int = 0, **kw: Any) -> Stage:
        """A stage running `script --config STUDY/configs/<name>.json`, the file holding `cfg` (written when the
        stage starts); under `accelerate launch` with `launch` processes when launch > 0."""
        file = self.dir / "configs" / f"{name}.json"
        command = (accelerate_cmd(script, "--config", file, num_processes=launch) if launch
                   else python_cmd(script, "--config", file))
        s = self.add(name, command, processes=max(launch, 1), **kw)
        s.settings, s.config_file, s.section = cfg, file, section
        return s

    # -- data ------------------------------------------------------------------------------

    def train_manifest(self, n: int) -> Path:
        """The nested subset's manifest; a size at or above the training split's is the whole split.

        Before the split exists the graph assumes train_<n>.csv (and says so in `assumed_split`):
        study.py builds the graph again once the data stages have run, for the real file names."""
        info = self.split_dir / "splits.json"
        if info.is_file():
            sizes = read_json(info).get("subsets", [])
            if sizes and n >= sizes[-1]:
                return self.split_dir / "train.csv"
        else:
            self.assumed_split = True
        return self.split_dir / f"train_{n}.csv"

    def data(self) -> None:
        ds = self.cfg.dataset
        if ds.split_dir:
            return  # the user's own split: nothing to build
        manifest = Path(ds.manifest).resolve() if ds.manifest else self.dir / "data" / "phantom" / "manifest.csv"
        deps = []
        if not ds.manifest:
            out = manifest.parent
            cfg = PrepareConfig(command="phantom", out=str(out), n=ds.phantom_n, size=ds.image_size, seed=ds.seed)
            self.add_cli("data-phantom", "gen/prepare.py", cfg, "dataset", outputs=[manifest], experiment="data",
                         run_dir=out)
            deps = ["data-phantom"]
        outputs = [self.split_dir / f for f in ("manifest.csv", "train.csv", "val.csv", "test.csv", "splits.json")]
        cfg = PrepareConfig(command="split", manifest=str(manifest), out=str(self.split_dir), subsets=list(ds.subsets),
                            seed=ds.seed, fractions=list(ds.fractions), holdout_sources=list(ds.holdout_sources))
        self.add_cli("data-split", "gen/prepare.py", cfg, "dataset", inputs=[manifest], outputs=sorted(set(outputs)),
                     deps=deps, experiment="data", run_dir=self.split_dir)
        self.split_stage = ["data-split"]

    # -- diffusion -------------------------------------------------------------------------

    def ddpm(self, name: str, subset: int, experiment: str, meta: dict, extra: dict | None = None) -> str:
        """A DDPM on the subset: ddpm.train, with `extra` (ablation variants, training-time checkpoints)."""
        c = self.cfg.ddpm
        run, data = self.runs / name, self.train_manifest(subset)
        cfg = stage_config(c.train, {**(extra or {}), "data": str(data), "run_dir": str(run),
                                     "mixed_precision": c.mixed_precision})
        self.add_cli(name, "gen/train.py", cfg, "ddpm.train", launch=c.num_processes, inputs=[data],
                     outputs=[run / "config.json", run / "stats.jsonl"], deps=self.split_stage,
                     experiment=experiment, meta={"subset": subset, "steps": cfg.steps, **meta},
                     resume_args=["--resume", "latest"], threads=c.threads)
        return name

    def sample(self, name: str, ddpm: str, per_class: int, experiment: str, meta: dict) -> Path:
        c = self.cfg.ddpm
        out = self.runs / name
        cfg = stage_config(c.sample, {"run": str(self.runs / ddpm), "per_class": per_class, "out": str(out),
                                      "mixed_precision": c.mixed_precision})
        stage = self.add_cli(name, "gen/sample.py", cfg, "ddpm.sample", launch=c.num_processes,
                             inputs=[self.runs / ddpm], outputs=[out / "samples.npz", out / "manifest.csv"],
                             deps=[ddpm], experiment=experiment, meta={"per_class": per_class, "ddpm": ddpm, **meta},
                             resume_args=[], threads=c.threads)  # resumes when re-run as it was
        stage.done_flag = (out / "sample.json", "complete")  # it refuses to re-run a complete dir
        return out

    def fidelity(self, name: str, sample_stage: str, experiment: str, meta: dict, subset: int,
                 extra: dict | None = None) -> None:
        """FID, KID, precision/recall, coverage of a sample dir against the subset's real images, with
        the validation split as the real-vs-real floor; class fidelity by the judge, sector fidelity, and
        the quality gate's verdict under the study's `gate:` thresholds (in the stage's config: changing
        them re-runs these stages)."""
        ev = self.cfg.evaluate
        out, fake = self.runs / name, self.runs / sample_stage
        real, holdout = self.train_manifest(subset), self.split_dir / "val.csv"
        keys = {**(extra or {}), "real": str(real), "holdout": str(holdout), "fake": str(fake), "out": str(out),
                **{f"gate.{k}": v for k, v in asdict(self.cfg.gate).items()}}
        inputs, deps = [real, holdout, fake / "samples.npz"], [sample_stage]
        if "echo" in ev.fidelity.features:
            clf = self.echo_classifier()
            keys["classifier"] = str(self.runs / clf)
            inputs.append(self.runs / clf)
            deps.append(clf)
        judge = self.judge()
        if judge:
            keys["judge"] = str(self.runs / judge)
            if judge not in deps:  # the judge may also be the echo-feature classifier
                inputs.append(self.runs / judge)
                deps.append(judge)
        self.add_cli(name, "evaluate/fidelity.py", stage_config(ev.fidelity, keys), "evaluate.fidelity",
                     inputs=inputs, outputs=[out / "fidelity.json"], deps=deps, experiment=experiment, meta=meta)

    def judge(self) -> str | None:
        """The class-fidelity judge's stage: a classifier on the full real training split (added once).

        The largest real classifier is the judge when that subset is the whole split and the judge's
        settings are classify.train's; otherwise `clf-judge-<arch>` trains one with evaluate.judge_train."""
        ev, arch = self.cfg.evaluate, self.cfg.evaluate.judge_arch or self.cfg.classify.archs[0]
        if not ev.judge:
            return None
        full, n = self.split_dir / "train.csv", self.cfg.dataset.subsets[-1]
        if (self.cfg.experiments.real and ev.judge_train == self.cfg.classify.train and self.train_manifest(n) == full
                and arch in self.cfg.classify.archs):
            return f"clf-real-n{n}-{arch}"
        if f"clf-judge-{arch}" not in {s.name for s in self.stages}:
            # one seed: evaluate/class_fidelity.py judges with the run's first seed
            self.classifier("clf-judge", f"real:{full}", [full], [], "judge", {"role": "judge"},
                            archs=[arch], seeds=self.cfg.classify.seeds[:1], base=ev.judge_train,
                            section="evaluate.judge_train")
        return f"clf-judge-{arch}"

    def echo_classifier(self) -> str:
        """The classifier whose penultimate features serve as echo-specific features: the judge (trained on
        the full real training split) when there is one, else the largest real subset's classifier."""
        return self.judge() or f"clf-real-n{self.cfg.dataset.subsets[-1]}-{self.cfg.classify.archs[0]}"

    def privacy(self, n: int, real: Path, fake: Path) -> None:
        """Nearest-neighbour audit of subset n's synthetic set against its training images; the
        filtered set (flagged images removed) goes to RUN/filtered/ as a sample directory."""
        ev = self.cfg.evaluate
        out = self.runs / f"privacy-n{n}"
        holdout = self.split_dir / "val.csv"
        keys: dict[str, Any] = {"train": str(real), "holdout": str(holdout), "fake": str(fake), "out": str(out),
                                "filter": str(out / "filtered")}
        inputs, deps = [real, holdout, fake], [f"sample-n{n}"]
        if ev.privacy_features and self.cfg.experiments.real:
            clf = self.echo_classifier()
            keys["classifier"] = str(self.runs / clf)
            inputs.append(self.runs / clf)
            deps.append(clf)
        if ev.membership:
            keys["run"] = str(self.runs / f"ddpm-n{n}")
            deps.append(f"ddpm-n{n}")
        self.add_cli(f"privacy-n{n}", "evaluate/privacy.py", stage_config(ev.privacy, keys), "evaluate.privacy",
                     inputs=inputs, outputs=[out / "privacy.json", out / "filtered" / "manifest.csv"],
                     deps=deps, experiment="synthetic", meta={"subset": n})

    # -- classifiers -----------------------------------------------------------------------

    def _tests(self) -> list[str]:
        tests = [f"test={self.split_dir / 'test.csv'}"]
        if self.cfg.dataset.holdout_sources:
            tests.append(f"shift={self.split_dir / 'shift.csv'}")
        return tests

    def classifier(self, name: str, spec: str, inputs: list[Path], deps: list[str], experiment: str,
                   meta: dict, archs: list[str] | None = None, seeds: list[int] | None = None,
                   base: ClassifierTrainConfig | None = None, section: str = "classify.train") -> None:
        """One classifier run per architecture (seeds inside the run), evaluated on val, test, shift. Every arm
        gets classify.train: with a step budget (`steps`), the same optimizer steps whatever its training set's size."""
        c = self.cfg.classify
        for arch in archs or c.archs:
            stage_name = f"{name}-{arch}"
            run = self.runs / stage_name
            cfg = stage_config(base or c.train, {"arch": arch, "train": spec, "val": f"val={self.split_dir / 'val.csv'}",
                                                 "test": self._tests(), "run_dir": str(run),
                                                 "seeds": list(seeds or c.seeds)})
            self.add_cli(stage_name, "classify/train.py", cfg, section, inputs=[self.split_dir / "val.csv", *inputs],
                         outputs=[run / "summary.json"], deps=self.split_stage + deps, experiment=experiment,
                         meta={"arch": arch, "spec": spec, **meta})

    # -- the grid --------------------------------------------------------------------------

    def build(self) -> list[Stage]:
        cfg, ex = self.cfg, self.cfg.experiments
        self.data()
        subsets = cfg.dataset.subsets
        need_synth = ex.synthetic or ex.mixing or ex.upsampling or ex.final or ex.embed
        for n in subsets if ex.real else []:  # first: the echo fidelity features use the largest one
            real = self.train_manifest(n)
            self.classifier(f"clf-real-n{n}", f"real:{real}", [real], [], "real", {"subset": n})
        for n in subsets if need_synth else []:
            real = self.train_manifest(n)
            ddpm = self.ddpm(f"ddpm-n{n}", n, "synthetic", {})
            samples = self.sample(f"sample-n{n}", ddpm, cfg.ddpm.per_class, "synthetic", {"subset": n})
            fake, fake_csv = samples / "samples.npz", samples / "manifest.csv"
            self.fidelity(f"fidelity-n{n}", f"sample-n{n}", "synthetic", {"subset": n}, n)
            self.privacy(n, real, fake)
            if ex.synthetic:
                self.classifier(f"clf-synth-n{n}", f"synthetic:{fake_csv}", [fake_csv], [f"sample-n{n}"],
                                "synthetic", {"subset": n, "filtered": False})
                if ex.privacy_filter:
                    kept = self.runs / f"privacy-n{n}" / "filtered" / "manifest.csv"
                    self.classifier(f"clf-synthfilt-n{n}", f"synthetic:{kept}", [kept], [f"privacy-n{n}"],
                                    "synthetic", {"subset": n, "filtered": True})
            for f in ex.mixing:
                self.classifier(f"clf-mix-n{n}-f{f:g}", f"mixed:{real}+{fake_csv}@{f:g}", [real, fake_csv],
                                [f"sample-n{n}"], "mixing", {"subset": n, "fraction": f})
            # The resampling baselines need no synthetic set, but they wait for it: started beside the DDPM
            # (which takes every job slot when it runs on several processes) they would keep it waiting for
            # two free slots at once, and the DDPM is the study's critical path.
            after = [f"sample-n{n}"]
            if ex.upsampling:
                self.classifier(f"clf-upmajority-n{n}", f"upsampled:{real}@majority", [real], after, "upsampling",
                                {"subset": n, "target": "majority"})
                # @N is per class: every class up to the synthetic set's per-class count (same total).
                k = cfg.ddpm.per_class
                self.classifier(f"clf-upsynth-n{n}", f"upsampled:{real}@{k}", [real], after, "upsampling",
                                {"subset": n, "target": k, "target_total": k * self._n_classes()})
            if ex.smote:
                self.classifier(f"clf-smote-n{n}", f"smote:{real}", [real], after, "upsampling",
                                {"subset": n, "target": "smote"})
        self.diffusion_curves()
        self.final_and_features()
        return self.stages

    def _n_classes(self) -> int:
        info = self.split_dir / "splits.json"
        if info.is_file():
            return max(1, len(read_json(info).get("by_view", {})) or 4)
        return 4  # the thesis' four views (phantom default); the report uses the real count

    def diffusion_curves(self) -> None:
        """Item 5: the variance × schedule ablation (FID at two sample sizes, Table 5.2), FID vs
        sample size (Fig 5.1) and FID vs training steps (Fig 5.2), through fidelity.py's curves."""
        cfg, ex = self.cfg, self.cfg.experiments
        n = ex.ablation_subset or cfg.dataset.subsets[-1]
        k = self._n_classes()
        if ex.ablation:
            for variant, flags in ABLATION_VARIANTS.items():
                ddpm = self.ddpm(f"ablation-{variant}", n, "ablation", {"variant": variant}, flags)
                s = f"ablation-{variant}-sample"
                self.sample(s, ddpm, -(-max(ex.ablation_samples) // k), "ablation", {"variant": variant, "subset": n})
                self.fidelity(f"ablation-{variant}-fidelity", s, "ablation", {"variant": variant, "subset": n}, n,
                              {"curve": True, "curve_sizes": list(ex.ablation_samples)})
        if ex.sample_size:
            base = f"ddpm-n{n}"
            if base not in {s.name for s in self.stages}:
                self.ddpm(base, n, "synthetic", {})
            self.sample("samplesize-sample", base, -(-max(ex.sample_size) // k), "sample-size", {"subset": n})
            self.fidelity("samplesize-fidelity", "samplesize-sample", "sample-size", {"subset": n}, n,
                          {"curve": True, "curve_sizes": list(ex.sample_size)})
        if ex.training_time:
            every = min(ex.training_time)
            ddpm = self.ddpm("trainingtime-ddpm", n, "training-time", {},
                             {"steps": max(ex.training_time), "checkpoint_every": every, "keep_every": every})
            out, real, holdout = self.runs / "trainingtime-fidelity", self.train_manifest(n), self.split_dir / "val.csv"
            keys = {"features": ["inception"], "real": str(real), "holdout": str(holdout), "out": str(out),
                    "run": str(self.runs / ddpm), "checkpoints": ",".join(map(str, ex.training_time)),
                    "n": cfg.ddpm.per_class * k, "sampling_steps": cfg.ddpm.sample.sampling_steps}
            self.add_cli("trainingtime-fidelity", "evaluate/fidelity.py", stage_config(cfg.evaluate.fidelity, keys),
                         "evaluate.fidelity", inputs=[real, holdout, self.runs / ddpm], outputs=[out / "fidelity.json"],
                         deps=[ddpm], experiment="training-time", meta={"subset": n})

    def final_and_features(self) -> None:
        """Items 6 and 7: the final model on test + domain shift, feature maps, quality grader."""
        cfg, ex = self.cfg, self.cfg.experiments
        n = cfg.dataset.subsets[-1]
        real, fake = self.train_manifest(n), self.runs / f"sample-n{n}" / "manifest.csv"
        names = {s.name for s in self.stages}
        if ex.final and f"sample-n{n}" in names:
            self.classifier(f"final-n{n}", f"mixed:{real}+{fake}@{ex.final_fraction:g}", [real, fake],
                            [f"sample-n{n}"], "final", {"subset": n, "fraction": ex.final_fraction})
        if ex.embed and f"sample-n{n}" in names:
            arch = cfg.classify.archs[0]
            clf = f"clf-real-n{n}-{arch}"
            if clf in {s.name for s in self.stages}:
                out = self.runs / f"embed-n{n}"
                keys = {"classifier": str(self.runs / clf), "real": str(real), "fake": str(fake), "out": str(out)}
                self.add_cli(f"embed-n{n}", "evaluate/embed.py", stage_config(cfg.evaluate.embed, keys), "evaluate.embed",
                             inputs=[self.runs / clf, real, fake], outputs=[out / "embedding.csv"],
                             deps=[clf, f"sample-n{n}"], experiment="features", meta={"subset": n, "arch": arch})
        if ex.quality:
            run = self.runs / f"quality-n{n}"
            keys = {"task": "quality", "train": f"real:{real}", "val": f"val={self.split_dir / 'val.csv'}",
                    "test": [f"test={self.split_dir / 'test.csv'}"], "run_dir": str(run), "seeds": list(cfg.classify.seeds)}
            self.add_cli(f"quality-n{n}", "classify/train.py", stage_config(ex.quality_train, keys),
                         "experiments.quality_train", inputs=[real, self.split_dir / "val.csv"],
                         outputs=[run / "summary.json"], deps=self.split_stage, experiment="quality",
                         meta={"subset": n, "task": "quality", "spec": f"real:{real}"})
        if cfg.report:
            # Inputs: every stage's run dir, so the report is rebuilt whenever any stage re-ran.
            done = [s.name for s in self.stages]
            self.add("report", python_cmd("reports/build.py", self.dir), inputs=[s.run_dir for s in self.stages],
                     deps=done,
                     outputs=[self.dir / "report.html"], experiment="report", run_dir=self.dir / "report")


def build_graph(cfg: StudyConfig, study_dir: Path) -> list[Stage]:
    """The stage list for a config, in dependency order."""
    return GraphBuilder(cfg, study_dir).build()
