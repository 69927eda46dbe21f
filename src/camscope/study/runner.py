"""Run a study stage by stage into one run folder.

Layout of RUN/:
  study.yaml            the study as given; study.resolved.json as validated (defaults filled in)
  stages.json           per stage: input hash, status, seconds, summary (see stages.py)
  source/               synthetic coins written to disk (messy synthetic sources only)
  audit/                audit.json, thumbnails of each problem kind
  prepared/             the prepared dataset(s)
  <experiment>/         split.csv, selection.json, candidates/<name>/ (one training run each)
                        the selected candidate holds eval/, explain/, probes/
  results.json          every number;  report.html  the report
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import traceback
from pathlib import Path
from typing import Any, NoReturn

from rich.console import Console

from camscope.data.prepare import PrepareConfig
from camscope.errors import CamscopeError
from camscope.folders import claim, owned, run_folder
from camscope.study.config import Experiment, Study
from camscope.study.stages import Stage, StageLog, stage_key
from camscope.utils import atomic_write_text, safe_filename, sweep_orphan_temps

MONITOR_LOWER_IS_BETTER = {"val_loss"}


class StudyRun:
    def __init__(self, study: Study, out: str | Path, study_text: str = "", console: Console | None = None):
        self.study = study
        self.root = Path(out).resolve()
        self.study_text = study_text
        self.console = console or Console()
        self.log = StageLog(self.root)

    # -- paths -------------------------------------------------------------------------------
    @property
    def audit_path(self) -> Path:
        return self.root / "audit" / "audit.json"

    def prepared_path(self, overrides: dict | None = None) -> Path:
        cfg = self.prepare_config(overrides)
        if not overrides or cfg == self.prepare_config():
            return self.root / "prepared" / "data.safetensors"
        tag = hashlib.sha256(json.dumps(vars(cfg), sort_keys=True).encode()).hexdigest()[:10]
        return self.root / "prepared" / f"data-{tag}.safetensors"

    def prepare_config(self, overrides: dict | None = None) -> PrepareConfig:
        p = self.study.prepare.model_dump()
        for k, v in (overrides or {}).items():
            if k.startswith("prepare."):
                p[k[8:]] = v
        return PrepareConfig(**p)

    def exp_dir(self, exp: Experiment) -> Path:
        return self.root / exp.name

    def selection(self, exp: Experiment) -> dict:
        path = self.exp_dir(exp) / "selection.json"
        if not path.is_file():
            raise CamscopeError(
                f"experiment {exp.name} has no trained model yet",
                f"run its training stage: --from train:{exp.name}",
            )
        return json.loads(path.read_text(encoding="utf-8"))

    # -- the plan ----------------------------------------------------------------------------
    def stages(self) -> list[Stage]:
        s = self.study
        files = _source_fingerprint(s.source, self.root)
        src_cfg = {"source": s.source.model_dump(), "files": files, "seed": s.seed}
        out: list[Stage] = [
            Stage("source", "source", src_cfg, [], self._source, [self.root / "source.json"]),
            Stage("audit", "audit", s.audit.model_dump(), ["source"], self._audit, [self.audit_path]),
            Stage(
                "prepare",
                "prepare",
                {"prepare": s.prepare.model_dump(), "clean": s.clean.drop},
                ["source", "audit"],
                self._prepare,
                [self.prepared_path()],
            ),
        ]
        if s.label_issues is not None:
            cfg = {"label_issues": s.label_issues.model_dump(), "seed": s.seed}
            out.append(
                Stage(
                    "label_issues",
                    "label_issues",
                    cfg,
                    ["prepare", "audit"],
                    self._label_issues,
                    [self.label_issues_dir / "label_issues.json"],
                )
            )
        drop = s.clean.drop_label_issues
        for exp in s.experiments:
            d = self.exp_dir(exp)
            n = exp.name
            out.append(
                Stage(
                    f"split:{n}",
                    "split",
                    {
                        "split": s.split.model_dump(),
                        "classes": exp.classes.model_dump(),
                        "dedupe": s.clean.dedupe,
                        "drop_label_issues": drop.model_dump() if drop else None,
                    },
                    ["prepare", "label_issues"] if drop else ["prepare"],
                    lambda e=exp: self._split(e),
                    [d / "split.csv"],
                )
            )
            train_cfg = {
                "train": exp.train,
                "search": exp.search.model_dump() if exp.search else None,
                "seed": s.seed,
                "device": s.device,
            }
            out.append(
                Stage(
                    f"train:{n}",
                    "train",
                    train_cfg,
                    [f"split:{n}"],
                    lambda e=exp: self._train(e),
                    [d / "selection.json"],
                )
            )
            for kind in exp.analyses:
                cfg = {
                    "evaluate": {"tta": exp.tta, "bootstrap": exp.bootstrap},
                    "explain": exp.explain.model_dump(),
                    "faithfulness": exp.explain.model_dump(),
                    "mask": exp.mask.model_dump(),
                    "unseen": exp.unseen.model_dump(),
                    "features": exp.features.model_dump(),
                }[kind]
                fn = getattr(self, f"_{kind}")
                needs = [f"train:{n}"]
                if kind == "evaluate" and s.label_issues is not None:
                    needs.append("label_issues")  # scored with and without the flagged items
                out.append(
                    Stage(
                        f"{kind}:{n}",
                        kind,
                        cfg,
                        needs,
                        lambda e=exp, f=fn: f(e),
                        [d / f"{kind}.done"],
                    )
                )
        if s.report:
            out.append(Stage("report", "report", {}, [st.name for st in out], self._report, []))
        return out

    # -- running -----------------------------------------------------------------------------
    def run(self, from_stage: str | None = None) -> dict:
        # refuses a folder holding files camscope did not write; one process at a time writes it
        with run_folder(self.root, "study"):
            self.log = StageLog(self.root)  # read under the lock: another run may have just finished
            return self._run(from_stage)

    def _run(self, from_stage: str | None) -> dict:
        # temp files of a run killed mid-write: only camscope's own, of processes that are gone
        sweep_orphan_temps(self.root)
        if self.study_text:
            atomic_write_text(self.root / "study.yaml", self.study_text)
        atomic_write_text(
            self.root / "study.resolved.json", json.dumps(self.study.model_dump(mode="json"), indent=1)
        )
        plan = self.stages()
        force_from = _stage_index(plan, from_stage) if from_stage else None
        keys: dict[str, str] = {}
        t_all = time.perf_counter()
        ran, skipped = [], []
        for i, st in enumerate(plan):
            key = stage_key(st.kind, st.config, [keys[u] for u in st.inputs])
            keys[st.name] = key
            forced = force_from is not None and i >= force_from
            if st.kind != "report" and not forced and self.log.is_fresh(st, key):
                skipped.append(st.name)
                self.console.print(f"[dim]= {st.name}: unchanged, skipped[/]")
                continue
            self._run_stage(st, key)
            ran.append(st.name)
        return {
            "root": str(self.root),
            "ran": ran,
            "skipped": skipped,
            "seconds": time.perf_counter() - t_all,
            "report": str(self.root / "report.html") if self.study.report else None,
        }

    def _run_stage(self, st: Stage, key: str) -> None:
        """Run one stage and record how it ended; a failure keeps its traceback in RUN/logs/."""
        self.console.rule(f"{st.name}")
        self.log.started(st, key)
        t0 = time.perf_counter()
        try:
            summary = st.run() or {}
        except BaseException as e:
            self._failed(st, key, time.perf_counter() - t0, e)
        seconds = time.perf_counter() - t0
        if st.kind not in ("source", "audit", "prepare", "label_issues", "split", "train", "report"):
            atomic_write_text(self.exp_dir(self._exp_of(st)) / f"{st.kind}.done", key)
        self.log.finished(st, key, seconds, summary)
        self.console.print(f"[green]done[/] {st.name} in {seconds:.1f} s")

    def _failed(self, st: Stage, key: str, seconds: float, e: BaseException) -> NoReturn:
        if isinstance(e, CamscopeError):
            msg = e.message
        elif isinstance(e, KeyboardInterrupt):
            msg = "interrupted"
        else:
            msg = f"{type(e).__name__}: {e}"
        self.log.failed(st, key, seconds, msg)
        logs = self.root / "logs"
        logs.mkdir(exist_ok=True)
        (logs / f"{safe_filename(st.name)}.log").write_text(traceback.format_exc(), encoding="utf-8")
        if isinstance(e, KeyboardInterrupt | CamscopeError):
            raise e
        raise CamscopeError(
            f"stage {st.name} failed: {msg}",
            f"the traceback is in {logs / (safe_filename(st.name) + '.log')}; "
            "finished stages are kept, "
            "rerun the same command to continue from this one",
        ) from e

    def _exp_of(self, st: Stage) -> Experiment:
        name = st.name.split(":", 1)[1]
        return next(e for e in self.study.experiments if e.name == name)

    # -- stages ------------------------------------------------------------------------------
    def open_source(self):
        from camscope.data.spec import open_source

        s = self.study.source
        if s.messy:
            from camscope.data.messy import HEADS, LABEL_REGEX, TAILS
            from camscope.data.sources import CsvSource

            return CsvSource(
                self.root / "source" / "coins.csv",
                patterns=[HEADS, TAILS],
                label_from="Obverse",
                label_regex=LABEL_REGEX,
            )
        return open_source(s)

    def _source(self) -> dict:
        s = self.study.source
        if s.messy:
            if s.resolved_kind() != "synthetic":
                raise CamscopeError(
                    "source.messy applies to synthetic coins only", "set source.kind: synthetic"
                )
            from camscope.data.messy import write_messy_coins

            _, planted = write_messy_coins(
                self.root / "source", n=s.n, size=s.size, seed=s.seed, remove_stale=True
            )
            info = {"kind": "synthetic coins on disk, with planted problems", "planted": planted}
        else:
            info = {"kind": s.resolved_kind()}
        src = self.open_source()
        info.update({"description": src.description, "items": len(src)})
        atomic_write_text(self.root / "source.json", json.dumps(info, indent=1))
        self.console.print(f"{len(src)} items from {src.description}")
        return {"items": len(src), "description": src.description}

    def _audit(self) -> dict:
        from camscope.data.audit import SCAN_CACHE, AuditConfig, audit, write_audit
        from camscope.data.neardup import NearDupParams
        from camscope.data.scan_cache import clear_scan_cache
        from camscope.report.thumbnails import problem_thumbnails

        src = self.open_source()
        cache = self.audit_path.parent / SCAN_CACHE  # a killed study resumes its audit from it
        report = audit(
            src,
            AuditConfig(
                near_duplicates=self.study.audit.near_duplicates,
                neardup=NearDupParams(mirrors=self.study.audit.mirrors),
                workers=self.study.audit.workers,
                cache_dir=cache,
            ),
        )
        write_audit(report, self.audit_path.parent)
        clear_scan_cache(cache)
        problem_thumbnails(report, src, self.audit_path.parent / "thumbs")
        self.console.print(
            f"{report['n_items']} items; findings: "
            + (", ".join(f"{k} {v}" for k, v in report["problem_counts"].items()) or "none")
        )
        return {"problem_counts": report["problem_counts"], "n_items": report["n_items"]}

    def _prepare(self, overrides: dict | None = None) -> dict:
        from camscope.data.audit import excluded_items, load_audit
        from camscope.data.prepare import prepare

        exclude = excluded_items(load_audit(self.audit_path), set(self.study.clean.drop))
        ds = prepare(
            self.open_source(), self.prepare_config(overrides), exclude, out=self.prepared_path(overrides)
        )
        self.console.print(
            f"{len(ds)} items prepared as {tuple(ds.images.shape)}; {len(ds.info['excluded'])} left out"
        )
        return {"items": len(ds), "shape": list(ds.images.shape), "excluded": len(ds.info["excluded"])}

    def _label_issue_drops(self) -> dict[str, str]:
        """Item id -> why, for the screened items clean.drop_label_issues takes out of training."""
        import csv

        drop = self.study.clean.drop_label_issues
        if drop is None:
            return {}
        with open(self.label_issues_dir / "label_issues.csv", newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))  # most suspect first
        score = self.study.label_issues.score
        if drop.top_k is not None:
            chosen = rows[: drop.top_k]
            rule = f"top_k {drop.top_k}"
        else:
            chosen = [r for r in rows if float(r[score]) < drop.threshold]
            rule = f"{score} < {drop.threshold}"
        return {
            r["id"]: f"probable label issue ({rule}; rank {r['rank']}, {r['given']} -> {r['suggested']})"
            for r in chosen
        }

    def _split(self, exp: Experiment) -> dict:
        from camscope.data.audit import load_audit
        from camscope.data.prepare import load_prepared
        from camscope.data.selection import ClassSelection
        from camscope.data.splits import SplitConfig, make_split, write_split

        sp = self.study.split
        cfg = SplitConfig(
            fractions=tuple(sp.fractions),
            seed=sp.seed,
            allow_leaks=sp.allow_leaks,
            respect_given=sp.respect_given,
            dedupe=self.study.clean.dedupe,
            selection=ClassSelection(**exp.classes.model_dump()),
            drop_from_training=self._label_issue_drops(),
        )
        result = make_split(load_prepared(self.prepared_path()), cfg, load_audit(self.audit_path))
        write_split(result, self.exp_dir(exp))
        t = result.summary["totals"]
        self.console.print(
            f"train {t['train']}, val {t['val']}, test {t['test']}, unseen {t['unseen']}, "
            f"dropped {t['dropped']}; "
            f"test items with a duplicate in training: {result.summary['test_items_with_duplicate_in_train']}"
        )
        return {"totals": t}

    def _candidate(self, exp: Experiment, name: str, overrides: dict) -> dict:
        """Train one configuration into its own folder; reuse it when it already finished."""
        from camscope.train.config import make_config
        from camscope.train.run import train_from_files

        d = self.exp_dir(exp) / "candidates" / name
        prepared = self.prepared_path(overrides)
        if not prepared.is_file():
            self._prepare(overrides)
        over = self.study.train_config_overrides(exp, overrides)
        cfg = make_config(over.pop("model", "fastnet"), **over)
        key = stage_key(
            "candidate", cfg.model_dump(mode="json"), [str(prepared), _split_digest(self.exp_dir(exp))]
        )
        marker = d / "candidate.json"
        if marker.is_file():
            info = json.loads(marker.read_text(encoding="utf-8"))
            if info.get("key") == key and info.get("done"):
                self.console.print(f"[dim]= candidate {name}: finished earlier, reused[/]")
                return info
        resume = (
            marker.is_file()
            and json.loads(marker.read_text(encoding="utf-8")).get("key") == key
            and (d / "last.safetensors").is_file()
        )
        if not resume and d.exists():
            if not owned(d):
                raise CamscopeError(
                    f"{d} holds files camscope did not write; the candidate cannot start over there",
                    "move them out of the study's folder",
                )
            shutil.rmtree(d)
        twin = None if resume else self._finished_twin(key)
        if twin is not None:  # the same settings, data and split in another experiment: the same model
            shutil.copytree(twin.parent, d, ignore=shutil.ignore_patterns(".camscope.lock"))
            info = {**json.loads(twin.read_text(encoding="utf-8")), "name": name, "run_dir": str(d)}
            info["overrides"] = overrides
            atomic_write_text(marker, json.dumps(info, indent=1))
            self.console.print(f"[dim]= candidate {name}: the same as {twin.parent}, copied[/]")
            return info
        claim(d, "train")
        for f in ("split.csv", "split.json"):
            shutil.copyfile(self.exp_dir(exp) / f, d / f)
        atomic_write_text(marker, json.dumps({"key": key, "done": False, "overrides": overrides}))
        self.console.print(f"candidate [bold]{name}[/]: {cfg.model}" + (f" {overrides}" if overrides else ""))
        res = train_from_files(prepared, d, cfg, resume=resume)
        best = res.best or {
            "metric": cfg.monitor,
            "value": res.history[-1].get(cfg.monitor),
            "epoch": len(res.history),
        }
        info = {
            "key": key,
            "done": True,
            "name": name,
            "overrides": overrides,
            "model": cfg.model,
            "run_dir": str(d),
            "prepared": str(prepared),
            "monitor": best["metric"],
            "value": best["value"],
            "best_epoch": best["epoch"],
            "epochs_run": len(res.history),
            "stopped_early": res.stopped_early,
            "train_seconds": round(res.seconds, 2),
        }
        atomic_write_text(marker, json.dumps(info, indent=1))
        return info

    def _finished_twin(self, key: str) -> Path | None:
        """The marker of a finished candidate with this key in any experiment of the study."""
        for marker in sorted(self.root.glob("*/candidates/*/candidate.json")):
            try:
                info = json.loads(marker.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            if info.get("key") == key and info.get("done"):
                return marker
        return None

    def _train(self, exp: Experiment) -> dict:
        search = exp.search
        if search is not None and search.method == "optuna":
            cands = self._optuna(exp)
        else:
            cands = []
            for k, over in enumerate(exp.candidates()):
                label = over.get("name") or ",".join(
                    f"{a.removeprefix('prepare.')}={b}" for a, b in over.items()
                )
                name = f"c{k:02d}" + (f"-{safe_filename(label, keep='-_=.,', limit=40)}" if label else "")
                cands.append(self._candidate(exp, name, over))
        monitor = cands[0]["monitor"]
        usable = [c for c in cands if c["value"] is not None]
        if not usable:
            raise CamscopeError(
                f"experiment {exp.name}: no candidate has a validation score to choose by",
                "give the split a validation fraction (split.fractions, e.g. [0.7, 0.15, 0.15])",
            )
        lower = monitor in MONITOR_LOWER_IS_BETTER
        best = (min if lower else max)(usable, key=lambda c: c["value"])
        sel = {
            "experiment": exp.name,
            "selected": best["name"],
            "run_dir": best["run_dir"],
            "prepared": best["prepared"],
            "monitor": monitor,
            "rule": f"{'lowest' if lower else 'highest'} {monitor} on the validation split; "
            "the test split is not looked at for selection",
            "candidates": cands,
        }
        atomic_write_text(self.exp_dir(exp) / "selection.json", json.dumps(sel, indent=1))
        if len(cands) > 1:
            self.console.print(
                f"selected [bold]{best['name']}[/] ({monitor} {best['value']:.4f} on validation) "
                f"of {len(cands)}"
            )
        return {"selected": best["name"], "candidates": len(cands), monitor: best["value"]}

    def _optuna(self, exp: Experiment) -> list[dict]:
        try:
            import optuna
        except ImportError:
            raise CamscopeError(
                f"experiment {exp.name} asks for an Optuna search but optuna is not installed",
                "pip install optuna, or use search.method: grid",
            ) from None
        search = exp.search
        assert search is not None
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        from camscope.train.config import make_config

        over = self.study.train_config_overrides(exp, {})
        lower = make_config(over.pop("model", "fastnet"), **over).monitor in MONITOR_LOWER_IS_BETTER
        study = optuna.create_study(
            direction="minimize" if lower else "maximize",
            sampler=optuna.samplers.TPESampler(seed=search.seed),
        )
        cands: list[dict] = []

        def objective(trial):
            over: dict[str, Any] = {}
            for key, spec in sorted(search.params.items()):
                if isinstance(spec, dict):
                    lo, hi, log = spec["low"], spec["high"], bool(spec.get("log", False))
                    if isinstance(lo, int) and isinstance(hi, int) and not log:
                        over[key] = trial.suggest_int(key, lo, hi)
                    else:
                        over[key] = trial.suggest_float(key, float(lo), float(hi), log=log)
                else:
                    over[key] = trial.suggest_categorical(key, spec)
            info = self._candidate(exp, f"trial{trial.number:03d}", over)
            cands.append(info)
            if info["value"] is None:
                raise optuna.TrialPruned()
            return info["value"]

        study.optimize(objective, n_trials=search.trials)
        return cands

    def _open(self, exp: Experiment):
        """The experiment's selected candidate, opened for analysis."""
        from camscope.runs import open_run

        sel = self.selection(exp)
        return open_run(sel["run_dir"], sel["prepared"], self.study.device)

    @property
    def label_issues_dir(self) -> Path:
        return self.root / "label_issues"

    def _label_issues(self) -> dict:
        from camscope.data.audit import load_audit
        from camscope.labels.screen import ScreenConfig, screen

        li = self.study.label_issues
        assert li is not None
        cfg = ScreenConfig(
            folds=li.folds,
            model=li.model,
            epochs=li.epochs,
            train=li.train,
            backbone=li.backbone,
            weights=li.weights,
            score=li.score,
            min_side=li.min_side,
            seed=self.study.seed,
            device=self.study.device,
        )
        res = screen(self.prepared_path(), self.label_issues_dir, cfg, load_audit(self.audit_path))
        self.console.print(
            f"{res['n_flagged']} of {res['n_items']} labels flagged as probable issues "
            f"(out-of-fold accuracy {res['out_of_fold_accuracy']:.3f})"
        )
        return {k: res[k] for k in ("n_items", "n_flagged", "out_of_fold_accuracy", "flagged_per_class")}

    def _evaluate(self, exp: Experiment) -> dict:
        from camscope.evaluate.run import evaluate_run

        run = self._open(exp)
        screened = self.label_issues_dir / "label_issues.json"
        # the screen covers the study's prepared dataset; an experiment prepared otherwise is not scored by it
        same = (
            screened.is_file()
            and Path(self.selection(exp)["prepared"]).resolve() == self.prepared_path().resolve()
        )
        res = evaluate_run(
            run, tta=exp.tta, bootstrap=exp.bootstrap, label_issues=self.label_issues_dir if same else None
        )
        a = res["all"]
        ci = a.get("ci", {}).get("accuracy")
        self.console.print(
            f"test accuracy {a['accuracy']:.4f}" + (f" (95% CI {ci[0]:.4f}-{ci[1]:.4f})" if ci else "")
        )
        return {"accuracy": a["accuracy"], "macro_f1": a["macro"]["f1"], "n": a["n"]}

    def _explain(self, exp: Experiment) -> dict:
        from camscope.explain.gallery import explain_run

        run = self._open(exp)
        files = []
        for method in exp.explain.methods:
            files += explain_run(run, method=method, per_class=exp.explain.per_class)["files"]
        return {"galleries": len(files)}

    def _faithfulness(self, exp: Experiment) -> dict:
        from camscope.explain.faithfulness_run import faithfulness_run

        e = exp.explain
        res = faithfulness_run(self._open(exp), methods=e.methods, n_images=e.faithfulness_images)
        return {r["method"]: round(r["insertion_auc"] - r["deletion_auc"], 4) for r in res["methods"]}

    def _mask(self, exp: Experiment) -> dict:
        from camscope.probes.mask_run import mask_run

        m = exp.mask
        res = mask_run(
            self._open(exp),
            sizes=list(m.sizes),
            modes=tuple(m.modes),
            fill=m.fill,
            shape=m.shape,
            cam_images=m.cam_images,
        )
        if "verdict" in res["answer"]:
            self.console.print(res["answer"]["verdict"])
        return {"verdict": res["answer"].get("verdict")}

    def _unseen(self, exp: Experiment) -> dict:
        from camscope.data.prepare import load_prepared
        from camscope.data.selection import ranked
        from camscope.probes.unseen_run import unseen_run

        classes = exp.unseen.names
        if exp.unseen.ranks:
            order = ranked(load_prepared(self.prepared_path()).class_counts())
            bad = [r for r in exp.unseen.ranks if not 1 <= r <= len(order)]
            if bad:
                raise CamscopeError(
                    f"unseen.ranks {bad} out of range", f"the dataset has {len(order)} classes"
                )
            classes = [order[r - 1] for r in exp.unseen.ranks]
        res = unseen_run(self._open(exp), classes=classes)
        self.console.print(
            f"{res['n_unseen']} images of {', '.join(res['unseen_classes'])}: labelled "
            + ", ".join(f"{k} {v}" for k, v in res["label_distribution"].items())
        )
        return {
            "n_unseen": res["n_unseen"],
            **{f"auroc_{k}": v["auroc"] for k, v in res["separation"].items()},
        }

    def _features(self, exp: Experiment) -> dict:
        from camscope.probes.features import features_run

        res = features_run(self._open(exp), projections=tuple(exp.features.projections))
        return {"n": res["n"], "dim": res["dim"], **res["probes"]}

    def _report(self) -> dict:
        from camscope.report.html import write_report
        from camscope.report.results import collect_results

        results = collect_results(self.root)
        path = write_report(results, self.root)
        self.console.print(f"report: [bold]{path}[/]")
        return {"report": str(path)}


