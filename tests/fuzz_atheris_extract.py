"""Coverage-guided fuzzing (atheris) of the box extraction and size/depth checks of the math verifier.

Run by tests/test_verifier_fuzz.py for a bounded number of runs, or by hand for longer:

    .venv/bin/python tests/fuzz_atheris_extract.py -runs=1000000    # or -max_total_time=600

`popo/rewards/answers.py` (standard library only) is loaded by file path, so neither torch nor math-verify
is imported and each run takes microseconds. A run fails if any call raises or breaks its contract.
"""

import importlib.util
import sys
from pathlib import Path

import atheris

ANSWERS = Path(__file__).resolve().parents[1] / "src" / "popo" / "rewards" / "answers.py"

spec = importlib.util.spec_from_file_location("_popo_answers_fuzzed", ANSWERS)
answers = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = answers
spec.loader.exec_module(answers)
for name in ("_last_box_start", "_find_last_box", "last_boxed_content", "_max_nesting", "extract_answer"):
    atheris.instrument_func(getattr(answers, name))  # coverage feedback for the code under test


# pieces the fuzzer would take long to discover byte by byte (the macros are found with str.rfind)
TOKENS = ["\\boxed", "\\boxed{", "\\fbox{", "\\boxedx", "{", "}", "\\{", "\\}", "\\", "$", " ", "\n",
          "(", ")", "[", "]", "7", "\x00", "\ud800"]


def fuzzed_text(fdp) -> str:
    """A mix of known tokens and arbitrary text: raw bytes decoded leniently (NULs, lone surrogates)
    or unicode of any kind."""
    parts = []
    for _ in range(fdp.ConsumeIntInRange(0, 48)):
        kind = fdp.ConsumeIntInRange(0, 3)
        if kind < 2:
            parts.append(TOKENS[fdp.ConsumeIntInRange(0, len(TOKENS) - 1)])
        elif kind == 2:
            parts.append(fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 8)).decode("utf-8", "surrogateescape"))
        else:
            parts.append(fdp.ConsumeUnicode(fdp.ConsumeIntInRange(0, 8)))
    return "".join(parts)


def one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    max_len = fdp.ConsumeIntInRange(0, 64)
    text = fuzzed_text(fdp)
    content = answers.last_boxed_content(text)
    if content is not None and (not content or content not in text):
        raise AssertionError(f"box content {content!r} is empty or not part of the text")
    capped = answers.last_boxed_content(text, max_len=max_len)
    if capped is not None and len(capped) > max_len:
        raise AssertionError(f"box content longer than max_len={max_len}: {capped!r}")
    extracted, status = answers.extract_answer(text, 4096, max_len, 8)
    if (extracted is None) == (status == "ok"):
        raise AssertionError(f"inconsistent extraction result {extracted!r} / {status!r}")
    if extracted is not None and answers._max_nesting(extracted) > 8:
        raise AssertionError("content deeper than max_depth passed the depth check")


if __name__ == "__main__":
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()
