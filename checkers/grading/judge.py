"""The judge: a learner's function checked from the grader's process, never inside it.

For each step, one short-lived call server (``python -m cptlab.notebook.callserver``) starts inside the
learner's sandbox with the notebook's set-up imports and the learner's answer cells only; each of the
step's questions has its own time limit under the process's memory cap, and a question that ends the
process (its limit, a crash) leaves the next question a fresh one. The check itself (its random
cases, the reference, the decision and the points) runs here; each call of the learner's function
goes to the call server as plain data and its outputs (and a model's weights after the call) come
back as plain data. What
the learner's kernel displays earns nothing, and a function that patches ``checkers``, ``cptlab``,
``torch`` or builtins at call time patches them only in its own process.
"""

from __future__ import annotations

import ast
import base64
import inspect
import json
import os
import resource
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from checkers.code import exercises as ex
from checkers.code.harness import LearnerRaised, OutOfLimits
from checkers.core.questions import QUESTIONS
from checkers.core.report import Check, Report
from cptlab.model.loop import ProbeRun
from cptlab.notebook.callserver import decode, encode, encode_model, load_state

GiB = 1 << 30


@dataclass(frozen=True)
class Limits:
    """Per question: wall-clock seconds (call server start included) and the address-space cap."""

    seconds: float = 120.0
    memory_bytes: int = 4 * GiB


def cap_process(memory_bytes: int) -> Callable[[], None]:
    """``preexec_fn`` for a learner's process: its address space capped (children inherit it), no
    core dumps. Its processes live in their own group (and PID namespace in the sandbox), killed
    together at the limit; RLIMIT_NPROC is not used: it counts every process of the user on the machine."""

    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    return apply


# Left out of each question's process: the grader (the judge runs the checks) and the helpers the
# notebook's cells call to run the lab (a learner function uses neither; importing them costs 4 s).
NOT_FOR_FUNCTIONS = ("checkers", "cptlab.notebook")


def setup_imports(setup_source: str) -> str:
    """The set-up cell's import statements a learner function may use."""

    def wanted(module: str) -> bool:
        return not any(module == m or module.startswith(m + ".") for m in NOT_FOR_FUNCTIONS)

    keep = []
    for node in ast.parse(setup_source).body:
        if isinstance(node, ast.Import) and all(wanted(a.name) for a in node.names):
            keep.append(ast.unparse(node))
        elif isinstance(node, ast.ImportFrom) and wanted(node.module or ""):
            keep.append(ast.unparse(node))
    return "\n".join(keep)


class CallServer:
    """One question's sandboxed process holding the learner's definitions."""

    def __init__(self, cmd_prefix: Callable[[list[str]], list[str]], env: dict, cwd: Path, limits: Limits):
        self.limits = limits
        self.deadline = time.monotonic() + limits.seconds
        cmd = cmd_prefix([sys.executable, "-m", "cptlab.notebook.callserver"])
        self.proc = subprocess.Popen(
            cmd,
            env=env,
            cwd=cwd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=cap_process(limits.memory_bytes),
        )
        self.sent: set[int] = set()
        self.errors: list[str] = []

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def begin(self, seconds: float) -> None:
        """The next question: its own time limit, and no model handle of the last question kept on either
        side (the grader's object ids are reused once its models are freed)."""
        self.deadline = time.monotonic() + seconds
        self.sent.clear()
        self.request({"op": "reset"})

    def request(self, req: dict) -> dict:
        try:
            self.proc.stdin.write((json.dumps(req) + "\n").encode())
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            raise self._died() from None
        buf = b""
        while not buf.endswith(b"\n"):
            left = self.deadline - time.monotonic()
            if left <= 0:
                self.close()
                raise OutOfLimits(f"still running after the question's time limit of {self.limits.seconds:g} s")
            ready, _, _ = select.select([self.proc.stdout], [], [], left)
            if not ready:
                continue
            chunk = os.read(self.proc.stdout.fileno(), 1 << 20)
            if not chunk:
                raise self._died()
            buf += chunk
        return json.loads(buf)

    def _died(self) -> Exception:
        try:
            code = self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            code = None
        self.close()
        if code is not None and code < 0:
            return OutOfLimits(f"killed by signal {-code} (the memory cap is {self.limits.memory_bytes / GiB:g} GiB)")
        return OutOfLimits(
            f"its process ended (exit status {code}): a MemoryError past the "
            f"{self.limits.memory_bytes / GiB:g} GiB cap, code that exits the interpreter, "
            "or built-ins patched so that the process could not go on"
        )

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait()


