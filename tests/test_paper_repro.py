"""Reproducing the TCR paper's inputs (issue 13): the reference's stream order, preprocessing,
text-corruption filter and the authors' prebuilt query sets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from qshift import config as qc
from qshift import presets
from qshift.adapt import stream_order
from qshift.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def _params() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


# --------------------------------------------------------------------------------------------
# adapt.order
# --------------------------------------------------------------------------------------------
class _Sized(torch.utils.data.Dataset):
    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return i


@pytest.mark.parametrize("n", [1, 7, 1000, 5000])
def test_reference_order_is_a_single_process_distributed_sampler(n):
    sampler = torch.utils.data.DistributedSampler(_Sized(n), num_replicas=1, rank=0, shuffle=True, seed=0)
    expected = list(sampler)
    for seed in (0, 42, 7):  # the run's seed does not enter the reference order
        assert stream_order(n, seed, "reference").tolist() == expected


def test_seeded_order_is_unchanged_and_differs_from_the_reference():
    assert np.array_equal(stream_order(200, 42), np.random.default_rng(42).permutation(200))
    assert np.array_equal(stream_order(200, 42, "seeded"), stream_order(200, 42))
    assert not np.array_equal(stream_order(200, 42), stream_order(200, 42, "reference"))


def test_unknown_order_is_refused():
    with pytest.raises(ConfigError, match="adapt.order 'random'; valid: seeded, reference"):
        stream_order(5, 0, "random")
    with pytest.raises(ConfigError, match="params: adapt.order 'random'; valid: seeded, reference"):
        qc.resolve(_params(), ["adapt.order=random"])


@pytest.mark.parametrize("bench,order", [("builtin", "seeded"), ("coco-c", "reference"), ("flickr-c", "reference"),
                                         ("qgs-coco", "reference"), ("qgs-flickr", "reference")])
def test_paper_presets_use_the_reference_order(bench, order):
    raw = _params()
    cfg = presets.apply_preset({**raw, "benchmark": bench})
    assert cfg["adapt"].get("order", "seeded") == order
