"""One source of defaults: the config dataclasses (and the workflow functions' keyword
defaults) define them, the CLI reads them, and MLproject's entry points repeat them."""

import dataclasses
import inspect
import pathlib
import shlex

import pytest
import typer.main
import yaml

from ptyparity import runs
from ptyparity.cli import app
from ptyparity.config import CONVENTION_CHOICES, ModelConfig, TrainConfig
from ptyparity.parity import DEFAULT_THRESHOLDS
from ptyparity.simulate import SimConfig

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _leaf_commands(group, prefix=""):
    """Every command by its full name ("train", "import ptychopinn")."""
    out = {}
    for name, cmd in group.commands.items():
        out.update(_leaf_commands(cmd, f"{prefix}{name} ") if hasattr(cmd, "commands") else {prefix + name: cmd})
    return out


COMMANDS = _leaf_commands(typer.main.get_command(app))
# CLI options named differently from the dataclass field they set.
FIELD_OF_OPTION = {("simulate", "n"): "N", ("simulate", "jitter"): "jitter_px",
                   ("simulate", "object_size"): "object_size_px", ("simulate", "scan_step"): "scan_step_px"}
DATACLASSES = {"simulate": (SimConfig,), "train": (ModelConfig, TrainConfig)}
# Fields the CLI does not expose: resolved from the data, a sub-config, fixed by the contract, or
# the upstream conventions only an imported PtychoPINN model carries.
NOT_OPTIONS = {"simulate": {"probe_edge_phase_rad"},
               "train": {"N", "max_offset", "model", "val_fraction", *CONVENTION_CHOICES}}
WORKFLOWS = {"simulate": runs.run_simulate, "train": runs.run_train, "infer": runs.run_infer,
             "compare": runs.run_compare, "pipeline": runs.run_pipeline, "import ptychopinn": runs.run_import}
# CLI spellings of a workflow's None.
CLI_SPELLING = {("infer", "backend"): {"auto": None}}
# MLproject defaults that differ from the CLI's on purpose, with the reason.
MLPROJECT_OWN = {("train", "test_data"): "the entry point assumes the simulate entry point's data/ layout; "
                                         "an MLproject path parameter cannot say 'none'"}


# Required in an MLproject entry point, optional on the CLI (each where the other option supplies it).
REQUIRED_IN_MLPROJECT_ONLY = {("train", "train_data"): "--resume RUN_ID reads it from the run",
                              ("train", "resume"): "a fresh training takes --train-data instead"}


def mlproject():
    return yaml.safe_load((ROOT / "MLproject").read_text())["entry_points"]


def option(command, name):
    (param,) = [p for p in COMMANDS[command].params if p.name == name]
    return param


def plain(value):
    """One comparable form: paths as text, MLproject's empty string as None."""
    if isinstance(value, pathlib.PurePath):
        return str(value)
    return None if value == "" else value


def typed(spec):
    """An MLproject parameter default converted by its declared type (YAML reads 1e6 as text)."""
    value = spec["default"]
    return {"int": int, "float": float}.get(spec.get("type"), lambda v: v)(value)


def entry_point_options(entry):
    """``[(cli_command, cli_param_name, mlproject_param)]`` from one entry point's command."""
    tokens = shlex.split(entry["command"])
    assert tokens[:3] == ["python", "-m", "ptyparity"], entry["command"]
    command, rest = tokens[3], tokens[4:]
    if command not in COMMANDS:  # a command of a group: "import ptychopinn"
        command, rest = f"{tokens[3]} {tokens[4]}", tokens[5:]
    params = {p.opts[0]: p.name for p in COMMANDS[command].params} | \
             {o: p.name for p in COMMANDS[command].params for o in p.opts}
    out = []
    for i, token in enumerate(rest):
        if token.startswith("--{") and token.endswith("}"):  # a --x/--no-x flag: the parameter is x or no-x
            out.append((command, params[f"--{token[3:-1]}"], token[3:-1]))
        elif token.startswith("{") and token.endswith("}"):
            flag = rest[i - 1] if i > 0 and rest[i - 1].startswith("--") else None
            if flag is None:  # a positional argument
                (arg,) = [p for p in COMMANDS[command].params if isinstance(p, typer.core.TyperArgument)]
                out.append((command, arg.name, token[1:-1]))
            else:
                assert flag in params, f"{command} has no option {flag}"
                out.append((command, params[flag], token[1:-1]))
    return out


