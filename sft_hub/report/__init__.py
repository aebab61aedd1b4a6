"""Reports people can look at: `sft-hub report RUN [RUN ...]` and the report written at the end of training.

```
<run>/report/README.md                         index of everything below
<run>/report/curves.png                        training loss, learning rate, every eval metric against step
<run>/report/confusion_matrix[_normalized].png counts, and each true class's row normalised
<run>/report/per_class.md | per_class.json     precision / recall / F1 / support per class (scikit-learn)
<run>/report/mistakes.json (+ mistakes.png)    most confident wrong predictions (image runs: thumbnails)
```
Modules: `curves` (metrics.jsonl), `classes` (confusion matrix, per-class table), `mistakes`, `card` (the
model card's report section), `tensorboard` (event files under `<run>/tensorboard`), `build` (assembly).
The package imports nothing itself: `training_args` reads `report.tensorboard` while the config is
still being imported, and `build` needs the run objects, which need the config.
"""
