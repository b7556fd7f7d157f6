"""THREAD (RFC 5256 §3): ORDEREDSUBJECT and REFERENCES over the found messages."""

from __future__ import annotations

import itertools
from collections.abc import Callable

from provider.protocols.imap.sort import SortMessage

ALGORITHMS = ("ORDEREDSUBJECT", "REFERENCES")


class Node:
    """A message in the thread tree, or a dummy (message None) for one that was referenced
    but not found."""

    __slots__ = ("children", "message", "parent")

    def __init__(self, message: SortMessage | None = None) -> None:
        self.message = message
        self.parent: Node | None = None
        self.children: list[Node] = []

    def date_key(self) -> tuple[float, int]:
        """Sent date, then sequence number; a dummy sorts as its first child."""
        if self.message is not None:
            return self.message.sent, self.message.seq
        return self.children[0].date_key() if self.children else (0.0, 0)

    def subject(self) -> str:
        """The thread subject (step 5.B.i): its own, or its first child's for a dummy."""
        if self.message is not None:
            return self.message.subject
        first = self.children[0] if self.children else None
        return first.message.subject if first is not None and first.message is not None else ""


def _is_ancestor(candidate: Node, node: Node) -> bool:
    """Whether `candidate` is `node` or above it: linking it under `node` would make a loop."""
    current: Node | None = node
    while current is not None:
        if current is candidate:
            return True
        current = current.parent
    return False


def _link(parent: Node, child: Node) -> None:
    child.parent = parent
    parent.children.append(child)


def _unlink(child: Node) -> None:
    if child.parent is not None:
        child.parent.children.remove(child)
        child.parent = None


def references_threads(messages: list[SortMessage]) -> list[Node]:
    """The REFERENCES algorithm (RFC 5256 §3 steps 1-6): the root's children, sorted."""
    table: dict[str, Node] = {}

    def node_for(message_id: str) -> Node:
        node = table.get(message_id)
        if node is None:
            node = table[message_id] = Node()
        return node

    nodes: list[Node] = []
    for message in sorted(messages, key=lambda m: m.seq):
        # (1.A) One container per message id; a missing or duplicate id gets a unique one.
        existing = table.get(message.message_id) if message.message_id else None
        if existing is not None and existing.message is None:
            node = existing
            node.message = message
        else:
            node = Node(message)
            if message.message_id and existing is None:
                table[message.message_id] = node
        nodes.append(node)
        references = message.references
        for parent_id, child_id in itertools.pairwise(references):
            parent, child = node_for(parent_id), node_for(child_id)
            if child.parent is None and not _is_ancestor(child, parent):
                _link(parent, child)
        # (1.B) The last reference is the parent, replacing a link made from a truncated
        # References field elsewhere; no parent without references.
        _unlink(node)
        if references:
            parent = node_for(references[-1])
            if not _is_ancestor(node, parent):
                _link(parent, node)
    # (2) The root set, in the order the containers were made (the sort below decides).
    seen: set[int] = set()
    roots: list[Node] = []
    for node in [*nodes, *table.values()]:
        if node.parent is None and id(node) not in seen:
            seen.add(id(node))
            roots.append(node)
    roots = _prune(roots, top=True)
    # (4) Top-level order by sent date; a dummy by its earliest child.
    for node in roots:
        if node.message is None:
            node.children.sort(key=Node.date_key)
    roots.sort(key=Node.date_key)
    roots = _merge_subjects(roots)
    # (6) Every set of siblings by sent date, the deepest first.
    for node in roots:
        _sort_tree(node)
    roots.sort(key=Node.date_key)
    return roots


def _bottom_up(roots: list[Node]) -> list[Node]:
    """Every node under `roots`, each after all of its descendants (no recursion: a thread
    may be thousands of replies deep)."""
    order: list[Node] = []
    stack = list(roots)
    while stack:
        node = stack.pop()
        order.append(node)
        stack.extend(node.children)
    order.reverse()
    return order


def _prune(roots: list[Node], top: bool) -> list[Node]:
    """(3) Dummies go: an empty one is dropped, one with children is replaced by them, unless
    that would put several children at the top level."""
    for node in _bottom_up(roots):
        node.children = _prune_level(node.children, top=False)
        for child in node.children:
            child.parent = node
    return _prune_level(roots, top)


def _prune_level(children: list[Node], top: bool) -> list[Node]:
    out: list[Node] = []
    for node in children:
        if node.message is not None:
            out.append(node)
        elif not node.children:
            continue
        elif not top or len(node.children) == 1:
            out.extend(node.children)
        else:
            out.append(node)
    return out


def _merge_subjects(roots: list[Node]) -> list[Node]:
    """(5) Threads at the top level with the same base subject are gathered together."""
    table: dict[str, Node] = {}
    for node in roots:
        subject = node.subject()
        if not subject:
            continue
        held = table.get(subject)
        if held is None or (
            held.message is not None
            and (node.message is None or (held.message.reply and not node.message.reply))
        ):
            table[subject] = node
    out: list[Node] = []
    placed: dict[int, int] = {}  # id(node) → its index in out
    for node in roots:
        subject = node.subject()
        held = table.get(subject) if subject else None
        if held is None or held is node:
            placed[id(node)] = len(out)
            out.append(node)
            continue
        if held.message is None and node.message is None:
            for child in node.children:
                _link(held, child)
            node.children = []
        elif held.message is None or (
            node.message is not None
            and node.message.reply
            and held.message is not None
            and not held.message.reply
        ):
            _link(held, node)
        else:
            dummy = Node()
            _link(dummy, held)
            _link(dummy, node)
            table[subject] = dummy
            if id(held) in placed:
                out[placed.pop(id(held))] = dummy
                placed[id(dummy)] = out.index(dummy)
            else:  # held comes later in the root list: it takes the dummy's place there
                roots[roots.index(held)] = dummy
    return out


def _sort_tree(node: Node) -> None:
    for each in _bottom_up([node]):
        each.children.sort(key=Node.date_key)


def ordered_subject_threads(messages: list[SortMessage]) -> list[Node]:
    """ORDEREDSUBJECT: by base subject then sent date; each subject one thread whose first
    message is the parent of all the others; threads by their first message's date."""
    ordered = sorted(messages, key=lambda m: (m.subject, m.sent, m.seq))
    threads: list[Node] = []
    current: Node | None = None
    for message in ordered:
        node = Node(message)
        if (
            current is not None
            and current.message is not None
            and current.message.subject == message.subject
        ):
            _link(current, node)
            continue
        current = node
        threads.append(node)
    threads.sort(key=Node.date_key)
    return threads


def format_threads(roots: list[Node], number: Callable[[SortMessage], int]) -> str:
    """The THREAD response data: `(2)(3 6 (4 23)(44 7 96))` (RFC 5256 §4): a chain of single
    children is a run of numbers, a split nests one list per child. Built with a stack, not
    by recursion, whatever the depth."""
    out: list[str] = []
    stack: list[Node | str] = list(reversed(roots))
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            out.append(item)
            continue
        parts: list[str] = []
        current = item
        while True:
            if current.message is not None:
                parts.append(str(number(current.message)))
            if len(current.children) != 1:
                break
            current = current.children[0]
        out.append("(" + " ".join(parts))
        if current.children:
            if parts:
                out.append(" ")
            stack.append(")")
            stack.extend(reversed(current.children))
        else:
            out.append(")")
    return "".join(out)
