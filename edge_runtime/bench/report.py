"""Formatting shared by the benchmark reports: Markdown tables, ratios, percentages."""

from __future__ import annotations


def markdown_table(headers: list[str], body: list[list[str]], *, left: int) -> list[str]:
    """A Markdown table, padded so it also reads as plain text; the first ``left`` go left."""
    widths = [max(len(h), *(len(r[i]) for r in body)) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        padded = [
            c.ljust(w) if i < left else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "| " + " | ".join(padded) + " |"

    rule = (
        "|"
        + "|".join("-" * (w + 2) if i < left else "-" * (w + 1) + ":" for i, w in enumerate(widths))
        + "|"
    )
    return [line(headers), rule, *(line(r) for r in body)]


def times(value: float | None) -> str:
    """A ratio as ``1.23x``; ``-`` when there is none."""
    return "-" if value is None else f"{value:.2f}x"


def percent(value: float | None) -> str:
    """A fraction as a whole percentage; ``-`` when there is none."""
    return "-" if value is None else f"{value:.0%}"
