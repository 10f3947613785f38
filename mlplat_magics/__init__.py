"""IPython extension: ``%load_ext mlplat_magics`` gives ``%feature``, ``%train``, ``%deploy``, ``%predict``,
``%model``, ``%job``, ``%monitor`` and ``%mlplat``, and the cell forms ``%%feature apply`` and ``%%train``.

Magics parse their line, call one library function and return its result, so
the notebook renders it (HTML reprs, widgets) and ``x = %feature ...`` binds it.
A user error is one readable line (IPython's UsageError), not a traceback.
Every magic takes ``--help``.
"""

from __future__ import annotations

import argparse
import ast
import shlex
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, line_magic, magics_class

from mlplat.errors import MlplatError


class _Verbatim(argparse.HelpFormatter):
    """Help text shown as written: magics name each other (``%%feature apply``), which argparse would %-format."""

    def _expand_help(self, action: argparse.Action) -> str:
        return self._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    """argparse that reports mistakes as UsageError instead of exiting the kernel."""

    def __init__(self, *args: Any, **kwargs: Any):
        kwargs.setdefault("formatter_class", _Verbatim)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:
        raise UsageError(f"{self.prog}: {message}")

    def exit(self, status: int = 0, message: str | None = None) -> None:
        raise UsageError(message or self.format_help())


def _subcommands(parser: _Parser) -> Any:
    return parser.add_subparsers(dest="command", required=True, parser_class=_Parser)


def _feature_parser() -> _Parser:
    feature = _Parser(prog="%feature", description="Feature store: list, show, apply, get, training-set, "
                                                   "materialize, push, catalog.")
    commands = _subcommands(feature)
    commands.add_parser("list").add_argument("pattern", nargs="?")
    commands.add_parser("show").add_argument("view")
    commands.add_parser("apply", help="%%feature apply: register the cell's definitions; "
                                      "%feature apply FILE.py: those of a file").add_argument("path", nargs="?")
    get = commands.add_parser("get")
    get.add_argument("features", nargs="+")
    get.add_argument("--entity", action="append", required=True, help="key=v1,v2 (repeat for more keys)")
    training = commands.add_parser("training-set")
    training.add_argument("entity_df", help="a DataFrame in the notebook's namespace")
    training.add_argument("features", nargs="+", help="view:feature, view@version:feature or view:*")
    commands.add_parser("materialize").add_argument("views", nargs="*")
    push = commands.add_parser("push")
    push.add_argument("view")
    push.add_argument("df", help="a DataFrame in the notebook's namespace")
    commands.add_parser("catalog", help="a searchable catalog widget").add_argument("pattern", nargs="?")
    return feature


def _train_parser() -> _Parser:
    train = _Parser(prog="%train", description="Train, track, gate and register a model. In %%train the cell "
                                               "builds the estimator (its last line is the estimator).")
    train.add_argument("estimator", nargs="?", help="e.g. xgboost.XGBClassifier (not in %%train)")
    train.add_argument("--features", nargs="+", required=True)
    train.add_argument("--entity-df", required=True)
    train.add_argument("--target", required=True)
    train.add_argument("--name", required=True)
    train.add_argument("--param", action="append", default=[], help="k=v (repeatable)")
    train.add_argument("--gate", help="metric>=value or metric<=value")
    train.add_argument("--cluster", choices=["local", "kubernetes"], help="fit on a Dask cluster")
    return train


def _model_parser() -> _Parser:
    model = _Parser(prog="%model", description="Registered models: list, card, promote, score.")
    commands = _subcommands(model)
    commands.add_parser("list")
    commands.add_parser("card", help="versions, metrics, lineage, Promote and Deploy").add_argument("name")
    promote = commands.add_parser("promote")
    promote.add_argument("name")
    promote.add_argument("--version")
    score = commands.add_parser("score", help="batch scoring with point-in-time features")
    score.add_argument("name")
    score.add_argument("entity_df", help="a DataFrame in the notebook's namespace")
    score.add_argument("--version")
    return model


