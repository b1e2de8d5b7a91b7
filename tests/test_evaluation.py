"""Recall@K in both directions on hand-made similarity matrices, and caption normalisation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from qshift.data.manifest import load_split, make_image_entry, normalize_caption, write_manifest
from qshift.evaluation import recall_at_k, topk_hits

# 3 images (owner ids 10, 11, 12 — deliberately not 0..2) with 5 captions each
IMAGE_OWNER = [10, 11, 12]
CAPTION_OWNER = [10] * 5 + [11] * 5 + [12] * 5


def _scores_from_rankings(rankings: list[list[int]], n_gallery: int) -> np.ndarray:
    """Row i ranks gallery items in the given order (best first): score = n_gallery - rank."""
    s = np.zeros((len(rankings), n_gallery))
    for i, order in enumerate(rankings):
        assert sorted(order) == list(range(n_gallery))
        for rank, j in enumerate(order):
            s[i, j] = n_gallery - rank
    return s


# i2t: image queries (3) against the caption gallery (15). Image 10 owns captions 0-4,
# image 11 owns 5-9, image 12 owns 10-14.
I2T = _scores_from_rankings([
    # image 10: its caption 2 is ranked 1st                        -> hit @1, @5, @10
    [2, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 0, 1, 3, 4],
    # image 11: only ONE of its captions (7) in the top 5 (3rd), the others ranked 11-14
    #                                                              -> miss @1, hit @5, @10
    [0, 1, 7, 2, 3, 4, 10, 11, 12, 13, 14, 5, 6, 8, 9],
    # image 12: best own caption at rank 7                         -> miss @1, @5, hit @10
    [0, 1, 2, 3, 4, 5, 13, 6, 7, 8, 9, 10, 11, 12, 14],
], 15)


def test_i2t_hit_if_any_caption_in_top_k():
    r = recall_at_k(I2T, IMAGE_OWNER, CAPTION_OWNER)
    assert r == pytest.approx({"R@1": 100 / 3, "R@5": 200 / 3, "R@10": 100.0})


def test_i2t_all_captions_beyond_top_k_is_a_miss():
    # image 12 with all 5 own captions at ranks 11-15: 10 foreign captions come first
    s = I2T.copy()
    s[2] = _scores_from_rankings([[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14]], 15)[0]
    r = recall_at_k(s, IMAGE_OWNER, CAPTION_OWNER)
    assert r == pytest.approx({"R@1": 100 / 3, "R@5": 200 / 3, "R@10": 200 / 3})
    hits = topk_hits(torch.as_tensor(s), torch.tensor(IMAGE_OWNER), torch.tensor(CAPTION_OWNER), ks=(1, 10, 11))
    assert hits[1].tolist() == [True, False, False]
    assert hits[10].tolist() == [True, True, False]
    assert hits[11].tolist() == [True, True, True]


# t2i: caption queries (15) against the image gallery (3): the rank of the true image
T2I_RANK_OF_OWN = [1, 1, 1, 2, 3,  1, 1, 1, 1, 1,  1, 2, 2, 3, 3]


def _t2i_scores() -> np.ndarray:
    rankings = []
    for c, rank in enumerate(T2I_RANK_OF_OWN):
        own = IMAGE_OWNER.index(CAPTION_OWNER[c])
        others = [j for j in range(3) if j != own]
        order = others[: rank - 1] + [own] + others[rank - 1:]
        rankings.append(order)
    return _scores_from_rankings(rankings, 3)


def test_t2i_hit_if_own_image_in_top_k_and_k_beyond_gallery_size():
    s = _t2i_scores()
    # R@1: 9 of 15 captions rank their image first; K = 5 and K = 10 exceed the 3 images
    r = recall_at_k(s, CAPTION_OWNER, IMAGE_OWNER)
    assert r == pytest.approx({"R@1": 60.0, "R@5": 100.0, "R@10": 100.0})
    r = recall_at_k(s, CAPTION_OWNER, IMAGE_OWNER, ks=(1, 2, 3))
    assert r == pytest.approx({"R@1": 60.0, "R@2": 80.0, "R@3": 100.0})


def test_k_beyond_gallery_size_without_a_match_is_still_a_miss():
    # a query whose owner has no item in a 2-item gallery never hits, even with K = 10
    s = np.array([[0.9, 0.1], [0.2, 0.8]])
    r = recall_at_k(s, [0, 7], [0, 1])
    assert r == pytest.approx({"R@1": 50.0, "R@5": 50.0, "R@10": 50.0})


def test_recall_accepts_torch_and_numpy_alike():
    a = recall_at_k(torch.as_tensor(I2T), torch.tensor(IMAGE_OWNER), torch.tensor(CAPTION_OWNER))
    b = recall_at_k(I2T, np.array(IMAGE_OWNER), CAPTION_OWNER)
    assert a == b


# --------------------------------------------------------------------------------------------
# caption normalisation (docs/methods.md "Evaluation protocol")
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("raw, expected", [
    ("A Red Circle.", "a red circle"),
    ('Wow! "A" (big) *star*: #1; ~ok~', "wow a big star 1 ok"),
    ("a.b!c\"d(e)f*g#h:i;j~k", "a b c d e f g h i j k"),  # each listed char becomes a space
    ("commas, hyphens-and 'quotes' stay?", "commas, hyphens-and 'quotes' stay?"),  # not in the list
    ("  extra   spaces\tand\nnewlines  ", "extra spaces and newlines"),
    ("", ""),
])
def test_normalize_caption(raw, expected):
    assert normalize_caption(raw) == expected


def test_normalize_caption_keeps_at_most_30_words():
    words = [f"W{i}" for i in range(35)]
    assert normalize_caption(" ".join(words)) == " ".join(w.lower() for w in words[:30])
    assert normalize_caption(" ".join(words[:30])).split() == [w.lower() for w in words[:30]]
    # punctuation-only tokens vanish before counting: "." is not a word
    assert normalize_caption(" . ".join(words[:31])).split() == [w.lower() for w in words[:30]]
    assert normalize_caption("a b c d", max_words=2) == "a b"


def test_load_split_normalises_captions(tmp_path):
    raw = ['A DOG (running)!', " ".join(["x"] * 40) + "."]
    write_manifest(tmp_path / "manifest.json", "toy", [make_image_entry(0, "0.png", "test", raw, 0)])
    split = load_split(tmp_path / "manifest.json", "test", check_files=False)
    assert split.captions == ["a dog running", " ".join(["x"] * 30)]
