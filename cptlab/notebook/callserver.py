"""Calls of a learner's functions from another process, with plain data in and out.

The grader never runs learner code in its own process: ``python -m cptlab.notebook.callserver``
(started by ``checkers.grading.judge`` inside the sandbox, under its own time and memory limits)
runs the notebook's set-up imports and the learner's answer cells, then answers calls read as JSON
lines. Arguments and results are plain data (numbers, strings, lists, dicts, arrays as raw bytes,
GPT-2 models as a config and safetensors weights, the loop check's probe run as its seed and
settings): no pickle either way, and an object the learner returns that is not plain data comes back
as its ``repr`` only, so nothing it defines (an ``__eq__`` that always says yes) reaches the judge.
After a call, every model argument's weights go back too, with the grad mode of each forward pass
(seen at the token embedding, which every path to the logits uses).
"""

from __future__ import annotations

import base64
import io
import json
import math
import os
import sys
import traceback
from typing import Any

import numpy as np


class Opaque:
    """A value that was not plain data: only its type name and ``repr`` travel."""

    def __init__(self, type_name: str, text: str):
        self.type_name, self.text = type_name, text

    def __repr__(self) -> str:
        return self.text


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode("ascii")


def _array(d: dict) -> np.ndarray:
    dtype = np.dtype(d["dtype"])
    if dtype.hasobject:
        raise ValueError("object arrays are not plain data")
    return np.frombuffer(base64.b64decode(d["data"]), dtype=dtype).reshape(d["shape"]).copy()


def state_bytes(model) -> bytes:
    from safetensors.torch import save

    # parameters by name: tied weights (GPT-2's lm_head is its wte) once, buffers not needed
    return save({k: v.detach().cpu().contiguous() for k, v in model.named_parameters()})


def load_state(model, data: bytes) -> None:
    import torch
    from safetensors.torch import load

    state = load(data)
    with torch.no_grad():
        for k, v in model.named_parameters():
            if k in state and state[k].shape == v.shape:
                v.copy_(state[k])


def encode(x: Any, special=None) -> Any:
    """Plain data for JSON. ``special(x)`` may encode what only the caller knows how to send (the
    grader's models and optimizers, by handle); it returns None for everything else."""
    import torch

    if special is not None:
        done = special(x)
        if done is not None:
            return done
    if x is None or isinstance(x, (bool, str)):
        return x
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        v = float(x)
        return v if math.isfinite(v) else {"__float__": repr(v)}
    if isinstance(x, tuple):
        return {"__tuple__": [encode(v, special) for v in x]}
    if isinstance(x, list):
        return [encode(v, special) for v in x]
    if isinstance(x, dict):
        return {"__dict__": [[encode(k, special), encode(v, special)] for k, v in x.items()]}
    if isinstance(x, np.ndarray) and not x.dtype.hasobject:
        return {
            "__ndarray__": True,
            "dtype": x.dtype.str,
            "shape": list(x.shape),
            "data": _b64(np.ascontiguousarray(x).tobytes()),
        }
    if isinstance(x, torch.Tensor):
        a = x.detach().cpu()
        if a.dtype == torch.bfloat16:
            a = a.float()
        return {
            "__tensor__": True,
            "dtype": a.numpy().dtype.str,
            "shape": list(a.shape),
            "data": _b64(a.contiguous().numpy().tobytes()),
        }
    lora = _lora_fields(x)
    if lora is not None:
        return {"__lora_config__": lora}
    try:
        text = repr(x)[:200]
    except Exception:  # noqa: BLE001 - a learner's __repr__ may raise
        text = type(x).__name__
    return {"__opaque__": type(x).__name__, "repr": text}


# A peft.LoraConfig crosses as its plain fields only (notebook 4's lora_config returns one).
LORA_FIELDS = {
    "r": int,
    "lora_alpha": (int, float),
    "lora_dropout": (int, float),
    "bias": str,
    "fan_in_fan_out": bool,
    "target_modules": (str, list),
    "modules_to_save": (list, type(None)),
}


def _lora_fields(x: Any) -> dict | None:
    if type(x).__name__ != "LoraConfig" or not type(x).__module__.startswith("peft"):
        return None
    fields = {}
    for name in LORA_FIELDS:
        v = getattr(x, name, None)
        fields[name] = sorted(v) if isinstance(v, (set, tuple)) else v
    return fields


def _lora_config(fields: Any):
    """A LoraConfig from plain fields of the expected types, or an opaque value the check then fails."""
    from peft import LoraConfig

    if not isinstance(fields, dict) or set(fields) != set(LORA_FIELDS):
        return Opaque("LoraConfig", "fields missing")
    for name, kind in LORA_FIELDS.items():
        v = fields[name]
        if not isinstance(v, kind) or (isinstance(v, list) and not all(isinstance(t, str) for t in v)):
            return Opaque("LoraConfig", f"{name}={v!r}"[:200])
    try:
        return LoraConfig(**fields)
    except (TypeError, ValueError) as exc:
        return Opaque("LoraConfig", str(exc)[:200])


def encode_model(handle: int, model, with_state: bool) -> dict:
    d = {"__model__": handle, "training": model.training}
    if with_state:
        d.update(config=model.config.to_dict(), state=_b64(state_bytes(model)))
    return d


