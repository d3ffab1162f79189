"""Licence policy: which clips may reach a shard, decided from their SPDX licence and attribution.

A licence is an SPDX expression. `MIT OR Apache-2.0` is allowed when one alternative is; `A AND B`
only when both are; `X WITH exception` when X is (an exception only adds permissions). NOASSERTION
and anything that does not parse are unknown, denied unless listed. A licence of the attribution
family (CC-BY-* by default) needs an author or an attribution text on the source, else the clip is
filtered too. Kept clips outside the policy become `filtered`, reason `licence`, the why in `error`.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from functools import lru_cache

import pyarrow as pa

from schemas import ClipStatus, Reason
from stages.ingest import spdx_licensing

# Permissive licences a training set can use with attribution at most; NC/ND and unknown are out.
DEFAULT_ALLOWED = (
    "CC0-1.0", "PDDL-1.0", "CC-PDDC", "CC-BY-3.0", "CC-BY-4.0", "CC-BY-SA-3.0", "CC-BY-SA-4.0",
    "MIT", "Apache-2.0", "BSD-2-Clause", "BSD-3-Clause",
)  # fmt: skip


@dataclass(frozen=True)
class PolicyConfig:
    allowed_licenses: tuple[str, ...] = DEFAULT_ALLOWED  # SPDX ids; unknown (NOASSERTION) is denied unless listed
    opt_out: tuple[str, ...] = ()  # source ids, uris or source URLs whose clips never reach a shard
    opt_out_file: str | None = None  # a text file with one more such id or uri per line (# comments)
    require_attribution: bool = True  # a clip needing attribution without author/attribution is filtered
    attribution_licenses: tuple[str, ...] = ("CC-BY-*",)  # licence ids (glob patterns) that require attribution

    def __post_init__(self):
        for name in ("allowed_licenses", "opt_out", "attribution_licenses"):
            for value in getattr(self, name):
                if not isinstance(value, str) or not value.strip():
                    raise ValueError(f"PolicyConfig.{name}: every entry must be a non-empty string, got {value!r}")


@lru_cache(maxsize=4096)
def alternatives(expression: str | None) -> tuple[frozenset[str], ...]:
    """The ways to satisfy a licence expression: each a set of licence keys that must all be honoured.

    `MIT OR (Apache-2.0 AND CC-BY-4.0)` -> ({MIT}, {Apache-2.0, CC-BY-4.0}). An expression that does
    not parse is one opaque key (so NOASSERTION or a LicenseRef is allowed only when listed as such).
    """
    text = (expression or "").strip() or "NOASSERTION"
    try:
        parsed = spdx_licensing().parse(text, validate=False, strict=False)
    except Exception:  # license_expression raises several kinds; an unparsable licence is unknown
        return (frozenset([text]),)
    if parsed is None:
        return (frozenset(["NOASSERTION"]),)
    return tuple(sorted(set(_dnf(parsed)), key=sorted))


def _dnf(node) -> list[frozenset[str]]:
    lic = spdx_licensing()
    if isinstance(node, lic.OR):
        return [alt for arg in node.args for alt in _dnf(arg)]
    if isinstance(node, lic.AND):
        out = [frozenset()]
        for arg in node.args:
            out = [a | b for a in out for b in _dnf(arg)]
        return out
    symbol = getattr(node, "license_symbol", node)  # `X WITH exception` -> X
    return [frozenset([str(getattr(symbol, "key", symbol))])]


@dataclass(frozen=True)
class Decision:
    allowed: bool
    needs_attribution: bool
    why: str | None  # the reason a clip is filtered, in words


class LicencePolicy:
    """Decide per licence, and apply to a CLIPS table (a stage: kept rows outside the policy are filtered)."""

    def __init__(self, cfg: PolicyConfig, blocked: dict[str, tuple[str, str]] | None = None):
        """`blocked`: source_id -> (reason code, message) pairs resolved by the caller (opt-out, takedown)."""
        self.cfg = cfg
        self.allowed = frozenset(cfg.allowed_licenses)
        self.blocked = dict(blocked or {})

    def needs_attribution(self, key: str) -> bool:
        return any(fnmatch.fnmatchcase(key, pattern) for pattern in self.cfg.attribution_licenses)

    def decide(self, license: str | None, author: str | None = None, attribution: str | None = None) -> Decision:
        options = [alt for alt in alternatives(license) if alt <= self.allowed]
        if not options:
            return Decision(False, False, f"licence {license or 'NOASSERTION'} is not allowed by policy.allowed_licenses")
        # With a choice of licences, the dataset takes the one asking least: attribution only if all ask.
        needs = all(any(self.needs_attribution(k) for k in alt) for alt in options)
        credited = bool((author or "").strip() or (attribution or "").strip())
        if needs and self.cfg.require_attribution and not credited:
            return Decision(False, True, f"licence {license} requires attribution and the source has no author or attribution")
        return Decision(True, needs, None)

    def __call__(self, clips: pa.Table) -> pa.Table:
        rows = clips.to_pylist()
        for row in rows:
            if row["status"] != ClipStatus.KEPT:
                continue
            if row["source_id"] in self.blocked:
                reason, message = self.blocked[row["source_id"]]
                row.update(status=ClipStatus.FILTERED, reason=reason, error=message)
                continue
            decision = self.decide(row.get("license"), row.get("author"), row.get("attribution"))
            if not decision.allowed:
                row.update(status=ClipStatus.FILTERED, reason=Reason.LICENCE, error=decision.why)
        return pa.Table.from_pylist(rows, schema=clips.schema)
