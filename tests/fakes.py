"""Deterministic stand-ins for models, importable by Ray workers (tests/ is a package)."""

from __future__ import annotations

import json

import numpy as np

from stages.caption import Decoding, Generated, fingerprint


class FingerprintVLM:
    """A captioner that writes a fingerprint of the frames it was given into its caption.

    Prompt lengths differ per clip (so batches are re-sorted by length), and a clip whose fingerprint
    starts with a digit below 6 is "cut off at the token limit" while max_new_tokens < 1000 (use 600:
    the retry doubles it), so the retry path re-batches it. Asked for a structured answer (the prompt
    names "on_screen_text"), it answers the fixed JSON shape with the fingerprint as its one subject (cut
    off mid-object when "truncated").
    """

    name = "fake-fingerprint"

    def __init__(self, truncate_first: bool = True):
        self.truncate_first = truncate_first
        self.calls: list[int] = []  # batch sizes seen by generate

    def prepare(self, frames: list[np.ndarray], prompt: str) -> dict:
        n = 5 + int(fingerprint(frames)[:2], 16) % 23
        return {"input_ids": np.zeros((1, n), np.int64), "pixels": np.stack(frames), "structured": "on_screen_text" in prompt}

    def generate(self, items: list[dict], decoding: Decoding) -> list[Generated]:
        self.calls.append(len(items))
        out = []
        for it in items:
            fp = fingerprint(list(it["pixels"]))
            cut = self.truncate_first and fp[0] in "012345" and decoding.max_new_tokens < 1000
            if it.get("structured"):
                answer = json.dumps(structured_answer(fp))
                out.append(Generated(answer[: len(answer) // 2], decoding.max_new_tokens, False) if cut else Generated(answer, 30, True))
            elif cut:
                out.append(Generated(f"frames {fp} and then the camera", decoding.max_new_tokens, False))
            else:
                out.append(Generated(f"frames {fp} seen by the model.", 6, True))
        return out


def structured_answer(fp: str) -> dict:
    """FingerprintVLM's structured answer for frames with fingerprint `fp`."""
    return {"subjects": [f"frames {fp}"], "actions": ["seen by the model"], "setting": "a test", "camera": "static",
            "lighting": "flat", "style": "synthetic", "on_screen_text": []}  # fmt: skip


def fingerprint_vlm() -> FingerprintVLM:
    return FingerprintVLM()


class CountingVLM(FingerprintVLM):
    """FingerprintVLM that appends the size of each generate() call to a file: counts calls made in Ray actors."""

    def __init__(self, log: str):
        super().__init__()
        self.log = log

    def generate(self, items: list[dict], decoding: Decoding) -> list[Generated]:
        with open(self.log, "a") as f:
            f.write(f"{len(items)}\n")
        return super().generate(items, decoding)


def counting_vlm(log: str) -> CountingVLM:
    return CountingVLM(log)


def generated(log) -> int:
    """Captions generated so far (attempts included) by CountingVLMs writing to `log`."""
    try:
        with open(log) as f:
            return sum(int(x) for x in f.read().split())
    except FileNotFoundError:
        return 0


class EchoRewriter:
    """A rewriter that prefixes the caption it finds in its prompt ("Description: ...") with "Rewritten: ".

    A caption whose fingerprint starts with a digit below 4 is cut off at the token limit while
    max_new_tokens < 1000 (use 600: the retry doubles it), so the rewrite's retry path re-batches it."""

    name = "fake-rewriter"

    def __init__(self):
        self.calls: list[int] = []

    def generate(self, prompts: list[str], decoding: Decoding) -> list[Generated]:
        self.calls.append(len(prompts))
        out = []
        for p in prompts:
            caption = p.rsplit("Description: ", 1)[1]
            if caption.startswith("frames ") and caption[7] in "0123" and decoding.max_new_tokens < 1000:
                out.append(Generated(f"Rewritten: {caption[:12]}", decoding.max_new_tokens, False))
            else:
                out.append(Generated(f"Rewritten: {caption}", 12, True))
        return out


def echo_rewriter() -> EchoRewriter:
    return EchoRewriter()
