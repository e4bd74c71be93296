"""Shared fixtures for the data tests: small real-ish English documents written to disk."""
import os
import random

import pytest

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Public-domain sentences (Austen, Melville, Dickens) shuffled into documents.
SENTENCES = [
    "It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in want of a wife.",
    "However little known the feelings or views of such a man may be on his first entering a neighbourhood, this truth is so well fixed in the minds of the surrounding families.",
    "Call me Ishmael.",
    "Some years ago, never mind how long precisely, having little or no money in my purse, and nothing particular to interest me on shore, I thought I would sail about a little and see the watery part of the world.",
    "It was the best of times, it was the worst of times, it was the age of wisdom, it was the age of foolishness.",
    "There were a king with a large jaw and a queen with a plain face, on the throne of England.",
    "Whenever I find myself growing grim about the mouth, I account it high time to get to sea as soon as I can.",
    "My dear Mr. Bennet, said his lady to him one day, have you heard that Netherfield Park is let at last?",
    "Mr. Bennet replied that he had not.",
    "In short, the period was so far like the present period, that some of its noisiest authorities insisted on its being received, for good or for evil, in the superlative degree of comparison only.",
    "Numbers like 1775 and 42 appear too, as do words with accents: café, naïve, façade.",
    "The whale, the ship, and the sea; the house, the ball, and the letter.",
]


def make_docs(n_docs: int, sentences_per_doc: int = 60, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    docs = []
    for d in range(n_docs):
        paras = []
        for _ in range(sentences_per_doc // 4):
            paras.append(" ".join(rng.choice(SENTENCES) for _ in range(4)))
        docs.append(f"Document {d}.\n\n" + "\n\n".join(paras))
    return docs


@pytest.fixture
def docs():
    return make_docs(12)


@pytest.fixture
def txt_dir(tmp_path, docs):
    d = tmp_path / "texts"
    d.mkdir()
    for i, text in enumerate(docs):
        (d / f"doc{i:02d}.txt").write_text(text, encoding="utf-8")
    return d


@pytest.fixture(scope="session")
def doc_maker():
    """make_docs for test modules (tests/data is not a package, so they cannot import conftest)."""
    return make_docs
