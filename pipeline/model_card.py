"""The model card: a markdown page about one registered version (data, architecture, metrics, lineage)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from pipeline import layout
from pipeline.compare import to_markdown
from pipeline.config import PipelineConfig
from pipeline.io import read_json


def model_card(config: PipelineConfig, root: Path, variant: str, decision: dict[str, Any],
               table: pd.DataFrame) -> str:
    """Render the card of the registered `variant` from the files the earlier stages wrote."""
    prepared = read_json(root / "reports" / "data" / "prepare.json")
    metrics = read_json(layout.metrics_file(root, variant))
    training = read_json(root / "models" / variant / "training.json")
    settings = config.train_config(variant)
    layers = "\n".join(f"{index + 1}. `{layer.model_dump(exclude_none=True)}`"
                       for index, layer in enumerate(config.variant(variant).layers))
    gate = decision.get("mcnemar") or {}
    comparison = (f"McNemar exact p = {gate['p_value']:.4g} against v{decision['previous_champion']} "
                  f"(champion accuracy {gate['champion_accuracy']:.4f})" if gate else "no champion to compare with")
    return f"""# {decision['model_name']} v{decision['version']}: `{variant}`

{config.variant(variant).description}

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

Training: {settings.optimizer} (learning rate {settings.learning_rate}, {settings.lr_schedule}), \
batch {settings.batch_size}, up to {settings.epochs} epochs with early stopping (patience \
{settings.early_stopping_patience}), seed {training['seed']}; {training['train_seconds']} s.

## Metrics
| split | accuracy | other |
|---|---|---|
| validation (selection) | {metrics['val_accuracy']:.4f} | |
| test | {metrics['accuracy']:.4f} | loss {metrics['loss']:.4f}, macro F1 {metrics['macro_f1']:.4f}, \
{metrics['errors']} of {metrics['test_images']} wrong |

Gate: test accuracy >= {decision['min_test_accuracy']}; {comparison}.

## Error gallery
Most confident mistakes on the test split: `evaluation/error_gallery.png` in the MLflow run,
`reports/evaluation/{variant}/error_gallery.png` in the project.

## All variants
{to_markdown(table)}
## Lineage
- MLflow run: `{decision['run_id']}`
- Git commit: `{decision['git_commit']}`
- Params hash: `{decision['params_hash']}`
- Model file sha256: `{decision['model_sha256']}`
"""
