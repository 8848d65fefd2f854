"""Graph paths: find the path from a start node to a target in a small directed tree.

A problem: a start node with d arms (d uniform in 2..4), each arm a chain of L nodes (L
uniform in 2..3, the same for every arm of a problem); node labels distinct, uniform in
1..99; the target is the last node of one arm, chosen uniformly. Directed edges ``a>b``
(start to each arm's first node, then along each arm), listed in random order. The prompt,
exactly::

    Find a path from 12 to 57. Edges: 12>3, 3>57, 12>8, 8>41.

A completion is right when its last line ``The answer is 12>3>57.`` starts at the start,
ends at the target, and every consecutive pair is a listed edge. Reference solutions: one
edge a line (``12>3``, ``3>57``), then the answer line. Planning the first step is the hard
part for a small model (which arm ends at the target?); checking a path is a lookup.

The step checker is exact: step i (``a>b``) is right when steps 0..i chain from the start
along listed edges and the target is still reachable from where they end.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass

from ..answers import DEFAULT_RULES
from .base import answer_line

MIN_ARMS, MAX_ARMS = 2, 4
MIN_ARM_LENGTH, MAX_ARM_LENGTH = 2, 3
MIN_LABEL, MAX_LABEL = 1, 99
MAX_PATH_CHARS = 200


@dataclass(frozen=True)
class Problem:
    start: int
    target: int
    edges: tuple[tuple[int, int], ...]  # in the order the prompt lists them

    @property
    def question(self) -> str:
        listed = ", ".join(f"{a}>{b}" for a, b in self.edges)
        return f"Find a path from {self.start} to {self.target}. Edges: {listed}."

    @property
    def path(self) -> list[int]:
        """The one path from start to target (the graph is a tree)."""
        parent = {b: a for a, b in self.edges}
        nodes = [self.target]
        while nodes[-1] != self.start:
            if nodes[-1] not in parent or len(nodes) > len(self.edges):
                raise ValueError(f"{self.target} is not reachable from {self.start}")
            nodes.append(parent[nodes[-1]])
        return nodes[::-1]

    @property
    def answer(self) -> str:
        return ">".join(str(n) for n in self.path)

    @property
    def children(self) -> dict[int, list[int]]:
        """Each node's successors, in the order the prompt lists them."""
        out: dict[int, list[int]] = {}
        for a, b in self.edges:
            out.setdefault(a, []).append(b)
        return out

    @property
    def labels(self) -> set[int]:
        """Every node label the prompt lists."""
        return {n for edge in self.edges for n in edge}


_PATH = re.compile(r"^\d+(?:>\d+)+$")
_EDGE_STEP = re.compile(r"^\s*(\d+)\s*>\s*(\d+)\s*$")


def parse_edge(step: str) -> tuple[int, int] | None:
    """A step line ``12>3`` (spaces allowed) as its edge; None for anything else."""
    m = _EDGE_STEP.match(step)
    return None if m is None else (int(m[1]), int(m[2]))


def solution(nodes: Sequence[int]) -> str:
    """A path written as a solution: one edge a line, then the answer line."""
    steps = [f"{a}>{b}" for a, b in zip(nodes, nodes[1:], strict=False)]
    return "\n".join([*steps, f"The answer is {'>'.join(map(str, nodes))}."])


def parse_path(text: str) -> list[int] | None:
    """``12>3>57`` (spaces allowed around ``>``) as its nodes; None for anything else."""
    if len(text) > MAX_PATH_CHARS:
        return None
    compact = re.sub(r"\s+", "", text)
    if not _PATH.match(compact):
        return None
    return [int(x) for x in compact.split(">")]


def check_path(problem: Problem, nodes: Sequence[int]) -> bool:
    edges = set(problem.edges)
    return (
        len(nodes) >= 2
        and nodes[0] == problem.start
        and nodes[-1] == problem.target
        and all((a, b) in edges for a, b in zip(nodes, nodes[1:], strict=False))
    )


def reachable(problem: Problem, source: int, target: int) -> bool:
    children = problem.children
    stack, seen = [source], set()
    while stack:
        n = stack.pop()
        if n == target:
            return True
        if n not in seen:
            seen.add(n)
            stack.extend(children.get(n, ()))
    return False


