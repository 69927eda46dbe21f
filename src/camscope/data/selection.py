"""Class selection: by name, the k largest, by size rank, a minimum count. The rest is *unseen*."""

from __future__ import annotations

from dataclasses import dataclass

from camscope.errors import CamscopeError


@dataclass
class ClassSelection:
    names: list[str] | None = None
    top_k: int | None = None
    ranks: list[int] | None = None  # 1-based size ranks, e.g. [2, 3]
    min_count: int | None = None

    def is_empty(self) -> bool:
        return not (self.names or self.top_k or self.ranks or self.min_count)

    @classmethod
    def from_text(
        cls, names: str | None, top_k: int | None, ranks: str | None, min_count: int | None
    ) -> ClassSelection:
        """From the command line's forms: 'a,b' for names, '2,3' or '1-3' for ranks."""
        return cls(
            names=[c.strip() for c in names.split(",")] if names else None,
            top_k=top_k,
            ranks=parse_ranks(ranks) if ranks else None,
            min_count=min_count,
        )


def ranked(counts: dict[str, int]) -> list[str]:
    """Class names from largest to smallest; ties broken by name so ranks are reproducible."""
    return sorted(counts, key=lambda c: (-counts[c], c))


def parse_ranks(text: str) -> list[int]:
    """'2,3' or '2-4' -> [2, 3] or [2, 3, 4]."""
    out: list[int] = []
    try:
        for part in text.split(","):
            part = part.strip()
            if "-" in part:
                a, b = part.split("-", 1)
                out.extend(range(int(a), int(b) + 1))
            elif part:
                out.append(int(part))
    except ValueError:
        raise CamscopeError(f"cannot read size ranks {text!r}", "write them like '2,3' or '1-3'") from None
    return out


def select_classes(counts: dict[str, int], sel: ClassSelection) -> tuple[list[str], list[str]]:
    """Return (selected, unseen), each in size order. Every criterion given must hold."""
    order = ranked(counts)
    chosen = list(order)
    if sel.names:
        missing = [n for n in sel.names if n not in counts]
        if missing:
            raise CamscopeError(
                f"unknown class(es) {', '.join(map(repr, missing))}",
                f"available: {', '.join(order)}",
            )
        chosen = [c for c in chosen if c in sel.names]
    if sel.ranks:
        bad = [r for r in sel.ranks if r < 1 or r > len(order)]
        if bad:
            raise CamscopeError(f"size rank(s) {bad} out of range", f"there are {len(order)} classes")
        by_rank = {order[r - 1] for r in sel.ranks}
        chosen = [c for c in chosen if c in by_rank]
    if sel.top_k:
        chosen = [c for c in chosen if c in set(order[: sel.top_k])]
    if sel.min_count:
        chosen = [c for c in chosen if counts[c] >= sel.min_count]
    if len(chosen) < 2:
        raise CamscopeError(
            f"the selection leaves {len(chosen)} class(es): {chosen}",
            "a classifier needs at least two classes; loosen the selection",
        )
    unseen = [c for c in order if c not in chosen]
    return chosen, unseen
