"""Settings and helpers several commands share: the model and run to score with (eval, predict), the
content-free letter prior (debiasing), the processes of a launch, method options as ``KEY=VALUE``."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mcqtune.config import PRECISIONS, SCORINGS, data_formats
from mcqtune.settings import setting

RUN_DIR_HELP = "a mcqtune run directory (from train)"


@dataclass
class ModelArgs:
    """Which model scores: a base, a trained run on it, and how (eval, predict)."""

    model: str | None = setting(None, "base model", none_means="the run's base, else bundled SmolLM2")
    run: str | None = setting(
        None,
        RUN_DIR_HELP,
        none_means="none, the base model alone",
        aliases=("--adapter",),
        metavar="DIR",
    )
    scoring: str = setting(
        "auto", "auto: the run's formulation; cloze for small base models, else letter", choices=SCORINGS
    )
    format: str = setting("auto", "data format", choices=data_formats())
    precision: str = setting("auto", "auto: bf16 autocast where supported", choices=PRECISIONS)


@dataclass
class LoadingArgs:
    """What a model load may run: both off, since either executes code from the model's files."""

    allow_pickle: bool = setting(False, "allow loading pickled .bin weights")
    trust_remote_code: bool = setting(False, "run the model repository's own code")


@dataclass
class DebiasArgs:
    """The content-free letter prior (docs/EVALUATION.md): estimated, loaded or saved."""

    debias: bool = setting(
        False,
        "estimate the model's prior over answer letters from cyclically permuted scoring of a "
        "calibration sample (no labels used) and remove it from the option scores",
    )
    calibration_data: str | None = setting(
        None,
        "questions to estimate the prior on (bundled name: its train split)",
        none_means="a sample of the evaluated/predicted questions",
        metavar="FILE",
    )
    calibration_size: int = setting(100, "calibration questions", check="positive")
    prior: str | None = setting(None, "use a saved letter prior (implies --debias)", metavar="FILE")
    save_prior: str | None = setting(None, "write the estimated prior as JSON", metavar="FILE")
    seed: int = setting(0, "seed for samples and random orders")


@dataclass
class LaunchArgs:
    """How many processes share the work (docs/SCALING.md)."""

    num_processes: int | None = setting(
        None,
        "starts N processes with torchrun (gloo on CPU, NCCL on GPUs); under torchrun or accelerate "
        "launch, the launcher's count",
        check="positive",
        none_means="one, or the launcher's",
        metavar="N",
    )


def add_subset_flag(parser: argparse.ArgumentParser) -> None:
    """``--subset``: the configuration of a hub data set the data flags name (TrainConfig's setting)."""
    from mcqtune.cli.parsing import add_settings
    from mcqtune.config import TrainConfig

    add_settings(parser, TrainConfig, ("subset",))


def add_debias_args(parser: argparse.ArgumentParser) -> None:
    from mcqtune.cli.parsing import add_settings

    group = parser.add_argument_group("debiasing (content-free letter prior, see docs/EVALUATION.md)")
    add_settings(group, DebiasArgs)


def add_num_processes(parser: argparse.ArgumentParser, what: str) -> None:
    """``--num-processes`` with what the processes do for this command in front of the shared help."""
    from mcqtune.cli.parsing import add_settings

    add_settings(parser, LaunchArgs)
    action = parser._actions[-1]
    action.help = f"{what}: {action.help}"


def parse_option_pairs(pairs: list[str] | None) -> dict[str, Any]:
    """``--option r=8 --option target_modules=attention`` -> typed dict (YAML scalar rules)."""
    import yaml

    from mcqtune.errors import ConfigError

    options: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--option expects KEY=VALUE, got '{pair}'")
        options[key.strip()] = yaml.safe_load(value)
    return options


def warn_unsafe_loading(args: argparse.Namespace) -> None:
    if args.allow_pickle:
        print(
            "warning: --allow-pickle: pickled weights run code when loaded; use only trusted files",
            file=sys.stderr,
        )
    if args.trust_remote_code:
        print(
            "warning: --trust-remote-code: the model's own Python code will run on this machine",
            file=sys.stderr,
        )


