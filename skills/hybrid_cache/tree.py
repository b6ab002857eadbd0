"""The radix tree: nodes keyed by their first token, split where prompts diverge."""

from __future__ import annotations

from collections.abc import Iterator

from .node import Node
from .prefix import common_prefix
from .segment import Segment


class RadixTree:
    def __init__(self) -> None:
        self.root = Node((), 0, None)

    def walk(self, tokens: tuple[int, ...]) -> tuple[list[Node], int]:
        """The nodes `tokens` runs through (the last one possibly only in part) and how many tokens
        the tree holds of it (the common prefix)."""
        node, pos, path = self.root, 0, []
        while pos < len(tokens):
            child = node.children.get(tokens[pos])
            if child is None:
                break
            k = common_prefix(child.tokens, tokens[pos:pos + len(child.tokens)])
            path.append(child)
            pos += k
            if k < len(child.tokens):
                break
            node = child
        return path, pos

    def split(self, node: Node, at: int) -> Node:
        """Cut `node` at absolute position `at` (start < at < end); returns the new upper node
        [start, at), which keeps the snapshots up to `at`; `node` itself becomes the lower part
        (so whoever holds it, pins included, still holds the deeper tokens)."""
        k = at - node.start
        if not 0 < k < len(node.tokens):
            raise ValueError(f"split at {at} outside ({node.start}, {node.end})")
        head, tail = node.segment.split(k)
        upper = Node(node.tokens[:k], node.start, head, node.parent, last_used=node.last_used,
                     snapshots={p: s for p, s in node.snapshots.items() if p <= at})
        node.parent.children[upper.tokens[0]] = upper
        node.tokens, node.start, node.segment, node.parent = node.tokens[k:], at, tail, upper
        node.snapshots = {p: s for p, s in node.snapshots.items() if p > at}
        upper.children[node.tokens[0]] = node
        return upper

    def add_leaf(self, parent: Node, tokens: tuple[int, ...], segment: Segment) -> Node:
        leaf = Node(tokens, parent.end, segment, parent)
        parent.children[tokens[0]] = leaf
        return leaf

    def remove_leaf(self, node: Node) -> None:
        if node.children or node.parent is None:
            raise ValueError("only a leaf below the root can be removed")
        del node.parent.children[node.tokens[0]]
        node.parent = None

    def nodes(self) -> Iterator[Node]:
        """Every node but the root."""
        stack = list(self.root.children.values())
        while stack:
            node = stack.pop()
            yield node
            stack.extend(node.children.values())