def _stage_index(plan: list[Stage], name: str) -> int:
    i = next((i for i, st in enumerate(plan) if name in (st.name, st.kind)), None)
    if i is None:
        raise CamscopeError(
            f"no stage {name!r} in this study", "stages: " + ", ".join(st.name for st in plan)
        )
    return i


def _source_fingerprint(spec, run_root: Path | None = None) -> str | list | None:
    """The fingerprint of everything a source reads.

    A CSV on disk names image files beside it (under ``data_root``, or the CSV's folder), so an
    image edited in place must count as well as the CSV. A CSV inside an archive is covered by the
    archive's hash.
    """
    main = _fingerprint(spec.path, skip=run_root)
    if spec.path and "!/" not in spec.path and spec.resolved_kind() == "csv":
        images = spec.data_root or str(Path(spec.path).parent)
        return [main, _fingerprint(images, skip=run_root)]
    return main


def _fingerprint(path: str | None, skip: Path | None = None) -> str | None:
    """What a source holds: a changed source re-runs the audit, an unchanged one does not.

    A file (an archive, a CSV) is hashed by content, so a copy with a new modification time is
    still the same source. A folder is hashed by each file's relative path, size and modification
    time: reading every image of a large folder on each run would cost more than it saves.
    ``skip`` (the run folder, when it lies inside the source's folder) is left out, or the run's
    own outputs would change the source on every run.
    """
    if not path:
        return None
    p = Path(path.split("!/", 1)[0])
    if p.is_file():
        with p.open("rb") as f:
            return "file:" + hashlib.file_digest(f, "blake2b").hexdigest()[:32]
    if p.is_dir():
        h = hashlib.blake2b()
        skip = skip.resolve() if skip is not None else None
        for root, dirs, files in os.walk(p):
            if skip is not None:
                dirs[:] = [d for d in dirs if (Path(root) / d).resolve() != skip]
            dirs.sort()
            for name in sorted(files):
                fp = Path(root) / name
                try:
                    st = fp.stat()
                except OSError:  # a broken link: the audit reports it
                    continue
                h.update(f"{fp.relative_to(p).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        return "dir:" + h.hexdigest()[:32]
    return None


def _split_digest(exp_dir: Path) -> str:
    return hashlib.sha256((exp_dir / "split.csv").read_bytes()).hexdigest()[:16]
