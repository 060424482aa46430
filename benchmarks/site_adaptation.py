"""Site adaptation on the simulated scanners: a source model, a new scanner, 0-4 labelled target subjects.

Three ``nnext benchmark`` runs and a table:

1. **source**: ``nnext benchmark DATASET -tr nnUNetTrainer --folds SOURCE_FOLD`` (with the baselines stock, NoDA,
   DA5): the models trained on the source scanner; their target-scanner Dice is the "no adaptation" row.
2. **adapt**: for each number of labelled subjects N and each draw D, ``nnext adapt`` defines a fold (seed D picks
   the N target subjects; source model: stock nnU-Net of seed 0); ``nnext benchmark DATASET -tr
   nnUNetTrainerFineTuneAll ... --folds ADAPTATION_FOLDS`` trains every adaptation trainer on every fold, and the
   baselines stock / NoDA / DA5 from scratch on the N target subjects alone.
   With ``--labelled 0`` an unlabelled fold (every target training subject, labels unused) runs
   ``nnUNetTrainerAIVA`` in ``OUT/unlabelled``; there the baselines train on every target subject's labels (the
   AIVA paper's target-trained upper bound).
3. ``OUT/site_adaptation.{json,md,png}``: per N and row, target-scanner Dice (mean +- sd over draws x seeds) and
   source-scanner Dice after adaptation (forgetting, the paper's Table 3), training cost per iteration against
   stock nnU-Net in the same run.

Every step is cached by ``nnext benchmark``: re-running the command continues where it stopped. Run from the
repository (nnunet-ext installed), with ``nnUNet_raw`` / ``nnUNet_preprocessed`` / ``nnUNet_results`` set::

    python benchmarks/site_adaptation.py 993 -p nnUNetPlansCPU --source-fold 1 --target ge_15 \\
        --labelled 0 1 4 --draws 0 1 --budget demo --seeds 0 -o bench_site_adaptation
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bench_common import machine_facts

from nnunet_ext.adaptation import define_adaptation_fold
from nnunet_ext.benchmark.matrix import domain_value, stats
from nnunet_ext.benchmark.report import _fmt
from nnunet_ext.benchmark.rows import Run, parse_row
from nnunet_ext.cli.main import main as nnext
from nnunet_ext.domains import load_domains
from nnunet_ext.trainers.budget import budget_trainer_name
from nnunet_ext.utils.atomic import write_json_atomic, write_text_atomic
from nnunet_ext.utils.nnunet_paths import dataset_folder, fold_folder, model_folder
from nnunet_ext.utils.plotting import default_style

METHODS = ("nnUNetTrainerFineTuneAll", "nnUNetTrainerFineTuneFirst", "nnUNetTrainerFineTuneLast", "nnUNetTrainerL2SP",
           "nnUNetTrainerMMTL", "nnUNetTrainerOCTL", "nnUNetTrainerSpotTUNet")
UNSUPERVISED = ("nnUNetTrainerAIVA",)
BASELINES = ("nnUNetTrainer", "nnUNetTrainerNoDA", "nnUNetTrainerDA5")
#: the paper's Table 2 (SGD, CC-359 sDice at 1 mm, 90 / 1080 target slices ~ 1 / 4 subjects) and Table 3 (source
#: sDice after adaptation), for the page
PAPER = {"FTA": (74.45, 82.64), "FTF": (73.23, 77.49), "L2SP": (73.69, 79.10), "OCTL": (73.44, 86.98),
         "MMTL": (78.46, 84.16)}


def _benchmark(args, rows: list[str], folds: list[str], out: Path) -> dict:
    argv = ["benchmark", str(args.dataset), "-p", args.plans, "-tr", *rows, "--budget", args.budget, "--seeds",
            *map(str, args.seeds), "--folds", *folds, "-o", str(out)]
    if args.disable_tta:
        argv.append("--disable-tta")
    print("nnext " + " ".join(argv), file=sys.stderr, flush=True)
    code = nnext(argv)
    if code != 0:  # an incomplete matrix (a failed run): the table shows what finished, the log says what failed
        print(f"nnext benchmark exited with {code}: some runs did not finish, see {out}/benchmark.md", file=sys.stderr)
    return json.loads((out / "benchmark.json").read_text(encoding="utf-8"))


def _values(out: Path, seeds: list[int], fold: str, row: str, domain: str) -> list[float]:
    """Per-seed Dice of ``row`` on ``domain`` in ``fold``, from the runs' evaluations in the benchmark folder."""
    values = []
    for seed in seeds:
        path = out / "runs" / Run(parse_row(row), seed, fold).key / "evaluation.json"
        if path.is_file():
            value = domain_value(json.loads(path.read_text(encoding="utf-8")), domain, "dice")
            if value is not None:
                values.append(value)
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", type=int)
    parser.add_argument("-p", "--plans", default="nnUNetPlans")
    parser.add_argument("--source-fold", type=int, default=1)
    parser.add_argument("--target", required=True)
    parser.add_argument("--labelled", type=int, nargs="+", default=[0, 1, 4],
                        help="labelled target subjects per fold; 0: the unlabelled fold (AIVA; the baselines then "
                             "train on every target subject's labels, the paper's target-trained upper bound)")
    parser.add_argument("--draws", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--budget", default="demo")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--disable-tta", action="store_true")
    parser.add_argument("-o", "--output", type=Path, required=True)
    args = parser.parse_args()

    source = _benchmark(args, ["nnUNetTrainer"], [str(args.source_fold)], args.output / "source")
    raw, pre = dataset_folder("raw", args.dataset), dataset_folder("preprocessed", args.dataset)
    domains = load_domains(raw / "domains.json")
    stock = budget_trainer_name("nnUNetTrainer", args.budget, args.seeds[0])
    checkpoint = fold_folder(model_folder(args.dataset, stock, args.plans, "2d"), args.source_fold)
    checkpoint = checkpoint / "checkpoint_final.pth"
    folds = {n: [define_adaptation_fold(pre, domains, args.source_fold, checkpoint, args.target, n, seed=d)
                 for d in (args.draws if n else [0])] for n in args.labelled}
    # supervised methods on the labelled folds; AIVA on the unlabelled one (N = 0): two benchmarks, as a trainer
    # refuses the other kind of fold
    parts = {"adapt": (METHODS, [n for n in folds if n]), "unlabelled": (UNSUPERVISED, [n for n in folds if not n])}
    results = {}
    for name, (rows, ns) in parts.items():
        if ns:
            results[name] = _benchmark(args, list(rows), [str(f.fold) for n in ns for f in folds[n]],
                                       args.output / name)
    source_domains = source["matrix"]["folds"][str(args.source_fold)]["source_domains"]
    table: dict = {"no adaptation": {}, "labelled": {}}
    src_out, seeds = args.output / "source", args.seeds
    for row in BASELINES:
        fold = str(args.source_fold)
        table["no adaptation"][row] = {
            "target": stats(_values(src_out, seeds, fold, row, args.target)),
            "source": stats([v for d in source_domains for v in _values(src_out, seeds, fold, row, d)])}
    costs = {}
    for name, (rows, ns) in parts.items():
        for n in ns:
            table["labelled"][n] = {}
            for row in (*BASELINES, *rows):
                out = args.output / name
                target = [v for f in folds[n] for v in _values(out, seeds, str(f.fold), row, args.target)]
                src = [v for f in folds[n] for d in source_domains for v in _values(out, seeds, str(f.fold), row, d)]
                table["labelled"][n][row] = {"target": stats(target), "source": stats(src)}
        if name in results:
            costs.update({row: results[name]["matrix"]["costs"][row]["train_s_per_iteration"] for row in rows})
            stock_cost = results[name]["matrix"]["costs"]["nnUNetTrainer"]["train_s_per_iteration"]
            costs.setdefault("nnUNetTrainer", stock_cost)
    result = {"command": " ".join(sys.argv), "machine": machine_facts(), "target": args.target,
              "source_domains": source_domains, "budget": args.budget, "seeds": args.seeds, "draws": args.draws,
              "folds": {n: [f.fold for f in fs] for n, fs in folds.items()},
              "labelled_subjects": {n: [f.labelled_subjects for f in fs] for n, fs in folds.items()},
              "table": table, "train_s_per_iteration": costs, "paper_table2_sgd_sdice": PAPER}
    write_json_atomic(args.output / "site_adaptation.json", result)
    write_text_atomic(args.output / "site_adaptation.md", _markdown(result))
    _figure(result, args.output / "site_adaptation.png")
    print((args.output / "site_adaptation.md").read_text())


