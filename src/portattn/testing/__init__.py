"""The conformance kit that the built-in backends pass, for plugin authors too.

Typical use in a plugin's test suite::

    import pytest, torch
    from portattn.testing import default_cases, run_case

    @pytest.mark.parametrize("case", default_cases(), ids=lambda c: c.name)
    @pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
    def test_conformance(case, dtype):
        result = run_case(MyBackend(), case, device="cuda", dtype=dtype)
        if result.status == "unsupported":
            pytest.skip(result.message)   # the backend's own reasons: it declared it cannot
        result.raise_for_failure()
"""

from __future__ import annotations

from portattn.backends.reference.naive import allowed_mask, attention_reference, band_mask
from portattn.testing import tolerances
from portattn.testing.assertions import assert_close, max_error
from portattn.testing.cases import LAYOUTS, Case, default_cases, make_inputs
from portattn.testing.conformance import CaseResult, check_backend, poisoned_outputs, run_case

__all__ = [
    "LAYOUTS",
    "Case",
    "CaseResult",
    "allowed_mask",
    "assert_close",
    "attention_reference",
    "band_mask",
    "check_backend",
    "default_cases",
    "make_inputs",
    "max_error",
    "poisoned_outputs",
    "run_case",
    "tolerances",
]
