"""Draw bifp_celeba_resnet10_h100_val.{csv -> png}: validation accuracy and accuracy gap at 67.2 %
sparsity per method, one dot per seed and run (A: every method, B: a repeat of eight), the dense
models' mean as a line. Run: python docs/results/plot_bifp_h100.py"""
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd

HERE = Path(__file__).parent
table = pd.read_csv(HERE / "bifp_celeba_resnet10_h100_val.csv")
dense = table[table.method == "dense"]
at = table[table.sparsity == 0.6723]
order = at.groupby("method").val_gap.mean().sort_values().index.tolist()
fig, axes = plt.subplots(1, 2, figsize=(12, 5), sharey=True)
for ax, column, label in ((axes[0], "val_acc", "validation accuracy"), (axes[1], "val_gap", "accuracy gap (women vs men)")):
    for run, marker in (("A", "o"), ("B", "^")):
        rows = at[at.run == run]
        ax.scatter(rows[column], [order.index(m) for m in rows.method], marker=marker, alpha=0.7, label=f"run {run}")
    means = at.groupby("method")[column].mean()
    ax.scatter([means[m] for m in order], range(len(order)), marker="|", s=300, color="black", label="mean")
    ax.axvline(dense[column].mean(), color="grey", linestyle="--", label="dense (mean)")
    ax.set_xlabel(label)
axes[0].set_yticks(range(len(order)), order)
axes[1].legend(loc="lower right", fontsize=8)
fig.suptitle("CelebA Blond_Hair by Male, ResNet-10 at 64 px, 20 + 10 epochs, 67.2 % sparsity, H100 (validation split)")
fig.tight_layout()
fig.savefig(HERE / "bifp_celeba_resnet10_h100_val.png", dpi=110)
