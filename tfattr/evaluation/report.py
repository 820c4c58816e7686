"""The Table-1 style attribute report (paper Sec. 3, Tables 1 and 2).

Given binary predictions and {0,1} labels for the 40 attributes, computes
per-attribute accuracy (Table 1), balanced accuracy (mean of the true-positive
and true-negative rates, the Table 2 measure), the majority-class baseline,
and writes them as Markdown + CSV + a bar-chart PNG, optionally beside the
paper's published LNets+ANet rows (reference data, cited, never our figures).
"""

import csv
import dataclasses
from pathlib import Path

import numpy as np

from tfattr.attributes import ATTRIBUTE_NAMES, NUM_ATTRIBUTES

# A copy of ../shared/paper/table1_lnets_anet.csv (the paper's Table 1), shipped with the package.
PAPER_TABLE1 = Path(__file__).with_name("paper_table1.csv")


@dataclasses.dataclass(frozen=True)
class AttributeReport:
    """Per-attribute figures, each a float array [40] in [0, 1]."""

    accuracy: np.ndarray
    balanced_accuracy: np.ndarray
    majority_baseline: np.ndarray
    positive_rate: np.ndarray
    num_examples: int

    def mean(self, field, names=None):
        values = getattr(self, field)
        if names is not None:
            values = values[[ATTRIBUTE_NAMES.index(n) for n in names]]
        return float(np.mean(values))


def compute_report(predictions, labels):
    """predictions, labels: [N, 40] in {0, 1} (predictions may be bool)."""
    predictions = np.asarray(predictions).astype(bool)
    labels = np.asarray(labels).astype(bool)
    if predictions.shape != labels.shape or predictions.ndim != 2 \
            or predictions.shape[1] != NUM_ATTRIBUTES:
        raise ValueError(f"expected predictions and labels of shape [N, {NUM_ATTRIBUTES}], "
                         f"got {predictions.shape} and {labels.shape}")
    if len(labels) == 0:
        raise ValueError("no examples to evaluate")
    correct = predictions == labels
    positives = labels.sum(0)
    negatives = (~labels).sum(0)
    tpr = np.where(positives > 0, (predictions & labels).sum(0) / np.maximum(positives, 1), np.nan)
    tnr = np.where(negatives > 0, (~predictions & ~labels).sum(0) / np.maximum(negatives, 1), np.nan)
    # An attribute with one class only in the split: balanced accuracy is the defined rate.
    balanced = np.where(np.isnan(tpr), tnr, np.where(np.isnan(tnr), tpr, (tpr + tnr) / 2))
    rate = labels.mean(0)
    return AttributeReport(accuracy=correct.mean(0), balanced_accuracy=balanced,
                           majority_baseline=np.maximum(rate, 1 - rate), positive_rate=rate,
                           num_examples=len(labels))


def read_paper_table1(path=PAPER_TABLE1):
    """{"celeba": [40], "lfwa": [40]} accuracies in [0, 1], or None if the file is absent."""
    path = Path(path)
    if not path.exists():
        return None
    rows = [line for line in path.read_text().splitlines() if line and not line.startswith("#")]
    reader = csv.DictReader(rows)
    table = {row["attribute"]: row for row in reader}
    return {column: np.array([float(table[name][column]) / 100 for name in ATTRIBUTE_NAMES])
            for column in ("celeba", "lfwa")}


def write_report(report, out_dir, title, rendered=None, paper_column=None):
    """Writes table1.md, table1.csv and table1.png into out_dir; returns the paths.

    rendered: attribute names to average separately (synthetic data).
    paper_column: "celeba" or "lfwa" to add the paper's LNets+ANet row.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paper = read_paper_table1() if paper_column else None
    rows = [("accuracy", report.accuracy), ("balanced_accuracy", report.balanced_accuracy),
            ("majority_baseline", report.majority_baseline)]
    if paper is not None:
        rows.append((f"paper_lnets_anet_{paper_column}", paper[paper_column]))

    csv_path = out_dir / "table1.csv"
    with csv_path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["row", *ATTRIBUTE_NAMES, "average"]
                        + (["average_rendered"] if rendered else []))
        for name, values in rows:
            extra = [f"{np.mean(values[[ATTRIBUTE_NAMES.index(n) for n in rendered]]):.4f}"] \
                if rendered else []
            writer.writerow([name, *(f"{v:.4f}" for v in values), f"{np.mean(values):.4f}", *extra])

    md_path = out_dir / "table1.md"
    lines = [f"# {title}", "", f"{report.num_examples} test images. Accuracy in %, "
             "laid out like Table 1 of Liu et al. (ICCV 2015); balanced accuracy is the "
             "Table 2 measure (mean of true-positive and true-negative rates).", ""]
    for start in range(0, NUM_ATTRIBUTES, 10):
        names = ATTRIBUTE_NAMES[start:start + 10]
        lines.append("| | " + " | ".join(names) + " |")
        lines.append("|---" * (len(names) + 1) + "|")
        for name, values in rows:
            cells = " | ".join(f"{100 * v:.1f}" for v in values[start:start + 10])
            lines.append(f"| {name} | {cells} |")
        lines.append("")
    lines.append("| average | " + " | ".join(name for name, _ in rows) + " |")
    lines.append("|---" * (len(rows) + 1) + "|")
    lines.append("| all 40 | " + " | ".join(f"{100 * np.mean(v):.2f}" for _, v in rows) + " |")
    if rendered:
        idx = [ATTRIBUTE_NAMES.index(n) for n in rendered]
        lines.append(f"| rendered ({len(idx)}) | "
                     + " | ".join(f"{100 * np.mean(v[idx]):.2f}" for _, v in rows) + " |")
    if paper is not None:
        lines += ["", f"The paper row is the published LNets+ANet accuracy on {paper_column} "
                  "(Liu et al., ICCV 2015, Table 1), cited for reference only."]
    md_path.write_text("\n".join(lines) + "\n")

    png_path = out_dir / "table1.png"
    _bar_chart(rows, png_path, title)
    return {"markdown": md_path, "csv": csv_path, "png": png_path}


def _bar_chart(rows, path, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(16, 5))
    width = 0.8 / len(rows)
    x = np.arange(NUM_ATTRIBUTES)
    for k, (name, values) in enumerate(rows):
        ax.bar(x + k * width - 0.4 + width / 2, 100 * values, width, label=name)
    ax.set_xticks(x)
    ax.set_xticklabels(ATTRIBUTE_NAMES, rotation=90, fontsize=8)
    ax.set_ylim(40, 100)
    ax.set_ylabel("%")
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
