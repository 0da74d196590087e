"""Deterministic teacher replies and inputs shared by the teacher tests."""

import json
import zlib

from dss_keras.data.teacher_outputs import NLI_LABELS


def question(prompt: str) -> str:
    """The input's premise, from the last user turn (chat) or the prompt's last block."""
    block = prompt.rsplit("\n\n", 1)[-1]
    return block.split("\n")[0].removeprefix("Premise: ")


def nli_complete(prompt: str, index: int) -> str:
    """e-SNLI-style replies; every 7th input's label is outside the label set."""
    premise = question(prompt)
    key = zlib.crc32(premise.encode())
    label = "maybe" if key % 7 == 0 else NLI_LABELS[(key + index) % 3]
    return f"Because of {premise}.\nAnswer: {label}\n\nPremise: another"


def write_nli_inputs(path, count, labelled=True, tags=()):
    """`count` NLI inputs; gold labels follow `nli_complete` except for every 3rd one."""
    with open(path, "w") as f:
        for i in range(count):
            premise = f"premise {i}{' ' + tags[i] if i < len(tags) else ''}"
            key = zlib.crc32(premise.encode())
            gold = NLI_LABELS[(key + (i % 3 == 0)) % 3]
            row = {"id": f"x{i}", "input": f"{premise} </s> hypothesis {i}"}
            if labelled:
                row["label"] = gold
            f.write(json.dumps(row) + "\n")
    return str(path)
