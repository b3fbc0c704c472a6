"""The handler of a user-reward-function worker: imports the functions named in ``reward.functions``, checks
their signatures, and calls them on batches of completions under a time limit.

A reward function has TRL's signature, ``f(prompts, completions, **columns) -> list[float | None]``, and
is called with keyword arguments only: ``prompts``, ``completions`` and one list per dataset column. A
function without ``**kwargs`` receives only the columns it names. Set-up problems (module does not
import, no such function, a required argument nobody provides) raise :class:`RewardSetupError`, whose
one-line message reaches the parent before any training starts.

One call runs under a soft limit (``SIGALRM`` raising inside the function); the parent's hard limit
kills a worker stuck in C code. A call's outcome is sent back as ``("ok", values)`` (a list of floats
and Nones of the right length; non-finite values are left for the parent to count) or ``("error",
message)`` / ``("timeout", message)``.

Loaded by path by :mod:`popo.rewards.sandbox` in a worker process: standard library only.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import json
import signal
import sys

__all__ = ["RewardSetupError", "check_signature", "worker_setup"]

_MAX_MESSAGE = 300


class RewardSetupError(Exception):
    """A reward function that cannot be used; the message names it and says why."""


class _CallTimeout(BaseException):  # a BaseException, so a user's `except Exception` cannot swallow it
    pass


def load_function(spec: str):
    """The callable named ``package.module:function``."""
    module_name, _, name = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except BaseException as err:  # SyntaxError, SystemExit, ... in user code: all set-up problems
        raise RewardSetupError(f"'{spec}': module '{module_name}' does not import "
                               f"({type(err).__name__}: {_short(err)})") from None
    fn = getattr(module, name, None)
    if fn is None:
        names = [n for n, v in vars(module).items() if callable(v) and not n.startswith("_")]
        close = difflib.get_close_matches(name, names, n=1, cutoff=0.5)
        hint = f" (did you mean '{module_name}:{close[0]}'?)" if close else ""
        raise RewardSetupError(f"'{spec}': module '{module_name}' has no function '{name}'{hint}")
    if not callable(fn):
        raise RewardSetupError(f"'{spec}': '{name}' is a {type(fn).__name__}, not a function")
    return fn


def check_signature(fn, spec: str, columns: list[str], extras: tuple[str, ...] = ()) -> set[str] | None:
    """The keyword arguments to pass (None: all of them, the function takes ``**kwargs``).

    Raises :class:`RewardSetupError` when the function cannot be called as ``f(prompts=..., completions=...,
    **columns)``: it does not take ``completions``, or requires an argument that is neither ``prompts``,
    ``completions``, a dataset column nor one of the caller's ``extras`` (TRL's), or a positional-only one.
    """
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return None  # a builtin without a signature: call it with everything
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params)
    named = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    provided = {"prompts", "completions", *columns, *extras}
    for p in params:
        required = p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        if required and p.kind is p.POSITIONAL_ONLY:
            raise RewardSetupError(f"'{spec}': argument '{p.name}' is positional-only; reward functions are "
                                   "called with keywords (prompts=, completions=, one per dataset column)")
        if required and p.name not in provided:
            raise RewardSetupError(
                f"'{spec}': wrong signature: it requires '{p.name}', which is neither prompts, completions nor "
                f"a dataset column (columns: {', '.join(sorted(columns)) or 'none'}); expected "
                "f(prompts, completions, **columns)")
    if "completions" not in named and not takes_any:
        raise RewardSetupError(f"'{spec}': wrong signature: it takes no 'completions' argument; expected "
                               "f(prompts, completions, **columns)")
    return None if takes_any else named


def _short(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text if len(text) <= _MAX_MESSAGE else text[:_MAX_MESSAGE] + "..."


def _values(result, n: int) -> list:
    """A function's result as a list of n floats / Nones; ValueError says what is wrong with it."""
    if hasattr(result, "tolist") and not isinstance(result, (list, tuple)):
        result = result.tolist()  # numpy arrays, tensors
    if not isinstance(result, (list, tuple)):
        raise ValueError(f"returned a {type(result).__name__}, not a list")
    if len(result) != n:
        raise ValueError(f"returned {len(result)} values for {n} completions")
    out = []
    for i, v in enumerate(result):
        if v is None:
            out.append(None)
        elif isinstance(v, (bool, int, float)) or hasattr(v, "__float__") and not isinstance(v, (str, bytes)):
            out.append(float(v))
        else:
            raise ValueError(f"value {i} is a {type(v).__name__}, not a number or None")
    return out


def worker_setup(args: list[str]):
    """Import and check the functions, then return the handler of ``(job, function index, prompts,
    completions, columns)`` items. ``args`` is one JSON object: ``sys_path`` (the parent's, so the same
    modules import), ``functions`` (specs), ``columns`` (dataset column names), ``timeout_s``."""
    spec = json.loads(args[0])
    sys.path[:0] = [p for p in spec["sys_path"] if p not in sys.path]
    functions = []
    for name in spec["functions"]:
        fn = load_function(name)
        functions.append((fn, check_signature(fn, name, spec["columns"])))
    timeout_s = float(spec["timeout_s"])

    def on_alarm(signum, frame):
        raise _CallTimeout

    signal.signal(signal.SIGALRM, on_alarm)

    def handle(item: tuple) -> tuple[tuple[str, object], bool]:
        _, index, prompts, completions, columns = item
        fn, accepted = functions[index]
        kwargs = {"prompts": prompts, "completions": completions, **columns}
        if accepted is not None:
            kwargs = {k: v for k, v in kwargs.items() if k in accepted}
        try:
            signal.setitimer(signal.ITIMER_REAL, timeout_s)
            try:
                result = fn(**kwargs)
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
            return ("ok", _values(result, len(completions))), False
        except _CallTimeout:
            return ("timeout", f"did not return within {timeout_s:g} s"), True
        except BaseException as err:  # whatever user code raises (even SystemExit) costs this call only
            return ("error", f"{type(err).__name__}: {_short(err)}"), False

    return handle