def step_ok(problem: Problem, steps: Sequence[str], i: int) -> bool | None:
    """Exact step label; None if step i is not an ``a>b`` line."""
    if parse_edge(steps[i]) is None:
        return None
    edges, at = set(problem.edges), problem.start
    for step in steps[: i + 1]:
        edge = parse_edge(step)
        if edge is None or edge[0] != at or edge not in edges:
            return False
        at = edge[1]
    return reachable(problem, at, problem.target)


_QUESTION = re.compile(r"^Find a path from (\d+) to (\d+)\. Edges: (\d+>\d+(?:, \d+>\d+)*)\.$")


class PathsTask:
    name = "paths"
    system_prompt = ""
    answer_rules = DEFAULT_RULES  # a right path is one string: the tree has one way through

    def sample(self, rng: random.Random) -> Problem:
        arms = rng.randint(MIN_ARMS, MAX_ARMS)
        length = rng.randint(MIN_ARM_LENGTH, MAX_ARM_LENGTH)
        labels = rng.sample(range(MIN_LABEL, MAX_LABEL + 1), 1 + arms * length)
        start, rest = labels[0], labels[1:]
        chains = [rest[k * length : (k + 1) * length] for k in range(arms)]
        edges = []
        for chain in chains:
            edges.append((start, chain[0]))
            edges.extend(zip(chain, chain[1:], strict=False))
        rng.shuffle(edges)
        target = rng.choice(chains)[-1]
        return Problem(start, target, tuple(edges))

    def problems(self, count: int, seed: int) -> list[Problem]:
        rng = random.Random(seed)
        return [self.sample(rng) for _ in range(count)]

    def reference(self, problem: Problem) -> str:
        return solution(problem.path)

    def check(self, problem: Problem, completion: str) -> bool:
        found = answer_line(completion)
        nodes = parse_path(found) if found is not None else None
        return nodes is not None and check_path(problem, nodes)

    def check_step(self, problem: Problem, steps: Sequence[str], i: int) -> bool | None:
        return step_ok(problem, steps, i)

    def corrupt(self, problem: Problem, completion: str, rng: random.Random) -> str | None:
        """A near miss of a right completion, for hard negatives, written as a whole solution
        (steps and answer line agree): another arm followed and its last edge forged into the
        target (``12>8``, ``8>57``: what a policy that guesses the first step writes), another
        arm followed to its own end, or one inner node swapped for an unlisted label. None when
        the edit would still be right (or the completion has no answer line)."""
        if answer_line(completion) is None:
            return None
        path, children = problem.path, problem.children
        others = [c for c in children.get(problem.start, []) if len(path) < 2 or c != path[1]]
        kind = rng.choice(("forge", "wrong_end", "swap"))
        if kind in ("forge", "wrong_end") and others:
            arm = [problem.start, rng.choice(others)]
            while arm[-1] in children:
                arm.append(children[arm[-1]][0])
            nodes = arm[:-1] + [problem.target] if kind == "forge" else arm
        else:
            if len(path) < 3:
                return None
            i, used = rng.randrange(1, len(path) - 1), problem.labels
            free = [n for n in range(MIN_LABEL, MAX_LABEL + 1) if n not in used]
            nodes = path[:i] + [rng.choice(free)] + path[i + 1 :]
        text = solution(nodes)
        return None if self.check(problem, text) else text

    def partial_checks(self, problem: Problem, completion: str) -> dict[str, bool]:
        """Halves of the checker, for ``ceilings``: a verifier that checks only one of them."""
        found = answer_line(completion)
        nodes = parse_path(found) if found is not None else None
        edges = set(problem.edges)
        return {
            "path_ends_only": nodes is not None
            and nodes[0] == problem.start and nodes[-1] == problem.target,
            "path_edges_only": nodes is not None and nodes[0] == problem.start
            and all((a, b) in edges for a, b in zip(nodes, nodes[1:], strict=False)),
        }

    def parse(self, question: str) -> Problem | None:
        m = _QUESTION.match(question.strip())
        if not m:
            return None
        edges = tuple(
            (int(a), int(b)) for a, b in (e.split(">") for e in m.group(3).split(", "))
        )
        return Problem(int(m.group(1)), int(m.group(2)), edges)
