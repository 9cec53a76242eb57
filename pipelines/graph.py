"""Build the study's explicit stage graph from a StudyConfig.

Every experiment of the thesis (§4.3, §5) becomes a few `Stage`s; each stage runs a repo CLI
and writes `STUDY/runs/<stage name>/`. The list is in dependency order. Stage `meta` carries
what the report needs to place a run in a table (subset size, architecture, fraction, …).
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from echosynth.gen.core.io import read_json
from echosynth.pipelines.config import StudyConfig, kv
from echosynth.pipelines.stages import Stage, accelerate_cmd, python_cmd

ABLATION_VARIANTS = {  # name -> gen/train.py flags (thesis Table 5.2)
    "learned-linear": {"diffusion.learn_sigma": "true", "diffusion.schedule": "linear"},
    "learned-cosine": {"diffusion.learn_sigma": "true", "diffusion.schedule": "cosine"},
    "fixed-linear": {"diffusion.learn_sigma": "false", "diffusion.schedule": "linear"},
    "fixed-cosine": {"diffusion.learn_sigma": "false", "diffusion.schedule": "cosine"},
}


def _flags(d: dict) -> list[str]:
    out: list[str] = []
    for k, v in d.items():
        out += [f"--{k}", ",".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)]
    return out


REPO = Path(__file__).resolve().parent.parent


def repo_path(p: str) -> Path:
    """A config file path: absolute, relative to the working dir, or relative to the repo root."""
    path = Path(p)
    if path.is_absolute() or path.exists():
        return path.resolve()
    return REPO / path


class GraphBuilder:
    """Accumulates stages for one study directory."""

    def __init__(self, cfg: StudyConfig, study_dir: Path):
        self.cfg = cfg
        self.dir = Path(study_dir)
        self.runs = self.dir / "runs"
        self.stages: list[Stage] = []
        self.split_dir = Path(cfg.dataset.split_dir).resolve() if cfg.dataset.split_dir else self.dir / "data" / "split"
        self.split_stage: list[str] = []

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

    # -- data ------------------------------------------------------------------------------

    def train_manifest(self, n: int) -> Path:
        """The nested subset's manifest; a size at or above the training split's is the whole split.

        Before the split exists the graph assumes train_<n>.csv; study.py rebuilds the graph once
        the data stages have run, so the real file names are used from then on."""
        info = self.split_dir / "splits.json"
        if info.is_file():
            sizes = read_json(info).get("subsets", [])
            if sizes and n >= sizes[-1]:
                return self.split_dir / "train.csv"
        return self.split_dir / f"train_{n}.csv"

    def data(self) -> None:
        ds = self.cfg.dataset
        if ds.split_dir:
            return  # the user's own split: nothing to build
        manifest = Path(ds.manifest).resolve() if ds.manifest else self.dir / "data" / "phantom" / "manifest.csv"
        deps = []
        if not ds.manifest:
            out = manifest.parent
            self.add("data-phantom", python_cmd("gen/prepare.py", "phantom", "--out", out, "--n", ds.phantom_n,
                                                "--size", ds.image_size, "--seed", ds.seed),
                     outputs=[manifest], experiment="data", run_dir=out)
            deps = ["data-phantom"]
        outputs = [self.split_dir / f for f in ("manifest.csv", "train.csv", "val.csv", "test.csv", "splits.json")]
        self.add("data-split", python_cmd("gen/prepare.py", "split", "--manifest", manifest, "--out", self.split_dir,
                                          "--subsets", ",".join(map(str, ds.subsets)), "--seed", ds.seed,
                                          "--fractions", ",".join(f"{f:g}" for f in ds.fractions),
                                          "--holdout_sources", ",".join(ds.holdout_sources)),
                 inputs=[manifest], outputs=sorted(set(outputs)), deps=deps, experiment="data",
                 run_dir=self.split_dir)
        self.split_stage = ["data-split"]

    # -- diffusion -------------------------------------------------------------------------

    def ddpm(self, name: str, subset: int, steps: int, extra: dict, experiment: str, meta: dict) -> str:
        c = self.cfg.ddpm
        run = self.runs / name
        preset = repo_path(c.preset)
        data = self.train_manifest(subset)
        cmd = accelerate_cmd("gen/train.py", "--config", preset, "--data", data, "--run_dir", run, "--steps", steps,
                             *_flags({"mixed_precision": c.mixed_precision, **kv(c.train_args), **extra}),
                             num_processes=c.num_processes)
        self.add(name, cmd, inputs=[preset, data],
                 outputs=[run / "config.json", run / "stats.jsonl"], deps=self.split_stage,
                 experiment=experiment, meta={"subset": subset, "steps": steps, **meta}, resume_args=["--resume", "latest"],
                 threads=c.threads, processes=c.num_processes)
        return name

    def sample(self, name: str, ddpm: str, per_class: int, experiment: str, meta: dict,
               extra: dict | None = None) -> Path:
        c = self.cfg.ddpm
        out = self.runs / name
        cmd = accelerate_cmd("gen/sample.py", "--run", self.runs / ddpm, "--per_class", per_class,
                             "--steps", c.sample_steps, "--out", out,
                             *_flags({"mixed_precision": c.mixed_precision, **kv(c.sample_args), **(extra or {})}),
                             num_processes=c.num_processes)
        stage = self.add(name, cmd, inputs=[self.runs / ddpm], outputs=[out / "samples.npz", out / "manifest.csv"],
                         deps=[ddpm], experiment=experiment, meta={"per_class": per_class, "ddpm": ddpm, **meta},
                         resume_args=[], threads=c.threads, processes=c.num_processes)  # resumes when re-run as it was
        stage.done_flag = (out / "sample.json", "complete")  # it refuses to re-run a complete dir
        return out

    def fidelity(self, name: str, sample_stage: str, experiment: str, meta: dict, subset: int,
                 extra: dict | None = None) -> None:
        """FID, KID, precision/recall, coverage of a sample dir against the subset's real images, with
        the validation split as the real-vs-real floor; class fidelity by the judge, sector fidelity, and
        the quality gate's verdict under the study's `gate:` thresholds (in the command: changing them
        re-runs these stages)."""
        ev = self.cfg.evaluate
        out, fake = self.runs / name, self.runs / sample_stage
        real, holdout = self.train_manifest(subset), self.split_dir / "val.csv"
        args = {"features": ",".join(ev.fidelity_features), "curve": "false", **kv(ev.fidelity_args), **(extra or {}),
                **{f"gate.{k}": v for k, v in asdict(self.cfg.gate).items()}}
        inputs, deps = [real, holdout, fake / "samples.npz"], [sample_stage]
        if "echo" in ev.fidelity_features:
            clf = self.echo_classifier()
            args["classifier"] = self.runs / clf
            inputs.append(self.runs / clf)
            deps.append(clf)
        judge = self.judge()
        if judge:
            args["judge"] = self.runs / judge
            if judge not in deps:  # the judge may also be the echo-feature classifier
                inputs.append(self.runs / judge)
                deps.append(judge)
        self.add(name, python_cmd("evaluate/fidelity.py", "--real", real, "--holdout", holdout, "--fake", fake,
                                  "--out", out, *_flags(args)),
                 inputs=inputs, outputs=[out / "fidelity.json"], deps=deps, experiment=experiment, meta=meta)

    def judge(self) -> str | None:
        """The class-fidelity judge's stage: a classifier on the full real training split (added once).

        The largest real classifier is the judge when that subset is the whole split and no
        judge_args are set; otherwise `clf-judge-<arch>` trains one with judge_args."""
        ev, arch = self.cfg.evaluate, self.cfg.evaluate.judge_arch or self.cfg.classify.archs[0]
        if not ev.judge:
            return None
        full, n = self.split_dir / "train.csv", self.cfg.dataset.subsets[-1]
        if (self.cfg.experiments.real and not ev.judge_args and self.train_manifest(n) == full
                and arch in self.cfg.classify.archs):
            return f"clf-real-n{n}-{arch}"
        if f"clf-judge-{arch}" not in {s.name for s in self.stages}:
            # one seed: evaluate/class_fidelity.py judges with the run's first seed
            self.classifier("clf-judge", f"real:{full}", [full], [], "judge", {"role": "judge"}, kv(ev.judge_args),
                            archs=[arch], seeds=self.cfg.classify.seeds[:1])
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
        args: dict = {"progress": "false", **kv(ev.privacy_args)}
        inputs, deps = [real, holdout, fake], [f"sample-n{n}"]
        if ev.privacy_features and self.cfg.experiments.real:
            clf = self.echo_classifier()
            args["classifier"] = self.runs / clf
            inputs.append(self.runs / clf)
            deps.append(clf)
        if ev.membership:
            args["run"] = self.runs / f"ddpm-n{n}"
            deps.append(f"ddpm-n{n}")
        self.add(f"privacy-n{n}", python_cmd("evaluate/privacy.py", "--train", real, "--holdout", holdout,
                                             "--fake", fake, "--out", out, "--filter", out / "filtered", *_flags(args)),
                 inputs=inputs, outputs=[out / "privacy.json", out / "filtered" / "manifest.csv"],
                 deps=deps, experiment="synthetic", meta={"subset": n})

    # -- classifiers -----------------------------------------------------------------------

    def classifier(self, name: str, spec: str, inputs: list[Path], deps: list[str], experiment: str,
                   meta: dict, extra: dict | None = None, archs: list[str] | None = None,
                   seeds: list[int] | None = None) -> None:
        """One classifier run per architecture (seeds inside the run), evaluated on val, test, shift. Every arm
        gets the preset's budget and the same train_args: with a step budget (`steps=`), the same optimizer
        steps whatever its training set's size."""
        c = self.cfg.classify
        preset = [repo_path(c.preset)] if c.preset else []
        for arch in archs or c.archs:
            stage_name = f"{name}-{arch}"
            run = self.runs / stage_name
            tests = [f"test={self.split_dir / 'test.csv'}"]
            if self.cfg.dataset.holdout_sources:
                tests.append(f"shift={self.split_dir / 'shift.csv'}")
            cmd = python_cmd("classify/train.py", *(["--config", *preset] if preset else []), "--arch", arch,
                             "--train", spec, "--val", f"val={self.split_dir / 'val.csv'}", "--test", ",".join(tests),
                             "--run_dir", run, "--seeds", ",".join(map(str, seeds or c.seeds)),
                             *_flags({**kv(c.train_args), **(extra or {})}))
            self.add(stage_name, cmd, inputs=[*preset, self.split_dir / "val.csv", *inputs],
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
            ddpm = self.ddpm(f"ddpm-n{n}", n, cfg.ddpm.steps, {}, "synthetic", {})
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
            sizes = ",".join(map(str, ex.ablation_samples))
            for variant, flags in ABLATION_VARIANTS.items():
                ddpm = self.ddpm(f"ablation-{variant}", n, cfg.ddpm.steps, flags, "ablation", {"variant": variant})
                s = f"ablation-{variant}-sample"
                self.sample(s, ddpm, -(-max(ex.ablation_samples) // k), "ablation", {"variant": variant, "subset": n})
                self.fidelity(f"ablation-{variant}-fidelity", s, "ablation", {"variant": variant, "subset": n}, n,
                              {"curve": "true", "curve_sizes": sizes})
        if ex.sample_size:
            base = f"ddpm-n{n}"
            if base not in {s.name for s in self.stages}:
                self.ddpm(base, n, cfg.ddpm.steps, {}, "synthetic", {})
            self.sample("samplesize-sample", base, -(-max(ex.sample_size) // k), "sample-size", {"subset": n})
            self.fidelity("samplesize-fidelity", "samplesize-sample", "sample-size", {"subset": n}, n,
                          {"curve": "true", "curve_sizes": ",".join(map(str, ex.sample_size))})
        if ex.training_time:
            every = min(ex.training_time)
            ddpm = self.ddpm("trainingtime-ddpm", n, max(ex.training_time),
                             {"checkpoint_every": every, "keep_every": every}, "training-time", {})
            out, real, holdout = self.runs / "trainingtime-fidelity", self.train_manifest(n), self.split_dir / "val.csv"
            ev = self.cfg.evaluate
            args = {"features": "inception", "curve": "false", **kv(ev.fidelity_args), "run": self.runs / ddpm,
                    "checkpoints": ",".join(map(str, ex.training_time)), "n": cfg.ddpm.per_class * k,
                    "sampling_steps": cfg.ddpm.sample_steps}
            self.add("trainingtime-fidelity", python_cmd("evaluate/fidelity.py", "--real", real, "--holdout", holdout,
                                                         "--out", out, *_flags(args)),
                     inputs=[real, holdout, self.runs / ddpm], outputs=[out / "fidelity.json"], deps=[ddpm],
                     experiment="training-time", meta={"subset": n})

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
                self.add(f"embed-n{n}", python_cmd("evaluate/embed.py", "--classifier", self.runs / clf,
                                                   "--real", real, "--fake", fake, "--out", out,
                                                   *_flags({"progress": "false", **kv(cfg.evaluate.embed_args)})),
                         inputs=[self.runs / clf, real, fake], outputs=[out / "embedding.csv"],
                         deps=[clf, f"sample-n{n}"], experiment="features", meta={"subset": n, "arch": arch})
        if ex.quality:
            preset, run = repo_path(ex.quality_preset), self.runs / f"quality-n{n}"
            tests = f"test={self.split_dir / 'test.csv'}"
            cmd = python_cmd("classify/train.py", "--config", preset, "--task", "quality", "--train", f"real:{real}",
                             "--val", f"val={self.split_dir / 'val.csv'}", "--test", tests, "--run_dir", run,
                             "--seeds", ",".join(map(str, cfg.classify.seeds)), *_flags(kv(ex.quality_args)))
            self.add(f"quality-n{n}", cmd, inputs=[preset, real, self.split_dir / "val.csv"],
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
