"""Soups of local checkpoints: the math against independently computed truth, loading, atomicity."""

from __future__ import annotations

import os

import pytest
import torch
from conftest import state_dict_of
from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

from hf_soups import InvalidArgumentError, MergeOptions, NonFiniteTensorError, OutputExistsError, Soup, SoupError, soup_from_hub
from hf_soups.testing import make_tiny_bert, make_tiny_resnet, make_tiny_vit, perturb_checkpoint


def _assert_close_to(soup_dir, expected, atol=1e-6):
    got = state_dict_of(soup_dir)
    assert set(got) == set(expected)
    for name, ref in expected.items():
        assert got[name].shape == ref.shape, name
        assert (got[name].float() - ref.float()).abs().max().item() <= atol, name


def test_uniform_soup_equals_stacked_mean(family, tmp_path):
    paths = [family["a"], family["c"], family["d"]]  # fp32, each sharded differently
    soup = soup_from_hub(paths, output_dir=tmp_path / "soup", merge_options=MergeOptions(progress=False))
    assert isinstance(soup, Soup) and soup.method == "uniform"
    sds = [state_dict_of(p) for p in paths]
    expected = {k: torch.stack([sd[k] for sd in sds]).float().mean(0) for k in sds[0]}
    _assert_close_to(soup.output_dir, expected, atol=1e-6)
    assert [i.weight for i in soup.ingredients] == pytest.approx([1 / 3] * 3)
    assert all(state_dict_of(soup.output_dir)[k].dtype == torch.float32 for k in expected)


def test_weighted_soup(family, tmp_path):
    paths = [family["a"], family["d"]]
    soup = soup_from_hub(paths, method="weighted", weights=[3, 1], output_dir=tmp_path / "soup",
                         merge_options=MergeOptions(progress=False))
    assert [i.weight for i in soup.ingredients] == pytest.approx([0.75, 0.25])
    a, d = (state_dict_of(p) for p in paths)
    _assert_close_to(soup.output_dir, {k: 0.75 * a[k].float() + 0.25 * d[k].float() for k in a}, atol=1e-6)
    with pytest.raises(InvalidArgumentError, match="method='weighted'"):  # never a silent switch to weighted
        soup_from_hub(paths, weights=[3, 1], output_dir=tmp_path / "implied",
                      merge_options=MergeOptions(progress=False))
    assert not (tmp_path / "implied").exists()


def test_bf16_soup_keeps_dtype_and_mixed_dtypes_upcast(family, tmp_path):
    bf = perturb_checkpoint(family["base"], tmp_path / "bf2", seed=9, dtype=torch.bfloat16)
    soup = soup_from_hub([family["b"], bf], output_dir=tmp_path / "bf16", merge_options=MergeOptions(progress=False))
    sds = [state_dict_of(p) for p in (family["b"], bf)]
    out = state_dict_of(soup.output_dir)
    for k in sds[0]:
        assert out[k].dtype == torch.bfloat16
        assert torch.equal(out[k], torch.stack([sd[k] for sd in sds]).float().mean(0).to(torch.bfloat16)), k
    mixed = soup_from_hub([family["a"], family["b"]], output_dir=tmp_path / "mixed",
                          merge_options=MergeOptions(progress=False))
    assert all(t.dtype == torch.float32 for t in state_dict_of(mixed.output_dir).values())  # documented upcast
    assert any(w.field == "dtype" for w in mixed.report.warnings)
    forced = soup_from_hub([family["a"], family["b"]], output_dir=tmp_path / "forced",
                           merge_options=MergeOptions(dtype=torch.float16, progress=False))
    assert all(t.dtype == torch.float16 for t in state_dict_of(forced.output_dir).values())