def _job_parser() -> _Parser:
    job = _Parser(prog="%job", description="Notebook jobs: run, history, rerun, schedule, schedules, unschedule, "
                                           "panel.")
    commands = _subcommands(job)
    run = commands.add_parser("run")
    run.add_argument("notebook")
    run.add_argument("parameters", nargs="*", help="name=value")
    commands.add_parser("history").add_argument("notebook", nargs="?")
    commands.add_parser("rerun").add_argument("run_id")
    schedule = commands.add_parser("schedule")
    schedule.add_argument("notebook")
    schedule.add_argument("cron", help="five cron fields in quotes, e.g. '0 * * * *'")
    schedule.add_argument("parameters", nargs="*", help="name=value")
    commands.add_parser("schedules")
    commands.add_parser("unschedule", help="delete a schedule").add_argument("schedule_id", type=int)
    commands.add_parser("panel", help="schedules and recent runs, with Run now and Pause/Resume")
    return job


def _mlplat_parser() -> _Parser:
    mlplat = _Parser(prog="%mlplat", description="The platform: status, and the audit trail.")
    commands = _subcommands(mlplat)
    commands.add_parser("status", help="services, endpoints, versions")
    audit = commands.add_parser("audit", help="who did what to which object, when and why")
    audit.add_argument("--kind", action="append", help="feature_view, model, deployment, job, ... (repeatable)")
    audit.add_argument("--object", help="a view, a model (and its endpoint), a notebook")
    audit.add_argument("--user")
    audit.add_argument("--action", action="append", help="e.g. promoted (repeatable)")
    audit.add_argument("--since", help="an ISO date or time (UTC)")
    audit.add_argument("--limit", type=int, default=50, help="the newest N entries (default 50; 0 for all)")
    return mlplat


def _monitor_parser() -> _Parser:
    monitor = _Parser(prog="%monitor", description="Drift, latency, errors and alerts of deployed models.")
    commands = _subcommands(monitor)
    check = commands.add_parser("check", help="the latest window against the thresholds; raises alerts")
    check.add_argument("model")
    drift = commands.add_parser("drift", help="PSI per column over past windows, as a plot")
    drift.add_argument("model")
    drift.add_argument("--window", help="e.g. 1h (default: the model's threshold window)")
    drift.add_argument("--windows", type=int, default=24)
    alerts = commands.add_parser("alerts", help="alerts, newest first")
    alerts.add_argument("model", nargs="?")
    alerts.add_argument("--firing", action="store_true")
    thresholds = commands.add_parser("thresholds", help="show, or set name=value (psi, p99_ms, window, ...)")
    thresholds.add_argument("model")
    thresholds.add_argument("assignments", nargs="*", help="name=value")
    return monitor


def _parsers() -> dict[str, _Parser]:
    deploy = _Parser(prog="%deploy", description="Deploy a registered model to Triton.")
    deploy.add_argument("model")
    deploy.add_argument("--version")
    deploy.add_argument("--alias", default="champion", help="the alias to deploy when --version is not given")
    deploy.add_argument("--missing", default="flag",
                        help="rows lacking features: flag them (default), error (refuse them) or impute training medians")
    predict = _Parser(prog="%predict", description="Predict over gRPC with online features.")
    predict.add_argument("model")
    predict.add_argument("entity", nargs="+", help="key=v1,v2")
    return {"feature": _feature_parser(), "train": _train_parser(), "deploy": deploy, "predict": predict,
            "model": _model_parser(), "job": _job_parser(), "mlplat": _mlplat_parser(), "monitor": _monitor_parser()}


def _columns(pairs: list[str]) -> dict[str, list[Any]]:
    """``["driver_id=1,2"]`` -> ``{"driver_id": [1, 2]}`` (numbers when they look like numbers)."""
    out = {}
    for pair in pairs:
        key, _, values = pair.partition("=")
        if not values:
            raise UsageError(f"{pair!r}: write key=value1,value2")
        out[key] = [int(v) if v.lstrip("-").isdigit() else v for v in values.split(",")]
    return out


def _gate(text: str | None) -> dict[str, Any] | None:
    """``roc_auc>=0.7`` -> ``{"metric": "roc_auc", "min": 0.7}``."""
    if text is None:
        return None
    op = ">=" if ">=" in text else "<=" if "<=" in text else None
    metric, _, value = text.partition(op or "\0")
    try:
        return {"metric": metric.strip(), "min" if op == ">=" else "max": float(value)}
    except ValueError:
        raise UsageError(f"--gate {text!r}: write metric>=value or metric<=value, e.g. roc_auc>=0.7") from None


