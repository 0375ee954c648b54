"""Counters, gauges and histograms in the Prometheus text format (0.0.4).

Small on purpose: the daemon needs a dozen series, and the format is a few
lines of text, so no client library is pulled in.  Values live in dicts keyed
by label values; everything runs on the event loop thread, so no locks.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Seconds.  Small reads finish in milliseconds, uploads of many GB in minutes.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                   10.0, 30.0, 60.0, 120.0, 300.0, 900.0)


def _escape(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: tuple[str, ...], values: tuple, extra: str = "") -> str:
    parts = [f'{n}="{_escape(str(v))}"' for n, v in zip(names, values)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _num(v: float) -> str:
    if isinstance(v, int):
        return str(v)
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(float(v))


class _Metric:
    kind = ""

    def __init__(self, name: str, help_: str, labels: Iterable[str] = ()) -> None:
        self.name = name
        self.help = help_
        self.label_names = tuple(labels)

    def _key(self, labels: dict) -> tuple:
        if set(labels) != set(self.label_names):
            raise ValueError(f"{self.name} takes labels {self.label_names}, got {sorted(labels)}")
        return tuple(labels[n] for n in self.label_names)

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]


class Counter(_Metric):
    kind = "counter"

    def __init__(self, *a, **k) -> None:
        super().__init__(*a, **k)
        self.values: dict[tuple, float] = {}
        if not self.label_names:
            self.values[()] = 0

    def inc(self, amount: float = 1, **labels) -> None:
        key = self._key(labels)
        self.values[key] = self.values.get(key, 0) + amount

    def get(self, **labels) -> float:
        return self.values.get(self._key(labels), 0)

    def render(self) -> list[str]:
        return self.header() + [f"{self.name}{_labels(self.label_names, k)} {_num(v)}"
                                for k, v in sorted(self.values.items())]


class Gauge(Counter):
    kind = "gauge"

    def set(self, value: float, **labels) -> None:
        self.values[self._key(labels)] = value

    def dec(self, amount: float = 1, **labels) -> None:
        self.inc(-amount, **labels)


class Histogram(_Metric):
    kind = "histogram"

    def __init__(self, name: str, help_: str, labels: Iterable[str] = (),
                 buckets: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        super().__init__(name, help_, labels)
        self.buckets = tuple(sorted(buckets))
        self.values: dict[tuple, list] = {}      # key -> [per-bucket counts..., sum, count]

    def observe(self, value: float, **labels) -> None:
        key = self._key(labels)
        row = self.values.get(key)
        if row is None:
            row = self.values[key] = [0] * len(self.buckets) + [0.0, 0]
        for i, b in enumerate(self.buckets):
            if value <= b:
                row[i] += 1
                break
        row[-2] += value
        row[-1] += 1

    def render(self) -> list[str]:
        out = self.header()
        for key, row in sorted(self.values.items()):
            acc = 0
            for b, n in zip(self.buckets + (math.inf,), row[:-2] + [0]):
                acc = row[-1] if math.isinf(b) else acc + n
                le = 'le="' + _num(b) + '"'
                out.append(f"{self.name}_bucket{_labels(self.label_names, key, le)} {acc}")
            out.append(f"{self.name}_sum{_labels(self.label_names, key)} {_num(row[-2])}")
            out.append(f"{self.name}_count{_labels(self.label_names, key)} {row[-1]}")
        return out


class Registry:
    def __init__(self) -> None:
        self._metrics: list[_Metric] = []
        self._collectors: list[Callable[[], Iterable[_Metric]]] = []

    def add(self, metric):
        self._metrics.append(metric)
        return metric

    def counter(self, name: str, help_: str, labels: Iterable[str] = ()) -> Counter:
        return self.add(Counter(name, help_, labels))

    def gauge(self, name: str, help_: str, labels: Iterable[str] = ()) -> Gauge:
        return self.add(Gauge(name, help_, labels))

    def histogram(self, name: str, help_: str, labels: Iterable[str] = (), **kw) -> Histogram:
        return self.add(Histogram(name, help_, labels, **kw))

    def collector(self, fn: Callable[[], Iterable[_Metric]]) -> None:
        """`fn` builds metrics afresh at every scrape (values owned elsewhere)."""
        self._collectors.append(fn)

    def render(self) -> str:
        lines: list[str] = []
        for m in self._metrics:
            lines += m.render()
        for fn in self._collectors:
            for m in fn():
                lines += m.render()
        return "\n".join(lines) + "\n"
