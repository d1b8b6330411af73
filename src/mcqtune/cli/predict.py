"""``mcqtune predict``: answer one typed question or a file of questions, with every option's score."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from mcqtune.cli.common import (
    LoadingArgs,
    ModelArgs,
    add_debias_args,
    add_subset_flag,
    check_scoring_args,
    open_predictor,
    run_analyses,
)
from mcqtune.settings import setting

HELP = "answer questions and show every option's probability"
DESCRIPTION = "Predict for one question (--question/--choice) or a JSONL file (--data)."


@dataclass
class PredictArgs:
    question: str | None = setting(None, "one question to answer (with two or more --choice)")
    choice: list[str] | None = setting(None, "an option (repeat, in order)", repeat=True)
    data: str | None = setting(
        None, "questions (answers optional): a file, bundled name, data set directory or hub id"
    )
    json: bool = setting(False, "one JSON object per question")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from mcqtune.cli.data_args import add_data_args
    from mcqtune.cli.parsing import add_settings

    add_settings(parser, ModelArgs)
    add_settings(parser, LoadingArgs)
    add_settings(parser, PredictArgs)
    add_subset_flag(parser)
    add_debias_args(parser)
    add_data_args(parser)


def predict_examples(args: argparse.Namespace):
    from mcqtune.cli.data_args import field_map_from_args
    from mcqtune.data import DataError, DataRef
    from mcqtune.inference import typed_question

    if args.data:
        ref = DataRef.parse(args.data, "validation", args.subset)
        return ref.load(args.format, field_map_from_args(args), require_answer=False).examples
    if args.question is None or not args.choice or len(args.choice) < 2:
        raise DataError("predict needs --data FILE, or --question and at least two --choice")
    return [typed_question(args.question, args.choice)]


def run(args: argparse.Namespace) -> int:
    import json

    from mcqtune.data import DataError
    from mcqtune.inference import predictions

    examples = predict_examples(args)
    debiasing = args.debias or args.prior
    if debiasing and not (args.prior or args.calibration_data or args.data):
        raise DataError(
            "predict --debias needs a letter prior: --prior FILE (from eval --save-prior), "
            "--calibration-data FILE, or --data with several questions"
        )
    prior = check_scoring_args(args)
    predictor, run_name = open_predictor(args)
    result = run_analyses(args, predictor, run_name, examples, prior)
    records = predictions(result)
    if args.json:
        for record in records:
            print(json.dumps(record.to_dict()))
        return 0
    source = f"run {args.run}" if args.run else f"zero-shot {predictor.model_id}"
    print(f"{source}, {result.scored.scoring} scoring{', debiased' if result.debiased is not None else ''}")
    print(probability_note(records, result.temperature))
    for record in records:
        print_record(record, from_file=bool(args.data))
    judged = [r.correct for r in records if r.correct is not None]
    if args.data and judged:
        print(f"{sum(judged)} of {len(judged)} questions with a known answer right")
    return 0


def probability_note(records, temperature: float | None) -> str:
    """What the percentages are: calibrated probabilities (the run's fitted temperature) or scores."""
    if records and records[0].calibrated:
        fitted = f"temperature {temperature:.3g}, fitted on the run's validation split"
        return f"probabilities: calibrated ({fitted})"
    return (
        "probabilities: uncalibrated scores (a softmax over option scores: the zero-shot model, a run "
        "trained before calibration, or debiased scores), not how often the answer is right"
    )


def print_record(record, from_file: bool) -> None:
    """One line per question from a file; a typed question with each option's probability."""
    import textwrap

    from mcqtune.data import LETTERS

    choices = record.example.choices
    chosen = f"{record.letter}. {choices[record.index]}"
    if from_file:
        question = textwrap.shorten(record.example.question, 60, placeholder="...")
        verdict = "" if record.correct is None else "  right" if record.correct else "  wrong"
        gold = f" (answer {record.example.answer_letter})" if record.correct is False else ""
        print(f"{record.example.id}: {question} -> {chosen}{verdict}{gold}")
        return
    note = f"  (without debiasing {LETTERS[record.raw_index]})" if record.debiased else ""
    print(f"{record.example.question}\nanswer: {chosen}{note}")
    for i, (choice, probability) in enumerate(zip(choices, record.probabilities, strict=True)):
        mark = "*" if i == record.index else " "
        print(f"  {mark} {LETTERS[i]}. {probability * 100:5.1f}%  {choice}")
