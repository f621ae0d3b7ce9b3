"""Plain counters, gauges and histograms, and their Prometheus text rendering.

No dependencies and no I/O: the multi-kernel manager counts into a
:class:`Metrics` registry and a gateway serves :meth:`Metrics.render` at
``/metrics``. Updates take a lock, so listeners running on library threads
may count too.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Protocol

__all__ = ["Counter", "Gauge", "Histogram", "Metrics", "PoolView", "pool_gauges"]

Labels = tuple[tuple[str, str], ...]

#: Start latencies in seconds: a warm-pool hit is milliseconds, a cold ipykernel ~0.5 s,
#: a loaded machine several seconds.
START_BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


def _labels(labels: Mapping[str, str] | None) -> Labels:
    return tuple(sorted((labels or {}).items()))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _fmt_labels(labels: Labels, extra: Labels = ()) -> str:
    items = labels + extra
    if not items:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in items) + "}"


def _fmt_value(v: float) -> str:
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if float(v).is_integer():
        return str(int(v))
    return repr(float(v))


class _Metric:
    kind = ""

    def __init__(self, name: str, help: str) -> None:
        self.name = name
        self.help = help
        self._lock = threading.Lock()

    def _header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]

    def render(self) -> list[str]:
        raise NotImplementedError


class Counter(_Metric):
    """A monotonically increasing count, per label set."""

    kind = "counter"

    def __init__(self, name: str, help: str) -> None:
        super().__init__(name, help)
        self._values: dict[Labels, float] = {}

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        """Add ``amount`` (default 1) to the count of ``labels``."""
        key = _labels(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, **labels: str) -> float:
        """The count of exactly these labels (0 if never counted)."""
        with self._lock:
            return self._values.get(_labels(labels), 0.0)

    def total(self) -> float:
        """The sum over every label set."""
        with self._lock:
            return sum(self._values.values())

    def render(self) -> list[str]:
        with self._lock:
            items = sorted(self._values.items())
        lines = self._header()
        lines += [f"{self.name}{_fmt_labels(k)} {_fmt_value(v)}" for k, v in items]
        return lines


class Gauge(_Metric):
    """A value read when rendered: ``collect()`` returns ``{labels: value}``.

    ``kind="counter"`` exposes a count kept elsewhere (a pool's hits) as a counter.
    """

    kind = "gauge"

    def __init__(
        self,
        name: str,
        help: str,
        collect: Callable[[], Mapping[Labels, float]],
        kind: str = "gauge",
    ) -> None:
        super().__init__(name, help)
        self._collect = collect
        self.kind = kind

    def values(self) -> dict[Labels, float]:
        return dict(self._collect())

    def render(self) -> list[str]:
        lines = self._header()
        for k, v in sorted(self.values().items()):
            lines.append(f"{self.name}{_fmt_labels(k)} {_fmt_value(v)}")
        return lines


class Histogram(_Metric):
    """Observations counted into cumulative buckets, with their count and sum."""

    kind = "histogram"

    def __init__(self, name: str, help: str, buckets: Sequence[float] = START_BUCKETS) -> None:
        super().__init__(name, help)
        self.buckets = tuple(sorted(buckets))
        self._data: dict[Labels, tuple[list[int], list[float]]] = {}

    def observe(self, value: float, **labels: str) -> None:
        """Record one observation (e.g. a start latency in seconds)."""
        key = _labels(labels)
        with self._lock:
            counts, acc = self._data.setdefault(key, ([0] * (len(self.buckets) + 1), [0.0]))
            for i, bound in enumerate(self.buckets):
                if value <= bound:
                    counts[i] += 1
                    break
            else:
                counts[-1] += 1
            acc[0] += value

    def count(self, **labels: str) -> int:
        with self._lock:
            data = self._data.get(_labels(labels))
            return sum(data[0]) if data else 0

    def sum(self, **labels: str) -> float:
        with self._lock:
            data = self._data.get(_labels(labels))
            return data[1][0] if data else 0.0

    def render(self) -> list[str]:
        with self._lock:
            items = sorted((k, (list(c), s[0])) for k, (c, s) in self._data.items())
        lines = self._header()
        for key, (counts, total) in items:
            running = 0
            for bound, n in zip((*self.buckets, math.inf), counts, strict=True):
                running += n
                le = (("le", _fmt_value(bound)),)
                lines.append(f"{self.name}_bucket{_fmt_labels(key, le)} {running}")
            lines.append(f"{self.name}_count{_fmt_labels(key)} {running}")
            lines.append(f"{self.name}_sum{_fmt_labels(key)} {_fmt_value(total)}")
        return lines


class Metrics:
    """The multi-kernel manager's metrics.

    ``kernel_states`` is called at render time and returns the number of
    kernels per execution state; ``pool_counts`` returns ``{kernel_name:
    (hits, misses)}`` read from the warm pools.
    """

    def __init__(
        self,
        kernel_states: Callable[[], Mapping[str, int]] = dict,
        pool_counts: Callable[[], Mapping[str, tuple[int, int]]] = dict,
        prefix: str = "kernelkeeper",
    ) -> None:
        p = prefix
        self.starts = Counter(f"{p}_kernel_starts_total", "Kernels started, by kernel type.")
        self.start_failures = Counter(
            f"{p}_kernel_start_failures_total", "Kernel starts that failed, by kernel type."
        )
        self.start_latency = Histogram(
            f"{p}_kernel_start_seconds", "Seconds from start request to a ready kernel."
        )
        self.restarts = Counter(f"{p}_kernel_restarts_total", "Kernel restarts, by reason.")
        self.deaths = Counter(f"{p}_kernel_deaths_total", "Kernels that died on their own.")
        self.culls = Counter(f"{p}_kernel_culls_total", "Kernels culled, by kernel type.")
        self._pool_counts = pool_counts
        self.pool_hits = Gauge(
            f"{p}_pool_hits_total", "Starts served by a warm pool.", self._hits, "counter"
        )
        self.pool_misses = Gauge(
            f"{p}_pool_misses_total", "Starts a warm pool could not serve.", self._misses, "counter"
        )
        self.kernels = Gauge(
            f"{p}_kernels",
            "Kernels by execution state.",
            lambda: {(("state", s),): float(n) for s, n in kernel_states().items()},
        )

    def _hits(self) -> dict[Labels, float]:
        return {(("kernel_name", k),): float(h) for k, (h, _) in self._pool_counts().items()}

    def _misses(self) -> dict[Labels, float]:
        return {(("kernel_name", k),): float(m) for k, (_, m) in self._pool_counts().items()}

    def all(self) -> Iterable[_Metric]:
        return (
            self.starts,
            self.start_failures,
            self.start_latency,
            self.restarts,
            self.deaths,
            self.culls,
            self.pool_hits,
            self.pool_misses,
            self.kernels,
        )

    def render(self) -> str:
        """Every metric in the Prometheus text exposition format (version 0.0.4)."""
        lines: list[str] = []
        for m in self.all():
            lines += m.render()
        return "\n".join(lines) + "\n"


class PoolView(Protocol):
    """What :func:`pool_gauges` reads of a warm pool."""

    @property
    def size(self) -> int: ...

    @property
    def starting(self) -> int: ...

    @property
    def target(self) -> int: ...


def pool_gauges(pools: Mapping[str, PoolView], prefix: str = "kernelkeeper") -> list[Gauge]:
    """How ready each warm pool is: ``{prefix}_pool_kernels{kernel_name,state}``
    (``ready``, ``starting``) and ``{prefix}_pool_target_kernels{kernel_name}``."""

    def kernels() -> dict[Labels, float]:
        out: dict[Labels, float] = {}
        for name, pool in pools.items():
            out[(("kernel_name", name), ("state", "ready"))] = float(pool.size)
            out[(("kernel_name", name), ("state", "starting"))] = float(pool.starting)
        return out

    def targets() -> dict[Labels, float]:
        return {(("kernel_name", n),): float(p.target) for n, p in pools.items()}

    return [
        Gauge(
            f"{prefix}_pool_kernels",
            "Warm-pool kernels by kernel type: ready to be taken, or starting.",
            kernels,
        ),
        Gauge(f"{prefix}_pool_target_kernels", "The size each warm pool aims at.", targets),
    ]
