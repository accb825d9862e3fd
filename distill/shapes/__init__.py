"""The shapes world: procedurally rendered, captioned scenes of coloured shapes, a judge that reads images back into
scenes, and the pre-training of an SDXL-shaped base model on them (see docs/shapes.md). `pipelines` never imports it."""
