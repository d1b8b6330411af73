"""What a search leaves in its output directory, rebuilt from the studies after every run (so the last
process to finish writes the whole picture): ``search.json``, ``report.md``, ``report.html``, the
best trial per method as ``best/<method>.yaml`` (a train config ``mcqtune train --config`` runs as is,
and ``compare --from-search`` trains with seeds), the accuracy-vs-trainable-parameters Pareto front,
and Optuna's optimisation-history and parameter-importance plots per method (``plots/*.png``).
"""

from __future__ import annotations

import html
import math
import warnings
from pathlib import Path
from typing import Any

from mcqtune.atomic import atomic_write_json, atomic_write_text, atomic_write_yaml
from mcqtune.search.settings import BEST_DIR
from mcqtune.search.study import FAIL_REASON, state_name

PLOTS_DIR = "plots"
RESULTS_FILE = "search.json"
REPORT_MD = "report.md"
REPORT_HTML = "report.html"
ATTRS = (
    "trainable_params",
    "wall_seconds",
    "train_seconds",
    "peak_memory_bytes",
    "peak_memory_kind",
    "worker",
)


def trial_row(method: str, trial) -> dict[str, Any]:
    """One trial as the report and search.json show it."""
    attrs = trial.user_attrs
    return {
        "method": method,
        "number": trial.number,
        "state": state_name(trial),
        "dev_accuracy": trial.value if state_name(trial) == "complete" else None,
        "checks": {str(k): v for k, v in sorted(trial.intermediate_values.items())},
        "params": dict(trial.params),
        **{key: attrs.get(key) for key in ATTRS},
        "error": attrs.get(FAIL_REASON),
        "run_dir": attrs.get("run_dir"),
    }


