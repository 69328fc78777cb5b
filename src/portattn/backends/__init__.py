"""The built-in backends, registered through the same hook as third-party plugins."""

from __future__ import annotations

from typing import TYPE_CHECKING

from portattn.hookspecs import hookimpl

if TYPE_CHECKING:
    from portattn._backend import Backend


@hookimpl
def portattn_backends() -> list[Backend]:
    from portattn.backends.ascend import AscendBackend
    from portattn.backends.cuda_ampere import CudaAmpereBackend
    from portattn.backends.cuda_volta import CudaVoltaBackend
    from portattn.backends.portable import PortableBackend
    from portattn.backends.reference import ReferenceBackend
    from portattn.backends.sdpa import SdpaBackend
    from portattn.backends.triton_hopper import TritonHopperBackend

    return [
        TritonHopperBackend(),
        CudaAmpereBackend(),
        CudaVoltaBackend(),
        AscendBackend(),
        PortableBackend(),
        SdpaBackend(),
        ReferenceBackend(),
    ]
