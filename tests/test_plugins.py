"""Plugin machinery: entry points (good, broken, duplicate, raising), autoload switch, overrides, reasons."""

from __future__ import annotations

import pytest
import torch

import portattn
from portattn._backend import Backend, Capabilities
from tests.fakes.dists import BROKEN_IMPORT, RAISING_HOOK, good, make_dist

Q, K, V = torch.randn(1, 6, 2, 8), torch.randn(1, 6, 2, 8), torch.randn(1, 6, 2, 8)


@pytest.fixture
def plugin_path(tmp_path, monkeypatch, fresh_registry):
    """A directory on sys.path holding fake distributions; autoload on."""
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PORTATTN_DISABLE_PLUGIN_AUTOLOAD", "0")
    fresh_registry.reset()
    return tmp_path


def records():
    return {r.name: r for r in portattn.list_backends()}


def test_entry_point_plugin_is_loaded_and_chosen(plugin_path):
    make_dist(plugin_path, "portattn-fake", "fake", "portattn_fake_plugin_a", good("fake_a"))
    rec = records()["fake_a"]
    assert rec.available and rec.priority == 500
    assert "portattn-fake 1.0" in rec.origin and "entry point fake" in rec.origin
    assert portattn.explain(Q, K, V, quiet=True).chosen == "fake_a"
    torch.testing.assert_close(portattn.attention(Q, K, V), portattn.attention(Q, K, V, backend="portable"))


def test_plugin_that_fails_to_import_is_reported_and_nothing_breaks(plugin_path):
    make_dist(plugin_path, "portattn-broken", "broken", "portattn_fake_broken_b", BROKEN_IMPORT)
    make_dist(plugin_path, "portattn-fine", "fine", "portattn_fake_fine_b", good("fine_b"))
    rec = records()
    assert not rec["broken"].available
    assert (
        "ModuleNotFoundError" in rec["broken"].reason
        and "portattn_vendor_library_that_is_missing" in rec["broken"].reason
    )
    assert "portattn-broken 1.0" in rec["broken"].origin
    assert rec["fine_b"].available  # the other plugin still loads
    assert portattn.attention(Q, K, V).shape == (1, 6, 2, 8)
    with pytest.raises(portattn.NoBackendError, match="ModuleNotFoundError"):
        portattn.attention(Q, K, V, backend="broken")


def test_plugin_whose_hook_raises_is_reported(plugin_path):
    make_dist(plugin_path, "portattn-raiser", "raiser", "portattn_fake_raiser_c", RAISING_HOOK)
    rec = records()["raiser"]
    assert not rec.available and "vendor driver is too old" in rec.reason


def test_duplicate_name_names_both_origins(plugin_path):
    make_dist(plugin_path, "portattn-dup", "dup", "portattn_fake_dup_d", good("portable", factor=2.0))
    failures = [r for r in portattn.list_backends() if r.name == "portable" and not r.available]
    assert len(failures) == 1
    assert "built-in" in failures[0].reason and "portattn-dup 1.0" in failures[0].reason
    # the built-in keeps its name and its (correct) results
    out = portattn.attention(Q, K, V, backend="portable")
    torch.testing.assert_close(out, portattn.attention(Q, K, V, backend="reference"))


def test_autoload_disabled_by_environment(plugin_path, monkeypatch, fresh_registry):
    make_dist(plugin_path, "portattn-fake", "fake", "portattn_fake_plugin_e", good("fake_e"))
    monkeypatch.setenv("PORTATTN_DISABLE_PLUGIN_AUTOLOAD", "1")
    fresh_registry.reset()
    names = set(records())
    assert "fake_e" not in names and {"portable", "sdpa", "reference"} <= names


def test_forced_backend_that_cannot_serve_lists_its_reasons(fresh_registry):
    with pytest.raises(portattn.NoBackendError) as info:
        portattn.attention(Q, K, V, softcap=5.0, causal=True, backend="sdpa")
    assert "sdpa" in str(info.value) and "softcap" in str(info.value)
    assert "softcap" in " ".join(info.value.reasons["sdpa"])
    with pytest.raises(portattn.NoBackendError, match="not registered.*known backends"):
        portattn.attention(Q, K, V, backend="nonexistent")