def decode(x: Any, models: dict | None = None, optimizers: dict | None = None) -> Any:
    """The inverse of ``encode``; on the call server, models and optimizers live in ``models`` and
    ``optimizers`` by handle, so a second call with the same model gets the same object."""
    import torch

    if isinstance(x, list):
        return [decode(v, models, optimizers) for v in x]
    if not isinstance(x, dict):
        return x
    if "__float__" in x:
        return float(x["__float__"])
    if "__tuple__" in x:
        return tuple(decode(v, models, optimizers) for v in x["__tuple__"])
    if "__dict__" in x:
        return {_hashable(decode(k, models, optimizers)): decode(v, models, optimizers) for k, v in x["__dict__"]}
    if "__ndarray__" in x:
        return _array(x)
    if "__tensor__" in x:
        return torch.from_numpy(_array(x))
    if "__lora_config__" in x:
        return _lora_config(x["__lora_config__"])
    if "__opaque__" in x:
        return Opaque(str(x["__opaque__"]), str(x.get("repr", "")))
    if "__model__" in x and models is not None:
        h = x["__model__"]
        if h not in models:
            from transformers import GPT2Config, GPT2LMHeadModel

            m = GPT2LMHeadModel(GPT2Config(**{k: v for k, v in x["config"].items() if k != "transformers_version"}))
            m.loss_type = "ForCausalLM"  # as the grader's model: transformers has nothing to warn about
            load_state(m, base64.b64decode(x["state"]))
            m.train(bool(x.get("training")))
            models[h] = m
        return models[h]
    if "__probe_run__" in x and models is not None:
        from cptlab.model.loop import ProbeRun

        h = x["__probe_run__"]
        if h not in models:
            models[h] = ProbeRun(int(x["seed"]), dict(decode(x["config"])), dict(decode(x["ratios"])), int(x["first"]))
        return models[h]
    if "__probe_fn__" in x and models is not None and x["__probe_fn__"] in ("lr_at", "optimizer_step"):
        return getattr(models[x["run"]], x["__probe_fn__"])
    if "__sgd__" in x and optimizers is not None:
        h = x["__sgd__"]
        if h not in optimizers:
            optimizers[h] = torch.optim.SGD(models[x["model"]].parameters(), lr=x["lr"])
        return optimizers[h]
    return Opaque("dict", repr(x)[:200])


def _hashable(k: Any) -> Any:
    return k if isinstance(k, (str, int, float, bool, tuple, type(None))) else repr(k)


# ----------------------------------------------------------------------------- the server
def _define(namespace: dict, cells: list[str]) -> list[str]:
    """Run the set-up imports and the learner's cells; a cell that raises is reported, the rest go on."""
    errors = []
    for i, src in enumerate(cells):
        try:
            exec(compile(src, f"<answer cell {i + 1}>", "exec"), namespace)  # noqa: S102 - learner code, in the sandbox
        except BaseException as exc:  # noqa: BLE001 - a learner's cell may raise anything, SystemExit included
            errors.append(f"cell {i + 1}: {type(exc).__name__}: {exc}"[:300])
    return errors


def _call(namespace: dict, req: dict, models: dict, optimizers: dict) -> dict:
    fn = namespace.get(req["name"])
    if not callable(fn):
        return {"missing": f"no function named {req['name']} is defined by your answer cells"}
    args = [decode(a, models, optimizers) for a in req["args"]]
    grad_on: list[bool] = []
    import torch

    hooks = [
        m.transformer.wte.register_forward_pre_hook(lambda mod, a: grad_on.append(torch.is_grad_enabled()))
        for m in args
        if isinstance(m, torch.nn.Module) and hasattr(m, "transformer")
    ]
    try:
        out = fn(*args)
    except NotImplementedError:
        return {"not_implemented": True}
    except BaseException as exc:  # noqa: BLE001
        frames = traceback.extract_tb(exc.__traceback__)
        own = getattr(getattr(fn, "__code__", None), "co_filename", None)
        where = next((f"line {f.lineno}: {f.line}" for f in reversed(frames) if f.filename == own), "")
        return {"raised": f"{type(exc).__name__}: {exc}"[:300] + (f" (at {where})" if where else "")}
    finally:
        for h in hooks:
            h.remove()
    try:
        given = {h: m for h, m in models.items() if any(m is a for a in args)}
        states = {str(h): _b64(state_bytes(m)) for h, m in given.items() if isinstance(m, torch.nn.Module)}
        traces = {str(h): encode(m.trace) for h, m in given.items() if not isinstance(m, torch.nn.Module)}
        return {"result": encode(out), "states": states, "grad_on": grad_on, "traces": traces}
    except Exception as exc:  # noqa: BLE001 - a result that cannot be sent back is the learner's failure
        return {"raised": f"the result could not be sent back ({type(exc).__name__}: {exc})"[:300]}


def serve(inp, out) -> None:
    namespace: dict = {"__name__": "__learner__"}
    models: dict = {}
    optimizers: dict = {}
    for line in inp:
        req = json.loads(line)
        if req["op"] == "define":
            reply = {"errors": _define(namespace, req["cells"])}
        elif req["op"] == "call":
            reply = _call(namespace, req, models, optimizers)
        elif req["op"] == "reset":  # the next question: no model or optimizer of the last one is looked up again
            models.clear()
            optimizers.clear()
            reply = {}
        else:
            break
        out.write(json.dumps(reply) + "\n")
        out.flush()


def main() -> int:
    # The protocol keeps its own copy of stdout; the learner's prints go to stderr.
    proto = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    import warnings

    warnings.filterwarnings("ignore")
    serve(io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8"), proto)
    return 0


if __name__ == "__main__":
    sys.exit(main())
