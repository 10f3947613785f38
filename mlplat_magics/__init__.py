"""IPython extension: ``%load_ext mlplat_magics`` gives ``%feature``, ``%train``, ``%deploy``, ``%predict``,
``%job`` and ``%mlplat``.

Magics parse their line, call one library function and return its result, so
the notebook renders it (HTML reprs) and ``x = %feature ...`` binds it. A user
error is one readable line (IPython's UsageError), not a traceback.
"""

from __future__ import annotations

import argparse
import shlex
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_magic, magics_class

from mlplat.errors import MlplatError


class _Parser(argparse.ArgumentParser):
    """argparse that reports mistakes as UsageError instead of exiting the kernel."""

    def error(self, message: str) -> None:
        raise UsageError(f"{self.prog}: {message}")

    def exit(self, status: int = 0, message: str | None = None) -> None:
        raise UsageError(message or self.format_help())


def _parsers() -> dict[str, _Parser]:
    feature = _Parser(prog="%feature", description="Feature store: list, show, get, training-set, materialize.")
    commands = feature.add_subparsers(dest="command", required=True, parser_class=_Parser)
    commands.add_parser("list").add_argument("pattern", nargs="?")
    commands.add_parser("show").add_argument("view")
    get = commands.add_parser("get")
    get.add_argument("features", nargs="+")
    get.add_argument("--entity", action="append", required=True, help="key=v1,v2 (repeat for more keys)")
    training = commands.add_parser("training-set")
    training.add_argument("entity_df", help="a DataFrame in the notebook's namespace")
    training.add_argument("features", nargs="+")
    commands.add_parser("materialize").add_argument("views", nargs="*")
    push = commands.add_parser("push")
    push.add_argument("view")
    push.add_argument("df", help="a DataFrame in the notebook's namespace")

    train = _Parser(prog="%train", description="Train, track, gate and register a model.")
    train.add_argument("estimator")
    train.add_argument("--features", nargs="+", required=True)
    train.add_argument("--entity-df", required=True)
    train.add_argument("--target", required=True)
    train.add_argument("--name", required=True)
    train.add_argument("--param", action="append", default=[], help="k=v (repeatable)")
    train.add_argument("--gate", help="metric>=value or metric<=value")

    deploy = _Parser(prog="%deploy", description="Deploy a registered model to Triton.")
    deploy.add_argument("model")
    deploy.add_argument("--version")
    predict = _Parser(prog="%predict", description="Predict over gRPC with online features.")
    predict.add_argument("model")
    predict.add_argument("entity", nargs="+", help="key=v1,v2")
    job = _Parser(prog="%job", description="Notebook jobs: run, history, rerun.")
    job_commands = job.add_subparsers(dest="command", required=True, parser_class=_Parser)
    run = job_commands.add_parser("run")
    run.add_argument("notebook")
    run.add_argument("parameters", nargs="*", help="name=value")
    job_commands.add_parser("history").add_argument("notebook", nargs="?")
    job_commands.add_parser("rerun").add_argument("run_id")
    status = _Parser(prog="%mlplat", description="Platform status.")
    status.add_argument("command", choices=["status"])
    return {"feature": feature, "train": train, "deploy": deploy, "predict": predict, "job": job, "mlplat": status}


def _columns(pairs: list[str]) -> dict[str, list[Any]]:
    """``["driver_id=1,2"]`` -> ``{"driver_id": [1, 2]}`` (numbers when they look like numbers)."""
    out = {}
    for pair in pairs:
        key, _, values = pair.partition("=")
        if not values:
            raise UsageError(f"{pair!r}: write key=value1,value2")
        out[key] = [int(v) if v.lstrip("-").isdigit() else v for v in values.split(",")]
    return out


def _value(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


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

    @line_magic
    def feature(self, line: str) -> Any:
        """%feature list [PATTERN] | show VIEW | get FEATURES --entity k=v,.. | training-set DF FEATURES |
        materialize [VIEW ...] | push VIEW DF"""
        store = lambda: self.platform.features  # noqa: E731

        def act(a):
            if a.command == "list":
                return store().list_views(a.pattern)
            if a.command == "show":
                return store().get_view(a.view)
            if a.command == "get":
                entities = _columns(a.entity)
                return store().get_online_features(a.features, entities)
            if a.command == "training-set":
                return store().get_training_set(self._frame(a.entity_df), a.features)
            if a.command == "push":
                return store().push(a.view, self._frame(a.df))
            return store().materialize(views=a.views or None)

        return self._run("feature", line, act)

    @line_magic
    def train(self, line: str) -> Any:
        """%train ESTIMATOR --features F.. --entity-df NAME --target COL --name MODEL [--param k=v] [--gate m>=x]"""

        def act(a):
            frame = self._frame(a.entity_df)
            params = {k: _value(v) for k, _, v in (p.partition("=") for p in a.param)}
            validation = None
            if a.gate:
                op = ">=" if ">=" in a.gate else "<=" if "<=" in a.gate else None
                if op is None:
                    raise UsageError(f"--gate {a.gate!r}: write metric>=value or metric<=value")
                metric, value = a.gate.split(op)
                validation = {"metric": metric, "min" if op == ">=" else "max": float(value)}
            return self.platform.train(a.estimator, features=a.features, entity_df=frame, target=a.target,
                                       name=a.name, params=params, validation=validation)

        return self._run("train", line, act)

    @line_magic
    def deploy(self, line: str) -> Any:
        """%deploy MODEL [--version V]"""
        return self._run("deploy", line, lambda a: self.platform.deploy(a.model, a.version))

    @line_magic
    def predict(self, line: str) -> Any:
        """%predict MODEL key=v1,v2 [key2=...]"""
        return self._run("predict", line, lambda a: self.platform.predict(a.model, _columns(a.entity)))

    @line_magic
    def job(self, line: str) -> Any:
        """%job run NOTEBOOK [name=value ...] | history [NOTEBOOK] | rerun RUN_ID"""

        def act(a):
            if a.command == "run":
                return self.platform.jobs.run(a.notebook, {k: _value(v) for k, _, v in
                                                           (p.partition("=") for p in a.parameters)})
            if a.command == "history":
                return self.platform.jobs.history(a.notebook)
            return self.platform.jobs.rerun(a.run_id)

        return self._run("job", line, act)

    def _frame(self, name: str) -> Any:
        frame = self.shell.user_ns.get(name)
        if frame is None:
            raise UsageError(f"No variable {name!r} in the notebook; create the DataFrame first.")
        return frame

    @line_magic
    def mlplat(self, line: str) -> Any:
        """%mlplat status"""
        from mlplat import services

        def act(a):
            states = services.status(self.platform.settings)
            return {name: state.url if state else "stopped" for name, state in states.items()}

        return self._run("mlplat", line, act)


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext mlplat_magics``."""
    ipython.register_magics(MlplatMagics)