def test_no_backend_at_all_lists_every_reason(fresh_registry):
    with portattn.use_backend("sdpa"), pytest.raises(portattn.NoBackendError, match="softcap"):
        portattn.attention(Q, K, V, softcap=1.0)


def test_overrides_strongest_first(fresh_registry, monkeypatch):
    def chosen(**kw):
        return portattn.explain(Q, K, V, quiet=True, **kw).chosen

    assert chosen() == "portable"
    monkeypatch.setenv("PORTATTN_BACKEND", "reference")
    assert chosen() == "reference"
    with portattn.use_backend("sdpa"):
        assert chosen() == "sdpa"
        assert chosen(backend="portable") == "portable"
    assert chosen() == "reference"


def test_dispatch_follows_registrations_and_grad(fresh_registry):
    calls = []

    class ForwardOnly(Backend):
        name = "forward_only"
        priority = 1_000
        capabilities = Capabilities(features=frozenset())

        def forward(self, call, q, k, v):
            calls.append(call)
            return torch.zeros(q.shape[:3] + v.shape[3:]), None

    portattn.attention(Q, K, V)  # cache a decision for this signature
    portattn.register_backend(ForwardOnly())
    portattn.attention(Q, K, V)
    assert len(calls) == 1  # the cached decision was dropped when the registry changed
    q = Q.clone().requires_grad_()
    out = portattn.attention(q, K, V)  # needs backward: forward_only is not a candidate
    assert len(calls) == 1 and out.requires_grad
    reasons = portattn.explain(q, K, V, quiet=True)
    row = next(r for r in reasons.rows if r.name == "forward_only")
    assert "feature 'backward' not supported" in row.reasons


def test_dispatch_ranks_by_priority_for_the_call(fresh_registry):
    """``priority_for(call)`` orders the candidates per call; explain shows that priority."""
    served = []

    class Ranked(Backend):
        capabilities = Capabilities(features=frozenset({"causal"}))

        def __init__(self, name, priority, priority_causal):
            self.name, self.priority, self.priority_causal = name, priority, priority_causal

        def priority_for(self, call):
            return self.priority_causal if call.causal else self.priority

        def forward(self, call, q, k, v):
            served.append(self.name)
            return torch.zeros(q.shape[:3] + v.shape[3:]), None

    portattn.register_backend(Ranked("first_plain", 2_000, 1_000))
    portattn.register_backend(Ranked("first_causal", 1_500, 2_500))
    portattn.attention(Q, K, V)
    portattn.attention(Q, K, V, causal=True)
    assert served == ["first_plain", "first_causal"]
    rows = portattn.explain(Q, K, V, causal=True, quiet=True).rows
    assert [(r.name, r.priority) for r in rows[:2]] == [("first_causal", 2_500), ("first_plain", 1_000)]


def test_register_backend_refuses_a_taken_name(fresh_registry):
    class Clash(Backend):
        name = "portable"

        def forward(self, call, q, k, v):
            raise AssertionError

    with pytest.raises(portattn.PluginError, match="duplicate backend name 'portable'.*built-in.*runtime"):
        portattn.register_backend(Clash())


def test_unavailable_backend_reports_why_and_is_skipped(fresh_registry):
    class NeedsVendor(Backend):
        name = "needs_vendor"
        priority = 1_000

        def available(self):
            return "vendor library missing: install portattn[vendor]"

        def forward(self, call, q, k, v):
            raise AssertionError("unavailable backends never run")

    portattn.register_backend(NeedsVendor())
    rec = records()["needs_vendor"]
    assert not rec.available and "vendor library missing" in rec.reason
    result = portattn.explain(Q, K, V, quiet=True)
    assert result.chosen == "portable"
    assert "unavailable: vendor library missing" in str(result)


def test_explain_prints_a_table(capsys, fresh_registry):
    result = portattn.explain(Q, K, V, causal=True, softcap=2.0)
    printed = capsys.readouterr().out
    assert "=> portable" in printed and "chosen: portable" in printed
    assert "feature 'softcap' not supported" in printed
    assert result.as_dict()["chosen"] == "portable"


def test_capabilities_refuse_unknown_features():
    with pytest.raises(ValueError, match="unknown capability features"):
        Capabilities(features=frozenset({"causl"}))
