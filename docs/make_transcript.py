"""Regenerate docs/TRANSCRIPT.md: the README quickstart and a CLI session, run as a new user would run them.

Everything runs for real against the standalone loopback Hub (`python -m hf_soups.testing.hub`) with tiny models, so
the transcript cannot drift from the behaviour:

    python docs/make_transcript.py           # rewrite docs/TRANSCRIPT.md
    python docs/make_transcript.py --check   # exit 1 when docs/TRANSCRIPT.md is out of date (tests/test_docs.py)

Commit shas, the port and timings differ between runs; `--check` compares with them masked.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRANSCRIPT = os.path.join(ROOT, "docs", "TRANSCRIPT.md")
TOKEN = "hf_me_0123456789"
NAMES = {"ft-lr1e-4": (1, 1e-3), "ft-lr2e-4": (2, 8e-4), "ft-ls0.1": (3, 6e-4)}  # seed, learning rate

#: The CLI session: what a new user types, newcomer mistakes included (each with the exit code it should give).
SESSION: list[tuple[str, str]] = [
    ("Check the three fine-tunes (headers and a small weight sample only)",
     "hf-soups check me/ft-lr1e-4 me/ft-lr2e-4 me/ft-ls0.1"),
    ("Forget the held-out data of a greedy soup (a usage error: exit 2)",
     "hf-soups soup me/ft-lr1e-4 me/ft-lr2e-4 me/ft-ls0.1 --method greedy --output soup"),
    ("Name a column the data does not have (refused before any weight is downloaded: exit 8)",
     "hf-soups soup me/ft-lr1e-4 me/ft-lr2e-4 me/ft-ls0.1 --method greedy --eval-dataset val.csv "
     "--text-column sentence --output soup"),
    ("Mistype a repo id with HF_TOKEN set (not found: exit 3)",
     "hf-soups soup me/ft-lr1e4 me/ft-lr2e-4 --output soup"),
    ("Soup one repo twice (exit 2)",
     "hf-soups soup me/ft-lr1e-4 me/ft-lr1e-4@main --output soup"),
    ("The greedy soup",
     "hf-soups soup me/ft-lr1e-4 me/ft-lr2e-4 me/ft-ls0.1 --method greedy --eval-dataset val.csv --output soup"),
    ("Run it again into the same directory (exit 6)",
     "hf-soups soup me/ft-lr1e-4 me/ft-lr2e-4 me/ft-ls0.1 --method greedy --eval-dataset val.csv --output soup"),
    ("Push the soup directory: the card is rendered for the target repo",
     "hf-soups push soup me/greedy-soup"),
    ("Re-create it bit for bit from its repo, and from the local folder",
     "hf-soups recipe me/greedy-soup --output soup-again && hf-soups recipe soup --output soup-again-2 && "
     "cmp soup/model.safetensors soup-again/model.safetensors && echo identical"),
    ("The card's loading snippet, run as it is",
     "python how_to_use.py"),
]


def _quickstart_code() -> str:
    """The README's quickstart code block, with its placeholder user replaced by the transcript's."""
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    section = readme.split("## Quickstart", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    return code.replace('"user/', '"me/').replace('author="user"', 'author="me"')


def _setup(work: str, endpoint: str) -> None:
    """Three tiny sentiment fine-tunes of one base, uploaded to the loopback Hub; held-out and test csv files."""
    from huggingface_hub import HfApi

    from hf_soups.testing import finetune_tiny_classifier, make_tiny_bert, sentiment_examples, write_csv

    base = make_tiny_bert(os.path.join(work, ".models", "base"), num_labels=2,
                          id2label={0: "negative", 1: "positive"}, initializer_range=0.1)
    api = HfApi(endpoint=endpoint, token=TOKEN)
    for name, (seed, lr) in NAMES.items():
        path = finetune_tiny_classifier(base, os.path.join(work, ".models", name), seed=seed, lr=lr, steps=60)
        with open(os.path.join(path, "README.md"), "w", encoding="utf-8") as f:
            f.write(f"---\nbase_model: org/base\nlicense: mit\nlanguage: en\npipeline_tag: text-classification\n"
                    f"---\n# {name}\n")
        api.create_repo(f"me/{name}")
        api.upload_folder(folder_path=path, repo_id=f"me/{name}")
    write_csv(os.path.join(work, "val.csv"), sentiment_examples(60, seed=10))
    write_csv(os.path.join(work, "test.csv"), sentiment_examples(80, seed=11))
    write_csv(os.path.join(work, "tweets.csv"), sentiment_examples(80, seed=12))


def _how_to_use(work: str) -> None:
    """Save the pushed card's "How to use" block as how_to_use.py (plus one line that uses the model)."""
    from huggingface_hub import ModelCard

    card = ModelCard.load("me/greedy-soup")
    code = card.text.split("## How to use", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    with open(os.path.join(work, "how_to_use.py"), "w", encoding="utf-8") as f:
        f.write(code + 'print(pipe("a great fun film"), type(model).__name__)\n')


def _run(command: str, work: str, env: dict[str, str]) -> str:
    proc = subprocess.run(command, shell=True, cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=600)
    out = proc.stdout.rstrip()
    return f"$ {command}\n{out}\n[exit {proc.returncode}]" if out else f"$ {command}\n[exit {proc.returncode}]"


def generate() -> str:
    work = tempfile.mkdtemp(prefix="hf-soups-transcript-")
    bindir = os.path.dirname(sys.executable)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE"))}
    env.update({"PATH": bindir + os.pathsep + env.get("PATH", ""), "HF_HOME": os.path.join(work, ".hf-home"),
                "HF_HUB_DISABLE_XET": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
                "TOKENIZERS_PARALLELISM": "false", "TRANSFORMERS_VERBOSITY": "error",
                "PYTHONPATH": ROOT + os.pathsep + env.get("PYTHONPATH", ""), "PYTHONWARNINGS": "ignore"})
    server = subprocess.Popen([sys.executable, "-m", "hf_soups.testing.hub", "--port", "0", "--token",
                               f"{TOKEN}=me"], stdout=subprocess.PIPE, text=True, env=env)
    try:
        line = server.stdout.readline().strip() if server.stdout else ""
        endpoint = line.split("=", 1)[1]
        env.update({"HF_ENDPOINT": endpoint, "HF_TOKEN": TOKEN})
        os.environ.update({"HF_ENDPOINT": endpoint, "HF_TOKEN": TOKEN, "HF_HOME": env["HF_HOME"],
                           "HF_HUB_DISABLE_XET": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"})
        _setup(work, endpoint)
        parts = [
            "# A new user's session",
            "",
            "Generated by `python docs/make_transcript.py` (do not edit by hand; `tests/test_docs.py` checks it is up",
            "to date). Everything ran for real: the standalone loopback Hub, three tiny sentiment fine-tunes of one base",
            "(`me/ft-lr1e-4`, `me/ft-lr2e-4`, `me/ft-ls0.1`, uploaded with `HfApi.upload_folder`), and held-out and test",
            "data in `val.csv`, `test.csv`, `tweets.csv` (columns `text`, `label`). Commit shas differ between runs.",
            "",
            "## Start the loopback Hub",
            "",
            "```console",
            f"$ python -m hf_soups.testing.hub --port 0 --token {TOKEN}=me &",
            line,
            f"$ export HF_ENDPOINT=<the address above> HF_TOKEN={TOKEN} HF_HUB_DISABLE_XET=1",
            "```",
            "",
            "## The README quickstart",
            "",
            "The quickstart code of README.md, with `user` replaced by `me`, after loading the data:",
            "",
        ]
        prelude = ("import datasets\n"
                   "datasets.disable_progress_bars()\n"
                   "val, test, tweets = (datasets.load_dataset('csv', data_files=f, split='train')\n"
                   "                     for f in ('val.csv', 'test.csv', 'tweets.csv'))\n")
        code = prelude + _quickstart_code()
        with open(os.path.join(work, "quickstart.py"), "w", encoding="utf-8") as f:
            f.write(code)
        parts += ["```python", code.rstrip(), "```", "", "```console", _run("python quickstart.py", work, env), "```",
                  "", "## The command line", ""]
        shutil.rmtree(os.path.join(work, "soup"), ignore_errors=True)
        for title, command in SESSION:
            if command.startswith("python how_to_use.py"):
                _how_to_use(work)
                with open(os.path.join(work, "how_to_use.py"), encoding="utf-8") as f:
                    parts += [f"### {title}", "", "```python", f.read().rstrip(), "```", ""]
            else:
                parts += [f"### {title}", ""]
            parts += ["```console", _run(command, work, env), "```", ""]
        return "\n".join(parts)
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)


def normalise(text: str) -> str:
    """Mask what legitimately differs between runs: commit shas, the port, temporary paths, timings."""
    text = re.sub(r"/tmp/[\w.\-/]+", "<tmp>", text)  # first: a random folder name may itself look like a short sha
    text = re.sub(r"\b[0-9a-f]{40}\b", "<sha>", text)
    text = re.sub(r"\b[0-9a-f]{7,12}\b", "<short>", text)
    text = re.sub(r"127\.0\.0\.1:\d+", "127.0.0.1:<port>", text)
    text = re.sub(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", "<date>", text)
    return re.sub(r"\d+(\.\d+)?s\b", "<time>", text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when docs/TRANSCRIPT.md is out of date")
    parser.add_argument("--output", default=TRANSCRIPT)
    args = parser.parse_args()
    text = generate()
    if args.check:
        with open(args.output, encoding="utf-8") as f:
            current = f.read()
        if normalise(current) != normalise(text):
            import difflib

            diff = difflib.unified_diff(normalise(current).splitlines(), normalise(text).splitlines(), "committed",
                                        "regenerated", lineterm="")
            print("\n".join(diff))
            print(f"{args.output} is out of date: run python docs/make_transcript.py", file=sys.stderr)
            return 1
        return 0
    with open(args.output, "w", encoding="utf-8") as f:
        f.write(text)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
