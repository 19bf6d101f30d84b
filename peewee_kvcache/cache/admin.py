"""Operations on a whole cache: statistics, clearing, draining and closing.

Like the query path they degrade instead of raising (an operator who wants KV failures raised
uses the command line's maintenance, which lists and deletes through the same key space).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional

from ..core.config import check_number
from ..core.faults import Report
from ..core.stats import CacheStats, Counters
from ..invalidation.writer import BackgroundWriter
from ..kv.base import KVNamespace
from ..l2.gateway import L2Gateway
from ..l2.layout import marker_target
from ..levels.l1 import L1_FAULTS
from ..levels.memory import MemoryLevel


@dataclass(eq=False)
class Admin:
    """Statistics and the lifetime of one cache's parts."""

    namespace: KVNamespace
    l1: Any
    outbox: Any
    memory: MemoryLevel
    l2: L2Gateway
    writer: BackgroundWriter
    counters: Counters
    fault: Report

    def stats(self) -> CacheStats:
        """Counters of this process plus key counts read from L2 (right across hosts):
        ``total_keys`` results, ``table_keys`` / ``tag_keys`` index keys under t: / g:; -1 each
        when L2 can't be listed."""
        counts = self.l2.counts()
        values: Dict[str, Any] = {
            "total_keys": -1 if counts is None else counts.total_keys,
            "table_keys": -1 if counts is None else counts.table_keys,
            "tag_keys": -1 if counts is None else counts.tag_keys, **self.counters.snapshot()}
        try:
            values.update(self.l1.stats())
        except L1_FAULTS as exc:
            self.fault("l1_errors", "L1 stats failed", exc)
        return CacheStats(**values, pending_l2_work=self.writer.pending(),
                          outbox_jobs=self.outbox_jobs(), l2_circuit=self.l2.circuit)

    def outbox_jobs(self) -> int:
        """Sweeps queued in the outbox (this host); -1 when it can't be read."""
        try:
            return len(self.outbox)
        except L1_FAULTS as exc:
            self.fault("l1_errors", "reading the invalidation outbox failed", exc)
            return -1

    def entry_keys(self) -> List[str]:
        """Keys of the results stored in L2 (markers left out); [] when L2 can't be listed."""
        infos = self.l2.listing("L2 listing failed")
        return [info.name for info in infos or () if marker_target(info) is None]

    def clear_local(self) -> None:
        """Forget this host's copies (process memory and the L1 directory's entries)."""
        self.memory.clear()
        try:
            self.l1.entries.clear()
        except L1_FAULTS as exc:
            self.fault("l1_errors", "L1 clear failed", exc)

    def clear_all(self) -> None:
        """Empty every level for this cache's prefix (other prefixes in the namespace stay)."""
        self.drain(30)
        self.memory.clear()
        try:
            self.l1.clear()
        except L1_FAULTS as exc:
            self.fault("l1_errors", "L1 clear failed", exc)
        infos = self.l2.listing("L2 listing for clear failed")
        if infos:
            self.l2.delete([info.name for info in infos])

    def drain(self, timeout: Optional[float] = None) -> bool:
        """Wait until every queued L2 write and invalidation was sent; False on timeout."""
        if timeout is not None:
            check_number("timeout", timeout, zero_ok=True)
        return self.writer.drain(timeout)

    def close(self) -> None:
        """Release files and connections; queued L2 work gets at most ``exit_timeout``."""
        self.writer.close()
        self.outbox.close()
        self.l1.close()
        self.namespace.close()
