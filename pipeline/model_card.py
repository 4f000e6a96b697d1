"""The model card: a markdown page about one registered version (data, architecture, metrics, lineage)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.compare import to_markdown
from pipeline.io import read_json
from pipeline.layout import Layout
from pipeline.metrics import accuracy_interval


def _differences(decision: dict[str, Any]) -> str:
    """What the challenger does differently from the champion it was gated against (McNemar's counts)."""
    gate = decision.get("mcnemar")
    if not gate:
        return ""
    champion, challenger = f"v{decision['previous_champion']}", f"v{decision['version']}"
    return f"""
## What the challenger does differently
On the {sum(map(sum, gate['table']))} test images, challenger {challenger} is right where champion {champion} \
is wrong on **{gate['table'][1][0]}**, and wrong where it is right on **{gate['table'][0][1]}** (McNemar exact \
p = {gate['p_value']:.4g}). The images, most confident mistakes first, titled `Label X | champion Y | \
challenger Z`: `registration/disagreement.png` in the MLflow run, `reports/disagreement.png` in the project.
"""


def model_card(root: Path, variant: str, decision: dict[str, Any],
               table: pd.DataFrame) -> str:
    """Render the card of the registered `variant` from the files the earlier stages wrote."""
    layout = Layout(root)
    prepared = read_json(layout.prepare_report)
    metrics = read_json(layout.metrics_file(variant))
    training = read_json(layout.training_file(variant))
    # The settings the model was trained with (training.json), not today's params.yaml.
    trained_with = training["settings"]
    settings = trained_with["train"]
    layers = "\n".join(f"{index + 1}. `{ {key: value for key, value in layer.items() if value is not None} }`"
                       for index, layer in enumerate(trained_with["variant"]["layers"]))
    low, high = accuracy_interval(metrics["test_images"] - metrics["test_errors"], metrics["test_images"])
    gate = decision.get("mcnemar") or {}
    comparison = (f"McNemar exact p = {gate['p_value']:.4g} against v{decision['previous_champion']} "
                  f"(champion accuracy {gate['champion_accuracy']:.4f})" if gate else "no champion to compare with")
    return f"""# {decision['model_name']} v{decision['version']}: `{variant}`

{trained_with['variant']['description']}

**Gate:** {'promoted to `champion`' if decision['promoted'] else 'stays `challenger`'}: {decision['reason']}.

## Data
- Source: {prepared['source']}
- Images: {prepared['input_shape'][0]}x{prepared['input_shape'][1]}x{prepared['input_shape'][2]}, \
{prepared['num_classes']} classes ({', '.join(prepared['class_names'])})
- Splits: {prepared['sizes']['train']} train / {prepared['sizes']['val']} validation / \
{prepared['sizes']['test']} test ({prepared['test_split']})
- Data version (DVC md5 of data/prepared): `{training['data_version']}`

## Architecture ({training['params']:,} parameters)
Input -> the layers below -> Dense({prepared['num_classes']}, softmax).

{layers}

Training: {settings['optimizer']} (learning rate {settings['learning_rate']}, {settings['lr_schedule']}), \
batch {settings['batch_size']}, up to {settings['epochs']} epochs with early stopping (patience \
{settings['early_stopping_patience']}), seed {training['seed']}; {training['epochs_run']} epochs run.

## Metrics
| split | accuracy | other |
|---|---|---|
| validation (selection) | {metrics['val_accuracy']:.4f} | |
| test | {metrics['test_accuracy']:.4f} (95% interval {low:.4f}-{high:.4f}) | loss {metrics['test_loss']:.4f}, \
macro F1 {metrics['test_macro_f1']:.4f}, {metrics['test_errors']} of {metrics['test_images']} wrong |

Gate: test accuracy >= {decision['min_test_accuracy']}; {comparison}.

## Error gallery
Most confident mistakes on the test split: `evaluation/error_gallery.png` in the MLflow run,
`reports/evaluation/{variant}/error_gallery.png` in the project.
{_differences(decision)}

## All variants
{to_markdown(table)}
## Lineage
- MLflow run: `{decision['run_id']}`
- Git commit: `{decision['git_commit']}`
- Params hash: `{decision['params_hash']}`
- Model file sha256: `{decision['model_sha256']}`
"""
