"""Start a run from another run's finished stages: `python -m distill train --config ablation.toml --branch-from runs/a`.

An ablation or a baseline usually shares its first stages with a run that already exists. Every stage folder of the
other run whose recorded lineage (model, data, weight-relevant training keys, the plan up to that stage) equals this
plan's is linked into this run's output folder, and so is the latent cache when the data plan is the same; `train`
then reuses those stages (see `stages.finished`) and trains from the first one that differs.
"""

import json
from pathlib import Path

from .checkpoint import CheckpointError, link_tree
from .config import Config, lineage
from .data import INDEX


def branch(config: Config, source_dir) -> list[str]:
    """Link the leading stages of `source_dir` that this plan shares into this plan's output folder -> their names."""
    source_dir, out = Path(source_dir), Path(config.train.output_dir)
    if not (source_dir / "stages").is_dir():
        raise CheckpointError(f"--branch-from {source_dir}: no stages/ folder there (is it a run's train.output_dir?)")
    if source_dir.resolve() == out.resolve():
        raise CheckpointError(f"--branch-from {source_dir}: that is this plan's own output_dir")
    shared = []
    for i, stage in enumerate(config.stages):
        info = source_dir / "stages" / stage.name / "stage.json"
        if not info.is_file() or json.loads(info.read_text()).get("lineage") != lineage(config, i):
            break
        link_tree(info.parent, out / "stages" / stage.name)
        shared.append(stage.name)
    if shared and config.data.source != "cache" and (source_dir / "cache" / INDEX).is_file():
        link_tree(source_dir / "cache", out / "cache")  # same lineage implies the same data plan
    return shared