def pareto_front(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Finished trials no other beats on both dev accuracy (higher) and trainable parameters (fewer),
    from the fewest parameters up."""
    done = [r for r in rows if r["dev_accuracy"] is not None and r["trainable_params"] is not None]
    front = []
    for r in sorted(done, key=lambda r: (r["trainable_params"], -r["dev_accuracy"])):
        if not front or r["dev_accuracy"] > front[-1]["dev_accuracy"]:
            front.append(r)
    return front


def write_report(settings, plan, studies: dict[str, Any]) -> dict[str, Any]:
    """Every output file, from the studies as they are now; returns search.json's content."""
    out = settings.output
    rows: list[dict[str, Any]] = []
    summary: dict[str, Any] = {}
    for method, study in studies.items():
        trials = study.get_trials(deepcopy=False)
        method_rows = [trial_row(method, t) for t in trials]
        rows += method_rows
        counts = {
            s: sum(r["state"] == s for r in method_rows) for s in ("complete", "pruned", "fail", "running")
        }
        done = [r for r in method_rows if r["dev_accuracy"] is not None]
        best = max(done, key=lambda r: (r["dev_accuracy"], -r["number"]), default=None)
        entry: dict[str, Any] = {
            "study": study.study_name,
            "trials": len(method_rows),
            **counts,
            "best": best,
        }
        if best is not None:
            path = out / BEST_DIR / f"{method}.yaml"
            atomic_write_yaml(path, plan.best_config(method, best["params"]).to_dict())
            entry["best_yaml"] = str(path)
        summary[method] = entry
    front = pareto_front(rows)
    plots = write_plots(out, studies, rows, front)
    config = plan.configs[plan.methods[0]]
    results = {
        "command": settings.command,
        "storage": settings.storage_url,
        "study": settings.study,
        "pruner": settings.pruner,
        "methods": summary,
        "spaces": {m: {p.name: p.describe() for p in s.params} for m, s in plan.spaces.items()},
        "budget": {k: getattr(config, k) for k in ("max_steps", "batch_size", "eval_steps", "seed")},
        "dev": {k: v for k, v in plan.dev_info.items() if k != "dev_ids"},
        "pareto": [{"method": r["method"], "number": r["number"]} for r in front],
        "trials": rows,
        "plots": [str(p.relative_to(out)) for p in plots],
    }
    atomic_write_json(out / RESULTS_FILE, results)
    atomic_write_text(out / REPORT_MD, markdown_report(results))
    atomic_write_text(out / REPORT_HTML, html_report(results))
    return results


def write_plots(
    out: Path, studies: dict[str, Any], rows: list[dict[str, Any]], front: list[dict]
) -> list[Path]:
    """Optuna's optimisation history and parameter importances per method (where there is enough to
    draw: a finished trial; two, and a parameter that varied, for importances) and the Pareto front."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as vis

    folder = out / PLOTS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for method, study in studies.items():
        done = [r for r in rows if r["method"] == method and r["dev_accuracy"] is not None]
        draws = [("history", vis.plot_optimization_history)] if done else []
        if len(done) >= 2:
            draws.append(("importance", vis.plot_param_importances))
        for kind, draw in draws:
            try:
                with warnings.catch_warnings():  # "importances will be equal", "no artists in legend"
                    warnings.simplefilter("ignore")
                    ax = draw(study)
            except (ValueError, RuntimeError, ZeroDivisionError):  # e.g. no parameter varied
                continue
            loc = "left" if ax.get_title(loc="left") else "center"  # where Optuna put its title
            ax.set_title(f"{method}: {ax.get_title(loc=loc)}", loc=loc)
            if kind == "history":
                ax.set_ylabel("dev accuracy")
            path = folder / f"{method}-{kind}.png"
            ax.figure.savefig(path, dpi=110, bbox_inches="tight")
            plt.close(ax.figure)
            paths.append(path)
    done = [r for r in rows if r["dev_accuracy"] is not None and r["trainable_params"]]
    if done:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for method in studies:
            mine = [r for r in done if r["method"] == method]
            if mine:
                ax.scatter(
                    [r["trainable_params"] for r in mine],
                    [r["dev_accuracy"] * 100 for r in mine],
                    label=method,
                    alpha=0.7,
                )
        ax.plot(
            [r["trainable_params"] for r in front],
            [r["dev_accuracy"] * 100 for r in front],
            "k--",
            lw=1,
            label="Pareto front",
        )
        ax.set_xscale("log")
        ax.set_xlabel("trainable parameters")
        ax.set_ylabel("dev accuracy (%)")
        ax.set_title("Finished trials: dev accuracy vs trainable parameters")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        path = folder / "pareto.png"
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
        paths.append(path)
    return paths


def _fmt_params(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def _fmt_count(n: int | None) -> str:
    return "–" if n is None else f"{n:,}"


def _fmt_memory(n: int | None) -> str:
    return "–" if not n else f"{n / 2**20:,.0f} MiB"


def _fmt_seconds(s: float | None) -> str:
    return "–" if s is None or (isinstance(s, float) and math.isnan(s)) else f"{s:.0f} s"


def best_table(results: dict[str, Any]) -> list[list[str]]:
    """Header and one row per method: its best trial, or why there is none."""
    table = [
        [
            "method",
            "best dev accuracy",
            "settings",
            "trainable params",
            "time",
            "peak memory",
            "trials (done / pruned / failed)",
        ]
    ]
    for method, entry in results["methods"].items():
        best = entry["best"]
        counts = f"{entry['trials']} ({entry['complete']} / {entry['pruned']} / {entry['fail']})"
        if best is None:
            table.append([method, "–", "no finished trial", "–", "–", "–", counts])
            continue
        table.append(
            [
                method,
                f"{best['dev_accuracy'] * 100:.1f}% (trial {best['number']})",
                _fmt_params(best["params"]),
                _fmt_count(best["trainable_params"]),
                _fmt_seconds(best["wall_seconds"]),
                _fmt_memory(best["peak_memory_bytes"]),
                counts,
            ]
        )
    return table


def markdown_report(results: dict[str, Any]) -> str:
    dev, budget = results["dev"], results["budget"]
    lines = [
        "# mcqtune search",
        "",
        f"Command: `{results['command']}`" if results.get("command") else "",
        f"Storage: `{results['storage']}`, studies `{results['study']}.<method>`, "
        f"pruner {results['pruner']}.",
        f"Every trial: {budget['max_steps']} steps x batch {budget['batch_size']} on "
        f"{dev['train_rows']} training rows, dev accuracy checked every {budget['eval_steps']} steps on a "
        f"dev split of {dev['size']} training rows (seed {dev['seed']}; no validation question). Dev "
        "accuracy chooses; it is not a held-out score: `mcqtune compare --from-search OUTPUT` trains the "
        "best settings with seeds and scores them on validation.",
        "",
        "## Best trial per method",
        "",
    ]
    table = best_table(results)
    lines += ["| " + " | ".join(table[0]) + " |", "|" + "---|" * len(table[0])]
    lines += ["| " + " | ".join(row) + " |" for row in table[1:]]
    lines += ["", "## Pareto front (dev accuracy vs trainable parameters)", ""]
    by_key = {(r["method"], r["number"]): r for r in results["trials"]}
    for p in results["pareto"]:
        r = by_key[(p["method"], p["number"])]
        accuracy, params = f"{r['dev_accuracy'] * 100:.1f}%", _fmt_count(r["trainable_params"])
        lines.append(
            f"- {r['method']} trial {r['number']}: {accuracy} with {params} trainable "
            f"({_fmt_params(r['params'])})"
        )
    if not results["pareto"]:
        lines.append("No finished trial yet.")
    lines += ["", "## Search spaces", ""]
    for method, space in results["spaces"].items():
        lines.append(f"- {method}: " + ", ".join(f"{k} {v}" for k, v in space.items()))
    failed = [r for r in results["trials"] if r["state"] == "fail"]
    if failed:
        lines += ["", "## Failed trials", ""]
        lines += [
            f"- {r['method']} trial {r['number']} ({_fmt_params(r['params'])}): {r['error']}" for r in failed
        ]
    lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in results["plots"]]
    return "\n".join(line for line in lines if line is not None) + "\n"


def html_report(results: dict[str, Any]) -> str:
    e = html.escape
    table = best_table(results)
    head = "".join(f"<th>{e(c)}</th>" for c in table[0])
    body = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in table[1:])
    trial_rows = "".join(
        "<tr>"
        + "".join(
            f"<td>{e(str(c))}</td>"
            for c in (
                r["method"],
                r["number"],
                r["state"],
                "–" if r["dev_accuracy"] is None else f"{r['dev_accuracy'] * 100:.1f}%",
                _fmt_params(r["params"]),
                _fmt_count(r["trainable_params"]),
                _fmt_seconds(r["wall_seconds"]),
                r["error"] or "",
            )
        )
        + "</tr>"
        for r in results["trials"]
    )
    images = "".join(f'<figure><img src="{e(p)}" alt="{e(p)}"></figure>' for p in results["plots"])
    md_intro = markdown_report(results).split("## Best trial per method")[0].split("\n", 2)[2]
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>mcqtune search</title>"
        "<style>body{font-family:sans-serif;max-width:70em;margin:2em auto}td,th{border:1px solid #ccc;"
        "padding:.3em .6em}table{border-collapse:collapse}img{max-width:100%}</style></head><body>"
        "<h1>mcqtune search: the best settings per method</h1>"
        + "".join(f"<p>{e(p)}</p>" for p in md_intro.split("\n") if p.strip())
        + f"<h2>Best trial per method</h2><table><tr>{head}</tr>{body}</table>"
        + "<h2>Every trial</h2><table><tr><th>method</th><th>trial</th><th>state</th><th>dev accuracy</th>"
        "<th>settings</th><th>trainable params</th><th>time</th><th>error</th></tr>"
        + trial_rows
        + "</table><h2>Plots</h2>"
        + images
        + "</body></html>\n"
    )
