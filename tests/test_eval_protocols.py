"""`popo eval --protocol`: named evaluation settings (qwen-math, r1), overridden by explicit flags, recorded
in the output; the default is what `popo eval` always did."""

from __future__ import annotations

import argparse
import json

import pytest

from popo.eval_cli import PROTOCOLS, apply_protocol


def namespace(**given) -> argparse.Namespace:
    return argparse.Namespace(**{"protocol": "default", "samples": None, "temperature": None, "top_p": None, **given})


@pytest.mark.parametrize("name, expected", [
    ("default", (4, 0.6, 0.95, "qwen-math", 1024)),
    ("qwen-math", (0, 0.0, 1.0, "qwen-math", 3000)),
    ("r1", (16, 0.6, 0.95, "qwen-boxed", 32768)),
])
def test_each_protocol_sets_its_values(name, expected):
    args = namespace(protocol=name)
    named = apply_protocol(args)
    assert (args.samples, args.temperature, args.top_p, named["template"], named["max_new_tokens"]) == expected


def test_explicit_flags_override_the_protocol():
    args = namespace(protocol="r1", samples=2, top_p=0.5)
    apply_protocol(args)
    assert (args.samples, args.temperature, args.top_p) == (2, 0.6, 0.5)
    assert set(PROTOCOLS) == {"default", "qwen-math", "r1"}


def test_the_protocol_is_recorded_in_the_output(tiny_testbed, tmp_path, one_thread):
    from popo.cli import main

    testbed = [o for o in tiny_testbed if o.startswith(("testbed.", "model.device"))]
    out = tmp_path / "eval.json"
    assert main(["eval", "--model", "testbed", "--benchmarks", "testbed", "--protocol", "r1", "--samples", "2",
                 "--limit", "2", "--out", str(out), *testbed]) == 0
    described = json.loads(out.read_text())["protocol"]
    assert described["protocol"] == "r1" and described["k"] == 2
    assert (described["temperature"], described["top_p"]) == (0.6, 0.95)
    assert described["benchmarks"]["testbed"]["template"] == "plain"  # the testbed keeps its own prompt
