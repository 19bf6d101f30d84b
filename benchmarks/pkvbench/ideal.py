"""What an ideal cache would have taken on the same operation sequences: exact table-level
invalidation (a write makes stale exactly the results that read its table, on every host, at
once), an instant store (a miss's result is there for the next read, at no cost), a hit that
costs this library's own measured hit cost for that query shape, and a miss or a write that costs
what that very operation took without a cache (measured in the same run).

The hosts are replayed on their ideal clocks: the next operation is always that of the host whose
ideal clock is behind, so the two sequences interleave as they would at the ideal's speed.
``shared`` gives both hosts one store (what a perfect shared L2 reaches); otherwise each host
has its own (what a cache that never used a far L2 could reach)."""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Dict, List, Mapping, Sequence, Tuple

from .mix import Op


@dataclass(frozen=True)
class IdealResult:
    total_us: float
    hits: int
    reads: int

    @property
    def hit_ratio(self) -> float:
        return self.hits / self.reads if self.reads else 0.0


def ideal(ops: Sequence[Sequence[Op]], uncached_us: Sequence[Sequence[float]],
          hit_us: Mapping[str, float], shared: bool) -> IdealResult:
    """``ops[h]`` host h's sequence, ``uncached_us[h][i]`` what its operation i took without a
    cache, ``hit_us[kind]`` the hit cost of a read of that kind."""
    clocks = [0.0] * len(ops)
    positions = [0] * len(ops)
    versions: Dict[str, int] = defaultdict(int)
    stores: List[Dict[Tuple[str, Tuple[int, ...]], Tuple[int, ...]]] = [
        {} for _ in range(1 if shared else len(ops))]
    hits = reads = 0
    while True:
        waiting = [h for h in range(len(ops)) if positions[h] < len(ops[h])]
        if not waiting:
            break
        host = min(waiting, key=lambda h: (clocks[h], h))
        op, cost = ops[host][positions[host]], uncached_us[host][positions[host]]
        positions[host] += 1
        if op.kind == "write":
            versions[op.target] += 1
        else:
            reads += 1
            store = stores[0 if shared else host]
            stamp = tuple(versions[table] for table in op.reads)
            if store.get(op.key) == stamp:
                hits += 1
                cost = hit_us[op.kind]
            else:
                store[op.key] = stamp
        clocks[host] += cost
    return IdealResult(sum(clocks), hits, reads)
