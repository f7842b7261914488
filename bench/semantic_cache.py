"""Hit rate and false-hit rate of the semantic cache on a small labelled set.

`python bench/semantic_cache.py [--embeddings URL]`. Each pair is (answered prompt, new
prompt, should the answer be reused?). For each threshold: hit rate = reused among the
pairs that should be, false-hit rate = reused among the pairs that should not. Without
--embeddings the bench starts the mock upstream, whose /embeddings is a hashed-trigram
stand-in (no model): the figures then measure that stand-in, not a real embedding model;
point --embeddings at a real OpenAI-compatible endpoint to measure one.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from broker.cache.semantic import SemanticCache
from broker.nats.embedded import free_port
from cli import serve
from schemas.chat import ChatCompletionRequest
from schemas.config import SemanticCacheConfig
from tests.procs import PROMPTBUS, Proc, wait_port

PAIRS: list[tuple[str, str, bool]] = [
    ("What is the capital of France?", "what is the capital city of France", True),
    ("What is the capital of France?", "What's the capital of France?", True),
    ("How do I reverse a list in Python?", "how to reverse a python list", True),
    ("How do I reverse a list in Python?", "How do I sort a list in Python?", False),
    ("Translate 'good morning' to Spanish", "translate good morning into spanish", True),
    ("Translate 'good morning' to Spanish", "Translate 'good night' to Spanish", False),
    ("What is the boiling point of water?", "At what temperature does water boil?", True),
    ("What is the boiling point of water?", "What is the freezing point of water?", False),
    ("Summarize the plot of Hamlet", "summarise the plot of hamlet", True),
    ("Summarize the plot of Hamlet", "Summarize the plot of Macbeth", False),
    ("Who wrote Pride and Prejudice?", "who is the author of pride and prejudice", True),
    ("Who wrote Pride and Prejudice?", "Who wrote War and Peace?", False),
    ("Explain recursion to a child", "explain recursion to a kid", True),
    ("Explain recursion to a child", "Explain photosynthesis to a child", False),
    ("How many legs does a spider have?", "how many legs do spiders have", True),
    ("How many legs does a spider have?", "How many legs does an ant have?", False),
    ("What is 2 + 2?", "what is two plus two", True),
    ("What is 2 + 2?", "What is 2 + 3?", False),
    ("Best way to learn Rust", "what is the best way to learn rust", True),
    ("Best way to learn Rust", "Best way to learn Go", False),
    ("Convert 10 km to miles", "convert 10 kilometers to miles", True),
    ("Convert 10 km to miles", "Convert 10 miles to km", False),
    ("What is the capital of France?", "What is the capital of Spain?", False),
    ("How do I bake sourdough bread?", "sourdough bread baking instructions", True),
    ("How do I bake sourdough bread?", "How do I bake banana bread?", False),
]
THRESHOLDS = (0.80, 0.85, 0.90, 0.95)


def request(text: str) -> ChatCompletionRequest:
    return msgspec.convert(
        {"model": "m", "temperature": 0, "messages": [{"role": "user", "content": text}]},
        ChatCompletionRequest,
    )


async def measure(url: str) -> list[tuple[float, float, float]]:
    rows = []
    for threshold in THRESHOLDS:
        config = SemanticCacheConfig(enabled=True, threshold=threshold, embeddings_base_url=url)
        hits = false_hits = 0
        for index, (answered, asked, similar) in enumerate(PAIRS):
            cache = SemanticCache(config)  # a fresh cache per pair: one stored answer
            try:
                _, _, remembered = await cache.lookup(request(answered), f"m{index}", None)
                assert remembered is not None, "embeddings endpoint failed"
                cache.store(remembered, b"{}", "bench", 60)
                hit, _, _ = await cache.lookup(request(asked), f"m{index}", None)
            finally:
                await cache.close()
            if hit is not None:
                hits += similar
                false_hits += not similar
        similar_pairs = sum(s for _, _, s in PAIRS)
        rows.append((threshold, hits / similar_pairs, false_hits / (len(PAIRS) - similar_pairs)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--embeddings", help="OpenAI-compatible base URL (…/v1)")
    args = parser.parse_args()
    proc = None
    url = args.embeddings
    if url is None:
        port = free_port()
        log = Path(tempfile.mkdtemp(prefix="promptbus-semantic-")) / "upstream.log"
        proc = Proc([*PROMPTBUS, "mock-upstream", "--port", str(port)], log)
        wait_port("127.0.0.1", port, proc)
        url = f"http://127.0.0.1:{port}/v1"
    try:
        rows = serve.run(measure(url))
    finally:
        if proc is not None:
            proc.stop()
    similar = sum(s for _, _, s in PAIRS)
    print(
        f"\n{len(PAIRS)} labelled pairs ({similar} should hit, {len(PAIRS) - similar} should not)"
    )
    print(f"embeddings: {'mock upstream (hashed trigrams)' if proc else url}")
    print(f"{'threshold':>9} {'hit rate':>9} {'false hits':>10}")
    for threshold, hit_rate, false_rate in rows:
        print(f"{threshold:>9.2f} {hit_rate:>9.0%} {false_rate:>10.0%}")


if __name__ == "__main__":
    main()
