"""portattn: one exact-attention call, the fastest correct kernel on whatever hardware is there.

``import portattn`` imports torch and pluggy only; triton, cupy and torch_npu load when their
backend is first used.
"""

from __future__ import annotations

from portattn import sparse
from portattn._api import attention, explain, list_backends, sdpa
from portattn._backend import Backend, Capabilities
from portattn._call import AttentionCall
from portattn._dispatch import use_backend
from portattn._offload import kv_budget
from portattn._registry import BackendRecord, register_backend
from portattn.errors import NoBackendError, PluginError
from portattn.hookspecs import hookimpl

__version__ = "0.1.0"

__all__ = [
    "AttentionCall",
    "Backend",
    "BackendRecord",
    "Capabilities",
    "NoBackendError",
    "PluginError",
    "attention",
    "explain",
    "hookimpl",
    "kv_budget",
    "list_backends",
    "register_backend",
    "sdpa",
    "sparse",
    "use_backend",
]