@magics_class
class MlplatMagics(Magics):
    """The platform's magics; the platform connects on first use."""

    def __init__(self, shell: Any):
        super().__init__(shell)
        self.parsers = _parsers()
        self._platform = None

    @property
    def platform(self):
        if self._platform is None:
            import mlplat

            self._platform = mlplat.connect()
        return self._platform

    def _run(self, name: str, line: str, action) -> Any:
        args = self.parsers[name].parse_args(shlex.split(line))
        try:
            return action(args)
        except MlplatError as exc:
            raise UsageError(str(exc)) from None

    @line_cell_magic
    def feature(self, line: str, cell: str | None = None) -> Any:
        """%feature list [PATTERN] | show VIEW | apply FILE | get FEATURES --entity k=v,.. | training-set DF FEATURES |
        materialize [VIEW ...] | push VIEW DF | catalog [PATTERN];  %%feature apply (a cell of definitions)"""
        store = lambda: self.platform.features  # noqa: E731

        def act(a):
            if cell is not None and a.command != "apply":
                raise UsageError("The cell form is %%feature apply; the other commands are line magics.")
            if a.command == "apply":
                return self._apply(a.path, cell)
            if a.command == "list":
                return store().list_views(a.pattern)
            if a.command == "show":
                return store().get_view(a.view)
            if a.command == "get":
                return store().get_online_features(a.features, _columns(a.entity))
            if a.command == "training-set":
                return store().get_training_set(self._frame(a.entity_df), a.features)
            if a.command == "push":
                return store().push(a.view, self._frame(a.df))
            if a.command == "catalog":
                from mlplat_magics.widgets import FeatureCatalog

                catalog = FeatureCatalog(self.platform)
                catalog.search.value = a.pattern or ""
                return catalog
            return store().materialize(views=a.views or None)

        return self._run("feature", line, act)

    def _apply(self, path: str | None, cell: str | None) -> None:
        from mlplat.features.definitions import definitions_from_file, definitions_in

        if (path is None) == (cell is None):
            raise UsageError("Use %%feature apply with a cell of definitions, or %feature apply FILE.py.")
        if cell is None:
            definitions = definitions_from_file(path)
        else:  # the cell runs in the notebook's namespace, like any cell; what it (re)binds is registered
            namespace = self.shell.user_ns
            before = dict(namespace)
            exec(compile(cell, "<%%feature apply>", "exec"), namespace)  # noqa: S102 - the user's own cell
            definitions = definitions_in([v for k, v in namespace.items() if before.get(k) is not v], "The cell")
        for result in self.platform.features.apply(definitions):
            print(result)

    @line_cell_magic
    def train(self, line: str, cell: str | None = None) -> Any:
        """%train ESTIMATOR --features F.. --entity-df NAME --target COL --name MODEL [--param k=v] [--gate m>=x]
        [--cluster local|kubernetes];  %%train (same options, no ESTIMATOR): the cell's last line builds it"""
        from mlplat.config import parse_assignments

        def act(a):
            if (a.estimator is None) == (cell is None):
                raise UsageError("Name the estimator (%train xgboost.XGBClassifier ...) or build it in a "
                                 "%%train cell, not both.")
            estimator = a.estimator if cell is None else self._last_value(cell, "%%train")
            options = dict(features=a.features, entity_df=self._frame(a.entity_df), target=a.target, name=a.name,
                           params=parse_assignments(a.param, "--param"), validation=_gate(a.gate),
                           progress=self._training_progress())
            if a.cluster is None:
                return self.platform.train(estimator, **options)
            with self.platform.compute(a.cluster) as compute:
                return self.platform.train(estimator, client=compute.client, **options)

        return self._run("train", line, act)

    def _last_value(self, cell: str, where: str) -> Any:
        """Run the cell in the notebook's namespace and return its last expression's value."""
        tree = ast.parse(cell)
        if not tree.body or not isinstance(tree.body[-1], ast.Expr):
            raise UsageError(f"End the {where} cell with the estimator, e.g. RandomForestClassifier(n_estimators=50).")
        namespace = self.shell.user_ns
        exec(compile(ast.Module(tree.body[:-1], type_ignores=[]), f"<{where}>", "exec"), namespace)  # noqa: S102
        return eval(compile(ast.Expression(tree.body[-1].value), f"<{where}>", "eval"), namespace)  # noqa: S307

    def _training_progress(self) -> Any:
        """A live progress widget in a notebook front end; None (a text bar where watched) elsewhere."""
        if getattr(self.shell, "kernel", None) is None:
            return None
        from IPython.display import display

        from mlplat_magics.widgets import TrainingProgress

        bar = TrainingProgress()
        display(bar)
        return bar

    @line_magic
    def deploy(self, line: str) -> Any:
        """%deploy MODEL [--version V | --alias A] [--missing flag|error|impute]"""
        return self._run("deploy", line, lambda a: self.platform.deploy(a.model, a.version, a.alias, missing=a.missing))

    @line_magic
    def predict(self, line: str) -> Any:
        """%predict MODEL key=v1,v2 [key2=...]"""
        return self._run("predict", line, lambda a: self.platform.predict(a.model, _columns(a.entity)))

    @line_magic
    def model(self, line: str) -> Any:
        """%model list | card NAME | promote NAME [--version V] | score NAME DF [--version V]"""

        def act(a):
            models = self.platform.models
            if a.command == "list":
                return models.list()
            if a.command == "card":
                from mlplat_magics.widgets import ModelCard

                return ModelCard(self.platform, a.name)
            if a.command == "promote":
                return models.promote(a.name, a.version)
            return models.score(a.name, self._frame(a.entity_df), a.version)

        return self._run("model", line, act)

    @line_magic
    def job(self, line: str) -> Any:
        """%job run NOTEBOOK [name=value ...] | history [NOTEBOOK] | rerun RUN_ID |
        schedule NOTEBOOK '0 * * * *' [name=value ...] | schedules | unschedule ID | panel"""
        from mlplat.config import parse_assignments

        def act(a):
            jobs = self.platform.jobs
            if a.command == "run":
                return jobs.run(a.notebook, parse_assignments(a.parameters, "parameter"))
            if a.command == "history":
                return jobs.history(a.notebook)
            if a.command == "rerun":
                return jobs.rerun(a.run_id)
            if a.command == "schedule":
                return jobs.schedule(a.notebook, a.cron, parse_assignments(a.parameters, "parameter"))
            if a.command == "schedules":
                return jobs.schedules()
            if a.command == "unschedule":
                return jobs.unschedule(a.schedule_id)
            from mlplat_magics.widgets import JobPanel

            return JobPanel(self.platform)

        return self._run("job", line, act)

    def _frame(self, name: str) -> Any:
        frame = self.shell.user_ns.get(name)
        if frame is None:
            raise UsageError(f"No variable {name!r} in the notebook; create the DataFrame first.")
        return frame

    @line_magic
    def monitor(self, line: str) -> Any:
        """%monitor check MODEL | drift MODEL [--window 1h] [--windows 24] | alerts [MODEL] [--firing] |
        thresholds MODEL [name=value ...]"""
        from mlplat.config import parse_assignments

        def act(a):
            monitor = self.platform.monitor
            if a.command == "check":
                return monitor.check(a.model)
            if a.command == "drift":
                return monitor.drift(a.model, a.window, a.windows)
            if a.command == "alerts":
                return self.platform.alerts("firing" if a.firing else None, a.model)
            if a.assignments:
                return monitor.set_thresholds(a.model, **parse_assignments(a.assignments, "threshold"))
            return monitor.thresholds(a.model)

        return self._run("monitor", line, act)

    @line_magic
    def mlplat(self, line: str) -> Any:
        """%mlplat status | audit [--kind K] [--object NAME] [--user U] [--action A] [--since DATE] [--limit N]"""

        def act(a):
            if a.command == "status":
                return self.platform.status()
            return self.platform.audit.entries(a.kind, a.object, a.user, a.action, a.since, a.limit or None)

        return self._run("mlplat", line, act)


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext mlplat_magics``."""
    ipython.register_magics(MlplatMagics)
