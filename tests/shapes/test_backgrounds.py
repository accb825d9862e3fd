"""The background probe: its two numbers on hand-made drawings, and the command on the shipped model."""

import json
import subprocess
import sys

import numpy as np

from distill.shapes.backgrounds import OBJECTS, follow_rate, prompts, seed_agreement
from distill.shapes.world import BACKGROUNDS

NAMES = np.array(list(BACKGROUNDS))


def test_a_model_that_follows_the_prompt_scores_full_follow_and_no_seed_agreement():
    drawn = np.broadcast_to(NAMES[None, :, None], (2, 4, 3))  # every (object, seed) draws what was asked
    assert follow_rate(drawn, drawn) == 1.0
    assert seed_agreement(drawn) == 0.0


def test_a_model_that_reads_the_noise_draws_one_background_per_seed():
    per_seed = NAMES[[0, 1, 1]]  # the seed decides: white, black, black
    drawn = np.broadcast_to(per_seed[None, None, :], (2, 4, 3))
    asked = np.broadcast_to(NAMES[None, :, None], drawn.shape)
    assert seed_agreement(drawn) == 1.0
    assert follow_rate(drawn, asked) == (1 / 3 + 2 / 3) / 4  # right only where the seed's matches the asked one


def test_prompts_ask_every_object_on_every_background():
    asked = prompts()
    assert len(asked) == len(OBJECTS) * len(BACKGROUNDS)
    assert ("a red circle on the left on a light blue background", "light blue") in asked


def test_the_command_measures_the_shipped_model_and_writes_its_table(tmp_path):
    out = tmp_path / "bg.json"
    cmd = [sys.executable, "-m", "distill.shapes", "backgrounds", "--model", "shapes", "--steps", "1", "--seeds", "2", "--json", str(out), "--threads", "1"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    (row,) = json.loads(out.read_text())["rows"]
    assert row["model"] == "shapes" and row["steps"] == 1 and row["images"] == len(OBJECTS) * len(BACKGROUNDS) * 2
    assert 0 <= row["follow"] <= 1 and set(row["follow_per_background"]) == set(BACKGROUNDS)
    assert np.array(row["drawn"]).shape == (len(OBJECTS), len(BACKGROUNDS), 2)
    assert "| shapes | 1 |" in result.stdout