class RemoteFunction:
    """Stands for the learner's function in a check: each call goes to the call server."""

    remote = True

    def __init__(self, server: CallServer, name: str):
        self.server, self.__name__ = server, name
        self.last_grad_on: list[bool] = []
        self._models: dict[int, object] = {}  # handle -> the grader's mirror of the model

    def _special(self, x):
        import torch

        if isinstance(x, torch.nn.Module) and hasattr(x, "config"):
            h = id(x)
            self._models[h] = x
            first = h not in self.server.sent
            self.server.sent.add(h)
            return encode_model(h, x, with_state=first)
        if isinstance(x, ProbeRun):
            self._models[id(x)] = x
            return {
                "__probe_run__": id(x),
                "seed": x.seed,
                "config": encode(x.config),
                "ratios": encode(x.ratios),
                "first": x.first_step,
            }
        if inspect.ismethod(x) and isinstance(x.__self__, ProbeRun):
            return {"__probe_fn__": x.__name__, "run": id(x.__self__)}
        if isinstance(x, torch.optim.SGD):
            p0 = x.param_groups[0]["params"][0]
            owner = next((h for h, m in self._models.items() if any(p is p0 for p in m.parameters())), None)
            return {"__sgd__": id(x), "lr": x.param_groups[0]["lr"], "model": owner}
        return None

    def __call__(self, *args):
        # models first, so an optimizer finds the model it belongs to
        order = sorted(range(len(args)), key=lambda i: not hasattr(args[i], "config"))
        enc = [None] * len(args)
        for i in order:
            enc[i] = encode(args[i], self._special)
        reply = self.server.request({"op": "call", "name": self.__name__, "args": enc})
        if reply.get("not_implemented"):
            raise NotImplementedError(self.__name__)
        if "missing" in reply:
            raise LearnerRaised(reply["missing"])
        if "raised" in reply:
            raise LearnerRaised(reply["raised"])
        for h, trace in reply.get("traces", {}).items():
            probe = self._models.get(int(h))
            if isinstance(probe, ProbeRun):
                probe.received = decode(trace)
        for h, state in reply.get("states", {}).items():
            model = self._models.get(int(h))
            if model is not None:
                load_state(model, base64.b64decode(state))
        self.last_grad_on = [bool(g) for g in reply.get("grad_on", [])]
        return decode(reply["result"])


CHECKS: dict[str, Callable] = {
    "1.1": ex.check_perplexity,
    "2.1": ex.check_pack,
    "2.2": ex.check_split,
    "2.3": ex.check_blocks,
    "3.1": ex.check_schedule,
    "3.2": ex.check_optimizer_step,
    "3.3": ex.check_cpt_loop,
    "3.4": ex.check_flops,
    "4.1": ex.check_tradeoff,
    "4.2": ex.check_replay_schedule,
    "4.3": ex.check_interpolate,
    "4.4": ex.check_lora_config,
    "4.5": ex.check_choice,
    "4.6": ex.check_production_choices,
}


def judge_question(qid: str, *args, **kwargs) -> Report:
    """Check question ``qid`` alone (``judge_questions``' arguments after the questions)."""
    return judge_questions([qid], *args, **kwargs)[qid]


def judge_questions(
    qids: list[str],
    cells: list[str],
    wrap: Callable[[list[str]], list[str]],
    env: dict,
    cwd: Path,
    limits: Limits,
    run_dir: Path | None = None,
    seed: int | None = None,
) -> dict[str, Report]:
    """Check a step's questions in turn, their functions defined once by ``cells`` in one call server
    (its start, 5 to 9 s of imports here, paid once a step, not once a question)."""
    reports: dict[str, Report] = {}
    server, defined = None, {}
    try:
        for qid in qids:
            q = QUESTIONS[qid]
            if server is not None and server.alive:
                try:
                    server.begin(limits.seconds)
                except OutOfLimits:
                    pass  # it ended after the last question (and was closed): a fresh one below
            if server is None or not server.alive:
                server = CallServer(wrap, env, cwd, limits)
                try:
                    defined = server.request({"op": "define", "cells": cells})
                except OutOfLimits as exc:
                    reports[qid] = _limit_report(q, f"the answer cells did not finish: {exc}")
                    continue
            fns = [RemoteFunction(server, name) for name in q.functions]
            extra = {"run_dir": str(run_dir)} if qid == "4.6" and run_dir is not None else {}
            report = CHECKS[qid](*fns, seed=seed, **extra)
            if defined.get("errors") and not report.passed:
                for c in report.failures:
                    c.hint += f" (an answer cell raised when it ran: {defined['errors'][0]})"
            reports[qid] = report
    finally:
        if server is not None:
            server.close()
    return reports


def _limit_report(q, why: str) -> Report:
    report = Report(q.step, q.title, "", question=q.id, status=why)
    report.checks.append(
        Check(
            f"q{q.id}.limits",
            False,
            f"{', '.join(q.functions)} defined within the question's limits",
            why,
            "look for code at the top level of an answer cell that never ends",
            points=q.points,
        )
    )
    return report