def test_soup_loads_with_from_pretrained_and_matches_hand_averaged_logits(family, tmp_path):
    paths = [family["a"], family["c"], family["d"]]
    soup = soup_from_hub(paths, output_dir=tmp_path / "soup", merge_options=MergeOptions(progress=False))
    model, info = AutoModelForSequenceClassification.from_pretrained(soup.output_dir, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    hand = AutoModelForSequenceClassification.from_pretrained(paths[0])
    models = [AutoModelForSequenceClassification.from_pretrained(p) for p in paths]
    sds = [m.state_dict() for m in models]
    hand.load_state_dict({k: torch.stack([sd[k].float() for sd in sds]).mean(0) for k in sds[0]})
    tok = AutoTokenizer.from_pretrained(soup.output_dir)
    batch = tok(["good movie", "awful boring plot", "not very fun"], return_tensors="pt", padding=True)
    model.eval(), hand.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, hand(**batch).logits, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(soup.model(**batch).logits, hand(**batch).logits, atol=1e-5, rtol=1e-5)
    pipe = pipeline("text-classification", model=soup.output_dir)
    assert pipe("good movie")[0]["label"].startswith("LABEL_")


def test_vit_soup(tmp_path):
    base = make_tiny_vit(tmp_path / "base", seed=0)
    paths = [perturb_checkpoint(base, tmp_path / f"v{i}", seed=i, max_shard_size="30KB" if i == 1 else "5GB")
             for i in (1, 2)]
    soup = soup_from_hub(paths, output_dir=tmp_path / "soup", merge_options=MergeOptions(progress=False))
    sds = [state_dict_of(p) for p in paths]
    _assert_close_to(soup.output_dir, {k: torch.stack([sd[k] for sd in sds]).mean(0) for k in sds[0]})
    assert os.path.exists(os.path.join(soup.output_dir, "preprocessor_config.json"))
    assert soup.card.data.pipeline_tag == "image-classification"
    from transformers import ViTForImageClassification

    _, info = ViTForImageClassification.from_pretrained(soup.output_dir, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]


def _edit_safetensors(path, edit):
    from safetensors.torch import load_file, save_file

    file = os.path.join(path, "model.safetensors")
    tensors = load_file(file)
    edit(tensors)
    save_file(tensors, file, metadata={"format": "pt"})


def test_integer_buffers_are_copied_never_averaged(tmp_path):
    base = make_tiny_resnet(tmp_path / "base", seed=0)
    a = perturb_checkpoint(base, tmp_path / "a", seed=1)
    b = perturb_checkpoint(base, tmp_path / "b", seed=2)
    key = "resnet.embedder.embedder.normalization.num_batches_tracked"

    def set_count(n):
        return lambda t: t.__setitem__(key, torch.tensor(n, dtype=torch.int64))

    _edit_safetensors(a, set_count(7))
    _edit_safetensors(b, set_count(7))
    same = state_dict_of(soup_from_hub([a, b], output_dir=tmp_path / "same",
                         merge_options=MergeOptions(progress=False)).output_dir)
    assert same[key].dtype == torch.int64 and same[key].item() == 7
    _edit_safetensors(b, set_count(10))
    first = state_dict_of(soup_from_hub([a, b], output_dir=tmp_path / "first",
                          merge_options=MergeOptions(progress=False)).output_dir)
    assert first[key].item() == 7  # int_rule="first": the first ingredient's value, not 8.5 or 8
    biggest = state_dict_of(soup_from_hub([a, b], output_dir=tmp_path / "max",
                            merge_options=MergeOptions(int_rule="max", progress=False)).output_dir)
    assert biggest[key].item() == 10
    with pytest.raises(SoupError, match="never averaged") as err:
        soup_from_hub([a, b], output_dir=tmp_path / "err", merge_options=MergeOptions(int_rule="error", progress=False))
    assert key in str(err.value)
    assert not os.path.exists(tmp_path / "err")
    # floating BatchNorm statistics are averaged like weights
    sa, sb = state_dict_of(a), state_dict_of(b)
    rm = "resnet.embedder.embedder.normalization.running_mean"
    torch.testing.assert_close(first[rm], (sa[rm] + sb[rm]) / 2, atol=1e-6, rtol=0)


def test_tied_weights_stay_tied(tmp_path):
    base = make_tiny_bert(tmp_path / "base", seed=0, head="mlm", tie_word_embeddings=True)
    paths = [perturb_checkpoint(base, tmp_path / f"m{i}", seed=i) for i in (1, 2)]
    soup = soup_from_hub(paths, output_dir=tmp_path / "soup", merge_options=MergeOptions(progress=False))
    stored = state_dict_of(soup.output_dir)
    assert "cls.predictions.decoder.weight" not in stored  # stored once, as in the ingredients
    model = soup.model
    emb = model.bert.embeddings.word_embeddings.weight
    assert model.cls.predictions.decoder.weight.data_ptr() == emb.data_ptr()
    sds = [state_dict_of(p) for p in paths]
    k = "bert.embeddings.word_embeddings.weight"
    torch.testing.assert_close(emb.detach(), (sds[0][k] + sds[1][k]) / 2, atol=1e-6, rtol=0)


def test_duplicated_tensors_stay_identical(tmp_path):
    from safetensors.torch import save_file

    for i, seed in enumerate((1, 2)):
        d = tmp_path / f"ing{i}"
        d.mkdir()
        w = torch.randn(4, 3, generator=torch.Generator().manual_seed(seed))
        save_file({"emb.weight": w, "head.weight": w.clone()}, d / "model.safetensors", metadata={"format": "pt"})
        (d / "config.json").write_text('{"model_type": "toy"}')
    out = state_dict_of(soup_from_hub([tmp_path / "ing0", tmp_path / "ing1"], output_dir=tmp_path / "s",
                                      merge_options=MergeOptions(progress=False)).output_dir)
    assert torch.equal(out["emb.weight"], out["head.weight"])


def test_nan_in_an_ingredient_is_refused(family, tmp_path):
    bad = perturb_checkpoint(family["base"], tmp_path / "bad", seed=5)
    key = "classifier.weight"
    _edit_safetensors(bad, lambda t: t[key].__setitem__((0, 0), float("nan")))
    with pytest.raises(NonFiniteTensorError) as err:
        soup_from_hub([family["d"], bad], output_dir=tmp_path / "soup", merge_options=MergeOptions(progress=False))
    assert str(bad) in str(err.value) and key in str(err.value) and "Fix:" in str(err.value)
    assert not os.path.exists(tmp_path / "soup")
    _edit_safetensors(bad, lambda t: t[key].__setitem__((0, 0), float("inf")))
    with pytest.raises(NonFiniteTensorError, match=key):
        soup_from_hub([family["d"], bad], output_dir=tmp_path / "soup", merge_options=MergeOptions(progress=False))


def test_failure_mid_merge_leaves_no_output_and_rerun_succeeds(family, tmp_path, monkeypatch):
    from hf_soups.checkpoint import writer as writer_mod

    original = writer_mod.ShardedSafetensorsWriter.write
    calls = {"n": 0}

    def failing(self, name, tensor, *args):
        calls["n"] += 1
        if calls["n"] == 25:
            raise RuntimeError("simulated crash mid-merge")
        return original(self, name, tensor, *args)

    monkeypatch.setattr(writer_mod.ShardedSafetensorsWriter, "write", failing)
    out = tmp_path / "soup"
    with pytest.raises(RuntimeError, match="simulated"):
        soup_from_hub([family["a"], family["d"]], output_dir=out, merge_options=MergeOptions(progress=False))
    assert not out.exists()
    assert not [p for p in os.listdir(tmp_path) if "hf-soups-tmp" in p]  # temporary sibling removed
    monkeypatch.setattr(writer_mod.ShardedSafetensorsWriter, "write", original)
    soup = soup_from_hub([family["a"], family["d"]], output_dir=out, merge_options=MergeOptions(progress=False))
    assert os.path.exists(os.path.join(soup.output_dir, "model.safetensors"))


def test_existing_output_dir_needs_overwrite(family, tmp_path):
    out = tmp_path / "soup"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(OutputExistsError, match="keep.txt"):
        soup_from_hub([family["a"], family["d"]], output_dir=out, merge_options=MergeOptions(progress=False))
    with pytest.raises(OutputExistsError, match="did not write"):  # overwrite replaces only a soup hf_soups wrote
        soup_from_hub([family["a"], family["d"]], output_dir=out, overwrite=True,
                      merge_options=MergeOptions(progress=False))
    assert (out / "keep.txt").read_text() == "precious"
    (out / "keep.txt").unlink()
    soup_from_hub([family["a"], family["d"]], output_dir=out,
                  merge_options=MergeOptions(progress=False))  # an empty directory is fine
    with pytest.raises(OutputExistsError, match="overwrite=True"):
        soup_from_hub([family["a"], family["d"]], output_dir=out, merge_options=MergeOptions(progress=False))
    soup_from_hub([family["a"], family["c"]], output_dir=out, overwrite=True,
                  merge_options=MergeOptions(progress=False))
    assert (out / "model.safetensors").exists() and (out / ".hf_soups").exists()


def test_save_pretrained_and_card(family, tmp_path):
    soup = soup_from_hub([family["a"], family["d"]], output_dir=tmp_path / "soup",
                         merge_options=MergeOptions(progress=False))
    copy = soup.save_pretrained(tmp_path / "copy")
    assert state_dict_of(copy).keys() == state_dict_of(soup.output_dir).keys()
    from huggingface_hub import ModelCard

    card = ModelCard.load(os.path.join(copy, "README.md"))
    assert card.data.base_model_relation == "merge"
    assert "hf_soups_recipe" in card.text


def test_align_labels_permutes_classifier_rows(tmp_path):
    labels = {0: "neg", 1: "neu", 2: "pos"}
    base = make_tiny_bert(tmp_path / "base", seed=0, id2label=labels)
    a = perturb_checkpoint(base, tmp_path / "a", seed=1)
    b = perturb_checkpoint(base, tmp_path / "b", seed=2)
    # Re-export b with its labels in another order: rows of the head permuted accordingly.
    order = [2, 0, 1]  # new row j holds old label order[j]
    model = AutoModelForSequenceClassification.from_pretrained(b)
    with torch.no_grad():
        model.classifier.weight.copy_(model.classifier.weight[order])
        model.classifier.bias.copy_(model.classifier.bias[order])
    model.config.id2label = {j: labels[order[j]] for j in range(3)}
    model.config.label2id = {v: k for k, v in model.config.id2label.items()}
    model.save_pretrained(tmp_path / "b_perm")
    from hf_soups import IncompatibleIngredientsError

    with pytest.raises(IncompatibleIngredientsError, match="align_labels=True"):
        soup_from_hub([a, tmp_path / "b_perm"], output_dir=tmp_path / "s0", merge_options=MergeOptions(progress=False))
    aligned = state_dict_of(soup_from_hub([a, tmp_path / "b_perm"], output_dir=tmp_path / "s1",
                            merge_options=MergeOptions(align_labels=True, progress=False)).output_dir)
    plain = state_dict_of(soup_from_hub([a, b], output_dir=tmp_path / "s2",
                          merge_options=MergeOptions(progress=False)).output_dir)
    for k in plain:
        torch.testing.assert_close(aligned[k], plain[k], atol=1e-6, rtol=0)


def test_accumulation_device_path_is_bit_identical(family, tmp_path):
    """The accelerator path (chunks staged through `device` buffers, copied back for writing) gives the same bytes.
    Here it is forced through the CPU; on a machine with CUDA the default device is the GPU and the same holds."""
    from hf_soups.checkpoint import open_checkpoint
    from hf_soups.merge import build_plan
    from hf_soups.merge.engine import iter_merged_chunks

    readers = [open_checkpoint(p) for p in (family["a"], family["b"], family["d"])]
    plan = build_plan([r.tensors for r in readers], [1, 2, 3])

    def collect(**kw):
        return [(tp.name, start, chunk.clone()) for tp, start, chunk in iter_merged_chunks(plan, readers, **kw)]

    plain = collect()
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for dev in devices:
        staged = collect(device=dev, stage=True, slots=3)
        assert [(n, s) for n, s, _ in staged] == [(n, s) for n, s, _ in plain]
        assert all(torch.equal(a, b) for (_, _, a), (_, _, b) in zip(staged, plain))
    on_disk = state_dict_of(soup_from_hub([family["a"], family["b"], family["d"]], "weighted", weights=[1, 2, 3],
                                          merge_options=MergeOptions(device="cpu", progress=False),
                                          output_dir=tmp_path / "cpu").output_dir)
    merged = {}
    for name, start, chunk in plain:
        merged.setdefault(name, []).append(chunk)
    assert all(torch.equal(on_disk[k], torch.cat(v).view(on_disk[k].shape)) for k, v in merged.items())


def test_tilde_paths_expand_like_a_shell(tmp_path, monkeypatch):
    """`~/ckpt` refs and a `~/soup` output are the user's home, not a directory named `~` in the cwd."""
    from hf_soups.testing import make_tiny_bert, perturb_checkpoint

    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    base = make_tiny_bert(home / "base", seed=0)
    perturb_checkpoint(base, home / "ft1", seed=1)
    perturb_checkpoint(base, home / "ft2", seed=2)
    monkeypatch.chdir(tmp_path)
    soup = soup_from_hub(["~/ft1", "~/ft2"], output_dir="~/soup", merge_options=MergeOptions(progress=False))
    assert os.path.isfile(home / "soup" / "model.safetensors") and not os.path.exists(tmp_path / "~")
    assert os.path.samefile(soup.output_dir, home / "soup")
