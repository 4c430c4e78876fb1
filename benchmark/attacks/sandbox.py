"""What keeps an attack from changing anything but its own output.

:func:`~benchmark.attacks.validate.run_attack` runs every attack inside these guards, so a buggy
or hostile attack spoils its own result and nothing else:

* :class:`StateGuard` records the model's hooks (forward, pre-forward, backward, state-dict hooks
  on every submodule, and torch's global module hooks) and the global autograd switches before
  the attack, and afterwards names and undoes every change (the weights are restored by
  :class:`~benchmark.attacks.validate.WeightSnapshot`).
* :func:`time_limit` ends an attack that runs too long with :class:`CellTimeout` (a
  ``BaseException``, so an attack's ``except Exception`` cannot swallow it).
* :func:`watch_user_interrupts` tells the user's Ctrl-C (SIGINT) apart from a
  ``KeyboardInterrupt`` that an attack raises itself.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

import torch
from torch.nn.modules import module as _module

__all__ = ["CellTimeout", "StateGuard", "interrupt_is_the_users", "time_limit", "watch_user_interrupts"]

_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
               "_state_dict_hooks", "_state_dict_pre_hooks", "_load_state_dict_pre_hooks",
               "_load_state_dict_post_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called",
               "_forward_pre_hooks_with_kwargs")
_GLOBAL_HOOKS = ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks",
                 "_global_backward_pre_hooks", "_global_forward_hooks_always_called")


class CellTimeout(BaseException):
    """Raised inside an attack when its cell's time limit is over."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"the cell's time limit of {seconds:g} s was reached")
        self.seconds = seconds


class StateGuard:
    """Snapshot of the hooks of ``model`` (and torch's global module hooks) and of the global
    autograd switches; :meth:`restore` puts them back and says what had changed. Taken around
    every attack call, so it is cheap: each hook dict of each submodule is kept by reference with
    a tuple of its items (most are empty), and checked against them afterwards."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.hooks = [(owner, attr, hooks, tuple(hooks.items()))
                      for owner in _submodules(model) for attr in _HOOK_DICTS
                      if isinstance(hooks := owner.__dict__.get(attr), dict)]
        self.hooks += [(_module, attr, hooks, tuple(hooks.items())) for attr in _GLOBAL_HOOKS
                       if isinstance(hooks := getattr(_module, attr, None), dict)]
        self.grad_enabled = torch.is_grad_enabled()
        self.anomaly = torch.is_anomaly_enabled()

    def restore(self) -> list[str]:
        """Undo every change since the snapshot; returns one line per kind of change."""
        problems: list[str] = []
        added = removed = 0
        for owner, attr, before, items in self.hooks:
            now = getattr(owner, attr, None)
            if now is before and len(now) == len(items) and (not items or tuple(now.items()) == items):
                continue  # untouched (the usual case)
            keys = {k for k, _ in items}
            now_keys = set(now) if isinstance(now, dict) else set()
            added += len(now_keys - keys)
            removed += len(keys - now_keys)
            before.clear()
            before.update(items)
            if now is not before:  # the attack replaced the dict itself
                setattr(owner, attr, before)
        if added:
            problems.append(f"the attack left {added} hook(s) registered on the model (removed)")
        if removed:
            problems.append(f"the attack removed {removed} hook(s) of the model (put back)")
        if torch.is_grad_enabled() != self.grad_enabled:
            torch.set_grad_enabled(self.grad_enabled)
            problems.append("the attack left autograd switched "
                            + ("off (torch.set_grad_enabled(False))" if self.grad_enabled else "on"))
        if torch.is_anomaly_enabled() != self.anomaly:
            torch.set_anomaly_enabled(self.anomaly)
            problems.append("the attack changed torch's anomaly-detection mode")
        return problems


def _submodules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """``model`` and every submodule, by a walk of the ``_modules`` dicts (``named_modules`` builds a
    name for each, which costs more than the whole check)."""
    out, stack = [], [model]
    while stack:
        module = stack.pop()
        out.append(module)
        stack.extend(m for m in module._modules.values() if m is not None)
    return out


@contextlib.contextmanager
def time_limit(seconds: float | None) -> Iterator[None]:
    """Raise :class:`CellTimeout` in the block after ``seconds`` of wall time. Needs a POSIX main
    thread (SIGALRM); elsewhere, and with ``seconds=None``, the block runs without a limit."""
    if not seconds or threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        yield
        return

    _limit[0] = float(seconds)

    def _expire(signum, frame):
        raise CellTimeout(_limit[0])

    previous = signal.signal(signal.SIGALRM, _expire)
    signal.setitimer(signal.ITIMER_REAL, float(seconds))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        _limit[0] = None


#: the limit of the :func:`time_limit` block running now (what its timeout message names)
_limit: list[float | None] = [None]


def extend_time_limit(total: float, elapsed: float) -> bool:
    """Within a :func:`time_limit` block: make the limit ``total`` seconds from the block's start
    (``elapsed`` seconds ago) when that is later than the limit set. Returns whether it did."""
    if not hasattr(signal, "getitimer") or threading.current_thread() is not threading.main_thread():
        return False
    left, _ = signal.getitimer(signal.ITIMER_REAL)
    if left <= 0 or total - elapsed <= left:
        return False
    signal.setitimer(signal.ITIMER_REAL, float(total - elapsed))
    _limit[0] = float(total)
    return True


_user_interrupt = threading.Event()
_watching = threading.Event()


@contextlib.contextmanager
def watch_user_interrupts() -> Iterator[None]:
    """While the block runs, a SIGINT (the user's Ctrl-C) is remembered before it raises
    ``KeyboardInterrupt``, so :func:`interrupt_is_the_users` can tell it from one an attack raised."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _on_sigint(signum, frame):
        _user_interrupt.set()
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, _on_sigint)
    _user_interrupt.clear()
    _watching.set()
    try:
        yield
    finally:
        _watching.clear()
        signal.signal(signal.SIGINT, previous)


def interrupt_is_the_users() -> bool:
    """Whether a ``KeyboardInterrupt`` being handled came from the user (always true when no
    :func:`watch_user_interrupts` block is active: then nothing tells them apart)."""
    return not _watching.is_set() or _user_interrupt.is_set()
