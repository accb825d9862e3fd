"""FSDP (accelerate's fsdp_version 2, distill/configs/accelerate_fsdp.yaml) on two CPU processes: a LoRA phase and a
full-UNet phase with sharded student and discriminator, killed mid-phase and resumed from a checkpoint gathered from
the shards, end where plain data parallelism (DDP) ends, and export like any other run.

accelerate only enables FSDP on CUDA-like devices: with ACCELERATE_USE_CPU it silently falls back to plain CPU data
parallelism (DistributedType.MULTI_CPU). Run as a script (`accelerate launch tests/distill/test_fsdp.py train ...`),
this file turns that fallback back into FSDP before the trainer starts; everything after that — fully_shard on a
gloo CPU mesh, accelerate's FSDP2 prepare, clipping, the state-dict gathering — is the real FSDP2 path."""

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_train import stage_unet  # noqa: E402
from two_processes import launch, two_step_plan  # noqa: E402


def test_fsdp_two_processes_kill_resume_matches_ddp_and_exports(tmp_path, ddp_run):
    from diffusers import UNet2DConditionModel

    from distill.config import parse_config
    from distill.export import export
    from pipelines.architectures import tiny_components

    raw = two_step_plan(tmp_path)  # the DDP run's plan (tests/distill/two_processes.py), launched once per session
    launch_fsdp = lambda *extra: launch(tmp_path, raw, "accelerate_fsdp.yaml", [__file__], *extra)  # noqa: E731

    # Killed after global step 4 (the full phase's second step), so the latest checkpoint is step 3: the middle of the
    # full phase, with the sharded student's and discriminator's weights and Adam states gathered whole.
    first = launch_fsdp("--stop-after", "4")
    assert "distilling on 2 processes" in first.stdout
    fsdp_run = tmp_path / "run"
    assert (fsdp_run / "checkpoints" / "latest").read_text().strip() == "checkpoint-00000003"
    assert not (fsdp_run / "stages" / "2step" / "unet").exists()
    saved = fsdp_run / "checkpoints" / "checkpoint-00000003"
    optimizers = torch.load(saved / "optimizers.pt", weights_only=True)
    student = load_file(saved / "student.safetensors")
    # Whole tensors keyed by name, every trainable parameter with its Adam moments at full size.
    assert set(optimizers["g"]["state"]) == set(student)
    assert all(optimizers["g"]["state"][k]["exp_avg"].shape == v.shape for k, v in student.items())
    launch_fsdp("--resume")

    # Same per-rank batches, gradients averaged either way: FSDP ends where DDP does, up to float rounding
    # (reduce-scatter vs all-reduce) that Adam's first, normalized steps can magnify.
    ddp_folder = ddp_run[0]
    ddp, fsdp = stage_unet(ddp_folder, "2step"), stage_unet(fsdp_run, "2step")
    base = {k: v.float() for k, v in tiny_components(0)["unet"].state_dict().items()}
    assert ddp.keys() == fsdp.keys() == base.keys()
    assert all(torch.isfinite(v).all() for v in fsdp.values())
    moved = max(float((fsdp[k] - base[k]).abs().max()) for k in base)
    gap = max(float((fsdp[k] - ddp[k]).abs().max()) for k in base)
    # Measured here: moved 2.2e-3, gap 7e-6. A student that missed a gradient would be ~one lr step (5e-4) off.
    assert moved > 1e-3 and gap < 1e-4, (moved, gap)
    lora_ddp = load_file(ddp_folder / "stages" / "2step" / "lora.safetensors")
    lora_fsdp = load_file(fsdp_run / "stages" / "2step" / "lora.safetensors")
    assert lora_ddp.keys() == lora_fsdp.keys() and all(torch.allclose(lora_ddp[k], lora_fsdp[k], atol=1e-4) for k in lora_ddp)

    # The export is the same as any run's: the manifest and a UNet folder that diffusers loads.
    out = export(parse_config(raw), tmp_path / "export")
    manifest = json.loads(next(out.glob("*.json")).read_text())
    assert "2step" in json.dumps(manifest)
    unet = UNet2DConditionModel.from_pretrained(out / "2step" / "unet", use_safetensors=True)
    assert torch.equal(unet.state_dict()["conv_in.weight"], fsdp["conv_in.weight"])


if __name__ == "__main__":  # launched by the test above on every process, before the trainer starts
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType

    _init = AcceleratorState.__init__

    def _fsdp_on_cpu(self, *args, fsdp_plugin=None, **kwargs):
        _init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
            self.distributed_type, self.fsdp_plugin = DistributedType.FSDP, fsdp_plugin
            PartialState._shared_state["distributed_type"] = DistributedType.FSDP  # re-read by every new AcceleratorState

    AcceleratorState.__init__ = _fsdp_on_cpu
    from distill.__main__ import main

    sys.exit(main(sys.argv[1:]))