@pytest.mark.parametrize("entry_name", sorted(mlproject()))
def test_mlproject_defaults_equal_the_cli(entry_name):
    entry = mlproject()[entry_name]
    used = entry_point_options(entry)
    assert {p for _, _, p in used} == set(entry["parameters"]), "every parameter is used once in the command"
    for command, name, param in used:
        spec, cli = entry["parameters"][param], option(command, name)
        if "default" not in spec:
            assert cli.required or (command, name) in REQUIRED_IN_MLPROJECT_ONLY, \
                f"{entry_name}.{param} is required in MLproject but not on the CLI"
            continue
        if cli.is_flag and cli.secondary_opts:  # spelled as the flag's own name, "x" or "no-x"
            assert spec["default"] == (cli.opts[0] if cli.default else cli.secondary_opts[0])[2:], param
            continue
        if (command, name) in MLPROJECT_OWN:
            assert plain(typed(spec)) != plain(cli.default)  # still a deliberate difference
            continue
        assert plain(typed(spec)) == plain(cli.default), f"MLproject {entry_name}.{param} vs {command} --{name}"


@pytest.mark.parametrize("command", sorted(DATACLASSES))
def test_cli_defaults_are_the_dataclass_defaults(command):
    fields = {f.name: (cls, f) for cls in DATACLASSES[command] for f in dataclasses.fields(cls)}
    matched = set()
    for param in COMMANDS[command].params:
        name = FIELD_OF_OPTION.get((command, param.name), param.name)
        if name in fields:
            cls, field = fields[name]
            assert param.default == field.default, f"{command} --{param.name} vs {cls.__name__}.{name}"
            matched.add(name)
    assert matched == set(fields) - NOT_OPTIONS[command], "every config field is an option with its default"


@pytest.mark.parametrize("command", sorted(WORKFLOWS))
def test_cli_defaults_are_the_workflow_defaults(command):
    signature = inspect.signature(WORKFLOWS[command]).parameters
    matched = 0
    for param in COMMANDS[command].params:
        kw = signature.get(param.name)
        if kw is None or kw.default is inspect.Parameter.empty:
            continue
        cli = CLI_SPELLING.get((command, param.name), {}).get(param.default, param.default)
        assert plain(cli) == plain(kw.default), f"{command} --{param.name} vs {WORKFLOWS[command].__name__}"
        matched += 1
    assert matched >= 2  # at least experiment and run_name (or preset, seed, …) line up


def test_compare_thresholds_are_the_parity_defaults():
    keys = [p.name for p in COMMANDS["compare"].params if p.name in DEFAULT_THRESHOLDS]
    assert len(keys) == 5
    for key in keys:
        assert option("compare", key).default == DEFAULT_THRESHOLDS[key], key
    assert option("compare", "tap_tolerance").default == \
        inspect.signature(runs.run_compare_forward).parameters["tolerance"].default == \
        inspect.signature(runs.run_compare_forward_reference).parameters["tolerance"].default


def test_width_default_is_the_spec_value_and_the_cpu_preset_says_its_own():
    assert ModelConfig().n_filters_scale == 2 == option("train", "n_filters_scale").default
    assert mlproject()["train"]["parameters"]["n_filters_scale"]["default"] == 2
    assert runs.PRESETS["small"]["n_filters_scale"] == 1
    assert option("pipeline", "preset").default in runs.PRESETS