def launch_processes(args: argparse.Namespace) -> int | None:
    """``--num-processes N`` outside a launcher: start N processes of this same command and return
    their exit code (None: run here, in this process, which may be one of a launch's processes)."""
    from mcqtune.cli.parsing import check_settings
    from mcqtune.distributed import join_launch, launched_processes, relaunch
    from mcqtune.errors import ConfigError

    check_settings(args, LaunchArgs)
    wanted, launched = args.num_processes, launched_processes()
    if wanted is None or wanted == launched:
        join_launch()
        return None
    if launched > 1:
        raise ConfigError(f"--num-processes {wanted}, but the launcher started {launched} processes")
    return relaunch(wanted, without_option(command_argv(args), "--num-processes"))


def command_argv(args: argparse.Namespace) -> list[str]:
    """The words this command was started with (after ``mcqtune``)."""
    return getattr(args, "argv", None) or sys.argv[1:]


def without_option(argv: list[str], flag: str) -> list[str]:
    """``argv`` less ``flag VALUE`` and ``flag=VALUE``."""
    kept: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == flag:
            skip = True
        elif not arg.startswith(f"{flag}="):
            kept.append(arg)
    return kept


def open_predictor(args: argparse.Namespace):
    """The base (--model, else the run's own) with --run attached; returns it and the run's name."""
    from mcqtune.inference import Predictor

    warn_unsafe_loading(args)
    name = (Path(args.run).name or "run") if args.run else None
    predictor = Predictor.open(
        args.model,
        {name: args.run} if name else None,
        precision=args.precision,
        allow_pickle=args.allow_pickle,
        trust_remote_code=args.trust_remote_code,
    )
    return predictor, name


def check_scoring_args(args: argparse.Namespace, *classes: type):
    """Numbers, output paths and a given prior are checked before any model is loaded; returns the
    ``--prior`` read (None without one)."""
    from mcqtune.cli.parsing import check_settings
    from mcqtune.evaluation.debias import LetterPrior
    from mcqtune.preflight import check_output_dir, check_output_file

    check_settings(args, DebiasArgs, *classes)
    output = getattr(args, "output", None)
    if output:
        check_output_file(output)
        if Path(output).exists() and not args.overwrite:
            raise FileExistsError(f"--output {output} exists; pass --overwrite to replace it")
    if args.save_prior:
        check_output_file(args.save_prior, "--save-prior")
    if getattr(args, "report", None):
        check_output_dir(args.report, "--report")
    return LetterPrior.load(args.prior) if args.prior else None


def run_analyses(args: argparse.Namespace, predictor, run: str | None, examples, prior, batch_size=16):
    """Score (under option permutations when asked) and debias (when asked): see evaluation.analysis."""
    from mcqtune.cli.data_args import field_map_from_args
    from mcqtune.data import DataRef
    from mcqtune.distributed import is_main_process
    from mcqtune.evaluation.analysis import parse_permutations

    permutations = getattr(args, "permutations", None)
    calibration_examples = None
    calibration_source = None
    if args.debias and prior is None and args.calibration_data:
        ref = DataRef.parse(args.calibration_data, "train", args.subset)
        calibration_examples = ref.load(args.format, field_map_from_args(args), require_answer=False).examples
        calibration_source = ref.label
    result = predictor.score(
        examples,
        run,
        None if args.scoring == "auto" else args.scoring,
        batch_size=batch_size,
        permutations=parse_permutations(permutations) if permutations else None,
        debias_prior=args.debias,
        prior=prior,
        calibration_examples=calibration_examples,
        calibration_size=args.calibration_size,
        calibration_source=calibration_source,
        seed=args.seed,
    )
    if not is_main_process():  # the main process warns and writes for the launch
        return result
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if args.save_prior and result.prior is not None:
        result.prior.save(args.save_prior)
        print(f"wrote letter prior {args.save_prior}", file=sys.stderr)
    return result
