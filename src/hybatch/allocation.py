"""Language sequences whose running counts stay close to their shares.

The balanced schedule of `hybatch.samplers` hands out the languages of monolingual batches and the
(query, passage) language pairs of cross-lingual rows from these sequences, position after position
over the whole run, each position to the language (or pair) furthest behind its share (a greedy
deficit rule). Any prefix of a sequence (an epoch, the 26 batches of a short run, one batch) then
holds every language within one unit of its share: exactly for monolingual languages and for
cross-lingual pairs with equal weights (a cyclic schedule); with unequal weights the cross-lingual
query and passage counts stay within about 1.3 rows (measured in tests/test_samplers.py), where
independent draws would leave some languages out of a short run altogether.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def cross_shares(weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Query and passage shares of cross-lingual pairs: the query language by `weights`, the passage
    language by the same weights renormalised without the query's (what an independent draw gives
    in expectation). Equal weights give equal shares on both sides."""
    w = np.asarray(weights, dtype=float)
    pairs = w[:, None] * w[None, :] / (1.0 - w[:, None])
    np.fill_diagonal(pairs, 0.0)
    return pairs.sum(axis=1), pairs.sum(axis=0)


def _equal(weights: np.ndarray) -> bool:
    return bool(np.allclose(weights, weights[0]))


class ApportionedSequence:
    """Position k goes to the language furthest below its share ``w * (k + 1)``; ties to the first in
    `order`. Running counts stay within one of ``w * k``; with equal weights the sequence is `order`
    repeated, so every prefix is within one of equal counts."""

    def __init__(self, weights: np.ndarray, order: np.ndarray) -> None:
        self.weights = np.asarray(weights, dtype=float)
        # Rank of each language in `order`: argmax over deficits minus a tiny rank term breaks ties.
        self._tie = np.empty(len(order))
        self._tie[np.asarray(order)] = np.arange(len(order)) * 1e-9
        self._counts = np.zeros(len(self.weights))
        self._seq: list[int] = []

    def take(self, start: int, stop: int) -> np.ndarray:
        """Language indices of positions ``start .. stop - 1``."""
        while len(self._seq) < stop:
            k = len(self._seq) + 1
            lang = int(np.argmax(self.weights * k - self._counts - self._tie))
            self._counts[lang] += 1
            self._seq.append(lang)
        return np.asarray(self._seq[start:stop], dtype=int)


class CrossPairSequence:
    """(query, passage) language indices, never equal, position after position.

    Equal weights: queries run through `order` again and again; cycle j pairs the language at place
    i of `order` with the one ``shift_j`` places further (mod n), where the shifts of every n - 1
    cycles are 1 .. n - 1 in the order `shift_order(round)` gives. Both sides of every prefix are
    within one of equal counts, and each run of n (n - 1) rows holds every ordered pair once.
    Other weights: each position takes the pair that keeps the larger of the two sides' largest
    deviation from their shares (`cross_shares`) smallest, then the one furthest below its shares;
    this keeps both sides within about 1.3 rows of their shares (measured in tests/test_samplers.py;
    within one is not guaranteed).
    """

    def __init__(self, weights: np.ndarray, order: np.ndarray, shift_order: Callable[[int], np.ndarray]) -> None:
        self.weights = np.asarray(weights, dtype=float)
        self.order = np.asarray(order, dtype=int)
        self.n = len(self.weights)
        if self.n < 2:
            raise ValueError("cross-lingual pairs need at least two languages")
        self.shift_order = shift_order
        self.equal = _equal(self.weights)
        self._shifts: dict[int, np.ndarray] = {}
        self.query_share, self.passage_share = cross_shares(self.weights)
        self._rank = np.empty(self.n)
        self._rank[self.order] = np.arange(self.n)
        self._q_counts = np.zeros(self.n)
        self._p_counts = np.zeros(self.n)
        self._q: list[int] = []
        self._p: list[int] = []

    def take(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """Query and passage language indices of positions ``start .. stop - 1``."""
        if self.equal:
            return self._cyclic(np.arange(start, stop))
        while len(self._q) < stop:
            self._greedy_step()
        return np.asarray(self._q[start:stop], dtype=int), np.asarray(self._p[start:stop], dtype=int)

    def _cyclic(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n = self.n
        cycle, place = positions // n, positions % n
        rounds, within = cycle // (n - 1), cycle % (n - 1)
        shifts = np.array([self._round_shifts(int(r))[w] for r, w in zip(rounds, within)], dtype=int)
        return self.order[place], self.order[(place + shifts) % n]

    def _round_shifts(self, round_: int) -> np.ndarray:
        if round_ not in self._shifts:
            self._shifts[round_] = 1 + np.asarray(self.shift_order(round_), dtype=int)
        return self._shifts[round_]

    def _greedy_step(self) -> None:
        k = len(self._q) + 1
        d_q = self.query_share * k - self._q_counts
        d_p = self.passage_share * k - self._p_counts
        # Largest |deviation| on each side after giving the next row to each language.
        after_q = _largest_after_taking(d_q)
        after_p = _largest_after_taking(d_p)
        worst = np.maximum(after_q[:, None], after_p[None, :])
        np.fill_diagonal(worst, np.inf)
        gain = d_q[:, None] + d_p[None, :]
        tie = self._rank[:, None] * self.n + self._rank[None, :]
        best = np.lexsort((tie.ravel(), -gain.ravel(), worst.ravel()))[0]
        q, p = divmod(int(best), self.n)
        self._q_counts[q] += 1
        self._p_counts[p] += 1
        self._q.append(q)
        self._p.append(p)


def _largest_after_taking(deficits: np.ndarray) -> np.ndarray:
    """For each language l: max over languages of |deficit| once l's deficit is lowered by one."""
    size = np.abs(deficits)
    top = np.argsort(-size)
    first, second = size[top[0]], size[top[1]] if len(size) > 1 else 0.0
    others = np.where(np.arange(len(size)) == top[0], second, first)
    return np.maximum(others, np.abs(deficits - 1.0))