def _markdown(r: dict) -> str:
    ns = list(r["table"]["labelled"])
    head = ["row", *[f"{r['target']}, N={n}" for n in ns], *[f"source after, N={n}" for n in ns],
            "s/iteration (x stock)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row, v in r["table"]["no adaptation"].items():
        cells = [_fmt(v["target"])] * len(ns) + [_fmt(v["source"])] * len(ns)
        sources = ", ".join(r["source_domains"])
        lines.append(f"| {row} on {sources} only (no adaptation) | " + " | ".join(cells) + " | - |")
    rows = list(dict.fromkeys(row for n in ns for row in r["table"]["labelled"][n]))
    empty = stats([])
    for row in rows:
        cells = [_fmt(r["table"]["labelled"][n].get(row, {}).get("target", empty)) for n in ns]
        cells += [_fmt(r["table"]["labelled"][n].get(row, {}).get("source", empty)) for n in ns]
        cost = r["train_s_per_iteration"].get(row) or {}
        cells.append(f"{cost['median']:.3f} ({cost['ratio']:.2f}x)" if cost.get("median") and cost.get("ratio")
                     else "-")
        scratch = " (from scratch on the target subjects' labels)" if row in BASELINES else ""
        lines.append(f"| {row}{scratch} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _figure(r: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    default_style()
    ns = list(r["table"]["labelled"])
    rows = list(dict.fromkeys(row for n in ns for row in r["table"]["labelled"][n]))
    colours = plt.get_cmap("tab20")(range(len(rows)))
    fig, axes = plt.subplots(1, 2, figsize=(13, 4), sharey=True)
    for ax, key, title in ((axes[0], "target", f"target scanner {r['target']}"),
                           (axes[1], "source", f"source scanner {', '.join(r['source_domains'])} (forgetting)")):
        width = 0.8 / len(rows)
        for i, row in enumerate(rows):
            means = [(r["table"]["labelled"][n].get(row, {}).get(key) or {}).get("mean") or 0 for n in ns]
            label = row.replace("nnUNetTrainer", "") or "stock"
            ax.bar([k + i * width for k in range(len(ns))], means, width, label=label, color=colours[i])
        base = r["table"]["no adaptation"]["nnUNetTrainer"][key]["mean"]
        if base is not None:
            ax.axhline(base, color="k", ls="--", lw=1, label="stock source model, no adaptation")
        ax.set_xticks([k + 0.4 - width / 2 for k in range(len(ns))], [f"N={n}" for n in ns])
        ax.set_title(title)
        ax.set_ylabel("Dice (foreground mean)")
        ax.set_ylim(0.5, 0.85)
    axes[1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
